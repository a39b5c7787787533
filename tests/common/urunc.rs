//! urunc's seccomp filter, as urunc installs it before it execs
//! `solo5-hvt`: the allowlist below, every other syscall a SIGSYS trap.

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};
use std::collections::BTreeMap;

/// urunc's allowlist, complete, from the integrations fact sheet.
pub const URUNC_ALLOWLIST: &[i64] = &[
    libc::SYS_rt_sigaction,
    libc::SYS_ioctl,
    libc::SYS_pread64,
    libc::SYS_mmap,
    libc::SYS_recvmsg,
    libc::SYS_openat,
    libc::SYS_sendto,
    libc::SYS_mprotect,
    libc::SYS_write,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_create1,
    libc::SYS_read,
    libc::SYS_open,
    libc::SYS_close,
    libc::SYS_fstat,
    libc::SYS_stat,
    libc::SYS_munmap,
    libc::SYS_brk,
    libc::SYS_access,
    libc::SYS_execve,
    libc::SYS_timerfd_create,
    libc::SYS_arch_prctl,
    libc::SYS_lseek,
    libc::SYS_personality,
    libc::SYS_socket,
    libc::SYS_bind,
    libc::SYS_getsockname,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_getpid,
    libc::SYS_tgkill,
    libc::SYS_nanosleep,
    libc::SYS_futex,
    libc::SYS_epoll_pwait,
    libc::SYS_rt_sigreturn,
    libc::SYS_timerfd_settime,
    libc::SYS_pwrite64,
    libc::SYS_newfstatat,
    libc::SYS_set_tid_address,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_prlimit64,
    libc::SYS_getrandom,
];

pub fn urunc_filter() -> BpfProgram {
    let rules: BTreeMap<i64, Vec<seccompiler::SeccompRule>> =
        URUNC_ALLOWLIST.iter().map(|&nr| (nr, vec![])).collect();
    SeccompFilter::new(
        rules,
        SeccompAction::Trap,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .unwrap()
    .try_into()
    .unwrap()
}

/// The monitor's filesystem as urunc lays it out, in a scratch directory:
/// only `/usr/local/bin/solo5-hvt` (skiff, bind-mounted), `/lib`,
/// `/lib64`, `/usr/lib` (the host's, bind-mounted), `/dev` with null,
/// urandom and kvm, an empty `/tmp` (a tmpfs), the guests under
/// `/unikernel` and a disk image at `/disk.img`. No /proc, /sys or /run.
/// The mounts are made in the child's own mount namespace (see
/// [`Chroot::command`]), so nothing outlives it; the directory goes on drop.
pub struct Chroot {
    dir: super::TempDir,
    /// (source, target) bind mounts, as C strings made before the fork.
    binds: Vec<(CString, CString)>,
    tmp: CString,
    root: CString,
}

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

/// Where skiff is in the chroot: urunc execs `solo5-hvt` from its PATH.
pub const MONITOR: &str = "/usr/local/bin/solo5-hvt";

impl Chroot {
    /// Lays out the tree (as root); `guests` are copied to /unikernel.
    pub fn new(guests: &[&str], disk: &[u8]) -> Self {
        let dir = super::TempDir::new(&format!("urunc-root-{}", std::process::id()));
        let root = dir.path().to_path_buf();
        let mut binds = Vec::new();
        for d in ["/lib", "/lib64", "/usr/lib"] {
            let target = root.join(&d[1..]);
            std::fs::create_dir_all(&target).unwrap();
            binds.push((cstr(Path::new(d)), cstr(&target)));
        }
        std::fs::create_dir_all(root.join("dev")).unwrap();
        for dev in ["null", "urandom", "kvm"] {
            let target = root.join("dev").join(dev);
            std::fs::write(&target, b"").unwrap();
            binds.push((cstr(&Path::new("/dev").join(dev)), cstr(&target)));
        }
        let monitor = root.join(&MONITOR[1..]);
        std::fs::create_dir_all(monitor.parent().unwrap()).unwrap();
        std::fs::write(&monitor, b"").unwrap();
        binds.push((cstr(&super::skiff()), cstr(&monitor)));
        std::fs::create_dir_all(root.join("tmp")).unwrap();
        std::fs::create_dir_all(root.join("unikernel")).unwrap();
        for g in guests {
            std::fs::copy(super::guest(g), root.join(format!("unikernel/{g}.hvt"))).unwrap();
        }
        std::fs::write(root.join("disk.img"), disk).unwrap();
        Self {
            tmp: cstr(&root.join("tmp")),
            root: cstr(&root),
            binds,
            dir,
        }
    }

    /// Puts a fresh disk image in place.
    pub fn set_disk(&self, disk: &[u8]) {
        std::fs::write(self.dir.path().join("disk.img"), disk).unwrap();
    }

    /// The disk image as the guest left it.
    pub fn disk(&self) -> Vec<u8> {
        std::fs::read(self.dir.path().join("disk.img")).unwrap()
    }

    /// `solo5-hvt ARGS` as urunc starts it: in a new mount namespace, the
    /// tree above mounted and chrooted into, then (if `filter`) urunc's
    /// no_new_privs and seccomp filter, then execve.
    pub fn command(&self, args: &[&str], filter: bool) -> std::process::Command {
        use std::os::unix::process::CommandExt;
        let mut cmd = std::process::Command::new(MONITOR);
        cmd.args(args).env_clear();
        let binds = self.binds.clone();
        let (tmp, root) = (self.tmp.clone(), self.root.clone());
        let prog = filter.then(urunc_filter);
        let fail = || Err(std::io::Error::last_os_error());
        // SAFETY: runs in the forked child before exec; it only makes
        // system calls on C strings and a BPF program made before the fork.
        unsafe {
            cmd.pre_exec(move || {
                let none = std::ptr::null();
                if libc::unshare(libc::CLONE_NEWNS) != 0
                    || libc::mount(
                        none,
                        c"/".as_ptr(),
                        none,
                        libc::MS_REC | libc::MS_PRIVATE,
                        none.cast(),
                    ) != 0
                {
                    return fail();
                }
                for (src, dst) in &binds {
                    if libc::mount(
                        src.as_ptr(),
                        dst.as_ptr(),
                        none,
                        libc::MS_BIND | libc::MS_REC,
                        none.cast(),
                    ) != 0
                    {
                        return fail();
                    }
                }
                if libc::mount(
                    c"tmpfs".as_ptr(),
                    tmp.as_ptr(),
                    c"tmpfs".as_ptr(),
                    0,
                    none.cast(),
                ) != 0
                    || libc::chroot(root.as_ptr()) != 0
                    || libc::chdir(c"/".as_ptr()) != 0
                {
                    return fail();
                }
                if let Some(prog) = &prog {
                    if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                        return fail();
                    }
                    seccompiler::apply_filter(prog).map_err(std::io::Error::other)?;
                }
                Ok(())
            });
        }
        cmd
    }

    /// Runs `command(args, filter)` with named FIFOs as stdin, stdout and
    /// stderr (containerd's), `stdin` written to the first.
    pub fn run(&self, args: &[&str], filter: bool, stdin: &[u8]) -> std::process::Output {
        use std::io::{Read, Write};
        use std::os::unix::fs::OpenOptionsExt;
        let fifos = super::TempDir::new("urunc-fifos");
        let fifo = |name: &str| {
            let p = fifos.path().join(name);
            let c = cstr(&p);
            // SAFETY: a NUL-terminated path.
            let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
            assert_eq!(rc, 0, "mkfifo {p:?}");
            p
        };
        let (fin, fout, ferr) = (fifo("stdin"), fifo("stdout"), fifo("stderr"));
        let open = |p: &Path, flags: i32, write: bool| {
            std::fs::OpenOptions::new()
                .read(!write)
                .write(write)
                .custom_flags(flags)
                .open(p)
                .unwrap()
        };
        // Read ends first, non-blocking, so opening the write ends does
        // not wait; O_RDWR on stdin's write end for the same reason.
        let in_w = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&fin)
            .unwrap();
        let in_r = open(&fin, 0, false);
        let out_r = open(&fout, libc::O_NONBLOCK, false);
        let err_r = open(&ferr, libc::O_NONBLOCK, false);
        let mut cmd = self.command(args, filter);
        cmd.stdin(in_r)
            .stdout(open(&fout, 0, true))
            .stderr(open(&ferr, 0, true));
        let mut child = cmd.spawn().expect("spawn the monitor");
        drop(cmd);
        let input = stdin.to_vec();
        let writer = std::thread::spawn(move || {
            let mut w = in_w;
            let _ = w.write_all(&input);
        });
        let drain = |mut f: std::fs::File| {
            std::thread::spawn(move || {
                // Blocking reads from here on: EOF once the child is gone.
                // SAFETY: F_SETFL on our own fd.
                unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(&f), libc::F_SETFL, 0) };
                let mut v = Vec::new();
                let _ = f.read_to_end(&mut v);
                v
            })
        };
        let (out, err) = (drain(out_r), drain(err_r));
        let _guard = KillOnDrop(child.id() as i32);
        let start = std::time::Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            assert!(start.elapsed().as_secs() < 30, "timed out: {args:?}");
            std::thread::sleep(std::time::Duration::from_millis(2));
        };
        writer.join().unwrap();
        std::process::Output {
            status,
            stdout: out.join().unwrap(),
            stderr: err.join().unwrap(),
        }
    }
}

/// Kills the monitor if the test fails before it exits.
struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // SAFETY: a signal to our own child.
            unsafe { libc::kill(self.0, libc::SIGKILL) };
        }
    }
}

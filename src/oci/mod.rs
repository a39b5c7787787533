//! `skiff hook`: an OCI runtime hook (createRuntime or prestart; args
//! `["skiff", "hook"]`). It reads the container state JSON on stdin and the
//! bundle's `config.json`. When the annotation `org.skiff.kernel` names an
//! image inside the rootfs, it checks that image exactly as `run` would
//! (without running it), and creates the TAP named by `org.skiff.net` in
//! the container's network namespace. Any failure is one line and a
//! non-zero exit, so the runtime does not start the container.

mod net;

use crate::config::{MemSize, MEM_DEFAULT};
use crate::image::{self, Image, ImageError};
use serde::Deserialize;
use std::collections::HashMap;
use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};
use thiserror::Error;

pub use net::NetError;

/// The annotation naming the unikernel, a path inside the rootfs.
pub const ANN_KERNEL: &str = "org.skiff.kernel";
/// The annotation naming the TAP to create in the container's netns.
pub const ANN_NET: &str = "org.skiff.net";
/// The annotation giving guest memory in MiB (as `--mem`), for the checks.
pub const ANN_MEM: &str = "org.skiff.mem";

/// The largest state JSON read from stdin.
const STATE_MAX: u64 = 1 << 20;
/// The largest config.json read.
const CONFIG_MAX: u64 = 16 << 20;

/// Why the hook refused the container.
#[derive(Debug, Error)]
pub enum HookError {
    #[error("cannot read the container state from stdin: {0}")]
    ReadState(std::io::Error),
    #[error("malformed container state on stdin: {0}")]
    State(serde_json::Error),
    #[error("the container state on stdin is larger than 1 MiB")]
    StateTooBig,
    #[error("cannot read {path}: {err}")]
    ReadConfig { path: PathBuf, err: std::io::Error },
    #[error("malformed {path}: {err}")]
    Config {
        path: PathBuf,
        err: serde_json::Error,
    },
    #[error("{path} has no root.path")]
    NoRoot { path: PathBuf },
    #[error("annotation {ANN_KERNEL}: '{0}' is not a path inside the rootfs")]
    KernelPath(String),
    #[error("annotation {ANN_MEM}='{value}': {err}")]
    Mem {
        value: String,
        err: crate::config::ConfigError,
    },
    #[error("{ANN_KERNEL} {path}: {err}")]
    Image { path: String, err: ImageError },
    #[error("annotation {ANN_NET} needs the container's pid in the state")]
    NoPid,
    #[error("annotation {ANN_NET}: {0}")]
    Net(#[from] NetError),
    #[error("exiting on signal {0}")]
    Signal(i32),
}

/// The container state (OCI runtime spec, "State"). Not
/// `deny_unknown_fields`: runtimes add their own (crun adds `root`).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct State {
    pub oci_version: String,
    pub id: String,
    pub status: String,
    #[serde(default)]
    pub pid: Option<i32>,
    pub bundle: PathBuf,
    #[serde(default)]
    pub annotations: HashMap<String, String>,
}

/// The parts of `config.json` the hook needs; the rest is the runtime's.
#[derive(Debug, Deserialize)]
pub struct Config {
    #[serde(default)]
    pub root: Option<Root>,
    #[serde(default)]
    pub annotations: HashMap<String, String>,
}

/// `root`: the spec defines exactly these two fields.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Root {
    pub path: PathBuf,
    #[serde(default)]
    pub readonly: bool,
}

/// Reads at most `max` bytes; `None` when there are more.
fn read_limited(r: impl Read, max: u64) -> std::io::Result<Option<Vec<u8>>> {
    let mut buf = Vec::new();
    r.take(max + 1).read_to_end(&mut buf)?;
    Ok((buf.len() as u64 <= max).then_some(buf))
}

/// Parses the state JSON.
pub fn parse_state(bytes: &[u8]) -> Result<State, HookError> {
    serde_json::from_slice(bytes).map_err(HookError::State)
}

/// The annotation value as a relative path with no `..`: resolved under
/// the rootfs, it cannot leave it lexically (symlinks are handled by
/// opening with `RESOLVE_IN_ROOT`).
fn inside_rootfs(value: &str) -> Result<PathBuf, HookError> {
    let mut rel = PathBuf::new();
    for c in Path::new(value).components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => rel.push(n),
            Component::ParentDir | Component::Prefix(_) => {
                return Err(HookError::KernelPath(value.into()))
            }
        }
    }
    if rel.as_os_str().is_empty() || value.contains('\0') {
        return Err(HookError::KernelPath(value.into()));
    }
    Ok(rel)
}

/// Opens `rel` inside `root` with openat2(RESOLVE_IN_ROOT): `..` and
/// symlinks, even absolute ones, resolve as if `root` were `/`.
fn open_in_root(root: &Path, rel: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::ffi::OsStrExt;
    let dir = std::fs::File::open(root)?;
    let c = std::ffi::CString::new(rel.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: open_how is plain integers; all-zero is valid.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    // O_NONBLOCK: a FIFO is refused (not a regular file), not waited on.
    how.flags = (libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NONBLOCK) as u64;
    how.resolve = libc::RESOLVE_IN_ROOT;
    // SAFETY: `dir` is an open directory, `c` a NUL-terminated path and
    // `how` a valid open_how of the size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            std::os::fd::AsRawFd::as_raw_fd(&dir),
            c.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: openat2 returned a fresh fd that nothing else owns.
    Ok(std::fs::File::from(unsafe {
        OwnedFd::from_raw_fd(fd as i32)
    }))
}

/// Everything the hook does, given the state JSON.
pub fn hook(state: &State) -> Result<(), HookError> {
    let cfg_path = state.bundle.join("config.json");
    let read_err = |err| HookError::ReadConfig {
        path: cfg_path.clone(),
        err,
    };
    let file = std::fs::File::open(&cfg_path).map_err(read_err)?;
    let bytes = read_limited(file, CONFIG_MAX)
        .map_err(read_err)?
        .ok_or_else(|| read_err(std::io::Error::other("larger than 16 MiB")))?;
    let cfg: Config = serde_json::from_slice(&bytes).map_err(|err| HookError::Config {
        path: cfg_path.clone(),
        err,
    })?;
    // The state's annotations are the config's as the runtime saw them.
    let ann = |k: &str| state.annotations.get(k).or_else(|| cfg.annotations.get(k));
    let Some(kernel) = ann(ANN_KERNEL) else {
        return Ok(()); // not a skiff container: nothing to do
    };
    let root = cfg.root.as_ref().ok_or(HookError::NoRoot {
        path: cfg_path.clone(),
    })?;
    let rootfs = state.bundle.join(&root.path);
    let rel = inside_rootfs(kernel)?;
    let mem = match ann(ANN_MEM) {
        Some(m) => MemSize::from_mib(m)
            .map_err(|err| HookError::Mem {
                value: m.clone(),
                err,
            })?
            .bytes(),
        None => MEM_DEFAULT,
    };
    let img_err = |err| HookError::Image {
        path: kernel.clone(),
        err,
    };
    let f = open_in_root(&rootfs, &rel).map_err(|e| img_err(ImageError::Open(e)))?;
    let bytes = image::read_open_for(f, mem).map_err(img_err)?;
    Image::parse(&bytes, mem).map_err(img_err)?;

    if let Some(tap) = ann(ANN_NET) {
        let pid = state.pid.filter(|&p| p > 0).ok_or(HookError::NoPid)?;
        net::create_tap_in(pid, tap)?;
    }
    Ok(())
}

/// Reads and parses the container state from `r` (stdin), at most 1 MiB.
/// A stop signal while waiting for it (a hook run by hand at a terminal)
/// ends the read: [`HookError::Signal`].
pub fn read_state(mut r: impl Read) -> Result<State, HookError> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match r.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) if (buf.len() + n) as u64 > STATE_MAX => return Err(HookError::StateTooBig),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {
                if let Some(sig) = crate::signals::pending() {
                    return Err(HookError::Signal(sig));
                }
            }
            Err(e) => return Err(HookError::ReadState(e)),
        }
    }
    parse_state(&buf)
}

impl HookError {
    /// 128+N for signal N, else 1 (the runtime does not start the
    /// container).
    pub fn exit_status(&self) -> i32 {
        match self {
            HookError::Signal(s) => 128 + s,
            _ => 1,
        }
    }

    /// The error as one line (serde_json's messages have none, paths
    /// might).
    pub fn one_line(&self) -> String {
        self.to_string().replace(['\n', '\r'], " ")
    }
}

#[cfg(test)]
mod tests;

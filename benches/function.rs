//! 16 MiB echo throughput, end to end through skiff's stdin and stdout
//! (process start, KVM set-up and exit included), with `cat` on the same
//! pipes as the machine's baseline; files are on tmpfs when there is one. Prints numbers; asserts only that the
//! response is the request. `cargo bench --bench function`.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SIZE: usize = 16 << 20;
const RUNS: usize = 10;

fn body() -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..SIZE)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// One run through pipes: a writer thread feeds stdin, this thread drains
/// stdout. Returns the wall time from spawn to exit.
fn through_pipes(cmd: &mut Command, body: &[u8]) -> Duration {
    through_pipes_sized(cmd, body, None)
}

/// [`through_pipes`], the caller's pipes grown to `size` bytes first.
fn through_pipes_sized(cmd: &mut Command, body: &[u8], size: Option<i32>) -> Duration {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn");
    let mut sin = child.stdin.take().unwrap();
    if let Some(size) = size {
        use std::os::fd::AsRawFd;
        for fd in [sin.as_raw_fd(), child.stdout.as_ref().unwrap().as_raw_fd()] {
            // SAFETY: F_SETPIPE_SZ on a pipe fd we own; no memory involved.
            assert!(unsafe { libc::fcntl(fd, libc::F_SETPIPE_SZ, size) } >= size);
        }
    }
    let input = body.to_vec();
    let w = std::thread::spawn(move || sin.write_all(&input).expect("write body"));
    let mut out = Vec::with_capacity(SIZE);
    child.stdout.take().unwrap().read_to_end(&mut out).unwrap();
    let status = child.wait().unwrap();
    let t = start.elapsed();
    w.join().unwrap();
    assert!(status.success(), "{status}");
    assert!(out == body, "response differs");
    t
}

/// One run with stdin and stdout redirected to files, as in
/// `skiff run f.hvt < request > response`.
fn through_files(cmd: &mut Command, req: &Path, resp: &Path) -> Duration {
    let start = Instant::now();
    let status = cmd
        .stdin(std::fs::File::open(req).unwrap())
        .stdout(
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(!resp.starts_with("/dev/null"))
                .open(resp)
                .unwrap(),
        )
        .status()
        .unwrap();
    let t = start.elapsed();
    assert!(status.success());
    t
}

fn report(what: &str, mut times: Vec<Duration>) {
    times.sort();
    let med = times[times.len() / 2];
    let best = times[0];
    let gbs = |d: Duration| SIZE as f64 / d.as_secs_f64() / 1e9;
    if what.starts_with('(') {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "{what:<44} median {:>7.2} ms  best {:>7.2} ms",
            ms(med),
            ms(best)
        );
        return;
    }
    println!(
        "{what:<44} median {:>7.2} ms = {:>5.2} GB/s   best {:>7.2} ms = {:>5.2} GB/s",
        med.as_secs_f64() * 1e3,
        gbs(med),
        best.as_secs_f64() * 1e3,
        gbs(best)
    );
}

fn main() {
    let skiff = env!("CARGO_BIN_EXE_skiff");
    let echo = guest_images::image("echo");
    let body = body();
    let echo_cmd = || {
        let mut c = Command::new(skiff);
        c.args(["run", "--mem=64"]).arg(&echo);
        c
    };
    println!("16 MiB echo, {RUNS} runs each (wall time per request, start to exit)");

    let t = (0..RUNS)
        .map(|_| through_pipes(&mut Command::new("cat"), &body))
        .collect();
    report("baseline: cat, pipes", t);
    let t = (0..RUNS)
        .map(|_| through_pipes(&mut echo_cmd(), &body))
        .collect();
    report("skiff run echo.hvt, pipes", t);
    let t = (0..RUNS)
        .map(|_| through_pipes(echo_cmd().arg("stream"), &body))
        .collect();
    report("skiff run echo.hvt stream, pipes", t);
    let big = Some(1 << 20);
    let t = (0..RUNS)
        .map(|_| through_pipes_sized(&mut Command::new("cat"), &body, big))
        .collect();
    report("baseline: cat, 1 MiB pipes", t);
    let t = (0..RUNS)
        .map(|_| through_pipes_sized(&mut echo_cmd(), &body, big))
        .collect();
    report("skiff run echo.hvt, 1 MiB pipes", t);

    // tmpfs when there is one: the disk's write cost is not skiff's.
    let tmp = match Path::new("/dev/shm").is_dir() {
        true => Path::new("/dev/shm").to_path_buf(),
        false => std::env::temp_dir(),
    };
    let dir = tmp.join(format!("skiff-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (req, resp) = (dir.join("request"), dir.join("response"));
    std::fs::write(&req, &body).unwrap();
    let t = (0..RUNS)
        .map(|_| through_files(&mut echo_cmd(), &req, &resp))
        .collect();
    assert!(std::fs::read(&resp).unwrap() == body, "response differs");
    report("skiff run echo.hvt < request > response", t);
    let null = Path::new("/dev/null");
    let t = (0..RUNS)
        .map(|_| through_files(&mut echo_cmd(), &req, null))
        .collect();
    report("skiff run echo.hvt < request > /dev/null", t);
    // The fixed cost in each line above: a run that moves no data.
    let mut hello = Command::new(skiff);
    hello
        .args(["run", "--mem=64"])
        .arg(guest_images::image("hello"));
    let t = (0..RUNS)
        .map(|_| through_files(&mut hello, &req, null))
        .collect();
    report("(fixed cost: skiff run hello.hvt, no data)", t);
    let _ = std::fs::remove_dir_all(&dir);
}

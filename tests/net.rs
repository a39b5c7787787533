//! Net devices on real KVM with the project's own guests. Every test makes
//! its own network namespace and TAPs (10.77.0.1/24, 10.78.0.1/24 on the
//! host side; the guest is .2), pings only the guest inside it, and
//! deletes the namespace afterwards. Needs root and iproute2/iputils-ping.

mod common;
use common::netns::Netns;
use common::*;
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

/// Runs skiff inside a test's namespace.
impl Netns {
    /// `skiff run FLAGS GUEST ARGS` inside the namespace, in the background.
    fn spawn_skiff(&self, flags: &[&str], guest_name: &str, args: &[&str]) -> Child {
        let g = guest(guest_name);
        let sk = skiff();
        let mut v = vec![sk.to_str().unwrap(), "run"];
        v.extend_from_slice(flags);
        v.push(g.to_str().unwrap());
        v.extend_from_slice(args);
        self.cmd(&v)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    fn run_skiff(&self, flags: &[&str], guest_name: &str, args: &[&str]) -> Output {
        wait(self.spawn_skiff(flags, guest_name, args))
    }
}

/// A guest running in the background, its stdout collected as it comes.
struct Running {
    child: ChildGuard,
    out: std::sync::Arc<std::sync::Mutex<String>>,
    reader: std::thread::JoinHandle<()>,
}

impl Running {
    fn new(mut child: Child) -> Self {
        let mut pipe = child.stdout.take().unwrap();
        let out = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let o = out.clone();
        let reader = std::thread::spawn(move || {
            use std::io::Read;
            let mut buf = [0u8; 512];
            while let Ok(n @ 1..) = pipe.read(&mut buf) {
                o.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Self {
            child: ChildGuard::new(child),
            out,
            reader,
        }
    }

    /// Waits until the guest has printed `n` lines containing `needle`.
    fn wait_for(&self, needle: &str, n: usize) {
        let start = Instant::now();
        while self.out.lock().unwrap().matches(needle).count() < n {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "guest never printed {needle:?}: {}",
                self.out.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the guest to end; its status and whole stdout.
    fn finish(self) -> (Option<i32>, String) {
        let o = wait(self.child.into_inner());
        self.reader.join().unwrap();
        let out = self.out.lock().unwrap().clone();
        (o.status.code(), format!("{out}{}", stderr(&o)))
    }
}

/// Waits up to 60 s for `child`, killing it after that.
fn wait(mut child: Child) -> Output {
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn ping_round_trips() {
    let ns = Netns::new("ping", &[("tap0", "10.77.0.1/24", 1500)]);
    let g = Running::new(ns.spawn_skiff(&["--net:service0=tap0"], "ping", &["limit", "10"]));
    g.wait_for("serving ping", 1);
    ns.ping("10.77.0.2", 10);
    let (code, out) = g.finish();
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("limit reached, 10 pings answered"), "{out}");
}

#[test]
fn two_interfaces() {
    let ns = Netns::new(
        "2if",
        &[
            ("tap0", "10.77.0.1/24", 1500),
            ("tap1", "10.78.0.1/24", 1500),
        ],
    );
    let g = Running::new(ns.spawn_skiff(
        &["--net:service0=tap0", "--net:service1=tap1"],
        "ping2",
        &["limit", "10"],
    ));
    g.wait_for("serving ping", 2);
    ns.ping("10.77.0.2", 5);
    ns.ping("10.78.0.2", 5);
    let (code, out) = g.finish();
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("service0: serving ping on 10.77.0.2"), "{out}");
    assert!(out.contains("service1: serving ping on 10.78.0.2"), "{out}");
    assert!(out.contains("limit reached, 10 pings answered"), "{out}");
}

#[test]
fn mtu_and_mac_are_reported() {
    let ns = Netns::new("mtu", &[("tap0", "10.77.0.1/24", 9000)]);
    let o = ns.run_skiff(
        &[
            "--net:service0=tap0",
            "--net-mac:service0=02:11:22:33:44:55",
        ],
        "netinfo",
        &[],
    );
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{out} {}", stderr(&o));
    assert!(out.contains("MTU is 9000"), "{out}");
    assert!(out.contains("MAC is 02:11:22:33:44:55"), "{out}");
    // Without --net-mac: a generated, locally administered unicast MAC.
    let o = ns.run_skiff(&["--net:service0=tap0"], "netinfo", &[]);
    let out = stdout(&o);
    let mac = out.split("MAC is ").nth(1).expect("MAC line");
    let first = u8::from_str_radix(&mac[..2], 16).unwrap();
    assert_eq!(first & 3, 2, "{out}");
}

#[test]
fn bad_net_bindings_are_refused() {
    let ns = Netns::new("netbad", &[("tap0", "10.77.0.1/24", 1500)]);
    for (flags, needle) in [
        (
            vec!["--net:service0=tap0", "--net-mac:service0=02:11:22:33:44"],
            "bad MAC address '02:11:22:33:44'",
        ),
        (
            vec![
                "--net:service0=tap0",
                "--net-mac:service0=01:00:5e:00:00:01",
            ],
            "is a multicast address",
        ),
        (
            vec!["--net:service0=nosuchtap"],
            "could not attach interface nosuchtap",
        ),
        (vec!["--net:service0=@x"], "bad file descriptor '@x'"),
        (
            vec![],
            "device 'service0' of type NET_BASIC is declared in the manifest but not attached",
        ),
        (
            vec!["--net:service0=tap0", "--block:service0=/dev/null"],
            "device 'service0' is NET_BASIC in the manifest, not BLOCK_BASIC",
        ),
    ] {
        assert_refused(&ns.run_skiff(&flags, "netinfo", &[]), needle);
    }
}

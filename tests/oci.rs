//! skiff in OCI containers with real runc: a bundle whose process is skiff
//! running `echo` answers a request; `skiff hook` (createRuntime) stops a
//! container whose image is corrupt and creates its TAP in the container's
//! netns; the hook's bad inputs are one line and exit 1.

mod common;
use common::*;
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// A bundle made from `manifests/oci/config.json` (so the example is what
/// runs here): rootfs with skiff at /bin/skiff and `image` at
/// /functions/f.hvt, host libraries bind-mounted read-only, /dev/kvm
/// allowed; the hook is this build's skiff.
struct Bundle {
    dir: TempDir,
    id: String,
}

impl Bundle {
    fn new(tag: &str, image: &[u8], args: &[&str], annotations: Value) -> Self {
        let dir = TempDir::new(tag);
        let root = dir.path().join("rootfs");
        for d in [
            "bin",
            "functions",
            "proc",
            "dev",
            "usr/lib",
            "usr/lib64",
            "usr/bin",
        ] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::os::unix::fs::symlink("usr/lib", root.join("lib")).unwrap();
        std::os::unix::fs::symlink("usr/lib64", root.join("lib64")).unwrap();
        std::fs::copy(skiff(), root.join("bin/skiff")).unwrap();
        std::fs::write(root.join("functions/f.hvt"), image).unwrap();

        let example = concat!(env!("CARGO_MANIFEST_DIR"), "/manifests/oci/config.json");
        let mut config: Value = serde_json::from_slice(&std::fs::read(example).unwrap()).unwrap();
        config["hooks"]["createRuntime"][0]["path"] = json!(skiff());
        config["process"]["args"] = json!(args);
        config["annotations"] = annotations;
        config["mounts"].as_array_mut().unwrap().push(
            json!({"destination": "/usr/bin", "type": "bind", "source": "/usr/bin",
                   "options": ["rbind", "ro"]}),
        );
        std::fs::write(
            dir.path().join("config.json"),
            serde_json::to_vec_pretty(&config).unwrap(),
        )
        .unwrap();
        let id = dir
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        Self { dir, id }
    }

    /// `runc run` in the foreground: the container's stdio is ours.
    fn run(&self, stdin: &[u8]) -> std::process::Output {
        let mut cmd = Command::new("runc");
        cmd.args(["run", "--bundle"])
            .arg(self.dir.path())
            .arg(&self.id);
        run_with(cmd, stdin, Duration::from_secs(60))
    }
}

impl Drop for Bundle {
    fn drop(&mut self) {
        let _ = Command::new("runc")
            .args(["delete", "-f", &self.id])
            .output();
    }
}

fn echo_image() -> Vec<u8> {
    std::fs::read(guest("echo")).unwrap()
}

const ECHO: &[&str] = &["/bin/skiff", "run", "--mem=64", "/functions/f.hvt"];

#[test]
fn a_runc_container_running_echo_answers_a_request() {
    let b = Bundle::new(
        "oci-echo",
        &echo_image(),
        ECHO,
        json!({"org.skiff.kernel": "/functions/f.hvt"}),
    );
    let body: Vec<u8> = (0..200_000u32).map(|i| (i ^ (i >> 7)) as u8).collect();
    let o = b.run(&body);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(o.stdout == body, "response differs from the request");
}

#[test]
fn a_corrupt_image_stops_the_container_with_skiffs_message() {
    let mut img = echo_image();
    img[..4].copy_from_slice(b"\0BAD");
    let b = Bundle::new(
        "oci-corrupt",
        &img,
        ECHO,
        json!({"org.skiff.kernel": "/functions/f.hvt"}),
    );
    let o = b.run(b"never read");
    assert_ne!(o.status.code(), Some(0));
    assert!(o.stdout.is_empty(), "the container ran: {}", stdout(&o));
    let err = stderr(&o);
    assert!(
        err.contains("skiff: org.skiff.kernel /functions/f.hvt: not an ELF file (bad magic)"),
        "{err}"
    );
}

#[test]
fn an_annotation_naming_a_missing_file_stops_the_container() {
    let b = Bundle::new(
        "oci-missing",
        &echo_image(),
        ECHO,
        json!({"org.skiff.kernel": "/functions/nothere.hvt"}),
    );
    let o = b.run(b"");
    assert_ne!(o.status.code(), Some(0));
    let err = stderr(&o);
    assert!(
        err.contains("skiff: org.skiff.kernel /functions/nothere.hvt: cannot open: No such file"),
        "{err}"
    );
}

#[test]
fn the_hook_creates_the_tap_inside_the_containers_netns() {
    let tap = format!("sk{}", std::process::id() % 100_000);
    let b = Bundle::new(
        "oci-net",
        &echo_image(),
        &["/usr/bin/cat", "/proc/net/dev"],
        json!({"org.skiff.kernel": "/functions/f.hvt", "org.skiff.net": tap}),
    );
    let o = b.run(b"");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains(&format!("{tap}:")), "{}", stdout(&o));
    // Nothing appeared in the host's namespace.
    let host = std::fs::read_to_string("/proc/net/dev").unwrap();
    assert!(!host.contains(&format!("{tap}:")), "{host}");
}

/// `skiff hook` on its own, with `state` on stdin.
fn hook(state: &[u8]) -> std::process::Output {
    let mut cmd = Command::new(skiff());
    cmd.arg("hook");
    run_with(cmd, state, Duration::from_secs(30))
}

fn state_for(bundle: &Path) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "ociVersion": "1.0.2", "id": "x", "status": "creating", "pid": 1,
        "bundle": bundle,
    }))
    .unwrap()
}

#[test]
fn the_hooks_bad_inputs_are_one_line_and_exit_1() {
    assert_refused(&hook(b""), "malformed container state on stdin");
    assert_refused(&hook(b"{\"ociVersion\": 1}"), "malformed container state");
    let dir = TempDir::new("hook-bad");
    assert_refused(
        &hook(&state_for(dir.path())),
        "config.json: No such file or directory",
    );
    std::fs::write(dir.path().join("config.json"), b"{\"root\": {\"path\": 7}}").unwrap();
    assert_refused(&hook(&state_for(dir.path())), "malformed");
    std::fs::write(
        dir.path().join("config.json"),
        b"{\"root\": {\"path\": \"rootfs\", \"extra\": 1}, \"annotations\": {\"org.skiff.kernel\": \"/f\"}}",
    )
    .unwrap();
    assert_refused(&hook(&state_for(dir.path())), "unknown field `extra`");
    for (path, needle) in [
        ("/../../etc/passwd", "is not a path inside the rootfs"),
        ("/nothere.hvt", "cannot open: No such file"),
    ] {
        let cfg = json!({"root": {"path": "rootfs"}, "annotations": {"org.skiff.kernel": path}});
        std::fs::create_dir_all(dir.path().join("rootfs")).unwrap();
        std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
        assert_refused(&hook(&state_for(dir.path())), needle);
    }
    // A symlink out of the rootfs resolves inside it (RESOLVE_IN_ROOT).
    std::os::unix::fs::symlink(guest("echo"), dir.path().join("rootfs/link.hvt")).unwrap();
    let cfg = json!({"root": {"path": "rootfs"}, "annotations": {"org.skiff.kernel": "link.hvt"}});
    std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
    assert_refused(&hook(&state_for(dir.path())), "cannot open: No such file");
    // No annotation: not a skiff container, nothing to check.
    std::fs::write(
        dir.path().join("config.json"),
        b"{\"root\": {\"path\": \"rootfs\"}}",
    )
    .unwrap();
    let o = hook(&state_for(dir.path()));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

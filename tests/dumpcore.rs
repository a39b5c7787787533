//! `skiff run --dumpcore`: a guest that aborts, traps or triple-faults
//! leaves an ELF core that Debian's gdb loads, with `bt` naming the guest
//! function where it happened.

mod common;

use common::TempDir;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Runs `guest` with `--dumpcore=DIR --mem=64`; status, stderr, and the
/// core's path taken from the one-line report.
fn dump(guest: &str, dir: &Path) -> (Option<i32>, String, Option<PathBuf>) {
    let flag = format!("--dumpcore={}", dir.display());
    let o = common::run_guest(&[&flag, "--mem=64"], guest, &[]);
    let err = common::stderr(&o);
    let path = err.lines().find_map(|l| {
        l.split_once("core dumped to ")
            .map(|(_, p)| PathBuf::from(p.trim()))
    });
    (o.status.code(), err, path)
}

fn gdb_bt(guest: &str, core: &Path) -> String {
    let mut c = std::process::Command::new("gdb");
    c.args(["-nx", "-batch", "-ex", "bt", "-ex", "info registers rip"])
        .arg(common::guest(guest))
        .arg(core);
    let o = common::run_with(c, b"", Duration::from_secs(60));
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The one line skiff printed about the core (other lines are the guest's).
fn skiff_lines(err: &str) -> Vec<&str> {
    err.lines().filter(|l| l.starts_with("skiff:")).collect()
}

#[test]
fn an_aborting_guest_leaves_a_core_gdb_reads() {
    let dir = TempDir::new("debug-core-abort");
    let (status, err, core) = dump("abort", dir.path());
    assert_eq!(status, Some(255), "{err}");
    assert_eq!(skiff_lines(&err).len(), 1, "{err}");
    let core = core.unwrap_or_else(|| panic!("no core path in {err:?}"));
    assert!(core.starts_with(dir.path()), "{}", core.display());
    let name = core.file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.starts_with("core.abort.hvt."), "{name}");
    // Bounded by guest memory (64 MiB) and sparse on disk.
    let meta = std::fs::metadata(&core).unwrap();
    assert!(meta.len() <= (64 << 20) + (1 << 20), "{}", meta.len());
    use std::os::unix::fs::MetadataExt;
    assert!(meta.blocks() * 512 < 4 << 20, "{} blocks", meta.blocks());
    // No temporary file is left behind.
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(left.len(), 1, "{left:?}");
    let bt = gdb_bt("abort", &core);
    assert!(
        bt.contains("Program terminated with signal SIGABRT"),
        "{bt}"
    );
    assert!(bt.contains("abort::main"), "{bt}");
    assert!(bt.contains("abort.rs:9"), "{bt}");
}

#[test]
fn a_trapping_guest_is_caught_where_it_trapped() {
    let dir = TempDir::new("debug-core-exception");
    let (status, err, core) = dump("exception", dir.path());
    assert_eq!(status, Some(255), "{err}");
    let core = core.unwrap_or_else(|| panic!("no core path in {err:?}"));
    // The runtime's trap handler passed its register dump as the HALT
    // cookie: frame #0 is the ud2 in main, not the handler.
    let bt = gdb_bt("exception", &core);
    let first = bt.lines().find(|l| l.starts_with("#0")).unwrap_or("");
    assert!(first.contains("exception::main"), "{bt}");
    assert!(bt.contains("exception.rs"), "{bt}");
}

#[test]
fn a_triple_fault_reports_the_fault_and_the_core_in_one_line() {
    let dir = TempDir::new("debug-core-triple");
    let (status, err, core) = dump("triplefault", dir.path());
    assert_eq!(status, Some(1), "{err}");
    let lines = skiff_lines(&err);
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].contains("triple fault"), "{err}");
    let core = core.unwrap_or_else(|| panic!("no core path in {err:?}"));
    let bt = gdb_bt("triplefault", &core);
    assert!(bt.contains("triplefault::main"), "{bt}");
}

#[test]
fn no_core_for_a_guest_that_exits_and_a_clear_line_when_it_cannot_be_written() {
    let dir = TempDir::new("debug-core-none");
    let (status, err, core) = dump("hello", dir.path());
    assert_eq!(status, Some(0), "{err}");
    assert!(core.is_none(), "{err}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

    let missing = dir.path().join("missing");
    let (status, err, core) = dump("abort", &missing);
    assert_eq!(status, Some(255), "{err}");
    assert!(core.is_none());
    let lines = skiff_lines(&err);
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].contains("no core: cannot write core file")
            && lines[0].contains(&missing.display().to_string()),
        "{err}"
    );
}

//! The few messages the library prints itself, where no caller is left to
//! hand an error to: an accelerator warning in the middle of a guest's
//! run, or a forked pool worker (a process of its own, whose messages go
//! to the pool's stderr or, once it serves a request, the caller's).
//! Everything else returns a typed error to `src/cli/`, which reports it.

use std::io::Write;

/// Prints `prog: message` on stderr as one line (one write, so lines from
/// concurrent workers do not interleave).
pub fn line(prog: &str, msg: &dyn std::fmt::Display) {
    let text = format!("{prog}: {msg}\n");
    let _ = std::io::stderr().write_all(text.as_bytes());
}

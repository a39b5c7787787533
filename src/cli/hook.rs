//! `skiff hook`: the OCI runtime hook (src/oci/). Any failure is one line
//! and a non-zero status, so the runtime does not start the container.

pub fn main(prog: &str) -> i32 {
    match crate::oci::read_state(std::io::stdin().lock()).and_then(|s| crate::oci::hook(&s)) {
        Ok(()) => 0,
        Err(e) => {
            super::report(prog, &e.one_line());
            e.exit_status()
        }
    }
}

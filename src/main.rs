//! skiff's binary. `no_main`: Rust's std start-up makes syscalls (poll,
//! sigaltstack, ...) outside the seccomp allowlist urunc installs before
//! it execs `solo5-hvt`, and it costs start-up time. std itself still
//! works (glibc hands it argv), so only the entry point changes.
#![no_main]

#[no_mangle]
pub extern "C" fn main(_argc: libc::c_int, _argv: *const *const libc::c_char) -> libc::c_int {
    skiff::cli::main()
}

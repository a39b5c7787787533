//! The project's test unikernels, built from `guests/` by this crate's build
//! script and copied to `<target dir>/guests/NAME.hvt`.
//!
//! Tests depend on this crate (as a dev-dependency) so that `cargo test`
//! rebuilds the guests whenever their sources or the guest ABI change.

use std::path::PathBuf;

/// Directory holding the built images (`NAME.hvt`).
pub const GUEST_DIR: &str = env!("SKIFF_GUEST_DIR");

// `pub const GUESTS: &[&str]`: the names of all images, sorted, as the
// build script built them (one per `guests/functions/src/bin/*.rs`).
include!(concat!(env!("OUT_DIR"), "/guests.rs"));

/// Path of the image `name` (e.g. `"hello"` → `<target>/guests/hello.hvt`).
///
/// # Panics
///
/// If the image does not exist: the build script builds every guest, so a
/// missing one is a misspelt name or a guest that was never added.
pub fn image(name: &str) -> PathBuf {
    let path = PathBuf::from(GUEST_DIR).join(format!("{name}.hvt"));
    assert!(
        path.is_file(),
        "guest image {} does not exist (built images: {GUESTS:?})",
        path.display()
    );
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_basic_guests_are_built() {
        for name in ["hello", "quiet", "exitcode"] {
            assert!(GUESTS.contains(&name), "{name} missing from {GUESTS:?}");
        }
    }

    #[test]
    fn every_listed_image_exists() {
        for name in GUESTS {
            assert!(image(name).is_file());
        }
    }

    #[test]
    fn images_are_static_x86_64_executables() {
        let bytes = std::fs::read(image("hello")).unwrap();
        assert_eq!(&bytes[..4], b"\x7fELF");
        assert_eq!(bytes[4], 2, "ELFCLASS64");
        assert_eq!(u16::from_le_bytes([bytes[16], bytes[17]]), 2, "ET_EXEC");
        assert_eq!(u16::from_le_bytes([bytes[18], bytes[19]]), 62, "EM_X86_64");
    }
}

//! skiff's extensions to the hvt ABI.
//!
//! A guest may use these hypercalls only when the boot info's
//! `host_features` has [`SKIFF_FEATURE_EXT`]; unmodified Solo5 guests never
//! look at that bit, so for them skiff is exactly solo5-hvt.

/// Host feature: skiff's extension hypercalls are served.
pub const SKIFF_FEATURE_EXT: u32 = 1 << 16;

//! The application manifest (MFT1): the devices a unikernel declares.
//!
//! The guest declares its manifest in an ELF note; the tender validates it,
//! binds each device to a host resource and hands the guest a filled-in copy
//! through [`crate::hvt::BootInfo::mft`]. A device's handle is its index.

use core::mem::{offset_of, size_of};

/// Manifest format version.
pub const MFT_VERSION: u32 = 1;
/// Most entries a manifest may have (including the reserved first one).
pub const MFT_MAX_ENTRIES: u32 = 64;
/// Longest device name, excluding the NUL.
pub const MFT_NAME_MAX: usize = 67;
/// Size of the name field.
pub const MFT_NAME_SIZE: usize = 68;

/// Entry types.
pub const MFT_DEV_BLOCK_BASIC: u32 = 1;
pub const MFT_DEV_NET_BASIC: u32 = 2;
pub const MFT_RESERVED_FIRST: u32 = 1 << 30;

/// One manifest entry (104 bytes).
///
/// `u` is Solo5's union: a block device keeps `{u64 capacity; u16
/// block_size}` there, a net device `{u8 mac[6]; u16 mtu}`; use the
/// accessors rather than the raw words.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct MftEntry {
    pub name: [u8; MFT_NAME_SIZE],
    pub kind: u32,
    pub u: [u64; 2],
    /// Host-private (fd or pointer in Solo5); skiff leaves it 0.
    pub host_private: u64,
    /// Non-zero once the tender has bound the device.
    pub attached: u8,
    pub _pad: [u8; 7],
}

/// The manifest header; `entries` entries follow it.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct MftHeader {
    pub version: u32,
    pub entries: u32,
}

crate::hvt::layout!(MftEntry, 104, kind @ 68, u @ 72, host_private @ 88, attached @ 96);
crate::hvt::layout!(MftHeader, 8);

impl MftEntry {
    /// An entry of `kind` named `name` (truncated to [`MFT_NAME_MAX`]).
    pub const fn new(name: &str, kind: u32) -> Self {
        let mut n = [0u8; MFT_NAME_SIZE];
        let b = name.as_bytes();
        let mut i = 0;
        while i < b.len() && i < MFT_NAME_MAX {
            n[i] = b[i];
            i += 1;
        }
        Self {
            name: n,
            kind,
            u: [0; 2],
            host_private: 0,
            attached: 0,
            _pad: [0; 7],
        }
    }

    /// The reserved first entry every manifest starts with.
    pub const fn reserved_first() -> Self {
        Self::new("", MFT_RESERVED_FIRST)
    }

    /// The name up to its NUL, or `None` if it has no NUL.
    pub fn name_bytes(&self) -> Option<&[u8]> {
        let len = self.name.iter().position(|&c| c == 0)?;
        Some(&self.name[..len])
    }

    pub const fn block_capacity(&self) -> u64 {
        self.u[0]
    }
    pub const fn block_size(&self) -> u16 {
        self.u[1] as u16
    }
    pub fn set_block(&mut self, capacity: u64, block_size: u16) {
        self.u = [capacity, block_size as u64];
    }

    pub fn net_mac(&self) -> [u8; 6] {
        let b = self.u[0].to_le_bytes();
        [b[0], b[1], b[2], b[3], b[4], b[5]]
    }
    pub fn net_mtu(&self) -> u16 {
        (self.u[0] >> 48) as u16
    }
    pub fn set_net(&mut self, mac: [u8; 6], mtu: u16) {
        let mut b = [0u8; 8];
        b[..6].copy_from_slice(&mac);
        b[6..].copy_from_slice(&mtu.to_le_bytes());
        self.u = [u64::from_le_bytes(b), 0];
    }
}

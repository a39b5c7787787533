//! Manifest validation: the MFT1 descriptor is untrusted input.

use guest_abi::manifest::{
    MftEntry, MftHeader, MFT_DEV_BLOCK_BASIC, MFT_DEV_NET_BASIC, MFT_MAX_ENTRIES, MFT_NAME_SIZE,
    MFT_RESERVED_FIRST, MFT_VERSION,
};
use std::mem::size_of;
use thiserror::Error;

/// What is wrong with a manifest.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ManifestError {
    #[error("too short for its header")]
    Short,
    #[error("version {0}, expected 1")]
    Version(u32),
    #[error("bad entry count {0} (1 to 64 allowed)")]
    Count(u32),
    #[error("size {size} does not match {entries} entries")]
    Size { size: usize, entries: u32 },
    #[error("the first entry is not the reserved one")]
    FirstEntry,
    #[error("entry {0}: name is not NUL-terminated")]
    Unterminated(usize),
    #[error("entry {0}: empty device name")]
    EmptyName(usize),
    #[error("entry {0}: duplicate device name '{1}'")]
    Duplicate(usize, String),
    #[error("entry {0}: unknown device type {1}")]
    Type(usize, u32),
    #[error("entry {0}: marked attached in the image")]
    Attached(usize),
}

/// A device type the manifest can declare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    Block,
    Net,
}

impl std::fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DeviceKind::Block => "BLOCK_BASIC",
            DeviceKind::Net => "NET_BASIC",
        })
    }
}

/// A declared device; its handle is its index in the manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub handle: u64,
    pub name: String,
    pub kind: DeviceKind,
}

/// A validated manifest: the raw entries (for the guest's copy) and the
/// declared devices.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub entries: Vec<MftEntry>,
    pub devices: Vec<Device>,
}

fn entry_at(bytes: &[u8], i: usize) -> MftEntry {
    let off = size_of::<MftHeader>() + i * size_of::<MftEntry>();
    let b = &bytes[off..off + size_of::<MftEntry>()];
    let mut e = MftEntry::reserved_first();
    e.name.copy_from_slice(&b[..MFT_NAME_SIZE]);
    let w32 = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
    let w64 = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
    e.kind = w32(68);
    e.u = [w64(72), w64(80)];
    e.host_private = w64(88);
    e.attached = b[96];
    e
}

impl Manifest {
    /// Validates the manifest descriptor (header plus entries).
    pub fn parse(bytes: &[u8]) -> Result<Self, ManifestError> {
        if bytes.len() < size_of::<MftHeader>() {
            return Err(ManifestError::Short);
        }
        let version = u32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes"));
        let count = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
        if version != MFT_VERSION {
            return Err(ManifestError::Version(version));
        }
        if count == 0 || count > MFT_MAX_ENTRIES {
            return Err(ManifestError::Count(count));
        }
        if bytes.len() != size_of::<MftHeader>() + count as usize * size_of::<MftEntry>() {
            return Err(ManifestError::Size {
                size: bytes.len(),
                entries: count,
            });
        }
        let mut entries = Vec::with_capacity(count as usize);
        let mut devices: Vec<Device> = Vec::new();
        for i in 0..count as usize {
            let e = entry_at(bytes, i);
            let name = e.name_bytes().ok_or(ManifestError::Unterminated(i))?;
            if e.attached != 0 {
                return Err(ManifestError::Attached(i));
            }
            if i == 0 {
                if e.kind != MFT_RESERVED_FIRST || !name.is_empty() {
                    return Err(ManifestError::FirstEntry);
                }
            } else {
                let kind = match e.kind {
                    MFT_DEV_BLOCK_BASIC => DeviceKind::Block,
                    MFT_DEV_NET_BASIC => DeviceKind::Net,
                    other => return Err(ManifestError::Type(i, other)),
                };
                if name.is_empty() {
                    return Err(ManifestError::EmptyName(i));
                }
                let name = String::from_utf8_lossy(name).into_owned();
                if devices.iter().any(|d| d.name == name) {
                    return Err(ManifestError::Duplicate(i, name));
                }
                devices.push(Device {
                    handle: i as u64,
                    name,
                    kind,
                });
            }
            entries.push(e);
        }
        Ok(Self { entries, devices })
    }

    /// Size of the manifest copy handed to the guest.
    pub fn byte_len(&self) -> usize {
        size_of::<MftHeader>() + self.entries.len() * size_of::<MftEntry>()
    }
}

#[cfg(test)]
mod tests;

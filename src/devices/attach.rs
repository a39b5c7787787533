//! Device bindings: the validated `--block`/`--net` flags (config, nothing
//! opened), and attaching them to the manifest's devices (the builder's
//! step that opens backing files and TAPs).

use super::block::{self, Block, BlockAttachError, BlockSpec, SectorSizeError};
use super::net::{self, Net, NetAttachError, NetFlagError, NetSpec};
use super::Devices;
use crate::image::{DeviceKind, Manifest};
use guest_abi::manifest::{MftEntry, MFT_NAME_MAX};
use std::ffi::OsString;
use std::path::PathBuf;
use thiserror::Error;

/// A bad device flag.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum BindingError {
    #[error("--{flag}: expected NAME=VALUE, got '{arg}'")]
    Syntax { flag: &'static str, arg: String },
    #[error("--{flag}:{name}: bad device name (1 to 67 letters, digits, '_' or '-')")]
    Name { flag: &'static str, name: String },
    #[error("--{flag}:{name} given more than once")]
    Duplicate { flag: &'static str, name: String },
    #[error("--block-sector-size:{name}: {err}")]
    SectorSize { name: String, err: SectorSizeError },
    #[error("--block-sector-size:{0} given without --block:{0}=PATH")]
    SectorSizeUnbound(String),
    #[error("--net:{name}: {err}")]
    Net { name: String, err: NetFlagError },
    #[error("--net-mac:{name}: {err}")]
    Mac { name: String, err: NetFlagError },
    #[error("--net-mac:{0} given without --net:{0}=IFACE")]
    MacUnbound(String),
}

/// Every device binding of one run, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bindings {
    pub block: Vec<BlockSpec>,
    pub net: Vec<NetSpec>,
}

/// The raw `NAME=VALUE` arguments of the device flags, as clap collects
/// them (each flag may repeat).
#[derive(Debug, Clone, Default)]
pub struct DeviceFlags {
    pub block: Vec<OsString>,
    pub block_sector_size: Vec<OsString>,
    pub net: Vec<OsString>,
    pub net_mac: Vec<OsString>,
}

/// Splits `NAME=VALUE`, checking the name.
fn split(flag: &'static str, arg: &OsString) -> Result<(String, OsString), BindingError> {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let b = arg.as_bytes();
    let syntax = || BindingError::Syntax {
        flag,
        arg: arg.to_string_lossy().into_owned(),
    };
    let eq = b.iter().position(|&c| c == b'=').ok_or_else(syntax)?;
    let name = String::from_utf8_lossy(&b[..eq]).into_owned();
    let ok = (1..=MFT_NAME_MAX).contains(&name.len())
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-');
    if !ok {
        return Err(BindingError::Name { flag, name });
    }
    Ok((name, OsString::from_vec(b[eq + 1..].to_vec())))
}

/// Splits every argument of `flag`, refusing a name given twice.
fn split_all(
    flag: &'static str,
    args: &[OsString],
) -> Result<Vec<(String, OsString)>, BindingError> {
    let mut out: Vec<(String, OsString)> = Vec::with_capacity(args.len());
    for a in args {
        let (name, val) = split(flag, a)?;
        if out.iter().any(|(n, _)| *n == name) {
            return Err(BindingError::Duplicate { flag, name });
        }
        out.push((name, val));
    }
    Ok(out)
}

impl Bindings {
    /// Validates the device flags (no file or TAP is opened here).
    pub fn from_flags(f: &DeviceFlags) -> Result<Self, BindingError> {
        let blocks = split_all("block", &f.block)?;
        let sizes = split_all("block-sector-size", &f.block_sector_size)?;
        let nets = split_all("net", &f.net)?;
        let macs = split_all("net-mac", &f.net_mac)?;

        let mut block = Vec::with_capacity(blocks.len());
        for (name, path) in blocks {
            block.push(BlockSpec {
                name,
                path: PathBuf::from(path),
                sector_size: block::DEFAULT_SECTOR_SIZE,
            });
        }
        for (name, val) in sizes {
            let n = block::parse_sector_size(&val.to_string_lossy()).map_err(|err| {
                BindingError::SectorSize {
                    name: name.clone(),
                    err,
                }
            })?;
            match block.iter_mut().find(|b| b.name == name) {
                Some(b) => b.sector_size = n,
                None => return Err(BindingError::SectorSizeUnbound(name)),
            }
        }

        let mut net = Vec::with_capacity(nets.len());
        for (name, val) in nets {
            let target =
                net::parse_target(&val.to_string_lossy()).map_err(|err| BindingError::Net {
                    name: name.clone(),
                    err,
                })?;
            net.push(NetSpec {
                name,
                target,
                mac: None,
                open_later: false,
            });
        }
        for (name, val) in macs {
            let mac = net::parse_mac(&val.to_string_lossy()).map_err(|err| BindingError::Mac {
                name: name.clone(),
                err,
            })?;
            match net.iter_mut().find(|n| n.name == name) {
                Some(n) => n.mac = Some(mac),
                None => return Err(BindingError::MacUnbound(name)),
            }
        }
        Ok(Self { block, net })
    }
}

/// Why the manifest's devices could not be attached.
#[derive(Debug, Error)]
pub enum AttachError {
    #[error("device '{name}' of type {kind} is declared in the manifest but not attached (use --{flag}:{name}=...)")]
    Unattached {
        name: String,
        kind: DeviceKind,
        flag: &'static str,
    },
    #[error("--{flag}:{name}: no device '{name}' is declared in the manifest")]
    Unknown { flag: &'static str, name: String },
    #[error("--{flag}:{name}: device '{name}' is {actual} in the manifest, not {wanted}")]
    WrongType {
        flag: &'static str,
        name: String,
        actual: DeviceKind,
        wanted: DeviceKind,
    },
    #[error(transparent)]
    Block(#[from] BlockAttachError),
    #[error(transparent)]
    Net(#[from] NetAttachError),
    #[error("cannot set up POLL's wait set: {0}")]
    Poll(std::io::Error),
}

fn flag(kind: DeviceKind) -> &'static str {
    match kind {
        DeviceKind::Block => "block",
        DeviceKind::Net => "net",
    }
}

/// The manifest handle of `name`, which must be of `kind`.
fn handle_of(m: &Manifest, name: &str, kind: DeviceKind) -> Result<u64, AttachError> {
    let d = m
        .devices
        .iter()
        .find(|d| d.name == name)
        .ok_or_else(|| AttachError::Unknown {
            flag: flag(kind),
            name: name.to_string(),
        })?;
    if d.kind != kind {
        return Err(AttachError::WrongType {
            flag: flag(kind),
            name: name.to_string(),
            actual: d.kind,
            wanted: kind,
        });
    }
    Ok(d.handle)
}

/// Binds every manifest device: checks all names and types first, then
/// opens the backing files and TAPs. Returns the running devices and the
/// filled-in manifest copy for the guest.
pub fn attach(m: &Manifest, b: &Bindings) -> Result<(Devices, Vec<MftEntry>), AttachError> {
    let blocks = b
        .block
        .iter()
        .map(|s| handle_of(m, &s.name, DeviceKind::Block))
        .collect::<Result<Vec<_>, _>>()?;
    let nets = b
        .net
        .iter()
        .map(|s| handle_of(m, &s.name, DeviceKind::Net))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(d) = m
        .devices
        .iter()
        .find(|d| !blocks.contains(&d.handle) && !nets.contains(&d.handle))
    {
        return Err(AttachError::Unattached {
            name: d.name.clone(),
            kind: d.kind,
            flag: flag(d.kind),
        });
    }

    let mut devices = Devices::default();
    let mut entries = m.entries.clone();
    for (spec, &h) in b.block.iter().zip(&blocks) {
        let dev = Block::open(spec)?;
        let e = &mut entries[h as usize];
        e.set_block(dev.capacity(), dev.block_size());
        e.attached = 1;
        devices.block.insert(h, dev);
    }
    for (spec, &h) in b.net.iter().zip(&nets) {
        let dev = Net::attach(spec)?;
        let e = &mut entries[h as usize];
        e.set_net(dev.mac, dev.mtu);
        e.attached = 1;
        devices.net.insert(h, dev).map_err(AttachError::Poll)?;
    }
    Ok((devices, entries))
}

#[cfg(test)]
mod tests;

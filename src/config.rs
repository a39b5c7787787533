//! Validated run configuration: parsed from argv, checked, and holding no
//! open files or KVM state (the builder acquires those).

use std::path::PathBuf;
use thiserror::Error;

const MIB: u64 = 1 << 20;
/// Guest memory is a multiple of 2 MiB (the page-table granule).
const GRANULE: u64 = 2 * MIB;
pub const MEM_MAX: u64 = 4096 * MIB;
pub const MEM_DEFAULT: u64 = 512 * MIB;

/// A bad command-line value.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    // The --mem messages leave the value out: clap's line and the hook's
    // already name the flag and its value.
    #[error("expected a whole number of MiB")]
    MemMalformed(String),
    #[error("too small: guest memory needs at least 2 MiB")]
    MemTooSmall(u64),
    #[error("too large: guest memory is at most 4096 MiB (4 GiB)")]
    MemTooBig(u64),
    #[error("guest command line too long ({0} bytes, at most 8191)")]
    CmdlineTooLong(usize),
    #[error("{0}")]
    Accel(#[from] crate::accel::config::AccelConfigError),
    #[error(transparent)]
    Device(#[from] crate::devices::attach::BindingError),
}

/// Guest memory size in bytes: a multiple of 2 MiB, 2 MiB to 4 GiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemSize(u64);

impl MemSize {
    /// Parses solo5-hvt's `--mem` value (MiB), rounding down to 2 MiB.
    pub fn from_mib(s: &str) -> Result<Self, ConfigError> {
        let mib: u64 = s
            .trim()
            .parse()
            .map_err(|_| ConfigError::MemMalformed(s.to_string()))?;
        if mib < 2 {
            return Err(ConfigError::MemTooSmall(mib));
        }
        if mib > MEM_MAX / MIB {
            return Err(ConfigError::MemTooBig(mib));
        }
        Ok(Self(mib * MIB / GRANULE * GRANULE))
    }

    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl Default for MemSize {
    fn default() -> Self {
        Self(MEM_DEFAULT)
    }
}

/// Everything `skiff run` (or `solo5-hvt`) was asked to do.
#[derive(Debug, Clone, Default)]
pub struct RunConfig {
    pub mem: MemSize,
    pub kernel: PathBuf,
    /// The guest's command line: its arguments joined by single spaces.
    pub cmdline: Vec<u8>,
    /// Accelerator plugins and the operator's models and libraries.
    pub accel: crate::accel::config::AccelConfig,
    /// `--block`/`--net` bindings for the manifest's devices.
    pub devices: crate::devices::attach::Bindings,
    /// The CPUID a booted guest sees (a restored one sees its snapshot's).
    pub cpu_template: crate::vcpu::CpuTemplate,
}

/// Joins the guest's arguments as Solo5 does, refusing overlong ones.
pub fn cmdline(args: &[std::ffi::OsString]) -> Result<Vec<u8>, ConfigError> {
    use std::os::unix::ffi::OsStrExt;
    let mut out = Vec::new();
    for (i, a) in args.iter().enumerate() {
        if i > 0 {
            out.push(b' ');
        }
        out.extend_from_slice(a.as_bytes());
    }
    if out.len() >= guest_abi::hvt::CMDLINE_SIZE {
        return Err(ConfigError::CmdlineTooLong(out.len()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_sizes() {
        assert_eq!(MemSize::from_mib("512").unwrap().bytes(), 512 * MIB);
        assert_eq!(MemSize::from_mib("3").unwrap().bytes(), 2 * MIB);
        assert_eq!(MemSize::from_mib("4096").unwrap().bytes(), 4096 * MIB);
        assert_eq!(MemSize::from_mib("1"), Err(ConfigError::MemTooSmall(1)));
        assert_eq!(MemSize::from_mib("4097"), Err(ConfigError::MemTooBig(4097)));
        assert!(matches!(
            MemSize::from_mib("12x"),
            Err(ConfigError::MemMalformed(_))
        ));
        assert!(matches!(
            MemSize::from_mib("-5"),
            Err(ConfigError::MemMalformed(_))
        ));
    }

    #[test]
    fn cmdline_joins_and_limits() {
        let a: Vec<std::ffi::OsString> = vec!["a".into(), "b c".into()];
        assert_eq!(cmdline(&a).unwrap(), b"a b c");
        let long: Vec<std::ffi::OsString> = vec!["x".repeat(8192).into()];
        assert_eq!(cmdline(&long), Err(ConfigError::CmdlineTooLong(8192)));
    }
}

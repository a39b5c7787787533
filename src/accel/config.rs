//! The operator's accelerator flags, validated (no files opened here):
//! `--accel=cuda,opencl,cpu` (else `$VACCEL_PLUGINS`, `:`- or
//! `,`-separated), `--accel-model=NAME=PATH`, `--accel-lib=NAME=PATH`.

use super::plugins::PluginKind;
use std::path::PathBuf;
use thiserror::Error;

/// The flags as given (src/cli/accel.rs parses them from argv).
#[derive(Debug, Default, Clone)]
pub struct AccelFlags {
    /// `--accel`: plugins in priority order.
    pub accel: Option<String>,
    /// `--accel-model=NAME=PATH` (repeatable).
    pub models: Vec<String>,
    /// `--accel-lib=NAME=PATH` (repeatable).
    pub libs: Vec<String>,
    /// `--accel-remote`: the agent's address.
    pub remote: Option<String>,
    /// `--accel-remote-timeout`: seconds (1..=3600, checked by the parser).
    pub remote_timeout: Option<u64>,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum AccelConfigError {
    #[error("{flag}: unknown accelerator plugin '{name}' (known: cpu, opencl, cuda, remote)")]
    UnknownPlugin { flag: &'static str, name: String },
    #[error("{flag}: plugin '{name}' is listed twice")]
    Duplicate { flag: &'static str, name: String },
    #[error("{flag}: no plugin named")]
    Empty { flag: &'static str },
    #[error("--{flag}={value}: expected NAME=PATH")]
    Malformed { flag: &'static str, value: String },
    #[error("--{flag}: NAME '{name}' is given twice")]
    DuplicateName { flag: &'static str, name: String },
    #[error("--{flag} needs --accel (or VACCEL_PLUGINS)")]
    NotEnabled { flag: &'static str },
    #[error("--accel-remote: {0}")]
    Remote(#[from] crate::vaccel::addr::AddressError),
    #[error("--accel-remote needs the remote plugin in --accel")]
    RemoteUnused,
}

/// What the accelerator runtime is to serve; `None` plugins: disabled.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccelConfig {
    pub plugins: Option<Vec<PluginKind>>,
    pub models: Vec<(String, PathBuf)>,
    pub libs: Vec<(String, PathBuf)>,
    /// The agent, when `remote` is among the plugins.
    pub remote: Option<super::remote::RemoteConfig>,
}

fn plugins(flag: &'static str, list: &str) -> Result<Vec<PluginKind>, AccelConfigError> {
    let mut out = Vec::new();
    for name in list
        .split([',', ':'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let k = PluginKind::from_name(name).ok_or_else(|| AccelConfigError::UnknownPlugin {
            flag,
            name: name.into(),
        })?;
        if out.contains(&k) {
            return Err(AccelConfigError::Duplicate {
                flag,
                name: name.into(),
            });
        }
        out.push(k);
    }
    if out.is_empty() {
        return Err(AccelConfigError::Empty { flag });
    }
    Ok(out)
}

fn named(
    flag: &'static str,
    values: &[String],
) -> Result<Vec<(String, PathBuf)>, AccelConfigError> {
    let mut out: Vec<(String, PathBuf)> = Vec::new();
    for v in values {
        let bad = || AccelConfigError::Malformed {
            flag,
            value: v.clone(),
        };
        let (name, path) = v.split_once('=').ok_or_else(bad)?;
        let ok_name = !name.is_empty()
            && name.len() <= super::ops::NAME_MAX
            && name.bytes().all(|b| b.is_ascii_graphic() && b != b'=');
        if !ok_name || path.is_empty() {
            return Err(bad());
        }
        if out.iter().any(|(n, _)| n == name) {
            return Err(AccelConfigError::DuplicateName {
                flag,
                name: name.into(),
            });
        }
        out.push((name.into(), PathBuf::from(path)));
    }
    Ok(out)
}

impl AccelFlags {
    /// Validates the flags; `env` is `$VACCEL_PLUGINS`, used without `--accel`.
    pub fn into_config(self, env: Option<String>) -> Result<AccelConfig, AccelConfigError> {
        let plugins = match (&self.accel, env) {
            (Some(list), _) => Some(plugins("--accel", list)?),
            (None, Some(list)) => Some(plugins("VACCEL_PLUGINS", &list)?),
            (None, None) => None,
        };
        let models = named("accel-model", &self.models)?;
        let libs = named("accel-lib", &self.libs)?;
        if plugins.is_none() {
            if !models.is_empty() {
                return Err(AccelConfigError::NotEnabled {
                    flag: "accel-model",
                });
            }
            if !libs.is_empty() {
                return Err(AccelConfigError::NotEnabled { flag: "accel-lib" });
            }
        }
        let remote = match &plugins {
            Some(p) if p.contains(&PluginKind::Remote) => {
                let secs = self.remote_timeout.map(std::time::Duration::from_secs);
                Some(super::remote::RemoteConfig::resolve(
                    self.remote.as_deref(),
                    |k| std::env::var(k).ok(),
                    secs.unwrap_or(super::remote::DEFAULT_TIMEOUT),
                )?)
            }
            _ if self.remote.is_some() => return Err(AccelConfigError::RemoteUnused),
            _ => None,
        };
        Ok(AccelConfig {
            plugins,
            models,
            libs,
            remote,
        })
    }
}

//! IMAGE_CLASSIFY (vAccel op 3): read [op, BUFFER image]; write
//! [UCHAR_ARRAY imgname, UCHAR_ARRAY text]. The model is the session's
//! MODEL resource, an operator file (`--accel-model=NAME=PATH`) that
//! [`Classifiers::build`] loads and every classifying plugin turns into a
//! [`graph::Network`] once, before the guest runs.
//!
//! Outputs: `imgname` gets the top-1 class as `INDEX LABEL`; `text` gets
//! the top-5, one `INDEX PROBABILITY LABEL` line each. Both are cut to the
//! guest's buffer and NUL-padded.

pub mod cpu;
pub mod cuda;
pub mod graph;
pub mod image;
pub mod model;
pub mod opencl;

use super::plugins::{Plugin, PluginError};
use graph::Network;
use model::{Model, ModelError, SIDE};
use std::io::Write;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// A decoded IMAGE_CLASSIFY request.
#[derive(Debug)]
pub struct Classify<'m> {
    pub image: &'m [u8],
    pub imgname: &'m mut [u8],
    pub text: &'m mut [u8],
}

#[derive(Debug, Error)]
#[error("--accel-model {name}={}: {err}", path.display())]
pub struct LoadError {
    pub name: String,
    pub path: PathBuf,
    pub err: ModelError,
}

#[derive(Debug, Error)]
#[error("--accel-model {name}: plugin {plugin} cannot build the network: {err}")]
pub struct BuildError {
    pub name: String,
    pub plugin: &'static str,
    pub err: PluginError,
}

/// One classifier model: its labels and one network per plugin (by the
/// plugin's index; `None` for plugins that do not classify).
#[derive(Debug)]
pub struct Classifier {
    pub name: String,
    pub labels: Vec<String>,
    nets: Vec<Option<Box<dyn Network>>>,
}

/// The classifier models of one run, and the reusable buffers of the op.
#[derive(Debug, Default)]
pub struct Classifiers {
    models: Vec<Classifier>,
    input: Vec<f32>,
    logits: Vec<f32>,
}

/// Loading or building failed (operator errors: exit 1).
#[derive(Debug, Error)]
pub enum ClassifierError {
    #[error("{0}")]
    Load(#[from] LoadError),
    #[error("{0}")]
    Build(#[from] BuildError),
}

impl Classifiers {
    /// Loads every model file that is a safetensors classifier (other
    /// files stay opaque resources) and builds its network on each plugin
    /// that implements IMAGE_CLASSIFY.
    pub fn build(
        models: &[(String, PathBuf)],
        plugins: &mut [Box<dyn Plugin>],
    ) -> Result<Self, ClassifierError> {
        let mut out = Classifiers::default();
        for (name, path) in models.iter().filter(|(_, p)| model::sniff(p)) {
            let m = Model::load(path).map_err(|err| LoadError {
                name: name.clone(),
                path: path.clone(),
                err,
            })?;
            out.add(name, m, plugins)?;
        }
        out.input = vec![0.0; 3 * SIDE * SIDE];
        Ok(out)
    }

    /// Adds model `m` as classifier `name` (an operator's file, or a model
    /// an agent's client sent): its network on each plugin that implements
    /// IMAGE_CLASSIFY here.
    pub fn add(
        &mut self,
        name: &str,
        m: Model,
        plugins: &mut [Box<dyn Plugin>],
    ) -> Result<(), BuildError> {
        let mut nets = Vec::new();
        for p in plugins.iter_mut() {
            let here = !p.forwards(); // a remote plugin's model is the agent's
            nets.push(
                match here && p.implements(guest_abi::accel::op::IMAGE_CLASSIFY) {
                    true => Some(p.network(&m).map_err(|err| BuildError {
                        name: name.into(),
                        plugin: p.name(),
                        err,
                    })?),
                    false => None,
                },
            );
        }
        self.logits = vec![0.0; m.fc.cout.max(self.logits.len())];
        self.input.resize(3 * SIDE * SIDE, 0.0);
        self.models.push(Classifier {
            name: name.into(),
            labels: m.labels,
            nets,
        });
        Ok(())
    }

    /// Drops classifier `name` and its networks.
    pub fn remove(&mut self, name: &str) {
        self.models.retain(|c| c.name != name);
    }

    /// The classifier called `name`.
    pub fn by_name(&self, name: &str) -> Option<usize> {
        self.models.iter().position(|c| c.name == name)
    }

    /// The classifier of the operator's model `name`, if it is one.
    pub fn find(&self, path: &Path, models: &[(String, PathBuf)]) -> Option<usize> {
        self.by_name(&models.iter().find(|(_, p)| p == path)?.0)
    }

    /// Runs `req` with model `model` on plugin `plugin`.
    pub fn run(
        &mut self,
        model: usize,
        plugin: usize,
        req: &mut Classify<'_>,
    ) -> Result<(), PluginError> {
        let c = &mut self.models[model];
        let net = c.nets[plugin].as_mut().ok_or(PluginError::Unsupported)?;
        let img = image::decode(req.image)?;
        image::preprocess(&img, &mut self.input);
        drop(img);
        let logits = &mut self.logits[..c.labels.len()];
        net.logits(&self.input, logits)?;
        let top = top5(logits);
        let label = |i: usize| c.labels[i].as_str();
        fill(req.imgname, |w| {
            write!(w, "{} {}", top[0].0, label(top[0].0))
        });
        fill(req.text, |w| {
            top.iter()
                .try_for_each(|&(i, p)| writeln!(w, "{i} {p:.4} {}", label(i)))
        });
        Ok(())
    }

    /// The logits of a preprocessed input (tests, benches).
    pub fn logits(
        &mut self,
        model: usize,
        plugin: usize,
        input: &[f32],
        out: &mut [f32],
    ) -> Result<(), PluginError> {
        let net = self.models[model].nets[plugin]
            .as_mut()
            .ok_or(PluginError::Unsupported)?;
        net.logits(input, out)
    }
}

/// The five most probable classes (softmax) with their probabilities.
pub fn top5(logits: &[f32]) -> Vec<(usize, f32)> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| f64::from((l - max).exp())).sum();
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    idx.into_iter()
        .take(5)
        .map(|i| (i, (f64::from((logits[i] - max).exp()) / sum) as f32))
        .collect()
}

/// Writes into `buf` what fits, NUL-padding the rest.
fn fill(buf: &mut [u8], f: impl FnOnce(&mut Vec<u8>) -> std::io::Result<()>) {
    let mut v = Vec::with_capacity(256);
    let _ = f(&mut v);
    let n = v.len().min(buf.len());
    buf[..n].copy_from_slice(&v[..n]);
    buf[n..].fill(0);
}

#[cfg(test)]
mod tests;

//! The classifier model file: safetensors written by tools/make_model.py
//! (EfficientNet-Lite0, batch norm folded), checked tensor by tensor
//! against the architecture before any plugin sees it.
//!
//! Tensors: `stem`, `blocks.N.{expand,dw,project}`, `head` (each
//! `.weight` OIHW and `.bias`), `fc.weight` [classes, features] and
//! `fc.bias`. Metadata: `skiff.model`, `skiff.strides` (each block's
//! stride, JSON), `skiff.labels` (JSON list of class names).

use safetensors::{Dtype, SafeTensorError, SafeTensors};
use std::io::Read;
use std::path::Path;
use thiserror::Error;

/// Largest model file skiff reads.
pub const FILE_MAX: u64 = 512 << 20;
/// Most blocks a model may have.
const BLOCKS_MAX: usize = 64;

#[derive(Debug, Error)]
pub enum ModelError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("larger than {FILE_MAX} bytes")]
    TooLarge,
    #[error("not a safetensors file: {0}")]
    Format(#[from] SafeTensorError),
    #[error("metadata {key} is missing or malformed")]
    Metadata { key: &'static str },
    #[error("tensor {name}: missing, not f32, or shape {shape:?} does not fit the network")]
    Tensor { name: String, shape: Vec<usize> },
}

/// A convolution (or the FC layer: k = 1) with folded batch norm.
#[derive(Debug)]
pub struct Conv {
    /// OIHW (depthwise: C x 1 x k x k), row-major.
    pub w: Vec<f32>,
    pub b: Vec<f32>,
    pub cout: usize,
    /// Input channels per group (1 for depthwise).
    pub cin: usize,
    pub k: usize,
}

/// One MBConv block (no squeeze-excitation).
#[derive(Debug)]
pub struct Block {
    pub expand: Option<Conv>,
    pub dw: Conv,
    pub project: Conv,
    pub stride: usize,
    /// Stride 1 and as many output as input channels: add the input.
    pub residual: bool,
}

#[derive(Debug)]
pub struct Model {
    pub stem: Conv,
    pub blocks: Vec<Block>,
    pub head: Conv,
    pub fc: Conv,
    pub labels: Vec<String>,
}

/// The input the network takes: 3 x SIDE x SIDE.
pub const SIDE: usize = 224;

/// Whether `path` looks like a safetensors file (a classifier to build)
/// rather than an opaque model resource.
pub fn sniff(path: &Path) -> bool {
    let mut head = [0u8; 9];
    let ok = std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut head));
    ok.is_ok() && sniff_bytes(&head)
}

/// [`sniff`] on a file's first bytes (a model a client sent).
pub fn sniff_bytes(head: &[u8]) -> bool {
    let Some(head) = head.get(..9) else {
        return false;
    };
    let len = u64::from_le_bytes(head[..8].try_into().unwrap_or_default());
    head[8] == b'{' && len < (100 << 20)
}

fn meta<'a>(
    st: &'a Option<std::collections::HashMap<String, String>>,
    key: &'static str,
) -> Result<&'a str, ModelError> {
    st.as_ref()
        .and_then(|m| m.get(key))
        .map(String::as_str)
        .ok_or(ModelError::Metadata { key })
}

fn tensor(st: &SafeTensors<'_>, name: &str, shape: &[usize]) -> Result<Vec<f32>, ModelError> {
    let bad = |found: &[usize]| ModelError::Tensor {
        name: name.into(),
        shape: found.to_vec(),
    };
    let t = st.tensor(name).map_err(|_| bad(&[]))?;
    if t.dtype() != Dtype::F32 || t.shape() != shape {
        return Err(bad(t.shape()));
    }
    Ok(t.data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

/// The shape a tensor has in the file, for layers whose size it defines.
fn shape_of(st: &SafeTensors<'_>, name: &str) -> Result<Vec<usize>, ModelError> {
    st.tensor(name)
        .map(|t| t.shape().to_vec())
        .map_err(|_| ModelError::Tensor {
            name: name.into(),
            shape: vec![],
        })
}

/// Reads conv `name` with `cin` input channels per group; its output
/// channels and kernel come from the file (odd k up to 7).
fn conv(st: &SafeTensors<'_>, name: &str, cin: usize, depthwise: bool) -> Result<Conv, ModelError> {
    let wname = format!("{name}.weight");
    let s = shape_of(st, &wname)?;
    let (cout, k) = match s[..] {
        [o, _, k, _] if k % 2 == 1 && k <= 7 && o > 0 => (o, k),
        _ => {
            return Err(ModelError::Tensor {
                name: wname,
                shape: s,
            })
        }
    };
    if depthwise && cout != cin {
        return Err(ModelError::Tensor {
            name: wname,
            shape: s,
        });
    }
    let per_group = if depthwise { 1 } else { cin };
    let w = tensor(st, &wname, &[cout, per_group, k, k])?;
    let b = tensor(st, &format!("{name}.bias"), &[cout])?;
    Ok(Conv {
        w,
        b,
        cout,
        cin: per_group,
        k,
    })
}

impl Model {
    pub fn load(path: &Path) -> Result<Self, ModelError> {
        let f = std::fs::File::open(path)?;
        if f.metadata()?.len() > FILE_MAX {
            return Err(ModelError::TooLarge);
        }
        let mut bytes = Vec::new();
        f.take(FILE_MAX).read_to_end(&mut bytes)?;
        Self::parse(&bytes)
    }

    pub fn parse(bytes: &[u8]) -> Result<Self, ModelError> {
        let (_, md) = SafeTensors::read_metadata(bytes)?;
        let st = SafeTensors::deserialize(bytes)?;
        let m = md.metadata();
        meta(m, "skiff.model")?;
        let strides: Vec<usize> =
            serde_json::from_str(meta(m, "skiff.strides")?).map_err(|_| ModelError::Metadata {
                key: "skiff.strides",
            })?;
        let labels: Vec<String> =
            serde_json::from_str(meta(m, "skiff.labels")?).map_err(|_| ModelError::Metadata {
                key: "skiff.labels",
            })?;
        if strides.is_empty()
            || strides.len() > BLOCKS_MAX
            || strides.iter().any(|s| !(1..=2).contains(s))
        {
            return Err(ModelError::Metadata {
                key: "skiff.strides",
            });
        }
        let stem = conv(&st, "stem", 3, false)?;
        let mut c = stem.cout;
        let mut blocks = Vec::with_capacity(strides.len());
        for (i, &stride) in strides.iter().enumerate() {
            let expand = match st.tensor(&format!("blocks.{i}.expand.weight")) {
                Ok(_) => Some(conv(&st, &format!("blocks.{i}.expand"), c, false)?),
                Err(_) => None,
            };
            let ce = expand.as_ref().map_or(c, |e| e.cout);
            let dw = conv(&st, &format!("blocks.{i}.dw"), ce, true)?;
            let project = conv(&st, &format!("blocks.{i}.project"), ce, false)?;
            let one = |cv: &Conv, n: &str| {
                (cv.k == 1).then_some(()).ok_or(ModelError::Tensor {
                    name: format!("blocks.{i}.{n}.weight"),
                    shape: vec![cv.cout, cv.cin, cv.k, cv.k],
                })
            };
            if let Some(e) = &expand {
                one(e, "expand")?;
            }
            one(&project, "project")?;
            let residual = stride == 1 && project.cout == c;
            c = project.cout;
            blocks.push(Block {
                expand,
                dw,
                project,
                stride,
                residual,
            });
        }
        let head = conv(&st, "head", c, false)?;
        let classes = labels.len();
        let fc = Conv {
            w: tensor(&st, "fc.weight", &[classes, head.cout])?,
            b: tensor(&st, "fc.bias", &[classes])?,
            cout: classes,
            cin: head.cout,
            k: 1,
        };
        if classes == 0 || head.k != 1 {
            return Err(ModelError::Metadata {
                key: "skiff.labels",
            });
        }
        Ok(Model {
            stem,
            blocks,
            head,
            fc,
            labels,
        })
    }
}

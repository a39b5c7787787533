//! The guest's image bytes to the network's input, bounded: PNG or JPEG
//! only, the header's size checked against [`PIXELS_MAX`] before any
//! pixel is decoded, and the decoder's allocations capped.
//!
//! Preprocessing (tools/golden.py does the same, step for step): shorter
//! side to 256 by bilinear interpolation (half-pixel centres, no
//! antialiasing), centre crop 224, `(x - 127) / 128`, CHW RGB f32.

use super::model::SIDE;
use image::{ImageFormat, ImageReader, Limits, RgbImage};
use std::io::Cursor;
use thiserror::Error;

/// Most pixels an image may have (4096 x 4096).
pub const PIXELS_MAX: u64 = 1 << 24;
/// Most bytes the decoder may allocate.
pub const DECODE_ALLOC_MAX: u64 = 192 << 20;
/// The shorter side after resizing.
const SHORT: u32 = 256;

#[derive(Debug, Error)]
pub enum ImageError {
    #[error("not a PNG or JPEG image")]
    Format,
    #[error("{width}x{height} pixels: more than {PIXELS_MAX}")]
    TooLarge { width: u32, height: u32 },
    #[error("cannot decode: {0}")]
    Decode(#[from] image::ImageError),
}

fn reader(bytes: &[u8]) -> Result<ImageReader<Cursor<&[u8]>>, ImageError> {
    let mut r = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|_| ImageError::Format)?;
    if !matches!(r.format(), Some(ImageFormat::Png | ImageFormat::Jpeg)) {
        return Err(ImageError::Format);
    }
    let mut limits = Limits::default();
    limits.max_alloc = Some(DECODE_ALLOC_MAX);
    r.limits(limits);
    Ok(r)
}

/// Decodes `bytes` to 8-bit RGB.
pub fn decode(bytes: &[u8]) -> Result<RgbImage, ImageError> {
    let (width, height) = reader(bytes)?.into_dimensions()?;
    if u64::from(width) * u64::from(height) > PIXELS_MAX || width == 0 || height == 0 {
        return Err(ImageError::TooLarge { width, height });
    }
    Ok(reader(bytes)?.decode()?.into_rgb8())
}

/// Source index pairs and weights of one axis of the resized crop.
fn axis(n_in: u32, n_out: u32, off: u32) -> impl Iterator<Item = (usize, usize, f32)> {
    let scale = (f64::from(n_in) / f64::from(n_out)) as f32;
    let last = (n_in - 1) as f32;
    (0..SIDE as u32).map(move |i| {
        let s = (((i + off) as f32 + 0.5) * scale - 0.5).clamp(0.0, last);
        let i0 = s.floor();
        let i1 = (i0 + 1.0).min(last);
        (i0 as usize, i1 as usize, s - i0)
    })
}

/// Resizes and crops `img` into `out` (3 x 224 x 224, CHW).
pub fn preprocess(img: &RgbImage, out: &mut [f32]) {
    let (w, h) = img.dimensions();
    let (nh, nw) = if h <= w {
        (
            SHORT,
            ((u64::from(w) * u64::from(SHORT) + u64::from(h / 2)) / u64::from(h)) as u32,
        )
    } else {
        (
            ((u64::from(h) * u64::from(SHORT) + u64::from(w / 2)) / u64::from(w)) as u32,
            SHORT,
        )
    };
    let crop = SIDE as u32;
    let (top, left) = ((nh.max(crop) - crop) / 2, (nw.max(crop) - crop) / 2);
    let xs: Vec<_> = axis(w, nw, left).collect();
    let px = |x: usize, y: usize, c: usize| f32::from(img.as_raw()[(y * w as usize + x) * 3 + c]);
    let plane = SIDE * SIDE;
    for (oy, (y0, y1, fy)) in axis(h, nh, top).enumerate() {
        for (ox, &(x0, x1, fx)) in xs.iter().enumerate() {
            for c in 0..3 {
                let r0 = px(x0, y0, c) * (1.0 - fx) + px(x1, y0, c) * fx;
                let r1 = px(x0, y1, c) * (1.0 - fx) + px(x1, y1, c) * fx;
                let v = r0 * (1.0 - fy) + r1 * fy;
                out[c * plane + oy * SIDE + ox] = (v - 127.0) / 128.0;
            }
        }
    }
}

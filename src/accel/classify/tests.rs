use super::image::{decode, preprocess, ImageError};
use super::model::{Model, ModelError, SIDE};
use super::{fill, top5};
use ::image::{ImageFormat, RgbImage};

fn png(img: &RgbImage) -> Vec<u8> {
    let mut v = std::io::Cursor::new(Vec::new());
    img.write_to(&mut v, ImageFormat::Png).unwrap();
    v.into_inner()
}

#[test]
fn a_uniform_image_preprocesses_to_a_constant() {
    // 300 x 100: the shorter side becomes 256 (768 x 256), then the crop.
    let img = RgbImage::from_pixel(300, 100, ::image::Rgb([255, 127, 0]));
    let decoded = decode(&png(&img)).unwrap();
    let mut out = vec![0.0; 3 * SIDE * SIDE];
    preprocess(&decoded, &mut out);
    let plane = SIDE * SIDE;
    assert!(out[..plane].iter().all(|&v| v == 1.0));
    assert!(out[plane..2 * plane].iter().all(|&v| v == 0.0));
    assert!(out[2 * plane..].iter().all(|&v| v == -127.0 / 128.0));
}

#[test]
fn non_images_and_huge_headers_are_refused_before_decoding() {
    assert!(matches!(decode(b"GIF89a...."), Err(ImageError::Format)));
    assert!(matches!(decode(b""), Err(ImageError::Format)));
    let mut big = png(&RgbImage::new(1, 1));
    // IHDR width and height live at bytes 16..24; the CRC no longer
    // matches, which the decoder may notice first: either way, refused.
    big[16..20].copy_from_slice(&20000u32.to_be_bytes());
    big[20..24].copy_from_slice(&20000u32.to_be_bytes());
    assert!(decode(&big).is_err());
}

#[test]
fn top5_is_sorted_and_sums_below_one() {
    let mut logits = vec![0.0f32; 1000];
    for (i, l) in [(3, 5.0), (7, 4.0), (1, 3.0), (999, 2.0), (500, 1.0)] {
        logits[i] = l;
    }
    let t = top5(&logits);
    assert_eq!(
        t.iter().map(|x| x.0).collect::<Vec<_>>(),
        [3, 7, 1, 999, 500]
    );
    assert!(t.windows(2).all(|w| w[0].1 > w[1].1));
    assert!(t.iter().map(|x| x.1).sum::<f32>() < 1.0);
}

#[test]
fn outputs_are_cut_to_the_guest_buffer_and_nul_padded() {
    let mut small = [0xffu8; 4];
    fill(&mut small, |w| {
        std::io::Write::write_all(w, b"967 espresso")
    });
    assert_eq!(&small, b"967 ");
    let mut big = [0xffu8; 16];
    fill(&mut big, |w| std::io::Write::write_all(w, b"967 espresso"));
    assert_eq!(&big, b"967 espresso\0\0\0\0");
}

#[test]
fn files_that_are_not_models_are_refused_by_type() {
    assert!(matches!(
        Model::parse(b"not safetensors"),
        Err(ModelError::Format(_))
    ));
    // A valid safetensors file without skiff's metadata.
    let header = br#"{"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
    let mut f = (header.len() as u64).to_le_bytes().to_vec();
    f.extend_from_slice(header);
    f.extend_from_slice(&1.0f32.to_le_bytes());
    assert!(matches!(
        Model::parse(&f),
        Err(ModelError::Metadata { key: "skiff.model" })
    ));
}

/// A tiny model with every tensor skiff's network needs (a 4-channel
/// stem, one block, an 8-channel head, 2 classes): (name, shape) in file
/// order.
fn tiny_model() -> Vec<u8> {
    let tensors: [(&str, &[usize]); 8] = [
        ("stem.weight", &[4, 3, 3, 3]),
        ("stem.bias", &[4]),
        ("blocks.0.dw.weight", &[4, 1, 3, 3]),
        ("blocks.0.dw.bias", &[4]),
        ("blocks.0.project.weight", &[4, 4, 1, 1]),
        ("blocks.0.project.bias", &[4]),
        ("head.weight", &[8, 4, 1, 1]),
        ("head.bias", &[8]),
    ];
    let fc: [(&str, &[usize]); 2] = [("fc.weight", &[2, 8]), ("fc.bias", &[2])];
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, shape) in tensors.iter().chain(&fc) {
        let n: usize = shape.iter().product();
        let start = data.len();
        for i in 0..n {
            data.extend_from_slice(&((i % 7) as f32 * 0.01).to_le_bytes());
        }
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    header.insert(
        "__metadata__".into(),
        serde_json::json!({"skiff.model": "tiny", "skiff.strides": "[1]", "skiff.labels": "[\"a\",\"b\"]"}),
    );
    let h = serde_json::to_vec(&header).unwrap();
    let mut f = (h.len() as u64).to_le_bytes().to_vec();
    f.extend(h);
    f.extend(data);
    f
}

/// A model a client sends as bytes gets the file's checks: the whole one
/// parses, every truncation of it and every single flipped header byte is
/// refused or parsed, never a panic.
#[test]
fn a_model_blob_cut_or_flipped_anywhere_is_refused_cleanly() {
    let f = tiny_model();
    assert!(super::model::sniff_bytes(&f));
    let m = Model::parse(&f).unwrap();
    assert_eq!((m.labels.len(), m.blocks.len(), m.head.cout), (2, 1, 8));
    for n in 0..f.len() {
        assert!(Model::parse(&f[..n]).is_err(), "cut at {n}");
    }
    let header = 8 + u64::from_le_bytes(f[..8].try_into().unwrap()) as usize;
    for i in 0..header {
        let mut g = f.clone();
        g[i] ^= 0x5a;
        let _ = Model::parse(&g);
    }
}

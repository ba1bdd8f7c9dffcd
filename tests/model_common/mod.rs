//! Helpers shared by the model tests.
#![allow(dead_code)]
use std::path::{Path, PathBuf};

use candle_core::Tensor;

/// The committed tiny Qwen2-VL checkpoint.
pub fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qwen2vl_tiny")
}

/// A fresh scratch folder under the system temp dir.
pub fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vlm3d-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Copies the fixture checkpoint files (not the reference dumps) into `dst`.
pub fn copy_checkpoint(dst: &Path) {
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "preprocessor_config.json",
    ] {
        std::fs::copy(fixture().join(f), dst.join(f)).unwrap();
    }
}

/// Largest absolute value of a tensor.
pub fn max_abs(a: &Tensor) -> f32 {
    a.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// max |a - b| over all elements.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    max_abs(&(a - b).unwrap())
}

/// A fixture image by name.
pub fn image(name: &str) -> image::RgbImage {
    image::open(fixture().join("images").join(format!("{name}.png")))
        .unwrap()
        .to_rgb8()
}

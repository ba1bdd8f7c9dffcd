//! `vlm3d detect` reads its `--image` files with the strict decoder: a truncated JPEG is an input error naming
//! the file, never a half-grey picture that still yields boxes. The pre-processor's resize matches PIL's
//! bicubic, and a batch of images processes as each alone.
mod common;

use std::path::Path;
use std::process::Command;

use common::{fixture, run, scratch};

/// `vlm3d detect` with the tiny fixture model on one image.
fn detect(image: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vlm3d"));
    c.arg("detect")
        .arg("--model")
        .arg(fixture())
        .arg("--image")
        .arg(image)
        .args(["--prompt", "car", "--device", "cpu"]);
    c
}

#[test]
fn detect_rejects_a_truncated_jpeg_and_accepts_the_whole_one() {
    let dir = scratch("images-cli");
    let img = image::RgbImage::from_fn(112, 84, |x, y| {
        let block = ((x / 8 + y / 8) % 2) as u8 * 90;
        image::Rgb([(x * 2) as u8 ^ block, (y * 3) as u8, ((x + y) % 256) as u8])
    });
    let whole = dir.join("whole.jpg");
    img.save_with_format(&whole, image::ImageFormat::Jpeg)
        .unwrap();
    let bytes = std::fs::read(&whole).unwrap();
    assert!(bytes.len() > 1000, "{}", bytes.len());

    for (name, len) in [("first1000.jpg", 1000), ("no_eoi.jpg", bytes.len() - 2)] {
        let cut = dir.join(name);
        std::fs::write(&cut, &bytes[..len]).unwrap();
        let out = detect(&cut).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{name} was accepted:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(
            stderr.contains("truncated") && stderr.contains(name),
            "{name}: {stderr}"
        );
    }

    let out = run(&mut detect(&whole)).unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(json.is_object() || json.is_array(), "{json}");
    std::fs::remove_dir_all(dir).ok();
}

/// Largest and mean |difference| of two RGB images of one size, in 8-bit levels.
fn level_diff(a: &image::RgbImage, b: &image::RgbImage) -> (u8, f64) {
    assert_eq!(a.dimensions(), b.dimensions());
    let d: Vec<u8> = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| x.abs_diff(*y))
        .collect();
    let mean = d.iter().map(|&v| v as f64).sum::<f64>() / d.len() as f64;
    (d.iter().copied().max().unwrap_or(0), mean)
}

/// The pre-processor's resize against PIL's BICUBIC (the reference image processor's `resample: 3`), on a
/// fixture made by PIL itself (`scripts/make_resize_fixture.py`): a 3.6× and a 1.8× downscale and an upscale.
#[test]
fn bicubic_resize_matches_pils_bicubic() {
    use vlm3d::model::qwen2vl::preprocess::resize_bicubic;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/resize");
    let src = image::open(dir.join("source_400x225.png"))
        .unwrap()
        .into_rgb8();
    for (w, h) in [(112u32, 56u32), (224, 126), (560, 308)] {
        let pil = image::open(dir.join(format!("pil_bicubic_{w}x{h}.png")))
            .unwrap()
            .into_rgb8();
        let ours = resize_bicubic(&src, h as usize, w as usize).unwrap();
        let (max, mean) = level_diff(&ours, &pil);
        eprintln!("400x225 -> {w}x{h}: max |diff| {max} levels, mean {mean:.4}");
        // Fixed-point rounding may differ by one level; a wrong filter, support or pass order is far off
        // (the `image` crate's Catmull-Rom, vertical pass first in f32: 4, 7 and 20 levels, mean 0.12–0.18).
        assert!(max <= 1 && mean < 0.02, "{w}x{h}: max {max}, mean {mean}");
    }
    // Already at the target size: the very same pixels, no copy.
    assert!(matches!(
        resize_bicubic(&src, 225, 400).unwrap(),
        std::borrow::Cow::Borrowed(_)
    ));
}

/// Images of different sizes in one call give, row for row, what each gives alone (each image writes its own
/// part of the one buffer, in parallel), with the grids in order.
#[test]
fn several_images_process_as_each_alone() {
    use candle_core::Device;
    use vlm3d::model::qwen2vl::{ImageProcessor, PreprocessorConfig};
    let proc = ImageProcessor::new(PreprocessorConfig {
        max_pixels: 112 * 84,
        ..PreprocessorConfig::default()
    });
    let images: Vec<image::RgbImage> = [(300u32, 170u32), (56, 56), (120, 90), (84, 140)]
        .iter()
        .enumerate()
        .map(|(k, &(w, h))| {
            image::RgbImage::from_fn(w, h, |x, y| {
                image::Rgb([
                    (x * 7 + k as u32 * 31) as u8,
                    (y * 5) as u8,
                    ((x ^ y) + k as u32) as u8,
                ])
            })
        })
        .collect();
    let all = proc.process(&images, &Device::Cpu).unwrap();
    let mut rows = Vec::new();
    let mut grids = Vec::new();
    for img in &images {
        let one = proc
            .process(std::slice::from_ref(img), &Device::Cpu)
            .unwrap();
        rows.extend(
            one.pixel_values
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
        );
        grids.extend(one.grids);
    }
    assert_eq!(all.grids, grids);
    assert_eq!(
        all.pixel_values
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap(),
        rows
    );
    assert_eq!(all.pixel_values.dims()[1], 3 * 2 * 14 * 14);
}

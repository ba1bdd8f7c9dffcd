//! `vlm3d detect` reads its `--image` files with the strict decoder: a truncated JPEG is an input error naming
//! the file, never a half-grey picture that still yields boxes.
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

//! Checkpoint layouts (flat 4.x and nested 5.x config, both preprocessor shapes, sharded weights, tied LM head),
//! the resize path of the image processor, and clear errors on bad input.
mod common;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use common::*;
use vlm3d::model::qwen2vl::preprocess::smart_resize;
use vlm3d::model::qwen2vl::{Config, Pipeline, PreprocessorConfig, Qwen2VL};
use vlm3d::Error;

const FLAT_2B: &str = r#"{
  "architectures": ["Qwen2VLForConditionalGeneration"], "model_type": "qwen2_vl",
  "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28, "num_attention_heads": 12,
  "num_key_value_heads": 2, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "vocab_size": 151936,
  "tie_word_embeddings": true, "vision_start_token_id": 151652, "vision_end_token_id": 151653,
  "image_token_id": 151655, "eos_token_id": 151645,
  "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
  "vision_config": {"depth": 32, "embed_dim": 1280, "mlp_ratio": 4, "num_heads": 16, "in_chans": 3,
    "hidden_size": 1536, "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2}
}"#;

#[test]
fn flat_and_nested_configs() {
    let c = Config::from_json_str(FLAT_2B, Path::new("flat.json")).unwrap();
    assert_eq!(c.text.hidden_size, 1536);
    assert_eq!(c.text.num_key_value_heads, 2);
    assert_eq!(c.text.mrope_section, [16, 24, 24]);
    assert_eq!(c.text.rope_theta, 1e6);
    assert!(c.text.tie_word_embeddings);
    assert_eq!(c.vision.embed_dim, 1280);
    assert_eq!(c.vision.hidden_size, 1536);
    assert_eq!(c.image_token_id, 151655);
    assert_eq!(c.eos_token_ids, vec![151645]);
    let mut bench = vlm3d::bench::forward::BenchModel::Qwen2Vl2b.config();
    bench.eos_token_ids = vec![151645];
    assert_eq!(c, bench, "the bench's 2B dimensions are the published ones");
    let n = Config::from_file(&fixture().join("config.json")).unwrap();
    assert_eq!(n.text.hidden_size, 64);
    assert_eq!(n.text.mrope_section, [1, 4, 3]);
    assert_eq!(n.text.rope_theta, 10000.0);
    assert_eq!(n.vision.depth, 2);
}

#[test]
fn preprocessor_shapes() {
    let flat = r#"{"min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "merge_size": 2,
        "temporal_patch_size": 2, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25]}"#;
    let f = PreprocessorConfig::from_json_str(flat, Path::new("p.json")).unwrap();
    assert_eq!((f.min_pixels, f.max_pixels), (3136, 12845056));
    assert_eq!(f.image_mean, [0.5; 3]);
    let nested =
        PreprocessorConfig::from_file(&fixture().join("preprocessor_config.json")).unwrap();
    assert_eq!((nested.min_pixels, nested.max_pixels), (3136, 37632));
}

#[test]
fn unknown_architecture_is_rejected() {
    let bad = FLAT_2B
        .replace("Qwen2VLForConditionalGeneration", "LlamaForCausalLM")
        .replace("qwen2_vl", "llama");
    let e = Config::from_json_str(&bad, Path::new("c.json")).unwrap_err();
    assert!(e.to_string().contains("unsupported architecture"), "{e}");
    let bad = FLAT_2B.replace("[16, 24, 24]", "[16, 24, 20]");
    assert!(Config::from_json_str(&bad, Path::new("c.json"))
        .unwrap_err()
        .to_string()
        .contains("mrope_section"));
}

fn hidden_of(dir: &Path) -> Tensor {
    let m = Qwen2VL::load(dir, &Device::Cpu, DType::F32).unwrap();
    let ids: Vec<u32> = (10..40).collect();
    m.forward(&ids, None).unwrap().0
}

#[test]
fn sharded_checkpoint_loads_the_same() {
    let dir = scratch("sharded");
    std::fs::copy(fixture().join("config.json"), dir.join("config.json")).unwrap();
    let all =
        candle_core::safetensors::load(fixture().join("model.safetensors"), &Device::Cpu).unwrap();
    assert!(!all.contains_key("lm_head.weight"), "fixture is tied");
    let (mut a, mut b) = (HashMap::new(), HashMap::new());
    let mut map = serde_json::Map::new();
    for (k, v) in all {
        let shard = if k.starts_with("visual") {
            "model-00001-of-00002.safetensors"
        } else {
            "model-00002-of-00002.safetensors"
        };
        map.insert(k.clone(), shard.into());
        if k.starts_with("visual") {
            a.insert(k, v)
        } else {
            b.insert(k, v)
        };
    }
    candle_core::safetensors::save(&a, dir.join("model-00001-of-00002.safetensors")).unwrap();
    candle_core::safetensors::save(&b, dir.join("model-00002-of-00002.safetensors")).unwrap();
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    let d = max_abs_diff(&hidden_of(&dir), &hidden_of(&fixture()));
    assert_eq!(d, 0.0);
    // A missing shard is a clear error.
    std::fs::remove_file(dir.join("model-00001-of-00002.safetensors")).unwrap();
    let e = Qwen2VL::load(&dir, &Device::Cpu, DType::F32).err().unwrap();
    assert!(e.to_string().contains("missing"), "{e}");
}

#[test]
fn resize_matches_pil_within_tolerance() {
    // The reference processor's PIL bicubic vs ours (the same filter and pass order, SIMD fixed point): the grid
    // must be identical and pixels within one 8-bit intensity level (≈ 0.015 in normalized units).
    let pipe = Pipeline::load(&fixture(), &Device::Cpu, DType::F32).unwrap();
    let r = candle_core::safetensors::load(fixture().join("reference.safetensors"), &Device::Cpu)
        .unwrap();
    for n in ["resize_a", "resize_b", "resize_c"] {
        let p = pipe.processor.process(&[image(n)], &Device::Cpu).unwrap();
        let g = &p.grids[0];
        let refg = r[&format!("{n}.image_grid_thw")]
            .flatten_all()
            .unwrap()
            .to_vec1::<i64>()
            .unwrap();
        assert_eq!(vec![g.t as i64, g.h as i64, g.w as i64], refg, "{n}: grid");
        let rp = &r[&format!("{n}.pixel_values")];
        let max = max_abs_diff(&p.pixel_values, rp);
        let mean = (&p.pixel_values - rp)
            .unwrap()
            .abs()
            .unwrap()
            .mean_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        println!("{n}: grid {g:?} max|Δ| {max:.4} mean|Δ| {mean:.5}");
        // At most one 8-bit intensity level (1/255/std ≤ 0.0151) anywhere, and rarely that.
        assert!(
            mean < 0.005 && max < 0.016,
            "{n}: resize differs too much (mean {mean}, max {max})"
        );
    }
}

#[test]
fn smart_resize_follows_the_reference() {
    // round-half-to-even: 42/28 = 1.5 → 2, 70/28 = 2.5 → 2.
    assert_eq!(smart_resize(42, 70, 28, 0, 1 << 30).unwrap(), (56, 56));
    assert_eq!(
        smart_resize(252, 448, 28, 3136, 12845056).unwrap(),
        (252, 448)
    );
    let (h, w) = smart_resize(1000, 2000, 28, 3136, 28 * 28 * 100).unwrap();
    assert!(h * w <= 28 * 28 * 100 && h % 28 == 0 && w % 28 == 0);
    let (h, w) = smart_resize(10, 20, 28, 3136, 1 << 30).unwrap();
    assert!(h * w >= 3136);
}

fn is_invalid(e: &Error) -> bool {
    matches!(e, Error::Invalid { .. })
}

#[test]
fn bad_images_give_errors() {
    let pipe = Pipeline::load(&fixture(), &Device::Cpu, DType::F32).unwrap();
    let e = pipe
        .processor
        .process(&[image::RgbImage::new(0, 0)], &Device::Cpu)
        .unwrap_err();
    assert!(is_invalid(&e) && e.to_string().contains("no pixels"), "{e}");
    let e = pipe
        .processor
        .process(&[image::RgbImage::new(100_000, 10)], &Device::Cpu)
        .unwrap_err();
    assert!(
        is_invalid(&e) && e.to_string().contains("aspect ratio"),
        "{e}"
    );
    let e = pipe.processor.process(&[], &Device::Cpu).unwrap_err();
    assert!(is_invalid(&e), "{e}");
    let e = pipe
        .generate_text(&[image::RgbImage::new(0, 0)], "hello", 4)
        .unwrap_err();
    assert!(is_invalid(&e), "{e}");
}

#[test]
fn empty_prompt_is_an_error() {
    let pipe = Pipeline::load(&fixture(), &Device::Cpu, DType::F32).unwrap();
    for p in ["", "   \n"] {
        let e = pipe.generate_text(&[image("wide")], p, 4).unwrap_err();
        assert!(
            is_invalid(&e) && e.to_string().contains("empty prompt"),
            "{e}"
        );
    }
    let det = vlm3d::model::detector::Detector::new(pipe, Default::default()).unwrap();
    let e = det.detect(&[image("wide")], &cameras(1), "").unwrap_err();
    assert!(e.to_string().contains("empty prompt"), "{e}");
}

#[test]
fn corrupt_safetensors_is_an_error() {
    let dir = scratch("corrupt");
    copy_checkpoint(&dir);
    let path = dir.join("model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    // Garbage header length.
    bytes[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();
    let e = Pipeline::load(&dir, &Device::Cpu, DType::F32)
        .err()
        .unwrap();
    assert!(
        matches!(e, Error::Format { .. }) && e.to_string().contains("safetensors"),
        "{e}"
    );
    // Truncated file.
    let good = std::fs::read(fixture().join("model.safetensors")).unwrap();
    std::fs::write(&path, &good[..good.len() / 2]).unwrap();
    let e = Pipeline::load(&dir, &Device::Cpu, DType::F32)
        .err()
        .unwrap();
    assert!(matches!(e, Error::Format { .. }), "{e}");
}

#[test]
fn config_weight_mismatch_is_an_error() {
    let dir = scratch("mismatch");
    copy_checkpoint(&dir);
    let cfg = std::fs::read_to_string(dir.join("config.json")).unwrap();
    std::fs::write(
        dir.join("config.json"),
        cfg.replace("\"intermediate_size\": 128", "\"intermediate_size\": 96"),
    )
    .unwrap();
    let e = Pipeline::load(&dir, &Device::Cpu, DType::F32)
        .err()
        .unwrap();
    let s = e.to_string();
    assert!(
        matches!(e, Error::Format { .. }) && s.contains("mlp") && s.contains("shape"),
        "{s}"
    );
    std::fs::write(
        dir.join("config.json"),
        cfg.replace("\"num_hidden_layers\": 2", "\"num_hidden_layers\": 3"),
    )
    .unwrap();
    let e = Pipeline::load(&dir, &Device::Cpu, DType::F32)
        .err()
        .unwrap();
    assert!(
        e.to_string().contains("model.layers.2") && e.to_string().contains("missing"),
        "{e}"
    );
    std::fs::remove_file(dir.join("config.json")).unwrap();
    let e = Pipeline::load(&dir, &Device::Cpu, DType::F32)
        .err()
        .unwrap();
    assert!(e.to_string().contains("config.json"), "{e}");
}

//! Parity of the candle Qwen2-VL with Hugging Face transformers on the committed tiny fixture
//! (`scripts/make_qwen2vl_fixture.py` made it): pixel values, ids, M-RoPE positions, hidden states, logits and
//! greedy tokens, for two images of different shapes, six camera views, and a text-only prompt.
use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use vlm3d::model::qwen2vl::{mrope_positions, Config, GridThw, Pipeline, ProcessedImages, Qwen2VL};

const TOL: f32 = 1e-4;

mod common;
use common::{fixture, max_abs_diff};

fn reference() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture().join("reference.safetensors"), &Device::Cpu).unwrap()
}

fn ints(t: &Tensor) -> Vec<i64> {
    t.flatten_all().unwrap().to_vec1::<i64>().unwrap()
}

fn images(names: &[&str]) -> Vec<image::RgbImage> {
    names
        .iter()
        .map(|n| {
            image::open(fixture().join("images").join(format!("{n}.png")))
                .unwrap()
                .to_rgb8()
        })
        .collect()
}

fn cases() -> Vec<(&'static str, Vec<String>, &'static str)> {
    vec![
        (
            "two_images",
            vec!["wide".into(), "tall".into()],
            "Detect every pedestrian in the images and give their 3D boxes.",
        ),
        (
            "six_views",
            (0..6).map(|v| format!("view{v}")).collect(),
            "Find the car parked on the left side of the road.",
        ),
        (
            "text_only",
            vec![],
            "Where is the cyclist? Describe the scene in front of the ego vehicle.",
        ),
    ]
}

struct Prepared {
    ids: Vec<u32>,
    images: Option<ProcessedImages>,
}

fn prepare(
    pipe: &Pipeline,
    r: &HashMap<String, Tensor>,
    case: &str,
    names: &[String],
    prompt: &str,
) -> Prepared {
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let processed = if names.is_empty() {
        None
    } else {
        let p = pipe
            .processor
            .process(&images(&names), &Device::Cpu)
            .unwrap();
        let d = max_abs_diff(&p.pixel_values, &r[&format!("{case}.pixel_values")]);
        println!("{case}: pixel_values max|Δ| = {d:.3e}");
        assert!(d <= 1e-5, "{case}: pixel values differ by {d}");
        let grid: Vec<i64> = p
            .grids
            .iter()
            .flat_map(|g| [g.t as i64, g.h as i64, g.w as i64])
            .collect();
        assert_eq!(
            grid,
            ints(&r[&format!("{case}.image_grid_thw")]),
            "{case}: image_grid_thw"
        );
        Some(p)
    };
    let grids: Vec<GridThw> = processed
        .as_ref()
        .map(|p| p.grids.clone())
        .unwrap_or_default();
    let ids = pipe.chat_ids(&grids, prompt).unwrap();
    let ref_ids: Vec<u32> = ints(&r[&format!("{case}.input_ids")])
        .into_iter()
        .map(|x| x as u32)
        .collect();
    assert_eq!(ids, ref_ids, "{case}: input ids");
    Prepared {
        ids,
        images: processed,
    }
}

#[test]
fn parity_with_transformers() {
    let pipe = Pipeline::load(&fixture(), &Device::Cpu, DType::F32).unwrap();
    let r = reference();
    for (case, names, prompt) in cases() {
        let p = prepare(&pipe, &r, case, &names, prompt);
        let (hidden, pos) = pipe.model.forward(&p.ids, p.images.as_ref()).unwrap();
        let ref_pos = ints(&r[&format!("{case}.position_ids")]);
        let ours: Vec<i64> = pos.iter().flatten().copied().collect();
        assert_eq!(ours, ref_pos, "{case}: M-RoPE position ids");
        let dh = max_abs_diff(&hidden.squeeze(0).unwrap(), &r[&format!("{case}.hidden")]);
        let logits = pipe.model.logits(&hidden).unwrap().squeeze(0).unwrap();
        let dl = max_abs_diff(&logits, &r[&format!("{case}.logits")]);
        println!(
            "{case}: seq {} hidden max|Δ| = {dh:.3e}, logits max|Δ| = {dl:.3e}",
            p.ids.len()
        );
        assert!(
            dh <= TOL && dl <= TOL,
            "{case}: hidden {dh}, logits {dl} exceed {TOL}"
        );
        let ref_greedy = ints(&r[&format!("{case}.greedy")]);
        let greedy = pipe
            .model
            .generate(&p.ids, p.images.as_ref(), ref_greedy.len(), &[])
            .unwrap();
        let greedy: Vec<i64> = greedy.into_iter().map(i64::from).collect();
        assert_eq!(greedy, ref_greedy, "{case}: greedy tokens");
    }
}

/// A model whose M-RoPE sections are permuted must miss the reference by far more than the tolerance, so the
/// parity test above would catch a wrong split.
#[test]
fn wrong_mrope_section_is_detected() {
    let dir = fixture();
    let pipe = Pipeline::load(&dir, &Device::Cpu, DType::F32).unwrap();
    let r = reference();
    let (case, names, prompt) = cases().into_iter().nth(1).unwrap();
    let p = prepare(&pipe, &r, case, &names, prompt);
    let mut cfg = Config::from_file(&dir.join("config.json")).unwrap();
    let s = cfg.text.mrope_section;
    assert!(
        s[0] != s[1] && s[1] != s[2],
        "fixture sections must be unequal"
    );
    cfg.text.mrope_section = [s[2], s[1], s[0]];
    let files = vlm3d::model::qwen2vl::weights::safetensors_files(&dir).unwrap();
    let vb = vlm3d::model::qwen2vl::weights::var_builder(&files, DType::F32, &Device::Cpu).unwrap();
    let bad = Qwen2VL::from_var_builder(cfg, vb, &dir).unwrap();
    let (hidden, _) = bad.forward(&p.ids, p.images.as_ref()).unwrap();
    let d = max_abs_diff(&hidden.squeeze(0).unwrap(), &r[&format!("{case}.hidden")]);
    println!("permuted sections: hidden max|Δ| = {d:.3e}");
    assert!(d > 100.0 * TOL, "a wrong M-RoPE split went unnoticed ({d})");
}

/// Patches in plain raster order (no 2×2 merge grouping) must miss the reference too.
#[test]
fn wrong_merge_order_is_detected() {
    let pipe = Pipeline::load(&fixture(), &Device::Cpu, DType::F32).unwrap();
    let r = reference();
    let (case, names, prompt) = cases().into_iter().next().unwrap();
    let p = prepare(&pipe, &r, case, &names, prompt);
    let im = p.images.unwrap();
    // Reorder each image's rows from merge order (bh, bw, mh, mw) to raster order (y, x).
    let mut idx = Vec::new();
    let mut base = 0u32;
    for g in &im.grids {
        let mut order = vec![0u32; g.h * g.w];
        let mut k = 0;
        for bh in 0..g.h / 2 {
            for bw in 0..g.w / 2 {
                for mh in 0..2 {
                    for mw in 0..2 {
                        order[(bh * 2 + mh) * g.w + bw * 2 + mw] = base + k;
                        k += 1;
                    }
                }
            }
        }
        idx.extend(order);
        base += (g.h * g.w) as u32;
    }
    let pv = im
        .pixel_values
        .index_select(&Tensor::new(idx.as_slice(), &Device::Cpu).unwrap(), 0)
        .unwrap();
    let raster = ProcessedImages {
        pixel_values: pv,
        grids: im.grids.clone(),
    };
    let (hidden, _) = pipe.model.forward(&p.ids, Some(&raster)).unwrap();
    let d = max_abs_diff(&hidden.squeeze(0).unwrap(), &r[&format!("{case}.hidden")]);
    println!("raster order: hidden max|Δ| = {d:.3e}");
    assert!(d > 100.0 * TOL, "a wrong merge order went unnoticed ({d})");
}

#[test]
fn mrope_positions_follow_the_rule() {
    // text(3) image(t1, 4x6 patches → 2x3 merged) text(2)
    let img = 9u32;
    let ids = [1, 2, 3, img, img, img, img, img, img, 4, 5];
    let (pos, next) = mrope_positions(&ids, &[GridThw { t: 1, h: 4, w: 6 }], img, 2, 0).unwrap();
    assert_eq!(pos[0], vec![0, 1, 2, 3, 3, 3, 3, 3, 3, 6, 7]);
    assert_eq!(pos[1], vec![0, 1, 2, 3, 3, 3, 4, 4, 4, 6, 7]);
    assert_eq!(pos[2], vec![0, 1, 2, 3, 4, 5, 3, 4, 5, 6, 7]);
    assert_eq!(next, 8);
    assert!(mrope_positions(&ids, &[], img, 2, 0).is_err());
}

/// Half precision runs the same code path (CPU supports bf16 and f16) and stays close to f32.
#[test]
fn half_precision_runs_and_stays_close() {
    let r = reference();
    let (case, names, prompt) = cases().into_iter().next().unwrap();
    let f32_pipe = Pipeline::load(&fixture(), &Device::Cpu, DType::F32).unwrap();
    let p = prepare(&f32_pipe, &r, case, &names, prompt);
    for dt in [DType::BF16, DType::F16] {
        let m = Qwen2VL::load(&fixture(), &Device::Cpu, dt).unwrap();
        let (h, _) = m.forward(&p.ids, p.images.as_ref()).unwrap();
        let logits = m
            .logits(&h)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        let want = &r[&format!("{case}.logits")];
        let d = max_abs_diff(&logits, want);
        let scale = want
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        println!("{dt:?}: logits max|Δ| = {d:.3e} (max |logit| {scale:.2})");
        assert!(d < 0.1 * scale, "{dt:?} drifts too far ({d})");
    }
}

//! The vision tower's attention paths against each other on the CPU (issue #21): the batched path (all images
//! and heads in one product per image size, what CUDA and Metal run) and the fused CPU kernel equal the
//! per-image reference to 1e-5 in f32, on the committed fixture's images and on random grids of unequal sizes
//! with random weights; bf16 stays within its precision.
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use rand::{Rng, SeedableRng};
use vlm3d::model::qwen2vl::init::random_weights;
use vlm3d::model::qwen2vl::vision::VisionAttention;
use vlm3d::model::qwen2vl::{Config, GridThw, Pipeline, Qwen2VL, VisionModel};

mod common;
use common::{fixture, max_abs_diff};

const TOL: f32 = 1e-5;

const PATHS: [VisionAttention; 3] = [
    VisionAttention::Batched,
    VisionAttention::Fused,
    VisionAttention::Auto,
];

/// The tower's output under `path`.
fn run(
    v: &mut VisionModel,
    path: VisionAttention,
    px: &Tensor,
    grids: &[GridThw],
    diff: bool,
) -> Tensor {
    v.set_attention(path);
    let out = v.forward_t(px, grids, diff).unwrap();
    v.set_attention(VisionAttention::Auto);
    out
}

/// Every path against the per-image reference on `grids`; returns the largest difference.
fn compare(v: &mut VisionModel, px: &Tensor, grids: &[GridThw], what: &str) -> f32 {
    let want = run(v, VisionAttention::PerImage, px, grids, false);
    let mut worst = 0f32;
    for path in PATHS {
        for diff in [false, true] {
            let got = run(v, path, px, grids, diff);
            assert_eq!(got.dims(), want.dims());
            let d = max_abs_diff(&got, &want);
            println!("{what}: {path:?} diff={diff} max|Δ| = {d:.3e}");
            assert!(d <= TOL, "{what}: {path:?} (diff {diff}) differs by {d}");
            worst = worst.max(d);
        }
    }
    worst
}

fn images(names: &[String]) -> Vec<image::RgbImage> {
    names
        .iter()
        .map(|n| {
            image::open(fixture().join("images").join(format!("{n}.png")))
                .unwrap()
                .to_rgb8()
        })
        .collect()
}

#[test]
fn batched_equals_per_image_on_fixture() {
    let mut pipe = Pipeline::load(&fixture(), &Device::Cpu, DType::F32).unwrap();
    let cases: [(&str, Vec<String>); 2] = [
        ("six_views", (0..6).map(|v| format!("view{v}")).collect()),
        ("two_images", vec!["wide".into(), "tall".into()]),
    ];
    for (case, names) in cases {
        let p = pipe
            .processor
            .process(&images(&names), &Device::Cpu)
            .unwrap();
        compare(&mut pipe.model.vision, &p.pixel_values, &p.grids, case);
    }
}

/// Random grids with `t` 1 or 2 (two equal segments per image) and sides of 2–12 patches, so sizes differ
/// and equal lengths of different shapes (4 × 6 and 6 × 4) meet.
fn random_grids(rng: &mut impl Rng, n: usize) -> Vec<GridThw> {
    (0..n)
        .map(|_| GridThw {
            t: rng.random_range(1..=2),
            h: 2 * rng.random_range(1..=6),
            w: 2 * rng.random_range(1..=6),
        })
        .collect()
}

fn random_model(dtype: DType, seed: u64) -> Qwen2VL {
    let cfg = Config::from_file(&fixture().join("config.json")).unwrap();
    let w = random_weights(&cfg, seed).unwrap();
    let vb = VarBuilder::from_tensors(w, dtype, &Device::Cpu);
    Qwen2VL::from_var_builder(cfg, vb, std::path::Path::new("<random>")).unwrap()
}

fn pixels(rng: &mut impl Rng, grids: &[GridThw], model: &Qwen2VL) -> Tensor {
    let c = &model.config.vision;
    let width = c.in_channels * c.temporal_patch_size * c.patch_size * c.patch_size;
    let rows: usize = grids.iter().map(GridThw::patches).sum();
    let data: Vec<f32> = (0..rows * width)
        .map(|_| rng.random_range(-2.0f32..2.0))
        .collect();
    Tensor::from_vec(data, (rows, width), &Device::Cpu).unwrap()
}

#[test]
fn batched_equals_per_image_on_random_grids() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(21);
    let mut model = random_model(DType::F32, 7);
    let mut fixed = vec![
        GridThw { t: 1, h: 4, w: 6 },
        GridThw { t: 2, h: 8, w: 8 },
        GridThw { t: 1, h: 6, w: 4 },
    ];
    for round in 0..4 {
        let grids = if round == 0 {
            std::mem::take(&mut fixed)
        } else {
            random_grids(&mut rng, 3)
        };
        let px = pixels(&mut rng, &grids, &model);
        compare(&mut model.vision, &px, &grids, &format!("random {grids:?}"));
    }
}

/// The batched path in bf16 against the f32 reference, relative to the output's scale.
#[test]
fn batched_bf16_close_to_f32() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let mut f32_model = random_model(DType::F32, 11);
    let mut bf16_model = random_model(DType::BF16, 11);
    let grids = random_grids(&mut rng, 3);
    let px = pixels(&mut rng, &grids, &f32_model);
    let want = run(
        &mut f32_model.vision,
        VisionAttention::PerImage,
        &px,
        &grids,
        false,
    );
    let got = run(
        &mut bf16_model.vision,
        VisionAttention::Batched,
        &px,
        &grids,
        false,
    )
    .to_dtype(DType::F32)
    .unwrap();
    let scale = common::max_abs(&want);
    let d = max_abs_diff(&got, &want);
    println!("bf16 batched vs f32 per-image: max|Δ| = {d:.3e}, scale {scale:.3}");
    assert!(d <= 5e-2 * scale.max(1.0), "{d} at scale {scale}");
}

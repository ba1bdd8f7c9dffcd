//! The learning path end to end: the trainer fits two samples for about a minute, and the detector it writes finds
//! their true boxes again through the evaluation's detect → camera-to-LiDAR → BEV NMS path. A regression anywhere
//! between the data, the losses, the gradients, the optimizer, saving, loading and decoding breaks it. It starts
//! from the demo's base and head and must end well closer to the boxes than that start. (The target of every box
//! within 0.5 m with IoU3D ≥ 0.5 is not reached in this budget: 12–13 of 15 are; the test prints how many.)
mod common;

use common::{repo, scratch, synth_bag};
use vlm3d::eval::{evaluate_bag, EvalOptions, Predictor};
use vlm3d::geometry::iou_3d;
use vlm3d::model::box_head::HeadKind;
use vlm3d::train::{TrainConfig, Trainer};

/// Optimizer steps of the two stages (batches of 8 examples). Most of them in stage 2: its IoU term is what
/// places the far, small boxes. Same 330 steps, same run time, on the committed base and head (2026-12-08, this
/// machine, strict fits of 15): 210 + 120 gave 9, 150 + 180 gave 11, 90 + 240 gave 13, 30 + 300 gave 12 (one run
/// each, one thread). 420 + 240 gave 13 in twice the time.
const STAGE1_STEPS: usize = 90;
const STAGE2_STEPS: usize = 240;

#[test]
fn two_samples_are_fitted_in_about_a_minute() {
    vlm3d::model::cpu::init_threads();
    let dir = scratch("train-overfit");
    // One scene, two key frames, eight objects, at half the demo's image size (an 8 × 4 token raster: fast).
    let bag = synth_bag(
        &dir,
        vlm3d::data::synth::SynthConfig {
            scenes: 1,
            samples_per_scene: 2,
            objects_per_scene: 8,
            seed: 21,
            width: 224,
            height: 126,
            ..Default::default()
        },
    );
    // The demo's base and head kind; the decoder and the head train (the tower's features are cached).
    let text = std::fs::read_to_string(repo().join("config/train_demo.yaml")).unwrap();
    let mut cfg: TrainConfig = serde_yaml::from_str(&text).unwrap();
    let base = repo().join("models/tiny-synth");
    cfg.model = base.clone();
    cfg.train_bags = vec![bag.clone()];
    // The head starts from the demo's (trained on this base), as a fine-tuning run would.
    cfg.init_head = Some(repo().join("models/demo/head.safetensors"));
    cfg.finetune = vlm3d::train::config::Finetune::Full;
    cfg.max_negatives = Some(1);
    cfg.batch_size = 8;
    cfg.warmup_steps = 10;
    // Decayed to 0 in each stage: at a constant rate the fit ends wherever the last noisy steps leave it (below).
    cfg.schedule = vlm3d::train::config::Schedule::Cosine;
    cfg.max_pixels = 224 * 126;
    cfg.stage1.steps = Some(STAGE1_STEPS);
    cfg.stage1.lr = 1e-3;
    cfg.stage2.steps = Some(STAGE2_STEPS);
    cfg.stage2.lr = 1e-3;
    // The centre is what the far objects (28–44 m here) miss: its own-unit term weighs 3 (1 in the demo recipe).
    cfg.localization_weight = 3.0;
    let t0 = std::time::Instant::now();
    cfg.checkpoint_every = 1000;
    assert_eq!(cfg.head, HeadKind::Dense);
    let run = dir.join("run");
    let mut t = Trainer::new(cfg, &run, false).unwrap();
    t.progress = false;
    t.run(None).unwrap();
    drop(t);
    println!("training took {:.1} s", t0.elapsed().as_secs_f64());

    // Before the fit: the same base and head, untouched (so the bound below is about what training did).
    let before_dir = dir.join("before");
    std::fs::create_dir_all(&before_dir).unwrap();
    std::fs::copy(
        repo().join("models/demo/head.safetensors"),
        before_dir.join("head.safetensors"),
    )
    .unwrap();
    let (before, _) = nearest(&base, &before_dir, &bag);
    let (near, exact) = nearest(&base, &run, &bag);
    let median = |v: &[f64]| v[v.len() / 2];
    let within = near.iter().filter(|&&d| d <= 1.5).count();
    println!(
        "{} true boxes: nearest prediction of their class {near:.2?} m (median {:.2}; before the fit {:.2}); \
         {within} within 1.5 m; {exact} within 0.5 m with IoU ≥ 0.5",
        near.len(),
        median(&near),
        median(&before)
    );
    assert!(
        near.len() >= 6,
        "only {} true boxes: the set is too small",
        near.len()
    );
    // Measured on the committed base and head (2026-12-08, this machine), in three roundings of the same
    // arithmetic (the default OpenBLAS kernels; OPENBLAS_CORETYPE=Haswell; OPENBLAS_CORETYPE=Prescott with
    // VLM3D_SIMD=baseline): median 0.09 / 0.05 / 0.05 m (16.02 m before the fit), 14 / 14 / 14 of 15 within 1.5 m,
    // 13 / 12 / 13 within 0.5 m with IoU ≥ 0.5, in 38.5 s of training. The bounds leave a margin below those.
    assert!(
        median(&near) <= 0.3 && median(&near) <= 0.1 * median(&before),
        "not fitted: median distance {:.2} m (before {:.2} m)",
        median(&near),
        median(&before)
    );
    assert!(
        5 * within >= 4 * near.len(),
        "not fitted: {within} of {} true boxes within 1.5 m",
        near.len()
    );
    assert!(
        3 * exact >= 2 * near.len(),
        "not fitted: {exact} of {} true boxes within 0.5 m with IoU ≥ 0.5",
        near.len()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Per true box of the bag: the distance on the ground to the nearest prediction of its class by the detector of
/// `base` + `trained` (sorted), and how many have one within 0.5 m with IoU3D ≥ 0.5.
fn nearest(
    base: &std::path::Path,
    trained: &std::path::Path,
    bag: &std::path::Path,
) -> (Vec<f64>, usize) {
    let det = vlm3d::model::detector::Detector::load(
        base,
        Some(trained),
        vlm3d::model::detector::DetectorConfig {
            score_threshold: 0.2,
            ..Default::default()
        },
        &candle_core::Device::Cpu,
        candle_core::DType::F32,
    )
    .unwrap();
    let r = evaluate_bag(&Predictor::Model(Box::new(det)), &EvalOptions::new(bag)).unwrap();
    let mut near = Vec::new();
    let mut exact = 0;
    for q in &r.queries {
        for t in &q.truth {
            let tp = t.params();
            let dist =
                |d: &vlm3d::perception::Detection| (d.bbox[0] - tp[0]).hypot(d.bbox[1] - tp[1]);
            let iou = |d: &vlm3d::perception::Detection| {
                vlm3d::geometry::Box3D::from_params(d.bbox)
                    .map(|p| iou_3d(&p, t))
                    .unwrap_or(0.0)
            };
            near.push(q.predicted.iter().map(dist).fold(f64::INFINITY, f64::min));
            exact += usize::from(q.predicted.iter().any(|d| dist(d) <= 0.5 && iou(d) >= 0.5));
            // Per box, what the nearest prediction gets wrong (for a failing run's log).
            if let Some(d) = q
                .predicted
                .iter()
                .min_by(|a, b| dist(a).total_cmp(&dist(b)))
            {
                println!(
                    "  {:<22} range {:5.1} m: nearest {:.2} m, IoU {:.2}, size {:.2?} vs {:.2?}, yaw {:+.2} vs {:+.2}",
                    q.category,
                    tp[0].hypot(tp[1]),
                    dist(d),
                    iou(d),
                    &d.bbox[3..6],
                    &tp[3..6],
                    d.bbox[6],
                    tp[6]
                );
            }
        }
    }
    near.sort_by(f64::total_cmp);
    (near, exact)
}

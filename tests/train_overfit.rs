//! The learning path end to end: the trainer fits two samples, and the detector it writes finds every true box of
//! them again (within 0.5 m on the ground, IoU3D ≥ 0.5) through the evaluation's detect → camera-to-LiDAR → BEV
//! NMS path. A regression anywhere between the data, the losses, the gradients, the optimizer, saving, loading
//! and decoding breaks it.
mod common;

use common::{repo, scratch, synth_bag};
use vlm3d::eval::{evaluate_bag, EvalOptions, Predictor};
use vlm3d::geometry::iou_3d;
use vlm3d::model::box_head::HeadKind;
use vlm3d::train::{TrainConfig, Trainer};

/// Optimizer steps of the two stages (batches of 8 examples).
const STAGE1_STEPS: usize = 300;
const STAGE2_STEPS: usize = 60;

#[test]
fn two_samples_are_fitted_to_half_a_metre_and_half_iou() {
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
    cfg.init_head = None;
    cfg.finetune = vlm3d::train::config::Finetune::Full;
    cfg.max_negatives = Some(1);
    cfg.batch_size = 8;
    cfg.warmup_steps = 10;
    cfg.schedule = vlm3d::train::config::Schedule::Constant;
    cfg.max_pixels = 224 * 126;
    cfg.stage1.steps = Some(STAGE1_STEPS);
    cfg.stage1.lr = 1e-3;
    cfg.stage2.steps = Some(STAGE2_STEPS);
    cfg.stage2.lr = 3e-4;
    cfg.checkpoint_every = 1000;
    assert_eq!(cfg.head, HeadKind::Dense);
    let run = dir.join("run");
    let mut t = Trainer::new(cfg, &run, false).unwrap();
    t.progress = false;
    t.run(None).unwrap();
    drop(t);

    let det = vlm3d::model::detector::Detector::load(
        &base,
        Some(&run),
        vlm3d::model::detector::DetectorConfig {
            score_threshold: 0.2,
            ..Default::default()
        },
        &candle_core::Device::Cpu,
        candle_core::DType::F32,
    )
    .unwrap();
    let r = evaluate_bag(&Predictor::Model(Box::new(det)), &EvalOptions::new(&bag)).unwrap();
    let mut truths = 0;
    let mut missed = Vec::new();
    for q in &r.queries {
        for t in &q.truth {
            truths += 1;
            let tp = t.params();
            let found = q.predicted.iter().any(|d| {
                let b = d.bbox;
                let dist = (b[0] - tp[0]).hypot(b[1] - tp[1]);
                let iou = vlm3d::geometry::Box3D::from_params(b)
                    .map(|p| iou_3d(&p, t))
                    .unwrap_or(0.0);
                dist <= 0.5 && iou >= 0.5
            });
            if !found {
                let best = q
                    .predicted
                    .iter()
                    .map(|d| (d.bbox[0] - tp[0]).hypot(d.bbox[1] - tp[1]))
                    .fold(f64::INFINITY, f64::min);
                missed.push(format!(
                    "{} {} at ({:.1}, {:.1}): nearest prediction {best:.2} m",
                    q.sample, q.category, tp[0], tp[1]
                ));
            }
        }
    }
    println!("{truths} true boxes, {} missed", missed.len());
    assert!(truths >= 6, "only {truths} true boxes: the set is too small");
    assert!(missed.is_empty(), "not fitted: {missed:#?}");
    let _ = std::fs::remove_dir_all(&dir);
}

//! Peer test: the official nuscenes-devkit detection evaluation reads `vlm3d eval`'s `results_nusc.json` unchanged
//! and agrees with our own AP on a synthetic set. Ground truth written as predictions scores AP ≈ 1 with no scale
//! or orientation error in the devkit (so translation, size order w-l-h, rotation w-x-y-z and the LiDAR → global
//! pose are right); the same boxes moved 1.5 m lose AP at 0.5 and 1 m and keep it at 2 and 4 m, in both.
mod common;

use std::path::Path;
use std::process::Command;

use common::{repo, run, DEVKIT};
use serde_json::Value;
use vlm3d::eval::{
    evaluate_bag, mean_boxes, metrics::evaluate, write_nuscenes_results, EvalOptions, EvalRun,
    Predictor,
};
use vlm3d::perception::Detection;

/// The run's queries with each prediction replaced by its ground truth (score 1), moved `dx` m along LiDAR x.
fn oracle(run: &EvalRun, dx: f64) -> EvalRun {
    let mut r = run.clone();
    for q in &mut r.queries {
        q.predicted = q
            .truth
            .iter()
            .map(|b| {
                let mut p = b.params();
                p[0] += dx;
                Detection {
                    label: q.category.clone(),
                    ..Detection::new(p, 1.0)
                }
            })
            .collect();
    }
    r.metrics = evaluate(&r.queries).unwrap();
    r
}

fn devkit(python: &Path, data: &Path, results: &Path, out: &Path) -> Value {
    let o = run(Command::new(python)
        .arg(repo().join("tests/peers/devkit_eval.py"))
        .arg(data)
        .arg("v1.0-mini")
        .arg(results)
        .arg(out))
    .unwrap_or_else(|e| panic!("devkit evaluation: {e}"));
    let text = String::from_utf8_lossy(&o.stdout);
    serde_json::from_str(text.lines().last().unwrap()).expect("devkit prints JSON")
}

#[test]
fn the_devkit_evaluates_our_results_file_as_we_do() {
    let Some(python) = DEVKIT.python_or_skip("devkit evaluation peer test") else {
        return;
    };
    let dir = common::scratch("devkit-eval");
    let data = dir.join("nuscenes");
    let cfg = vlm3d::data::synth::SynthConfig {
        scenes: 2,
        samples_per_scene: 3,
        seed: 4,
        width: 320,
        height: 180,
        progress: false,
        ..Default::default()
    };
    vlm3d::data::synth::generate(&data, &cfg).unwrap();
    let bag = dir.join("bag");
    let mut o = vlm3d::data::convert::ConvertOptions::new(&bag);
    o.lidar = false;
    o.progress = false;
    vlm3d::data::convert::convert_nuscenes(&data, "v1.0-mini", &o).unwrap();
    let opts = EvalOptions {
        bag: bag.clone(),
        nms_iou: 0.3,
        absent_prompts: 0,
        categories: None,
    };
    let base = evaluate_bag(&Predictor::MeanBox(mean_boxes(&bag).unwrap()), &opts).unwrap();
    let mut unshifted: Option<Value> = None;
    for (dx, near_ap) in [(0.0, 1.0), (1.5, 0.0)] {
        let r = oracle(&base, dx);
        let results = dir.join(format!("results_{dx}.json"));
        write_nuscenes_results(&results, &r).unwrap();
        let dk = devkit(&python, &data, &results, &dir.join(format!("devkit_{dx}")));
        println!("dx {dx}: devkit {dk}");
        let counts = dk["gt_counts"].as_object().unwrap();
        assert!(!counts.is_empty(), "the devkit kept no ground truth");
        for (class, n) in counts {
            let aps = &dk["label_aps"][class];
            let ap = |d: &str| aps[d].as_f64().unwrap();
            // Ours, on every category of that class: exactly 1 at 4 m, and 1 or 0 at 0.5 m.
            let mut ours_truth = 0;
            for (cat, m) in &r.metrics.categories {
                if m.truth > 0 && r.classes.get(cat).copied().flatten() == Some(class.as_str()) {
                    ours_truth += m.truth;
                    assert!(
                        (m.ap[0] - near_ap).abs() < 1e-9,
                        "{cat}: our AP@0.5 m {:?}",
                        m.ap
                    );
                    assert!((m.ap[3] - 1.0).abs() < 1e-9, "{cat}: our AP@4 m {:?}", m.ap);
                }
            }
            println!(
                "  {class}: devkit {n} / ours {ours_truth} boxes; devkit AP {:.3} {:.3} {:.3} {:.3}",
                ap("0.5"),
                ap("1.0"),
                ap("2.0"),
                ap("4.0")
            );
            // The devkit also drops ground truth without LiDAR points or beyond its class range; our boxes of
            // those stay as false positives. Where it kept every box, its AP is ours (1); elsewhere the pattern
            // over distances is ours.
            if n.as_u64() == Some(ours_truth as u64) {
                assert!(ap("4.0") > 0.99, "{class}: devkit AP@4 m {}", ap("4.0"));
            }
            if near_ap == 1.0 {
                assert!((ap("0.5") - ap("4.0")).abs() < 1e-9, "{class}: {aps}");
            } else {
                assert!(
                    ap("0.5") < 0.05 && ap("1.0") < 0.05,
                    "{class}: devkit AP@0.5/1 m {aps}"
                );
                let before = &unshifted.as_ref().unwrap()["label_aps"][class];
                assert!(
                    (ap("4.0") - before["4.0"].as_f64().unwrap()).abs() < 1e-9,
                    "{class}: {aps} vs {before}"
                );
            }
        }
        if dx == 0.0 {
            unshifted = Some(dk);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

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
    let bag = common::synth_bag(
        &dir,
        vlm3d::data::synth::SynthConfig {
            scenes: 2,
            samples_per_scene: 3,
            seed: 4,
            width: 320,
            height: 180,
            ..Default::default()
        },
    );
    let data = dir.join("nuscenes");
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

/// Our number against the devkit's (NaN on both sides, or within 1e-9).
fn same(what: &str, ours: f64, devkit: &Value) {
    match devkit.as_f64() {
        None => assert!(ours.is_nan(), "{what}: ours {ours}, devkit {devkit}"),
        Some(d) => assert!((ours - d).abs() < 1e-9, "{what}: ours {ours}, devkit {d}"),
    }
}

/// Every number of `vlm3d eval --protocol nuscenes` against the official `DetectionEval` on the same results file.
fn compare(ours: &vlm3d::eval::nuscenes::NuscMetrics, dk: &Value) {
    use vlm3d::eval::nuscenes::{CLASSES, TP_METRICS};
    same("mAP", ours.mean_ap, &dk["mean_ap"]);
    same("NDS", ours.nd_score, &dk["nd_score"]);
    for (m, (name, _)) in TP_METRICS.iter().enumerate() {
        same(name, ours.tp_errors[m], &dk["tp_errors"][name]);
    }
    for class in CLASSES {
        let c = &ours.classes[class];
        let n = dk["gt_counts"][class].as_u64().unwrap_or(0) as usize;
        assert_eq!(c.truth, n, "{class}: ground truth kept");
        for (k, d) in ["0.5", "1.0", "2.0", "4.0"].iter().enumerate() {
            same(
                &format!("{class} AP@{d}"),
                c.ap[k],
                &dk["label_aps"][class][d],
            );
        }
        for (m, (name, _)) in TP_METRICS.iter().enumerate() {
            same(
                &format!("{class} {name}"),
                c.tp_errors[m],
                &dk["label_tp_errors"][class][name],
            );
        }
    }
}

#[test]
fn the_nuscenes_protocol_gives_the_devkits_numbers() {
    use rand::{Rng, SeedableRng};
    use vlm3d::eval::nuscenes::{self, NuscBox, CLASSES};
    let Some(python) = DEVKIT.python_or_skip("nuScenes protocol peer test") else {
        return;
    };
    let dir = common::scratch("devkit-protocol");
    let bag = common::synth_bag(
        &dir,
        vlm3d::data::synth::SynthConfig {
            scenes: 3,
            samples_per_scene: 4,
            seed: 11,
            width: 320,
            height: 180,
            ..Default::default()
        },
    );
    let data = dir.join("nuscenes");
    let truth = nuscenes::ground_truth(&bag).unwrap();

    // 1. The ground truth written as predictions (scores by position, velocity and attribute as submitted: none),
    // then the same boxes 1.5 m off along x: found at 2 and 4 m only.
    for dx in [0.0, 1.5] {
        let preds: std::collections::BTreeMap<String, Vec<NuscBox>> = truth
            .iter()
            .map(|s| {
                let list = s
                    .boxes
                    .iter()
                    // Boxes without points are no ground truth; as predictions they would be false positives.
                    .filter(|g| g.num_pts > 0)
                    .enumerate()
                    .map(|(i, g)| {
                        let mut p = g.clone();
                        p.translation[0] += dx;
                        p.score = 1.0 / (1.0 + i as f64);
                        p.velocity = [0.0, 0.0];
                        p.attribute_name.clear();
                        p.num_pts = -1;
                        p
                    })
                    .collect();
                (s.token.clone(), list)
            })
            .collect();
        let results = dir.join(format!("truth_{dx}.json"));
        nuscenes::write_results(&results, &preds).unwrap();
        let dk = devkit(
            &python,
            &data,
            &results,
            &dir.join(format!("devkit_truth_{dx}")),
        );
        let ours = nuscenes::evaluate(&truth, &preds).unwrap();
        println!(
            "truth moved {dx} m: ours mAP {} NDS {}",
            ours.mean_ap, ours.nd_score
        );
        let car = &ours.classes["car"];
        if dx == 0.0 {
            assert!(car.ap.iter().all(|a| (a - 1.0).abs() < 1e-9), "{car:?}");
            assert!(car.tp_errors[0].abs() < 1e-9, "{car:?}");
        } else {
            assert!(
                car.ap[0] == 0.0 && car.ap[1] == 0.0 && car.ap[3] > 0.99,
                "{car:?}"
            );
            assert!((car.tp_errors[0] - 1.5).abs() < 1e-6, "{car:?}");
        }
        compare(&ours, &dk);
    }

    // 2. Noisy copies of every annotation (all classes, in range or not, with or without points): centres off by
    // up to 3 m, sizes by ±30 %, headings by up to 0.8 rad or turned round, scores on a 0.1 grid (ties), some
    // with a velocity or the true attribute, some dropped, some relabelled, and false positives.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let mut preds: std::collections::BTreeMap<String, Vec<NuscBox>> = Default::default();
    for s in &truth {
        let list = preds.entry(s.token.clone()).or_default();
        for g in &s.boxes {
            if rng.random_bool(0.15) {
                continue;
            }
            let mut p = g.clone();
            let r = 3.0 * rng.random::<f64>().powi(2);
            let a = rng.random_range(0.0..std::f64::consts::TAU);
            p.translation[0] += r * a.cos();
            p.translation[1] += r * a.sin();
            for v in &mut p.size {
                *v *= rng.random_range(0.7..1.3);
            }
            let turn = rng.random_range(-0.8..0.8)
                + if rng.random_bool(0.2) {
                    std::f64::consts::PI
                } else {
                    0.0
                };
            let q = nalgebra::UnitQuaternion::from_quaternion(nalgebra::Quaternion::new(
                p.rotation[0],
                p.rotation[1],
                p.rotation[2],
                p.rotation[3],
            )) * nalgebra::UnitQuaternion::from_euler_angles(0.0, 0.0, turn);
            p.rotation = [q.w, q.i, q.j, q.k];
            p.velocity = if rng.random_bool(0.5) {
                [rng.random_range(-3.0..3.0), rng.random_range(-3.0..3.0)]
            } else {
                [0.0, 0.0]
            };
            if rng.random_bool(0.5) {
                p.attribute_name.clear();
            }
            if rng.random_bool(0.1) {
                p.detection_name = CLASSES[rng.random_range(0..CLASSES.len())].into();
            }
            p.score = (rng.random_range(1..=10) as f64) / 10.0;
            p.num_pts = -1;
            list.push(p);
        }
        for _ in 0..4 {
            let mut p = s.boxes[0].clone();
            p.translation[0] = s.ego_translation[0] + rng.random_range(-45.0..45.0);
            p.translation[1] = s.ego_translation[1] + rng.random_range(-45.0..45.0);
            p.detection_name = CLASSES[rng.random_range(0..CLASSES.len())].into();
            p.score = rng.random_range(0.0..1.0);
            p.num_pts = -1;
            list.push(p);
        }
    }
    let results = dir.join("noisy.json");
    nuscenes::write_results(&results, &preds).unwrap();
    let dk = devkit(&python, &data, &results, &dir.join("devkit_noisy"));
    let ours = nuscenes::evaluate(&truth, &preds).unwrap();
    println!(
        "noisy: ours mAP {} NDS {}; devkit {dk}",
        ours.mean_ap, ours.nd_score
    );
    assert!(
        ours.mean_ap > 0.05 && ours.mean_ap < 0.95,
        "a test that can tell: {ours:?}"
    );
    assert!(ours.tp_errors.iter().all(|e| *e > 0.0), "{ours:?}");
    compare(&ours, &dk);

    // 3. What `vlm3d eval --protocol nuscenes` scores: a run over the classes' prompts (the mean-box baseline),
    // written by write_nuscenes_results and scored by evaluate_run.
    let opts = EvalOptions {
        bag: bag.clone(),
        nms_iou: 0.3,
        absent_prompts: 0,
        categories: Some(nuscenes::class_prompts()),
    };
    let run = evaluate_bag(&Predictor::MeanBox(mean_boxes(&bag).unwrap()), &opts).unwrap();
    let results = dir.join("results_nusc.json");
    write_nuscenes_results(&results, &run).unwrap();
    let dk = devkit(&python, &data, &results, &dir.join("devkit_run"));
    let ours = nuscenes::evaluate_run(&run, &bag).unwrap();
    println!(
        "mean-box run: ours mAP {} NDS {}; devkit {dk}",
        ours.mean_ap, ours.nd_score
    );
    compare(&ours, &dk);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_bag_without_annotation_info_is_refused_for_the_nuscenes_protocol() {
    // A bag whose converter did not write /vlm3d/annotation_info (as every bag before it): the protocol says
    // what is missing and how to get it, instead of scoring without the point filter.
    let dir = common::scratch("devkit-protocol-old-bag");
    let bag = common::synth_bag(
        &dir,
        vlm3d::data::synth::SynthConfig {
            scenes: 1,
            samples_per_scene: 2,
            seed: 3,
            width: 160,
            height: 90,
            ..Default::default()
        },
    );
    assert!(vlm3d::eval::nuscenes::ground_truth(&bag).is_ok());
    // A copy of the bag with its index, poses and annotations, without the annotation info.
    let stripped = dir.join("stripped");
    {
        use vlm3d::data::bag::msgs::{BoundingBox3DArrayMsg, StringMsg, TFMessage};
        use vlm3d::data::bag::rosbag::{BagReader, BagWriter, Qos};
        let r = BagReader::open(&bag).unwrap();
        let mut w = BagWriter::create(&stripped, "stripped", Default::default()).unwrap();
        let sample = w
            .add_topic::<StringMsg>("/vlm3d/sample", Qos::Reliable)
            .unwrap();
        let tf = w.add_topic::<TFMessage>("/tf", Qos::Reliable).unwrap();
        let tfs = w
            .add_topic::<TFMessage>("/tf_static", Qos::Latched)
            .unwrap();
        let ann = w
            .add_topic::<BoundingBox3DArrayMsg>("/annotations", Qos::Reliable)
            .unwrap();
        let mut scratch = Vec::new();
        for m in r.messages() {
            let m = m.unwrap();
            let t = m.log_time;
            match &*m.topic {
                "/vlm3d/sample" => {
                    w.write(sample, t, &m.decode::<StringMsg>().unwrap(), &mut scratch)
                }
                "/tf" => w.write(tf, t, &m.decode::<TFMessage>().unwrap(), &mut scratch),
                "/tf_static" => w.write(tfs, t, &m.decode::<TFMessage>().unwrap(), &mut scratch),
                "/annotations" => w.write(
                    ann,
                    t,
                    &m.decode::<BoundingBox3DArrayMsg>().unwrap(),
                    &mut scratch,
                ),
                _ => Ok(()),
            }
            .unwrap();
        }
        w.finish().unwrap();
    }
    let e = vlm3d::eval::nuscenes::ground_truth(&stripped)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("annotation info") && e.contains("convert it again"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn vlm3d_eval_protocol_nuscenes_prints_the_devkits_numbers_for_the_demo_model() {
    // The command a user runs, on the demo model's output for a small synthetic set at its resolution.
    let Some(python) = DEVKIT.python_or_skip("nuScenes protocol CLI peer test") else {
        return;
    };
    let dir = common::scratch("devkit-protocol-cli");
    let bag = common::synth_bag(
        &dir,
        vlm3d::data::synth::SynthConfig {
            scenes: 1,
            samples_per_scene: 3,
            seed: 900,
            width: 448,
            height: 252,
            ..Default::default()
        },
    );
    let data = dir.join("nuscenes");
    let out = dir.join("eval");
    let o = run(Command::new(env!("CARGO_BIN_EXE_vlm3d"))
        .current_dir(repo())
        .args([
            "eval",
            "--protocol",
            "nuscenes",
            "--score-threshold",
            "0.05",
            "--bag",
        ])
        .arg(&bag)
        .arg("--out")
        .arg(&out))
    .unwrap_or_else(|e| panic!("vlm3d eval: {e}"));
    let stdout = String::from_utf8_lossy(&o.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("protocol nuscenes"))
        .unwrap_or_else(|| panic!("no protocol line in {stdout}"));
    println!("{line}");
    let metrics: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
    let n = &metrics[0]["nuscenes"];
    let dk = devkit(
        &python,
        &data,
        &out.join("results_nusc.json"),
        &dir.join("devkit"),
    );
    println!("devkit {dk}");
    // The printed line (4 decimals) and metrics.json (every digit) against the devkit.
    let mean_ap = n["mean_ap"].as_f64().unwrap();
    let nds = n["nd_score"].as_f64().unwrap();
    same("mAP", mean_ap, &dk["mean_ap"]);
    same("NDS", nds, &dk["nd_score"]);
    assert!(
        line.contains(&format!("mAP {mean_ap:.4}, NDS {nds:.4}")),
        "{line}"
    );
    assert!(mean_ap > 0.0, "the demo model finds something: {n}");
    for (m, (name, _)) in vlm3d::eval::nuscenes::TP_METRICS.iter().enumerate() {
        same(
            name,
            n["tp_errors"][m].as_f64().unwrap(),
            &dk["tp_errors"][name],
        );
    }
    for class in vlm3d::eval::nuscenes::CLASSES {
        for (k, d) in ["0.5", "1.0", "2.0", "4.0"].iter().enumerate() {
            same(
                &format!("{class} AP@{d}"),
                n["classes"][class]["ap"][k].as_f64().unwrap(),
                &dk["label_aps"][class][d],
            );
        }
    }
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        report.contains("Protocol **prompts**") && report.contains("protocol nuscenes"),
        "report.md names the protocol of each table"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

//! `vlm3d eval --recorded`: what the perception node would publish for the offline evaluation's frames, written to
//! a rosbag2 folder, scores exactly as the offline evaluation (same queries, same metrics); a sample without
//! output is left out and reported; looped playback (duplicates) and stray stamps change nothing but the counts;
//! a recording that matches no frame of the bag is an error that says so.
mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use common::{fixture, scratch, small_bag};
use vlm3d::data::bag::bagschema::SampleIndex;
use vlm3d::data::bag::msgs::{BoundingBox3DArrayMsg, Header, StringMsg};
use vlm3d::data::bag::rosbag::{BagReader, BagWriter, BagWriterOptions, Qos};
use vlm3d::eval::metrics::{evaluate, Metrics, Query};
use vlm3d::eval::recorded::detection_to_msg;
use vlm3d::eval::{evaluate_bag, evaluate_recording, EvalOptions, EvalRun, Predictor};
use vlm3d::perception::prompt::paper_prompt;

const TOPIC: &str = "/vlm3d/boxes";

/// Sample token → its CAM_FRONT key-frame stamp, from the bag's own index (not through the code under test).
fn cam_front_stamps(bag: &Path) -> BTreeMap<String, u64> {
    BagReader::open(bag)
        .unwrap()
        .typed::<StringMsg>("/vlm3d/sample")
        .map(|m| {
            let idx: SampleIndex = serde_json::from_str(&m.unwrap().1.data).unwrap();
            (idx.sample_token, idx.cameras["CAM_FRONT"].stamp_ns)
        })
        .collect()
}

/// One message as the node publishes it for a query: stamp of the frame's CAM_FRONT image, LiDAR frame, the
/// paper's prompt, the merged boxes.
fn node_message(q: &Query, stamp: u64) -> BoundingBox3DArrayMsg {
    BoundingBox3DArrayMsg {
        header: Header::new(stamp, "lidar_top"),
        prompt: paper_prompt(&q.category),
        boxes: q.predicted.iter().map(detection_to_msg).collect(),
    }
}

/// Writes a recording: per topic its (stamp, message) list, logged 80 ms after the stamp (the node's latency).
fn write_recording(dir: &Path, topics: &[(&str, Vec<(u64, BoundingBox3DArrayMsg)>)]) {
    let name = dir.file_name().unwrap().to_str().unwrap().to_string();
    let mut w = BagWriter::create(dir, &name, BagWriterOptions::default()).unwrap();
    let mut scratch = Vec::new();
    for (topic, msgs) in topics {
        let id = w
            .add_topic::<BoundingBox3DArrayMsg>(topic, Qos::Reliable)
            .unwrap();
        for (stamp, m) in msgs {
            w.write(id, stamp + 80_000_000, m, &mut scratch).unwrap();
        }
    }
    w.finish().unwrap();
}

/// Every number of two serialized metrics within 1e-9, every other value equal (all fields, per category too).
fn assert_json_close(a: &serde_json::Value, b: &serde_json::Value, at: &str) {
    use serde_json::Value;
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            assert!((x - y).abs() <= 1e-9, "{at}: {x} vs {y}");
        }
        (Value::Object(x), Value::Object(y)) => {
            assert_eq!(
                x.keys().collect::<Vec<_>>(),
                y.keys().collect::<Vec<_>>(),
                "{at}"
            );
            for (k, v) in x {
                assert_json_close(v, &y[k], &format!("{at}.{k}"));
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            assert_eq!(x.len(), y.len(), "{at}");
            for (i, (u, v)) in x.iter().zip(y).enumerate() {
                assert_json_close(u, v, &format!("{at}[{i}]"));
            }
        }
        _ => assert_eq!(a, b, "{at}"),
    }
}

fn assert_metrics_equal(a: &Metrics, b: &Metrics) {
    assert_json_close(
        &serde_json::to_value(a).unwrap(),
        &serde_json::to_value(b).unwrap(),
        "metrics",
    );
}

/// Same samples, categories and truth; the same predictions (the box through the message: yaw via the
/// quaternion, so up to a turn and rounding; score, label and camera exact).
fn assert_queries_equal(a: &[Query], b: &[Query]) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        let at = format!("{} / {}", x.sample, x.category);
        assert_eq!((&x.sample, &x.category), (&y.sample, &y.category));
        assert_eq!(x.truth, y.truth, "{at}: truth");
        assert_eq!(x.predicted.len(), y.predicted.len(), "{at}: predictions");
        for (p, r) in x.predicted.iter().zip(&y.predicted) {
            for i in 0..6 {
                assert!((p.bbox[i] - r.bbox[i]).abs() < 1e-9, "{at}: {p:?} vs {r:?}");
            }
            let d = (p.bbox[6] - r.bbox[6]).rem_euclid(std::f64::consts::TAU);
            assert!(
                d.min(std::f64::consts::TAU - d) < 1e-9,
                "{at}: yaw {p:?} vs {r:?}"
            );
            assert_eq!(
                (p.score, &p.label, &p.camera),
                (r.score, &r.label, &r.camera),
                "{at}"
            );
        }
    }
}

#[test]
fn a_recording_of_the_node_scores_as_the_offline_evaluation() {
    let dir = scratch("eval-recorded");
    let bag = small_bag(&dir);
    let mut det = vlm3d::model::detector::Detector::load(
        &fixture(),
        None,
        vlm3d::model::detector::DetectorConfig {
            score_threshold: 0.0,
            ..Default::default()
        },
        &candle_core::Device::Cpu,
        candle_core::DType::F32,
    )
    .unwrap();
    det.pipeline.processor.config.max_pixels = 224 * 126;
    let cats = vec!["car".to_string(), "pedestrian".to_string()];
    let opts = EvalOptions {
        categories: Some(cats.clone()),
        ..EvalOptions::new(&bag)
    };
    let offline = evaluate_bag(&Predictor::Model(Box::new(det)), &opts).unwrap();

    // The offline run asked exactly the two categories of every sample, and there is something to compare.
    let stamps = cam_front_stamps(&bag);
    let n = offline.samples.len();
    assert_eq!(n, stamps.len());
    assert!(n >= 3, "{n} samples");
    assert_eq!(offline.queries.len(), 2 * n);
    for (i, q) in offline.queries.iter().enumerate() {
        assert_eq!(q.category, cats[i % 2]);
        assert_eq!(q.sample, offline.samples[i / 2].0);
    }
    let truth: usize = offline.queries.iter().map(|q| q.truth.len()).sum();
    let predicted: usize = offline.queries.iter().map(|q| q.predicted.len()).sum();
    assert!(
        truth > 0 && predicted > 0,
        "truth {truth}, predicted {predicted}"
    );
    println!(
        "{n} samples, {truth} true and {predicted} predicted boxes; offline {:?}",
        offline.metrics
    );

    let messages = |run: &EvalRun, skip: Option<&str>| -> Vec<(u64, BoundingBox3DArrayMsg)> {
        run.queries
            .iter()
            .filter(|q| Some(q.sample.as_str()) != skip)
            .map(|q| {
                let t = stamps[&q.sample];
                (t, node_message(q, t))
            })
            .collect()
    };

    // The whole recording: same queries, same metrics, full coverage.
    let rec = dir.join("rec-all");
    write_recording(&rec, &[(TOPIC, messages(&offline, None))]);
    let r = evaluate_recording(&rec, &opts, None).unwrap();
    println!("{}", r.coverage());
    assert_eq!(r.topic, TOPIC);
    assert_eq!(
        (r.messages, r.used, r.duplicates, r.unmatched),
        (2 * n, 2 * n, 0, 0)
    );
    assert_eq!(r.samples_scored, n);
    assert!(r.samples_without_output.is_empty() && r.missing.is_empty());
    assert_queries_equal(&r.run.queries, &offline.queries);
    assert_metrics_equal(&r.run.metrics, &offline.metrics);
    assert_eq!(r.run.samples.len(), n);
    assert_eq!(r.run.classes, offline.classes);
    // Without --categories the recorded prompts (in recording order) are the categories: the same run.
    let plain = evaluate_recording(&rec, &EvalOptions::new(&bag), None).unwrap();
    assert_queries_equal(&plain.run.queries, &offline.queries);
    assert_metrics_equal(&plain.run.metrics, &offline.metrics);
    // The report files come out as for the offline run.
    let out = dir.join("report");
    std::fs::create_dir_all(&out).unwrap();
    vlm3d::eval::write_nuscenes_results(&out.join("results_nusc.json"), &r.run).unwrap();
    vlm3d::eval::write_report(
        &out,
        &bag,
        &[("recording", &r.run.metrics, r.run.queries.as_slice())],
    )
    .unwrap();

    // The model localizes nothing (its metrics are near zero), so the same round trip again with predictions that
    // score: each true box (moved 0.3 m along x for every other one, scores falling) plus the model's boxes as
    // false positives.
    let mut oracle = offline.clone();
    for q in &mut oracle.queries {
        let model = std::mem::take(&mut q.predicted);
        q.predicted = q
            .truth
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let mut p = b.params();
                p[0] += 0.3 * (i % 2) as f64;
                vlm3d::perception::Detection {
                    label: q.category.clone(),
                    camera: "CAM_FRONT".into(),
                    ..vlm3d::perception::Detection::new(p, 0.9 - 0.05 * i as f32)
                }
            })
            .chain(model.into_iter().take(3))
            .collect();
    }
    oracle.metrics = evaluate(&oracle.queries).unwrap();
    let m = &oracle.metrics;
    assert!(
        m.nusc_map > 0.1 && m.f1 > 0.1 && m.acc_50 > 0.1 && m.miou > 0.1,
        "{m:?}"
    );
    let rec = dir.join("rec-oracle");
    write_recording(&rec, &[(TOPIC, messages(&oracle, None))]);
    let r = evaluate_recording(&rec, &opts, None).unwrap();
    assert_queries_equal(&r.run.queries, &oracle.queries);
    assert_metrics_equal(&r.run.metrics, &oracle.metrics);

    // Looped playback (every message twice) and messages stamped at no sample's CAM_FRONT key frame.
    let mut looped = messages(&offline, None);
    looped.extend(messages(&offline, None));
    let stray = looped[0].0 + 1;
    looped.push((stray, node_message(&offline.queries[0], stray)));
    let rec = dir.join("rec-looped");
    write_recording(&rec, &[(TOPIC, looped)]);
    let r = evaluate_recording(&rec, &opts, None).unwrap();
    assert_eq!(
        (r.messages, r.used, r.duplicates, r.unmatched),
        (4 * n + 1, 2 * n, 2 * n, 1)
    );
    assert_eq!(r.unmatched_stamps, vec![stray]);
    assert_queries_equal(&r.run.queries, &offline.queries);
    assert_metrics_equal(&r.run.metrics, &offline.metrics);

    // One sample without output: reported, not scored; the rest as the offline run on those frames.
    let dropped = offline.samples[1].0.clone();
    let rec = dir.join("rec-dropped");
    write_recording(&rec, &[(TOPIC, messages(&offline, Some(&dropped)))]);
    let r = evaluate_recording(&rec, &opts, None).unwrap();
    println!("{}", r.coverage());
    assert_eq!(r.samples_without_output, vec![dropped.clone()]);
    assert_eq!(r.samples_scored, n - 1);
    assert!(r.coverage().contains(&dropped), "{}", r.coverage());
    let kept: Vec<Query> = offline
        .queries
        .iter()
        .filter(|q| q.sample != dropped)
        .cloned()
        .collect();
    assert_queries_equal(&r.run.queries, &kept);
    assert_metrics_equal(&r.run.metrics, &evaluate(&kept).unwrap());
    // Every sample stays in the nuScenes results (the devkit wants them all).
    assert_eq!(r.run.samples, offline.samples);

    // One (sample, category) missing: that pair is reported and not scored.
    let mut partial = messages(&offline, None);
    partial.remove(1);
    let rec = dir.join("rec-partial");
    write_recording(&rec, &[(TOPIC, partial)]);
    let r = evaluate_recording(&rec, &opts, None).unwrap();
    assert_eq!(
        r.missing,
        vec![(offline.queries[1].sample.clone(), "pedestrian".to_string())]
    );
    assert_eq!((r.samples_scored, r.used), (n, 2 * n - 1));

    // Only one category asked for: the other's messages are counted, not scored.
    let only_car = EvalOptions {
        categories: Some(vec!["car".into()]),
        ..EvalOptions::new(&bag)
    };
    let r = evaluate_recording(&dir.join("rec-all"), &only_car, None).unwrap();
    assert_eq!(r.other_categories.get("pedestrian"), Some(&n));
    let cars: Vec<Query> = offline
        .queries
        .iter()
        .filter(|q| q.category == "car")
        .cloned()
        .collect();
    assert_queries_equal(&r.run.queries, &cars);

    // Nothing matches (every stamp 1 ns late): an error saying so.
    let late: Vec<_> = messages(&offline, None)
        .into_iter()
        .map(|(t, mut m)| {
            m.header = Header::new(t + 1, "lidar_top");
            (t + 1, m)
        })
        .collect();
    let rec = dir.join("rec-late");
    write_recording(&rec, &[(TOPIC, late)]);
    let e = evaluate_recording(&rec, &opts, None)
        .unwrap_err()
        .to_string();
    println!("{e}");
    assert!(
        e.contains("none of the") && e.contains("CAM_FRONT key frame") && e.contains("playback"),
        "{e}"
    );

    // Two topics of the type: an error naming both, unless one is chosen.
    let rec = dir.join("rec-two");
    write_recording(
        &rec,
        &[
            (TOPIC, messages(&offline, None)),
            ("/other/boxes", messages(&offline, None)),
        ],
    );
    let e = evaluate_recording(&rec, &opts, None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(TOPIC) && e.contains("/other/boxes") && e.contains("several"),
        "{e}"
    );
    let r = evaluate_recording(&rec, &opts, Some("/other/boxes")).unwrap();
    assert_metrics_equal(&r.run.metrics, &offline.metrics);
    let e = evaluate_recording(&rec, &opts, Some("/missing"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("/missing") && e.contains(TOPIC), "{e}");

    // The command line: the same report files and summary, coverage first; --recorded excludes --model.
    let vlm3d = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_vlm3d"));
        c.env("RUST_BACKTRACE", "0");
        c
    };
    let out = dir.join("cli");
    let o = common::run(
        vlm3d()
            .args(["eval", "--categories", "car,pedestrian", "--recorded"])
            .arg(dir.join("rec-dropped"))
            .arg("--bag")
            .arg(&bag)
            .arg("--out")
            .arg(&out),
    )
    .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    println!("{stdout}");
    assert!(stdout.contains("1 without output") && stdout.contains("| predictor |"));
    for f in [
        "metrics.json",
        "report.md",
        "results_nusc.json",
        "categories.png",
        "precision_recall_2m.png",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(json[0]["samples"], n - 1);
    assert_json_close(
        &json[0]["metrics"],
        &serde_json::to_value(evaluate(&kept).unwrap()).unwrap(),
        "cli metrics",
    );
    let bad = vlm3d()
        .args([
            "eval",
            "--model",
            "x",
            "--recorded",
            "y",
            "--bag",
            "z",
            "--out",
            "w",
        ])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("cannot be used with"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

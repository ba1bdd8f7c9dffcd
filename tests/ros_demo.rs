//! `vlm3d demo` through ROS 2: the perception node on the synthetic bag, played and recorded. Checks the picture,
//! the summary and the recording. Needs the environment of `env.sh`; runs on its own ROS domain so that other
//! tests' nodes do not feed it.
#![cfg(feature = "ros")]
mod common;

use std::process::Command;

use vlm3d::data::bag::msgs::BoundingBox3DArrayMsg;
use vlm3d::data::bag::rosbag::BagReader;

#[test]
fn demo_runs_the_node_on_the_synthetic_bag_and_records_it() {
    let dir = common::scratch("ros-demo");
    let out = dir.join("demo");
    let domain = 10 + std::process::id() % 90;
    let run = common::run(
        Command::new(env!("CARGO_BIN_EXE_vlm3d"))
            .args(["demo", "--out"])
            .arg(&out)
            .args(["--samples", "3"])
            .env("ROS_DOMAIN_ID", domain.to_string())
            .env("RUST_BACKTRACE", "0"),
    )
    .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(stdout.contains("| model |"), "{stdout}");

    let png = image::open(out.join("demo.png")).unwrap();
    assert!(
        png.width() > 1500 && png.height() > 600,
        "{}×{}",
        png.width(),
        png.height()
    );

    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert!(
        summary["sets_processed"].as_u64().unwrap() >= 1,
        "{summary}"
    );
    assert!(summary["sets_in"].as_u64().unwrap() >= summary["sets_processed"].as_u64().unwrap());
    assert_eq!(summary["samples"].as_u64(), Some(3));
    let stages: Vec<&str> = summary["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stage"].as_str().unwrap())
        .collect();
    for st in [
        "decode",
        "preprocess",
        "model",
        "merge",
        "publish",
        "total",
        "input_to_output",
    ] {
        assert!(stages.contains(&st), "{stages:?}");
    }
    let model = summary["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["stage"] == "model")
        .unwrap();
    assert!(model["median_ms"].as_f64().unwrap() > 0.0, "{model}");
    assert!(
        summary["picture"]["stamp_ns"].as_i64().is_some(),
        "{summary}"
    );
    assert!(std::fs::read_to_string(out.join("summary.md"))
        .unwrap()
        .contains("| input_to_output |"));

    // The recording opens and holds the node's boxes and markers, and the inputs.
    let bag = BagReader::open(&out.join("recording")).unwrap();
    let boxes: Vec<BoundingBox3DArrayMsg> = bag
        .typed::<BoundingBox3DArrayMsg>("/vlm3d/boxes")
        .map(|m| m.unwrap().1)
        .collect();
    assert!(!boxes.is_empty());
    assert!(boxes.iter().all(|b| b.header.frame_id == "lidar_top"));
    let mut count = std::collections::BTreeMap::<String, usize>::new();
    for m in bag.messages() {
        *count.entry(m.unwrap().topic.to_string()).or_default() += 1;
    }
    assert!(
        count.get("/vlm3d/markers").copied().unwrap_or(0) >= 1,
        "{count:?}"
    );
    assert!(
        count
            .get("/cam_front/image_rect_compressed")
            .copied()
            .unwrap_or(0)
            >= 1,
        "{count:?}"
    );
    assert!(
        count.contains_key("/perception_node/debug/frame_stats"),
        "{count:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

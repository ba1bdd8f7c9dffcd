//! Peer test: the `rosbags` Python library (in a test venv it installs itself) opens a converted bag,
//! registers every type from the definitions embedded in it (they must agree with ROS 2 Jazzy's), lists
//! every topic with the right type and deserializes every message; what it reads equals what we wrote.
//!
//! The venv lives in `.venv-peers/rosbags` (see [`common::PeerVenv`]). Creating it needs PyPI; set
//! `VLM3D_SKIP_PEERS=1` to skip where PyPI is unreachable.
mod common;

use std::path::Path;
use std::process::Command;

use common::PeerVenv;
use serde_json::Value;
use vlm3d::data::bag::msgs::{
    BoundingBox3DArrayMsg, CameraInfo, CompressedImage, PointCloud2, StringMsg, TFMessage,
};
use vlm3d::data::bag::rosbag::BagReader;
use vlm3d::data::convert::{convert_loaded, ConvertOptions};
use vlm3d::data::nuscenes::NuScenes;
use vlm3d::data::synth::{generate, SynthConfig};

/// The rosbags venv; its CDR code generator imports numpy, named so a half-finished install is repaired.
const ROSBAGS: PeerVenv = PeerVenv {
    name: "rosbags",
    packages: &["rosbags", "numpy"],
    check: "import numpy, rosbags.rosbag2, rosbags.typesys",
    no_deps_fallback: None,
};

/// Our own reading of the bag, in the JSON shape the peer script prints.
fn our_messages(bag: &Path) -> Vec<Value> {
    let stamp = |t: &vlm3d::data::bag::msgs::Time| t.to_nanos();
    BagReader::open(bag)
        .unwrap()
        .messages()
        .map(|m| {
            let m = m.unwrap();
            let mut v = serde_json::json!({"topic": &*m.topic, "t": m.log_time});
            let extra = match &*m.type_name {
                "sensor_msgs/msg/CompressedImage" => {
                    let x: CompressedImage = m.decode().unwrap();
                    serde_json::json!({"frame": x.header.frame_id, "stamp": stamp(&x.header.stamp), "format": x.format,
                        "bytes": x.data.len(), "crc32": crc32fast::hash(&x.data)})
                }
                "sensor_msgs/msg/CameraInfo" => {
                    let x: CameraInfo = m.decode().unwrap();
                    serde_json::json!({"frame": x.header.frame_id, "stamp": stamp(&x.header.stamp), "width": x.width,
                        "height": x.height, "distortion_model": x.distortion_model, "d": x.d, "k": x.k, "r": x.r, "p": x.p})
                }
                "sensor_msgs/msg/PointCloud2" => {
                    let x: PointCloud2 = m.decode().unwrap();
                    serde_json::json!({"frame": x.header.frame_id, "stamp": stamp(&x.header.stamp), "width": x.width,
                        "height": x.height,
                        "fields": x.fields.iter().map(|f| serde_json::json!([f.name, f.offset, f.datatype, f.count])).collect::<Vec<_>>(),
                        "point_step": x.point_step, "bytes": x.data.len(), "crc32": crc32fast::hash(&x.data)})
                }
                "tf2_msgs/msg/TFMessage" => {
                    let x: TFMessage = m.decode().unwrap();
                    serde_json::json!({"transforms": x.transforms.iter().map(|t| {
                        let (tr, r) = (&t.transform.translation, &t.transform.rotation);
                        serde_json::json!({"parent": t.header.frame_id, "child": t.child_frame_id,
                            "stamp": stamp(&t.header.stamp), "translation": [tr.x, tr.y, tr.z],
                            "rotation": [r.x, r.y, r.z, r.w]})
                    }).collect::<Vec<_>>()})
                }
                "vlm3d/msg/BoundingBox3DArray" => {
                    let x: BoundingBox3DArrayMsg = m.decode().unwrap();
                    serde_json::json!({"frame": x.header.frame_id, "stamp": stamp(&x.header.stamp), "prompt": x.prompt,
                        "boxes": x.boxes.iter().map(|b| {
                            let (p, o) = (&b.center.position, &b.center.orientation);
                            serde_json::json!({"label": b.label, "instance_id": b.instance_id, "camera": b.camera,
                                "score": b.score as f64, "center": [p.x, p.y, p.z], "orientation": [o.x, o.y, o.z, o.w],
                                "size": [b.size.x, b.size.y, b.size.z]})
                        }).collect::<Vec<_>>()})
                }
                "std_msgs/msg/String" => {
                    let x: StringMsg = m.decode().unwrap();
                    serde_json::json!({"data": x.data})
                }
                other => panic!("unexpected type {other}"),
            };
            v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            v
        })
        .collect()
}

/// JSON equality with a relative tolerance on floats (the two sides print and parse floats differently).
fn same(a: &Value, b: &Value, path: &str) {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            if let (Some(x), Some(y)) = (x.as_u64(), y.as_u64()) {
                assert_eq!(x, y, "{path}");
            } else {
                let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
                assert!(
                    (x - y).abs() <= 1e-12 * x.abs().max(1.0),
                    "{path}: {x} vs {y}"
                );
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            assert_eq!(x.len(), y.len(), "{path}: lengths");
            for (i, (x, y)) in x.iter().zip(y).enumerate() {
                same(x, y, &format!("{path}[{i}]"));
            }
        }
        (Value::Object(x), Value::Object(y)) => {
            let kx: Vec<_> = x.keys().collect();
            let ky: Vec<_> = y.keys().collect();
            assert_eq!(kx, ky, "{path}: keys");
            for (k, v) in x {
                same(v, &y[k], &format!("{path}.{k}"));
            }
        }
        _ => assert_eq!(a, b, "{path}"),
    }
}

#[test]
fn rosbags_reads_every_message_we_write() {
    let Some(python) = ROSBAGS.python_or_skip("rosbags peer test") else {
        return;
    };
    let root = std::env::temp_dir().join(format!("vlm3d-rosbags-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let data = root.join("nuscenes");
    let cfg = SynthConfig {
        scenes: 2,
        seed: 5,
        width: 320,
        height: 180,
        samples_per_scene: 2,
        objects_per_scene: 10,
        progress: false,
        ..Default::default()
    };
    generate(&data, &cfg).unwrap();
    let nusc = NuScenes::load(&data, &cfg.version).unwrap();
    let bag = root.join("bag");
    let mut opts = ConvertOptions::new(&bag);
    opts.progress = false;
    convert_loaded(&nusc, &opts).unwrap();

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/read_bag.py");
    let out = Command::new(&python)
        .arg(&script)
        .arg(&bag)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "rosbags failed on our bag:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let peer: Value = serde_json::from_slice(&out.stdout).unwrap();

    // Every topic, with the right type; metadata counts equal the messages rosbags deserialized.
    let meta = BagReader::open(&bag).unwrap().metadata().unwrap().clone();
    let topics = peer["topics"].as_object().unwrap();
    assert_eq!(topics.len(), meta.topics_with_message_count.len());
    for t in &meta.topics_with_message_count {
        let p = &topics[&t.topic_metadata.name];
        assert_eq!(
            p["type"],
            t.topic_metadata.type_name.as_str(),
            "{}",
            t.topic_metadata.name
        );
        assert_eq!(p["count"], t.message_count);
        assert_eq!(p["read"], t.message_count, "{}", t.topic_metadata.name);
        // The RIHS01 type hash we record is the one rosbags computes from the (Jazzy-checked) definition.
        assert!(t
            .topic_metadata
            .type_description_hash
            .starts_with("RIHS01_"));
        assert_eq!(
            p["rihs01"],
            t.topic_metadata.type_description_hash.as_str(),
            "{}",
            t.topic_metadata.name
        );
        assert_eq!(p["digest"], t.topic_metadata.type_description_hash.as_str());
    }
    for ty in [
        "sensor_msgs/msg/CompressedImage",
        "sensor_msgs/msg/CameraInfo",
        "sensor_msgs/msg/PointCloud2",
        "tf2_msgs/msg/TFMessage",
        "vlm3d/msg/BoundingBox3DArray",
        "std_msgs/msg/String",
    ] {
        assert!(
            peer["registered"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r == ty),
            "{ty} not registered"
        );
    }

    // Message by message, rosbags' fields equal ours.
    let ours = our_messages(&bag);
    let theirs = peer["messages"].as_array().unwrap();
    assert_eq!(ours.len() as u64, meta.message_count);
    assert_eq!(theirs.len(), ours.len());
    for (i, (a, b)) in ours.iter().zip(theirs).enumerate() {
        same(a, b, &format!("message {i} ({})", a["topic"]));
    }
    std::fs::remove_dir_all(&root).unwrap();
}

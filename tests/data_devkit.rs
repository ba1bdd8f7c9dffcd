//! Peer test: the official nuscenes-devkit (Python) loads what `vlm3d synth` writes, and the boxes its
//! `get_sample_data` returns in every camera (BoxVisibility ALL and ANY) and in the LiDAR frame match those of our
//! reader and visibility rule to 1e-6.
//!
//! The devkit lives in a virtual environment the test creates once (`.venv-peers/devkit`, see
//! [`common::PeerVenv`]). If it cannot be installed (no Python, no network) the test fails with the reason; set
//! `VLM3D_SKIP_PEERS=1` to turn that into a skip on machines without PyPI.
mod common;

use std::path::Path;
use std::process::Command;

use common::{repo, run, DEVKIT};

use serde_json::Value;
use vlm3d::data::nuscenes::NuScenes;
use vlm3d::data::synth::render::parse_pcd_bin;
use vlm3d::geometry::VisibilityRule;

const VERSION: &str = "v1.0-mini";

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number"))
        .collect()
}

/// Compares the devkit's boxes with ours; returns how many were compared.
fn compare(what: &str, devkit: &Value, ours: &[vlm3d::data::nuscenes::AnnotatedBox<'_>]) -> usize {
    let dk = devkit.as_array().expect("box list");
    let dk_tokens: Vec<&str> = dk.iter().map(|b| b["token"].as_str().unwrap()).collect();
    let our_tokens: Vec<&str> = ours.iter().map(|b| b.annotation.token.as_str()).collect();
    assert_eq!(dk_tokens, our_tokens, "{what}: different boxes");
    for (d, o) in dk.iter().zip(ours) {
        let tok = &o.annotation.token;
        assert_eq!(d["name"].as_str().unwrap(), o.category, "{what} {tok}");
        let c = f64s(&d["center"]);
        for i in 0..3 {
            assert!(
                (c[i] - o.bbox.center[i]).abs() < 1e-6,
                "{what} {tok}: centre {c:?} vs {:?}",
                o.bbox.center
            );
        }
        let wlh = f64s(&d["wlh"]);
        let ours_wlh = [o.bbox.size[1], o.bbox.size[0], o.bbox.size[2]];
        for i in 0..3 {
            assert!(
                (wlh[i] - ours_wlh[i]).abs() < 1e-9,
                "{what} {tok}: wlh {wlh:?} vs {ours_wlh:?}"
            );
        }
        let q = f64s(&d["orientation"]);
        let oq = o.bbox.rotation.quaternion();
        let dot = (q[0] * oq.w + q[1] * oq.i + q[2] * oq.j + q[3] * oq.k)
            .abs()
            .min(1.0);
        let angle = 2.0 * dot.acos();
        assert!(
            angle < 1e-6,
            "{what} {tok}: orientation {q:?} vs {oq:?} ({angle} rad apart)"
        );
        // The devkit's own corners (its corner order), which also pins down the (w, l, h) ↔ (l, w, h) mapping.
        let rows: Vec<Vec<f64>> = d["corners"].as_array().unwrap().iter().map(f64s).collect();
        for (k, ours) in o.bbox.corners().iter().enumerate() {
            let theirs = nalgebra::Point3::new(rows[0][k], rows[1][k], rows[2][k]);
            assert!(
                (theirs - ours).norm() < 1e-6,
                "{what} {tok}: corner {k}: devkit {theirs:?} vs ours {ours:?}"
            );
        }
    }
    dk.len()
}

#[test]
fn devkit_reads_synth_and_agrees_on_boxes() {
    let Some(python) = DEVKIT.python_or_skip("devkit peer test") else {
        return;
    };

    let data = Path::new(env!("CARGO_TARGET_TMPDIR")).join("data_devkit");
    let _ = std::fs::remove_dir_all(&data);
    let out = run(Command::new(env!("CARGO_BIN_EXE_vlm3d"))
        .args(["synth", "--quiet", "--out"])
        .arg(&data)
        .args([
            "--scenes",
            "2",
            "--samples-per-scene",
            "3",
            "--width",
            "320",
            "--height",
            "180",
            "--seed",
            "4",
            "--version",
            VERSION,
        ]))
    .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("{}", String::from_utf8_lossy(&out.stdout).trim());

    let script = repo().join("tests/peers/devkit_boxes.py");
    let out = run(Command::new(&python).arg(&script).arg(&data).arg(VERSION))
        .unwrap_or_else(|e| panic!("devkit: {e}"));
    let dk: Value = serde_json::from_slice(&out.stdout).expect("devkit script prints JSON");

    let n = NuScenes::load(&data, VERSION).unwrap();
    assert_eq!(
        dk["samples"].as_u64().unwrap() as usize,
        n.tables().sample.len()
    );
    assert_eq!(dk["scenes"].as_u64().unwrap() as usize, n.scenes().len());
    let sds = dk["sample_data"].as_object().unwrap();
    assert_eq!(
        sds.len(),
        n.tables().sample.len() * 7,
        "devkit sees 7 key frames per sample"
    );

    let (mut n_all, mut n_any, mut n_lidar) = (0, 0, 0);
    for (token, entry) in sds {
        let sd = n.sample_data(token).unwrap();
        let channel = entry["channel"].as_str().unwrap();
        assert_eq!(n.sensor_of(sd).unwrap().channel, channel);
        let boxes = n.boxes_in_sensor(sd).unwrap();
        compare(
            &format!("{channel} {token} NONE"),
            &entry["boxes"]["none"],
            &boxes,
        );
        if entry["modality"] == "camera" {
            let cam = n.camera(sd).unwrap();
            let k = entry["intrinsic"].as_array().unwrap();
            for (r, row) in k.iter().enumerate() {
                for (c, v) in f64s(row).into_iter().enumerate() {
                    assert_eq!(v, cam.k()[(r, c)], "{channel}: intrinsic ({r}, {c})");
                }
            }
            for (level, rule) in [
                ("all", VisibilityRule::AllCorners),
                ("any", VisibilityRule::AnyCorner),
            ] {
                let seen: Vec<_> = boxes
                    .iter()
                    .filter(|b| cam.sees_corners(&b.bbox.corners(), rule))
                    .cloned()
                    .collect();
                let count = compare(
                    &format!("{channel} {token} {level}"),
                    &entry["boxes"][level],
                    &seen,
                );
                if level == "all" {
                    n_all += count;
                } else {
                    n_any += count;
                }
            }
        } else {
            assert_eq!(entry["modality"], "lidar");
            n_lidar += boxes.len();
            let points = parse_pcd_bin(&std::fs::read(n.file_path(sd)).unwrap()).unwrap();
            assert_eq!(
                entry["points"].as_u64().unwrap() as usize,
                points.len(),
                "{token}: LiDAR point count"
            );
        }
    }
    eprintln!("devkit agrees: {n_all} boxes fully in view (ALL), {n_any} partly (ANY), {n_lidar} in LiDAR frames");
    // The comparison must have teeth: boxes in view, and the two rules must differ somewhere.
    assert!(
        n_all > 0 && n_any > n_all && n_lidar > 0,
        "ALL {n_all}, ANY {n_any}, LiDAR {n_lidar}"
    );
}

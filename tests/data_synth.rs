//! The synthetic nuScenes-format generator and the nuScenes reader together: determinism, table consistency,
//! geometry of annotations and LiDAR returns, frame round trips, and bad input.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use nalgebra::{Point3, Vector3};
use vlm3d::data::nuscenes::NuScenes;
use vlm3d::data::synth::render::{parse_pcd_bin, render_camera};
use vlm3d::data::synth::{generate, SynthConfig};
use vlm3d::geometry::VisibilityRule;
use vlm3d::perception::Rig;

const VERSION: &str = "v1.0-mini";

fn config(seed: u64) -> SynthConfig {
    SynthConfig {
        scenes: 2,
        seed,
        width: 192,
        height: 108,
        samples_per_scene: 3,
        objects_per_scene: 12,
        version: VERSION.into(),
        ..Default::default()
    }
}

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("data_synth-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// One dataset shared by the read-only tests.
fn shared() -> &'static (PathBuf, NuScenes) {
    static DATA: OnceLock<(PathBuf, NuScenes)> = OnceLock::new();
    DATA.get_or_init(|| {
        let dir = scratch("shared");
        generate(&dir, &config(11)).unwrap();
        let n = NuScenes::load(&dir, VERSION).unwrap();
        (dir, n)
    })
}

/// Every file under `dir`, relative path → bytes.
fn tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.insert(
                    p.strip_prefix(root).unwrap().to_path_buf(),
                    std::fs::read(&p).unwrap(),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

#[test]
fn same_seed_same_bytes_other_seed_other_bytes() {
    let (a, b, c) = (scratch("det-a"), scratch("det-b"), scratch("det-c"));
    let sa = generate(&a, &config(5)).unwrap();
    generate(&b, &config(5)).unwrap();
    generate(&c, &config(6)).unwrap();
    let (ta, tb, tc) = (tree(&a), tree(&b), tree(&c));
    // 13 tables, 4 map masks, 6 images and one point cloud per sample.
    assert_eq!(
        ta.len(),
        13 + 4 + sa.samples * 7,
        "{:?}",
        ta.keys().collect::<Vec<_>>()
    );
    assert_eq!(sa.images, sa.samples * 6);
    assert!(ta == tb, "same seed must give identical files");
    let table =
        |t: &BTreeMap<PathBuf, Vec<u8>>, name: &str| t[&Path::new(VERSION).join(name)].clone();
    assert_ne!(
        table(&ta, "sample_annotation.json"),
        table(&tc, "sample_annotation.json")
    );
    assert_ne!(table(&ta, "ego_pose.json"), table(&tc, "ego_pose.json"));
    let jpgs = |t: &BTreeMap<PathBuf, Vec<u8>>| {
        t.iter()
            .filter(|(p, _)| p.extension().is_some_and(|e| e == "jpg"))
            .map(|(_, b)| b.clone())
            .collect::<Vec<_>>()
    };
    assert_ne!(jpgs(&ta), jpgs(&tc), "another seed must give other images");
    for d in [a, b, c] {
        std::fs::remove_dir_all(d).ok();
    }
}

#[test]
fn tables_are_consistent() {
    let (_, n) = shared();
    let t = n.tables();
    assert_eq!(t.scene.len(), 2);
    assert_eq!(t.sensor.len(), 7);
    assert_eq!(t.category.len(), 23);
    assert_eq!(t.visibility.len(), 4);
    assert!(t.map.iter().map(|m| m.log_tokens.len()).sum::<usize>() == t.log.len());
    let mut total_samples = 0;
    for scene in n.scenes() {
        let samples = n.scene_samples(scene).unwrap();
        assert_eq!(samples.len(), scene.nbr_samples as usize);
        assert_eq!(samples.last().unwrap().token, scene.last_sample_token);
        assert!(samples
            .windows(2)
            .all(|w| w[0].timestamp < w[1].timestamp && w[1].prev == w[0].token));
        let counts: Vec<usize> = samples
            .iter()
            .map(|s| n.sample_annotations(s).len())
            .collect();
        // Every instance of the scene is annotated in every sample.
        assert!(
            counts.iter().all(|&c| c == counts[0] && c > 0),
            "{counts:?}"
        );
        for s in &samples {
            let key = n.key_frames(s);
            assert_eq!(key.len(), 7);
            for ch in Rig::nuscenes().sensors().iter().map(|s| s.channel.as_str()) {
                let sd = n
                    .key_frame(s, ch)
                    .unwrap()
                    .unwrap_or_else(|| panic!("no {ch} in {}", s.token));
                assert_eq!(sd.timestamp, s.timestamp);
                assert!(n.file_path(sd).is_file(), "{}", sd.filename);
                let is_cam = ch.starts_with("CAM");
                assert_eq!(
                    n.sensor_of(sd).unwrap().modality,
                    if is_cam { "camera" } else { "lidar" }
                );
                assert_eq!(n.camera(sd).is_ok(), is_cam);
                if is_cam {
                    let img = image::open(n.file_path(sd)).unwrap();
                    assert_eq!((img.width(), img.height()), (192, 108));
                }
            }
            // One ego pose per sample_data, as in nuScenes.
            let poses: std::collections::HashSet<_> =
                key.iter().map(|sd| sd.ego_pose_token.clone()).collect();
            assert_eq!(poses.len(), 7);
        }
        total_samples += samples.len();
    }
    assert_eq!(total_samples, t.sample.len());
    // Instance tracks: first → next … → last visits nbr_annotations annotations of one instance.
    for inst in &t.instance {
        let mut tok = inst.first_annotation_token.clone();
        let mut seen = 0;
        let mut prev = String::new();
        while !tok.is_empty() {
            let a = n.sample_annotation(&tok).unwrap();
            assert_eq!(a.instance_token, inst.token);
            assert_eq!(a.prev, prev);
            seen += 1;
            prev = tok.clone();
            tok = a.next.clone();
        }
        assert_eq!(prev, inst.last_annotation_token);
        assert_eq!(seen, inst.nbr_annotations);
    }
    // sample_data chains per sensor within a scene.
    for sd in &t.sample_data {
        if !sd.next.is_empty() {
            let next = n.sample_data(&sd.next).unwrap();
            assert_eq!(next.prev, sd.token);
            assert_eq!(next.calibrated_sensor_token, sd.calibrated_sensor_token);
            assert!(next.timestamp > sd.timestamp);
        }
    }
    // Categories used are real nuScenes names; some objects move.
    let names: std::collections::HashSet<_> = t
        .instance
        .iter()
        .map(|i| n.category(&i.category_token).unwrap().name.clone())
        .collect();
    assert!(names.len() >= 4, "{names:?}");
    assert!(names.iter().all(|c| c.starts_with("vehicle.")
        || c.starts_with("human.")
        || c.starts_with("movable_object.")));
}

#[test]
fn annotations_stand_on_the_ground_with_real_sizes() {
    let (_, n) = shared();
    let mut moved = 0;
    for a in &n.tables().sample_annotation {
        let b = n.annotation_box(a).unwrap();
        let lowest = b
            .corners()
            .iter()
            .map(|c| c.z)
            .fold(f64::INFINITY, f64::min);
        assert!(lowest.abs() < 1e-9, "{}: bottom at z = {lowest}", a.token);
        let up = b.rotation * Vector3::z();
        assert!((up.z - 1.0).abs() < 1e-12, "{}: box not level", a.token);
        // nuScenes order (w, l, h): every category here is longer than wide except barriers.
        let cat = &n.annotation_category(a).unwrap().name;
        let [w, l, h] = a.size;
        assert!(
            w > 0.2 && l > 0.2 && h > 0.5 && h < 4.5,
            "{cat}: {:?}",
            a.size
        );
        if cat != "movable_object.barrier" {
            assert!(
                l >= w * 0.9,
                "{cat}: size must be (w, l, h), got {:?}",
                a.size
            );
        }
        if !a.next.is_empty() {
            let b2 = n.sample_annotation(&a.next).unwrap();
            if (b2.translation[0] - a.translation[0]).hypot(b2.translation[1] - a.translation[1])
                > 0.1
            {
                moved += 1;
            }
        }
    }
    assert!(moved > 0, "some objects must move");
}

#[test]
fn lidar_points_lie_on_ground_or_box_surfaces() {
    let (_, n) = shared();
    let tol = 2e-3; // float32 storage of coordinates up to 70 m
    let mut total_box_points = 0i64;
    let mut total_num_lidar = 0i64;
    for s in &n.tables().sample {
        let sd = n
            .key_frame(s, &Rig::nuscenes().lidar.channel)
            .unwrap()
            .unwrap();
        let bytes = std::fs::read(n.file_path(sd)).unwrap();
        let pts = parse_pcd_bin(&bytes).expect("5 float32 per point");
        assert!(pts.len() > 10_000, "{} points", pts.len());
        let to_global = n.sensor_to_global(sd).unwrap();
        let boxes: Vec<_> = n
            .sample_annotations(s)
            .iter()
            .map(|a| n.annotation_box(a).unwrap())
            .collect();
        let mut on_boxes = 0i64;
        let mut rings = std::collections::HashSet::new();
        for p in &pts {
            rings.insert(p[4] as u32);
            let g = to_global * Point3::new(p[0] as f64, p[1] as f64, p[2] as f64);
            let on_box = boxes.iter().any(|b| {
                let local = b.rotation.inverse() * (g - b.center);
                let half = [b.size[0] / 2.0, b.size[1] / 2.0, b.size[2] / 2.0];
                let inside = (0..3).all(|i| local[i].abs() <= half[i] + tol);
                inside && (0..3).any(|i| (local[i].abs() - half[i]).abs() < tol)
            });
            let on_ground = g.z.abs() < tol;
            assert!(
                on_box || on_ground,
                "point {g:?} is neither on the ground nor on a box"
            );
            if on_box && g.z > tol {
                on_boxes += 1;
            }
        }
        // Low rings always hit the ground; the upward ones only where an object stands.
        assert!(
            rings.len() >= 16 && rings.iter().all(|&r| r < 32),
            "rings {rings:?}"
        );
        total_box_points += on_boxes;
        total_num_lidar += n
            .sample_annotations(s)
            .iter()
            .map(|a| a.num_lidar_pts)
            .sum::<i64>();
    }
    assert!(total_box_points > 0);
    // Box returns at the very bottom edge count as ground above; allow for them.
    let diff = (total_num_lidar - total_box_points).abs() as f64;
    assert!(
        diff <= 0.02 * total_num_lidar as f64,
        "num_lidar_pts {total_num_lidar} vs {total_box_points} box returns"
    );
}

#[test]
fn global_ego_lidar_round_trip() {
    let (_, n) = shared();
    for s in &n.tables().sample {
        let sd = n
            .key_frame(s, &Rig::nuscenes().lidar.channel)
            .unwrap()
            .unwrap();
        let ego = n.ego_to_global(sd).unwrap();
        let lidar = n.sensor_to_ego(sd).unwrap();
        let pose = n.ego_pose(&sd.ego_pose_token).unwrap();
        let cs = n.calibrated_sensor(&sd.calibrated_sensor_token).unwrap();
        let in_lidar = n.boxes_in_sensor(sd).unwrap();
        for ab in &in_lidar {
            let g = n.annotation_box(ab.annotation).unwrap();
            // Independent path: subtract translations and rotate by inverse quaternions, as the devkit does.
            let q_ego = nalgebra::UnitQuaternion::from_quaternion(nalgebra::Quaternion::new(
                pose.rotation[0],
                pose.rotation[1],
                pose.rotation[2],
                pose.rotation[3],
            ));
            let q_cs = nalgebra::UnitQuaternion::from_quaternion(nalgebra::Quaternion::new(
                cs.rotation[0],
                cs.rotation[1],
                cs.rotation[2],
                cs.rotation[3],
            ));
            let c_ego = q_ego.inverse() * (g.center.coords - Vector3::from(pose.translation));
            let c_lidar = q_cs.inverse() * (c_ego - Vector3::from(cs.translation));
            assert!((c_lidar - ab.bbox.center.coords).norm() < 1e-9);
            // And back: LiDAR → ego → global lands where it started.
            let back = ab.bbox.transform(&lidar).transform(&ego);
            assert!(
                (back.center - g.center).norm() < 1e-6,
                "{}",
                ab.annotation.token
            );
            assert!(back.rotation.angle_to(&g.rotation) < 1e-9);
            assert_eq!(back.size, g.size);
            // In the LiDAR frame (z up) the box is level and its yaw is the global yaw minus the sensor's.
            let yaw = ab.bbox.yaw();
            let expected = g.yaw() - (ego.rotation * lidar.rotation).euler_angles().2;
            let d = (yaw - expected).rem_euclid(std::f64::consts::TAU);
            assert!(
                d.min(std::f64::consts::TAU - d) < 2e-2,
                "yaw {yaw} vs {expected}"
            );
        }
    }
}

#[test]
fn visible_boxes_show_in_their_images() {
    // Where an unoccluded box that lies inside a camera projects, the image must differ from the bare
    // background (ground and sky rendered without objects); boxes behind the camera never count as visible.
    let (_, n) = shared();
    let (mut all_visible, mut any_visible, mut checked, mut differs) = (0, 0, 0, 0);
    for s in &n.tables().sample {
        for ch in Rig::nuscenes().camera_channels() {
            let sd = n.key_frame(s, ch).unwrap().unwrap();
            let cam = n.camera(sd).unwrap();
            let img = image::open(n.file_path(sd)).unwrap().to_rgb8();
            let (bare, _) = render_camera(&cam, &n.sensor_to_global(sd).unwrap(), &[]);
            for ab in n.boxes_in_sensor(sd).unwrap() {
                let corners = ab.bbox.corners();
                let all = cam.sees_corners(&corners, VisibilityRule::AllCorners);
                any_visible += cam.sees_corners(&corners, VisibilityRule::AnyCorner) as usize;
                all_visible += all as usize;
                if all && ab.bbox.center.z < 0.0 {
                    panic!("a box behind {ch} passes the visibility rule");
                }
                let px: Vec<_> = corners
                    .iter()
                    .map(|c| cam.project(c).unwrap_or_default())
                    .collect();
                let span = px.iter().map(|p| p.x).fold(f64::MIN, f64::max)
                    - px.iter().map(|p| p.x).fold(f64::MAX, f64::min);
                if all && ab.annotation.visibility_token == "4" && span > 8.0 {
                    let c = cam.project(&ab.bbox.center).unwrap();
                    let (a, b) = (
                        img.get_pixel(c.x as u32, c.y as u32).0,
                        bare.get_pixel(c.x as u32, c.y as u32).0,
                    );
                    let d: i32 = a
                        .iter()
                        .zip(b)
                        .map(|(x, y)| (*x as i32 - y as i32).abs())
                        .sum();
                    checked += 1;
                    differs += (d > 40) as usize;
                }
            }
        }
    }
    assert!(
        all_visible > 0 && any_visible > all_visible,
        "all {all_visible} any {any_visible}"
    );
    assert!(checked >= 3, "only {checked} boxes checked");
    assert!(
        differs * 10 >= checked * 8,
        "{differs} of {checked} visible boxes show in their image"
    );
}

fn copy_dataset(from: &Path, name: &str) -> PathBuf {
    let to = scratch(name);
    std::fs::create_dir_all(to.join(VERSION)).unwrap();
    for e in std::fs::read_dir(from.join(VERSION)).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, to.join(VERSION).join(p.file_name().unwrap())).unwrap();
    }
    to
}

fn edit_table(
    dir: &Path,
    table: &str,
    f: impl FnOnce(&mut Vec<serde_json::Value>) -> String,
) -> String {
    let path = dir.join(VERSION).join(format!("{table}.json"));
    let mut v: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let token = f(&mut v);
    std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
    token
}

#[test]
fn bad_input_names_file_and_record() {
    let (dir, _) = shared();

    let d = copy_dataset(dir, "bad-missing");
    std::fs::remove_file(d.join(VERSION).join("calibrated_sensor.json")).unwrap();
    let e = NuScenes::load(&d, VERSION).unwrap_err().to_string();
    assert!(
        e.contains("calibrated_sensor.json") && e.contains("missing"),
        "{e}"
    );

    let d = copy_dataset(dir, "bad-dangling");
    let tok = edit_table(&d, "sample_data", |v| {
        v[4]["calibrated_sensor_token"] = "0123".into();
        v[4]["token"].as_str().unwrap().to_owned()
    });
    let e = NuScenes::load(&d, VERSION).unwrap_err().to_string();
    assert!(
        e.contains("sample_data.json") && e.contains(&tok) && e.contains("0123"),
        "{e}"
    );

    let d = copy_dataset(dir, "bad-quat");
    let tok = edit_table(&d, "sample_annotation", |v| {
        v[7]["rotation"] = serde_json::json!([0.0, 0.0, 0.0, 0.0]);
        v[7]["token"].as_str().unwrap().to_owned()
    });
    let e = NuScenes::load(&d, VERSION).unwrap_err().to_string();
    assert!(
        e.contains("sample_annotation.json") && e.contains(&tok) && e.contains("zero quaternion"),
        "{e}"
    );

    let d = copy_dataset(dir, "bad-json");
    std::fs::write(
        d.join(VERSION).join("ego_pose.json"),
        b"[{\"token\": \"x\", ",
    )
    .unwrap();
    let e = NuScenes::load(&d, VERSION).unwrap_err().to_string();
    assert!(e.contains("ego_pose.json"), "{e}");

    let e = vlm3d::data::synth::generate(
        &scratch("bad-cfg"),
        &SynthConfig {
            scenes: 0,
            ..config(1)
        },
    )
    .unwrap_err();
    assert!(e.to_string().contains("scene"), "{e}");
}

#[test]
fn sweeps_are_non_key_frames_chained_in_time() {
    let dir = scratch("sweeps");
    let cfg = SynthConfig {
        scenes: 1,
        samples_per_scene: 2,
        width: 64,
        height: 36,
        objects_per_scene: 4,
        sweeps: true,
        lidar: vlm3d::data::synth::render::LidarSpec {
            azimuth_steps: 120,
            ..Default::default()
        },
        ..config(3)
    };
    let summary = generate(&dir, &cfg).unwrap();
    let n = NuScenes::load(&dir, VERSION).unwrap();
    let t = n.tables();
    // Key frames: 7 per sample; between the two samples, 5 sweeps per camera and 9 LiDAR sweeps.
    assert_eq!(t.sample_data.len(), 2 * 7 + 5 * 6 + 9);
    assert_eq!(summary.images, 2 * 6 + 5 * 6);
    let samples = n.scene_samples(&n.scenes()[0]).unwrap();
    for sd in t.sample_data.iter().filter(|sd| !sd.is_key_frame) {
        assert!(sd.filename.starts_with("sweeps/"), "{}", sd.filename);
        assert!(n.file_path(sd).is_file());
        // A sweep belongs to the next key frame, and lies between the two.
        assert_eq!(sd.sample_token, samples[1].token);
        assert!(sd.timestamp > samples[0].timestamp && sd.timestamp < samples[1].timestamp);
    }
    assert_eq!(n.key_frames(samples[0]).len(), 7);
    // Each sensor's chain runs key frame → sweeps → key frame, in time order.
    for ch in Rig::nuscenes().sensors().iter().map(|s| s.channel.as_str()) {
        let mut sd = n.key_frame(samples[0], ch).unwrap().unwrap();
        let mut hops = 0;
        while !sd.next.is_empty() {
            let next = n.sample_data(&sd.next).unwrap();
            assert!(next.timestamp > sd.timestamp && next.prev == sd.token);
            sd = next;
            hops += 1;
        }
        assert!(sd.is_key_frame && sd.sample_token == samples[1].token);
        assert_eq!(hops, if ch.starts_with("CAM") { 6 } else { 10 }, "{ch}");
    }
    let all = n.scene_sample_data(&n.scenes()[0]).unwrap();
    assert_eq!(all.len(), t.sample_data.len());
    assert!(all.windows(2).all(|w| w[0].timestamp <= w[1].timestamp));
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn interrupted_run_never_reads_as_a_dataset() {
    let dir = scratch("interrupted");
    let cfg = SynthConfig {
        scenes: 1,
        samples_per_scene: 1,
        width: 32,
        height: 18,
        objects_per_scene: 2,
        lidar: vlm3d::data::synth::render::LidarSpec {
            azimuth_steps: 36,
            ..Default::default()
        },
        ..config(9)
    };
    generate(&dir, &cfg).unwrap();
    assert!(NuScenes::load(&dir, VERSION).is_ok());
    // A second run into the same folder fails half-way (a file where the LiDAR folder must go).
    std::fs::remove_dir_all(dir.join("samples/LIDAR_TOP")).unwrap();
    std::fs::write(dir.join("samples/LIDAR_TOP"), b"in the way").unwrap();
    let e = generate(&dir, &SynthConfig { seed: 10, ..cfg })
        .unwrap_err()
        .to_string();
    assert!(e.contains("LIDAR_TOP"), "{e}");
    let e = NuScenes::load(&dir, VERSION).unwrap_err().to_string();
    assert!(e.contains("scene.json") && e.contains("missing"), "{e}");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn cli_synth_writes_a_dataset_and_rejects_bad_arguments() {
    let dir = scratch("cli");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vlm3d"))
        .args([
            "synth",
            "--quiet",
            "--scenes",
            "1",
            "--samples-per-scene",
            "2",
            "--width",
            "48",
        ])
        .args([
            "--height",
            "27",
            "--objects",
            "3",
            "--seed",
            "12",
            "--sweeps",
            "--version",
            "v1.0-test-synth",
            "--out",
        ])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("1 scenes, 2 samples, 6 annotations, 42 images"),
        "{stdout}"
    );
    let n = NuScenes::load(&dir, "v1.0-test-synth").unwrap();
    assert_eq!(n.tables().sample.len(), 2);
    assert!(n.tables().sample_data.iter().any(|sd| !sd.is_key_frame));

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vlm3d"))
        .args(["synth", "--quiet", "--scenes", "0", "--out"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("scene"), "{stderr}");
    std::fs::remove_dir_all(dir).ok();
}

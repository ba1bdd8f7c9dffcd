//! synth → convert → dataset on a small synthetic set, checked against the source tables; and bad input
//! (truncated MCAP, missing table, missing image, zero quaternion, overwrite protection).
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use nalgebra::{Isometry3, Point3};
use vlm3d::data::bag::msgs::{
    BoundingBox3DArrayMsg, CameraInfo, CompressedImage, PointCloud2, StringMsg, TFMessage,
};
use vlm3d::data::bag::rosbag::BagReader;
use vlm3d::data::convert::{convert_loaded, convert_nuscenes, ConvertOptions};
use vlm3d::data::dataset::{Dataset, DatasetConfig, Split, PAPER_PROMPT};
use vlm3d::data::nuscenes::NuScenes;
use vlm3d::data::synth::{generate, SynthConfig};
use vlm3d::geometry::Frame;
use vlm3d::geometry::{isometry_from_nuscenes, OrientedBox3D, VisibilityRule};

const VERSION: &str = "v1.0-mini";

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vlm3d-pipeline-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// A small synthetic set: 2 scenes × 3 samples, six 320×180 cameras and the LiDAR.
fn synth(dir: &Path) -> NuScenes {
    let cfg = SynthConfig {
        scenes: 2,
        seed: 11,
        width: 320,
        height: 180,
        samples_per_scene: 3,
        objects_per_scene: 14,
        version: VERSION.into(),
        progress: false,
        ..Default::default()
    };
    generate(dir, &cfg).unwrap();
    NuScenes::load(dir, VERSION).unwrap()
}

fn opts(out: &Path) -> ConvertOptions {
    let mut o = ConvertOptions::new(out);
    o.progress = false;
    o.chunk_size = 64 * 1024;
    o
}

fn iso_close(a: &Isometry3<f64>, b: &Isometry3<f64>, tol: f64) -> bool {
    (a.translation.vector - b.translation.vector).norm() < tol
        && a.rotation.angle_to(&b.rotation) < tol
}

/// global → LiDAR for a sample, from the raw table records (not the reader's helpers).
fn global_to_lidar(
    nusc: &NuScenes,
    lidar_sd: &vlm3d::data::nuscenes::SampleData,
) -> Isometry3<f64> {
    let ego = nusc.ego_pose(&lidar_sd.ego_pose_token).unwrap();
    let cal = nusc
        .calibrated_sensor(&lidar_sd.calibrated_sensor_token)
        .unwrap();
    let e = isometry_from_nuscenes(ego.translation, ego.rotation).unwrap();
    let c = isometry_from_nuscenes(cal.translation, cal.rotation).unwrap();
    (e * c).inverse()
}

#[test]
fn synth_convert_dataset_match_the_tables() {
    let root = tmp("ok");
    let data = root.join("nuscenes");
    let nusc = synth(&data);
    let bag = root.join("bag");
    let report = convert_loaded(&nusc, &opts(&bag)).unwrap();
    let n_samples = nusc.tables().sample.len();
    assert_eq!(report.samples, n_samples);
    assert_eq!(report.scenes, 2);
    assert!(bag.join("metadata.yaml").exists() && bag.join("bag_0.mcap").exists());
    assert!(!root.join("bag.partial").exists());

    // Topic types and counts.
    let reader = BagReader::open(&bag).unwrap();
    let meta = reader.metadata().unwrap().clone();
    let counts: BTreeMap<String, (String, u64)> = meta
        .topics_with_message_count
        .iter()
        .map(|t| {
            (
                t.topic_metadata.name.clone(),
                (t.topic_metadata.type_name.clone(), t.message_count),
            )
        })
        .collect();
    let n = n_samples as u64;
    assert_eq!(
        counts["/annotations"],
        ("vlm3d/msg/BoundingBox3DArray".into(), n)
    );
    assert_eq!(counts["/vlm3d/sample"], ("std_msgs/msg/String".into(), n));
    assert_eq!(counts["/tf_static"], ("tf2_msgs/msg/TFMessage".into(), 2));
    assert_eq!(counts["/tf"], ("tf2_msgs/msg/TFMessage".into(), 7 * n));
    assert_eq!(
        counts["/lidar_top"],
        ("sensor_msgs/msg/PointCloud2".into(), n)
    );
    for cam in [
        "cam_front",
        "cam_front_left",
        "cam_front_right",
        "cam_back",
        "cam_back_left",
        "cam_back_right",
    ] {
        assert_eq!(
            counts[&format!("/{cam}/image_rect_compressed")],
            ("sensor_msgs/msg/CompressedImage".into(), n)
        );
        assert_eq!(
            counts[&format!("/{cam}/camera_info")],
            ("sensor_msgs/msg/CameraInfo".into(), n)
        );
    }
    assert_eq!(
        meta.message_count,
        counts.values().map(|c| c.1).sum::<u64>()
    );

    // Every message decodes; annotations, images, clouds and poses equal the tables.
    let lidar_by_stamp: HashMap<u64, &vlm3d::data::nuscenes::SampleData> = nusc
        .tables()
        .sample
        .iter()
        .map(|s| {
            let sd = nusc.key_frame(s, "LIDAR_TOP").unwrap().unwrap();
            (sd.timestamp as u64 * 1000, sd)
        })
        .collect();
    let sd_by_file: HashMap<u64, Vec<&vlm3d::data::nuscenes::SampleData>> = nusc
        .tables()
        .sample_data
        .iter()
        .fold(HashMap::new(), |mut m, sd| {
            m.entry(sd.timestamp as u64 * 1000).or_default().push(sd);
            m
        });
    let mut n_boxes = 0;
    let mut n_infos = 0;
    let mut last_t = 0;
    for m in reader.messages() {
        let m = m.unwrap();
        match &*m.type_name {
            "vlm3d/msg/BoundingBox3DArray" => {
                let arr: BoundingBox3DArrayMsg = m.decode().unwrap();
                assert_eq!(arr.header.frame_id, "lidar_top");
                assert_eq!(arr.header.stamp.to_nanos(), m.log_time);
                let sd = lidar_by_stamp[&m.log_time];
                let sample = nusc.sample(&sd.sample_token).unwrap();
                let anns = nusc.sample_annotations(sample);
                assert_eq!(arr.boxes.len(), anns.len());
                let g2l = global_to_lidar(&nusc, sd);
                for (b, a) in arr.boxes.iter().zip(&anns) {
                    let global =
                        OrientedBox3D::from_nuscenes(a.translation, a.size, a.rotation).unwrap();
                    let expect = global.transform(&g2l);
                    let c = Point3::new(
                        b.center.position.x,
                        b.center.position.y,
                        b.center.position.z,
                    );
                    assert!(
                        (c - expect.center).norm() < 1e-6,
                        "{c} vs {}",
                        expect.center
                    );
                    assert_eq!(
                        [b.size.x, b.size.y, b.size.z],
                        [a.size[1], a.size[0], a.size[2]]
                    );
                    let o = &b.center.orientation;
                    let q = nalgebra::UnitQuaternion::from_quaternion(nalgebra::Quaternion::new(
                        o.w, o.x, o.y, o.z,
                    ));
                    assert!(q.angle_to(&expect.rotation) < 1e-9);
                    // And back: LiDAR → ego → global lands where it started.
                    let back = g2l.inverse() * c;
                    assert!((back - Point3::from(a.translation)).norm() < 1e-6);
                    assert_eq!(b.instance_id, a.instance_token);
                    assert_eq!(b.label, nusc.annotation_category(a).unwrap().name);
                    n_boxes += 1;
                }
            }
            "sensor_msgs/msg/CompressedImage" => {
                let img: CompressedImage = m.decode().unwrap();
                assert_eq!(img.format, "jpeg");
                let sd = sd_by_file[&m.log_time]
                    .iter()
                    .find(|sd| {
                        nusc.sensor_of(sd).unwrap().channel.to_lowercase() == img.header.frame_id
                    })
                    .unwrap();
                assert_eq!(
                    img.data,
                    std::fs::read(nusc.file_path(sd)).unwrap(),
                    "original JPEG bytes"
                );
            }
            "sensor_msgs/msg/CameraInfo" => {
                let info: CameraInfo = m.decode().unwrap();
                let sd = sd_by_file[&m.log_time]
                    .iter()
                    .find(|sd| {
                        nusc.sensor_of(sd).unwrap().channel.to_lowercase() == info.header.frame_id
                    })
                    .unwrap();
                let cal = nusc.calibrated_sensor(&sd.calibrated_sensor_token).unwrap();
                assert_eq!(info.k_rows()[0].to_vec(), cal.camera_intrinsic[0]);
                assert_eq!(info.k_rows()[1].to_vec(), cal.camera_intrinsic[1]);
                assert_eq!(info.p[3], 0.0);
                assert_eq!(info.p[0], cal.camera_intrinsic[0][0]);
                assert_eq!(info.r, [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]);
                assert_eq!((info.width, info.height), (sd.width, sd.height));
            }
            "sensor_msgs/msg/PointCloud2" => {
                let pc: PointCloud2 = m.decode().unwrap();
                assert_eq!(pc.point_step, 20);
                let names: Vec<_> = pc.fields.iter().map(|f| f.name.as_str()).collect();
                assert_eq!(names, ["x", "y", "z", "intensity", "ring"]);
                let sd = lidar_by_stamp[&m.log_time];
                assert_eq!(pc.data, std::fs::read(nusc.file_path(sd)).unwrap());
                assert_eq!(pc.width as usize * 20, pc.data.len());
            }
            "tf2_msgs/msg/TFMessage" => {
                let tf: TFMessage = m.decode().unwrap();
                if &*m.topic == "/tf" {
                    assert_eq!(tf.transforms.len(), 1);
                    assert_eq!(tf.transforms[0].header.frame_id, "map");
                    assert_eq!(tf.transforms[0].child_frame_id, "base_link");
                } else {
                    assert_eq!(tf.transforms.len(), 7);
                    assert!(tf
                        .transforms
                        .iter()
                        .all(|t| t.header.frame_id == "base_link"));
                }
            }
            "std_msgs/msg/String" if &*m.topic == "/vlm3d/annotation_info" => {
                // Per box of the sample's annotations, in their order: the table's point counts and attributes.
                let s: StringMsg = m.decode().unwrap();
                let info: vlm3d::data::bag::bagschema::AnnotationInfo =
                    serde_json::from_str(&s.data).unwrap();
                let sample = nusc.sample(&info.sample_token).unwrap();
                let anns = nusc.sample_annotations(sample);
                assert_eq!(info.boxes.len(), anns.len());
                for (f, a) in info.boxes.iter().zip(&anns) {
                    assert_eq!(f.instance_id, a.instance_token);
                    assert_eq!(
                        (f.num_lidar_pts, f.num_radar_pts),
                        (a.num_lidar_pts, a.num_radar_pts)
                    );
                    assert_eq!(f.attributes.len(), a.attribute_tokens.len());
                    // A velocity exactly where the instance has a neighbouring annotation.
                    assert_eq!(
                        f.velocity.is_some(),
                        !(a.prev.is_empty() && a.next.is_empty())
                    );
                }
                n_infos += 1;
            }
            "std_msgs/msg/String" => {
                let s: StringMsg = m.decode().unwrap();
                assert!(s.data.contains("scene_token"));
            }
            other => panic!("unexpected type {other}"),
        }
        last_t = last_t.max(m.log_time);
    }
    assert_eq!(n_boxes, nusc.tables().sample_annotation.len());
    assert_eq!(n_infos, nusc.tables().sample.len());
    assert!(n_boxes > 0);

    // The dataset: per sample and camera, boxes visible by the paper's rule, equal to the tables' boxes.
    for frame in [Frame::Lidar, Frame::Camera] {
        let cfg = DatasetConfig {
            target_frame: frame,
            ..Default::default()
        };
        let mut n_examples = 0;
        let mut n_visible = 0;
        for ex in Dataset::new([bag.clone()], cfg) {
            let ex = ex.unwrap();
            n_examples += 1;
            let sample = nusc.sample(&ex.sample_token).unwrap();
            let cam_sd = nusc.key_frame(sample, &ex.channel).unwrap().unwrap();
            let lidar_sd = nusc.key_frame(sample, "LIDAR_TOP").unwrap().unwrap();
            assert_eq!(
                ex.image_jpeg,
                std::fs::read(nusc.file_path(cam_sd)).unwrap()
            );
            assert_eq!(ex.camera, nusc.camera(cam_sd).unwrap());
            let expect_c2l =
                global_to_lidar(&nusc, lidar_sd) * nusc.sensor_to_global(cam_sd).unwrap();
            assert!(iso_close(&ex.cam_to_lidar, &expect_c2l, 1e-9));
            // Expected: the devkit's boxes in the camera frame (ego pose at the image's time) that pass the rule.
            let cam_boxes = nusc.boxes_in_sensor(cam_sd).unwrap();
            let lidar_boxes = nusc.boxes_in_sensor(lidar_sd).unwrap();
            let expected: Vec<_> = cam_boxes
                .iter()
                .zip(&lidar_boxes)
                .filter(|(c, _)| {
                    ex.camera
                        .sees_corners(&c.bbox.corners(), VisibilityRule::AllCorners)
                })
                .collect();
            assert_eq!(
                ex.boxes.len(),
                expected.len(),
                "{} {}",
                ex.sample_token,
                ex.channel
            );
            for (b, (c, l)) in ex.boxes.iter().zip(&expected) {
                assert_eq!(b.instance_id, c.annotation.instance_token);
                assert_eq!(b.category, c.category);
                let want = if frame == Frame::Lidar {
                    &l.bbox
                } else {
                    &c.bbox
                };
                assert!((b.oriented.center - want.center).norm() < 1e-6);
                assert!(b.oriented.rotation.angle_to(&want.rotation) < 1e-9);
                assert_eq!(b.oriented.size, want.size);
            }
            n_visible += ex.boxes.len();
            // Prompts: one per category present (answered by its boxes), negatives with no box.
            let positives: Vec<_> = ex.prompts.iter().filter(|p| !p.boxes.is_empty()).collect();
            let cats: std::collections::BTreeSet<_> = ex
                .boxes
                .iter()
                .map(|b| vlm3d::data::dataset::prompt_name(&b.category))
                .collect();
            assert_eq!(positives.len(), cats.len());
            assert_eq!(
                positives.iter().map(|p| p.boxes.len()).sum::<usize>(),
                ex.boxes.len()
            );
            assert!(ex.prompts.iter().any(|p| p.boxes.is_empty()));
            for p in &ex.prompts {
                assert_eq!(p.text, PAPER_PROMPT.replace("{category}", &p.category));
            }
        }
        assert_eq!(n_examples, n_samples * 6);
        assert!(
            n_visible > 0,
            "no visible box at all: the check would be vacuous"
        );
    }

    // The split partitions the scenes.
    let scenes_of = |split| {
        let cfg = DatasetConfig {
            split,
            val_fraction: 0.5,
            ..Default::default()
        };
        Dataset::new([bag.clone()], cfg)
            .map(|e| e.unwrap().scene_name)
            .collect::<std::collections::BTreeSet<_>>()
    };
    let (train, val) = (scenes_of(Split::Train), scenes_of(Split::Val));
    assert!(train.is_disjoint(&val));
    assert_eq!(train.len() + val.len(), 2);

    // The streaming converter (tables split by scene on disk) writes the very same messages, and removes
    // its scratch folder.
    let streamed = root.join("bag-streamed");
    let r2 = convert_nuscenes(&data, VERSION, &opts(&streamed)).unwrap();
    assert_eq!((r2.scenes, r2.samples), (report.scenes, report.samples));
    assert!(!root.join("bag-streamed.partial-tables").exists());
    let all = |b: &Path| -> Vec<(String, u64, Vec<u8>)> {
        BagReader::open(b)
            .unwrap()
            .messages()
            .map(|m| {
                let m = m.unwrap();
                (m.topic.to_string(), m.log_time, m.data)
            })
            .collect()
    };
    let (a, b) = (all(&bag), all(&streamed));
    assert_eq!(a.len(), b.len());
    assert!(a == b, "the streamed bag differs from the loaded one");
    // Only the first scene.
    let mut o = opts(&root.join("bag-one"));
    o.max_scenes = Some(1);
    let r1 = convert_nuscenes(&data, VERSION, &o).unwrap();
    assert_eq!((r1.scenes, r1.samples), (1, 3));

    // No overwrite without force; with force, a fresh bag.
    let e = convert_loaded(&nusc, &opts(&bag)).unwrap_err().to_string();
    assert!(e.contains("--force"), "{e}");
    let mut o = opts(&bag);
    o.force = true;
    o.lidar = false;
    let r = convert_loaded(&nusc, &o).unwrap();
    assert!(r.topics.iter().all(|t| t.0 != "/lidar_top" || t.2 == 0));
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn bad_input_names_the_file_and_the_record() {
    let root = tmp("bad");
    let data = root.join("nuscenes");
    let nusc = synth(&data);

    // Truncated MCAP: the messages before the damage, then an error naming the file.
    let bag = root.join("bag");
    convert_loaded(&nusc, &opts(&bag)).unwrap();
    let mcap = bag.join("bag_0.mcap");
    let full: Vec<_> = BagReader::open(&bag)
        .unwrap()
        .messages()
        .map(|m| m.unwrap())
        .collect();
    let bytes = std::fs::read(&mcap).unwrap();
    std::fs::write(&mcap, &bytes[..bytes.len() * 3 / 5]).unwrap();
    let mut good = 0;
    let mut err = None;
    for m in BagReader::open(&bag).unwrap().messages() {
        match m {
            Ok(m) => {
                assert_eq!(m.data, full[good].data);
                good += 1;
            }
            Err(e) => err = Some(e.to_string()),
        }
    }
    assert!(good > 0 && good < full.len(), "{good} of {}", full.len());
    let e = err.expect("an error after the good messages");
    assert!(e.contains("bag_0.mcap") && e.contains("offset"), "{e}");
    // The dataset yields the examples completed before the damage, then the error.
    let items: Vec<_> = Dataset::new([bag.clone()], DatasetConfig::default()).collect();
    assert!(items.last().unwrap().is_err());
    assert!(items.iter().filter(|i| i.is_ok()).count() > 0);

    // An unfinished conversion (no metadata.yaml) is not a bag.
    std::fs::remove_file(bag.join("metadata.yaml")).unwrap();
    assert!(BagReader::open(&bag)
        .unwrap_err()
        .to_string()
        .contains("metadata.yaml"));

    // Missing image file.
    let sd = nusc
        .tables()
        .sample_data
        .iter()
        .find(|sd| sd.filename.contains("CAM_BACK_LEFT"))
        .unwrap()
        .clone();
    let img = nusc.file_path(&sd);
    std::fs::rename(&img, root.join("moved.jpg")).unwrap();
    let e = convert_loaded(&nusc, &opts(&root.join("bag2")))
        .unwrap_err()
        .to_string();
    assert!(e.contains(&sd.filename) && e.contains(&sd.token), "{e}");
    assert!(
        !root.join("bag2").exists(),
        "no bag from a failed conversion"
    );
    std::fs::rename(root.join("moved.jpg"), &img).unwrap();

    // Zero quaternion in an annotation.
    let table = data.join(VERSION).join("sample_annotation.json");
    let text = std::fs::read_to_string(&table).unwrap();
    let mut anns: serde_json::Value = serde_json::from_str(&text).unwrap();
    let token = anns[1]["token"].as_str().unwrap().to_string();
    anns[1]["rotation"] = serde_json::json!([0.0, 0.0, 0.0, 0.0]);
    std::fs::write(&table, anns.to_string()).unwrap();
    let e = convert_nuscenes(&data, VERSION, &opts(&root.join("bag3")))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("sample_annotation.json") && e.contains(&token),
        "{e}"
    );

    // A sample_data whose sample does not exist: the streaming split names the file and the record.
    std::fs::write(&table, &text).unwrap();
    let sd_table = data.join(VERSION).join("sample_data.json");
    let sd_text = std::fs::read_to_string(&sd_table).unwrap();
    let mut sds: serde_json::Value = serde_json::from_str(&sd_text).unwrap();
    let sd_token = sds[3]["token"].as_str().unwrap().to_string();
    sds[3]["sample_token"] = serde_json::json!("feedfacefeedfacefeedfacefeedface");
    std::fs::write(&sd_table, sds.to_string()).unwrap();
    let e = convert_nuscenes(&data, VERSION, &opts(&root.join("bag5")))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("sample_data.json") && e.contains(&sd_token) && e.contains("feedface"),
        "{e}"
    );
    // A table that is not JSON: the file and the line.
    std::fs::write(&sd_table, &sd_text[..sd_text.len() / 2]).unwrap();
    let e = convert_nuscenes(&data, VERSION, &opts(&root.join("bag6")))
        .unwrap_err()
        .to_string();
    assert!(e.contains("sample_data.json") && e.contains("line"), "{e}");
    std::fs::write(&sd_table, sd_text).unwrap();

    // Missing table.
    std::fs::remove_file(data.join(VERSION).join("ego_pose.json")).unwrap();
    let e = convert_nuscenes(&data, VERSION, &opts(&root.join("bag4")))
        .unwrap_err()
        .to_string();
    assert!(e.contains("ego_pose.json"), "{e}");
    std::fs::remove_dir_all(&root).unwrap();
}

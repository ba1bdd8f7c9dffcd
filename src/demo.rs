//! The built-in demo: the whole offline pipeline on data and a model the project makes itself.
//!
//! synthetic nuScenes-format scene → rosbag2 (MCAP) → per-camera examples → six views through the detector →
//! boxes in the LiDAR frame, merged across cameras with BEV NMS → `detections.json` and a bird's-eye-view
//! picture (`bev.png`: ground truth green, detections red).
//!
//! The demo model (`models/demo`, made by `scripts/train_demo_model.sh`) is the committed tiny random-weight
//! Qwen2-VL with LoRA adapters and a box head trained by `vlm3d train` on synthetic scenes. It is far too small
//! to localize well (see the README's evaluation table); the demo shows that every stage runs and how the
//! outputs look. Point `--model` at a real checkpoint folder (with `adapter/` and `head.safetensors` from
//! training) for real detections.
//!
//! The ROS 2 demo (`vlm3d demo` with the `ros` feature: the perception node on this module's synthetic bag,
//! `crate::ros::node_demo`) shares [`prepare_demo_bag`] and draws through the ROS-free [`picture`] and
//! [`summary`] modules.
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use image::{Rgb, RgbImage};

use crate::data::convert::{convert_nuscenes, ConvertOptions};
use crate::data::dataset::{Dataset, DatasetConfig, Example};
use crate::data::synth::{generate, SynthConfig};
use crate::geometry::{Box3D, Frame};
use crate::model::detector::{Detector, DetectorConfig};
use crate::perception::{merge_views, Detection, ViewInput};
use crate::{Error, Result};

pub mod frames;
pub mod picture;
pub mod summary;

/// Settings of [`run_demo`].
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Output folder (dataset, bag, detections, picture).
    pub out: PathBuf,
    /// Qwen2-VL checkpoint folder; the tiny fixture by default.
    pub model: PathBuf,
    /// Synthetic image size.
    pub width: u32,
    /// Synthetic image size.
    pub height: u32,
    /// Key frames (samples) in the synthetic scene; the demo runs the first.
    pub samples: usize,
    /// Seed of the synthetic scene and of the untrained head.
    pub seed: u64,
    /// Upper bound on pixels per view given to the image processor.
    pub max_pixels: usize,
    /// BEV NMS threshold for merging the cameras' boxes.
    pub nms_iou: f64,
    /// Minimum score of a reported box.
    pub score_threshold: f32,
    /// Where the model runs.
    pub device: Device,
    /// Weight precision.
    pub dtype: DType,
}

impl DemoOptions {
    /// Defaults: the committed tiny model, a 640×360 synthetic scene.
    pub fn new(out: impl Into<PathBuf>) -> Self {
        Self {
            out: out.into(),
            model: default_model_dir(),
            width: 640,
            height: 360,
            samples: 2,
            seed: 7,
            max_pixels: 448 * 252,
            nms_iou: 0.3,
            score_threshold: 0.0,
            device: Device::Cpu,
            dtype: DType::F32,
        }
    }
}

/// What the built-in demo model is, in a few words (the demo picture's title, the commands' notes).
pub const DEMO_MODEL_NOTE: &str =
    "built-in demo model: tiny Qwen2-VL pre-trained on synthetic scenes + LoRA, dense head";

/// The demo model (`models/demo`: `models/tiny-synth`, a tiny Qwen2-VL pre-trained on synthetic scenes, with
/// LoRA adapters and the dense box head trained by the paper's recipe), or the untrained fixture
/// (`tests/fixtures/qwen2vl_tiny`) when the demo model is absent.
///
/// A binary installed by `colcon build` (`<prefix>/lib/vlm3d/`) takes the copy that `CMakeLists.txt` installs
/// into the same prefix (`<prefix>/share/vlm3d/models/demo`); others, the source tree's.
pub fn default_model_dir() -> PathBuf {
    if let Some(installed) = std::env::current_exe()
        .ok()
        .and_then(|exe| installed_model_dir(&exe))
    {
        return installed;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let demo = root.join("models/demo");
    if demo.join("head.safetensors").is_file() {
        demo
    } else {
        root.join("tests/fixtures/qwen2vl_tiny")
    }
}

/// `<prefix>/share/vlm3d/models/demo` for an executable `<prefix>/lib/vlm3d/NAME`, when that model is there.
pub fn installed_model_dir(exe: &Path) -> Option<PathBuf> {
    let pkg_lib = exe.parent()?;
    let lib = pkg_lib.parent()?;
    if pkg_lib.file_name()? != "vlm3d" || lib.file_name()? != "lib" {
        return None;
    }
    let demo = lib.parent()?.join("share/vlm3d/models/demo");
    demo.join("head.safetensors").is_file().then_some(demo)
}

/// What synthetic data the demos make: one scene of `samples` key frames (2 Hz), six cameras.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DemoData {
    /// Key frames in the scene.
    pub samples: usize,
    /// Seed of the synthetic scene.
    pub seed: u64,
    /// Image width, pixels.
    pub width: u32,
    /// Image height, pixels.
    pub height: u32,
}

/// The nuScenes table version the demo data is written as.
const DEMO_VERSION: &str = "v1.0-mini";

/// Writes the demo's synthetic nuScenes-format scene to `out/nuscenes/` and converts it to the rosbag2 folder
/// `out/bag/` (no LiDAR clouds: the camera pipeline does not use them), returning the bag's path. Both are
/// reused when `out/demo_data.json` says they were made with the same `data`; otherwise (other settings, an
/// interrupted run, outputs of an older version) they are made afresh.
pub fn prepare_demo_bag(out: &Path, data: &DemoData) -> Result<PathBuf> {
    if data.samples == 0 {
        return Err(Error::invalid("demo samples", "0 (at least one is needed)"));
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let dataroot = out.join("nuscenes");
    let bag = out.join("bag");
    let stamp = out.join("demo_data.json");
    let made_with: Option<DemoData> = std::fs::read_to_string(&stamp)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    if made_with.as_ref() == Some(data) && bag.join("metadata.yaml").is_file() {
        return Ok(bag);
    }
    // The stamp goes first, so an interrupted run is redone.
    let _ = std::fs::remove_file(&stamp);
    for dir in [&dataroot, &bag] {
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
    }
    tracing::info!(
        "demo: writing a synthetic nuScenes-format scene ({} samples, {}×{}) to {}",
        data.samples,
        data.width,
        data.height,
        dataroot.display()
    );
    let cfg = SynthConfig {
        scenes: 1,
        samples_per_scene: data.samples,
        seed: data.seed,
        width: data.width,
        height: data.height,
        version: DEMO_VERSION.into(),
        progress: true,
        ..Default::default()
    };
    generate(&dataroot, &cfg)?;
    tracing::info!("demo: converting to rosbag2 at {}", bag.display());
    let mut copts = ConvertOptions::new(&bag);
    copts.progress = true;
    copts.force = true;
    copts.lidar = false;
    convert_nuscenes(&dataroot, DEMO_VERSION, &copts)?;
    let json = serde_json::to_string_pretty(data)
        .map_err(|e| Error::invalid("demo data stamp", e.to_string()))?;
    std::fs::write(&stamp, json).map_err(|e| Error::io(&stamp, e))?;
    Ok(bag)
}

/// What the demo did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DemoReport {
    /// The prompt sent with the six views.
    pub prompt: String,
    /// nuScenes sample token of the frame.
    pub sample_token: String,
    /// Ground-truth boxes of the prompted category seen by some camera (LiDAR frame).
    pub ground_truth: Vec<[f64; 7]>,
    /// Detections after merging across cameras (LiDAR frame; `camera` is the channel that saw each).
    pub detections: Vec<Detection>,
    /// Boxes before merging (all cameras).
    pub raw_detections: usize,
    /// Seconds for the detector (vision tower, prefill, head) on the six views.
    pub detect_seconds: f64,
    /// Where the JSON and the picture went.
    pub outputs: Vec<PathBuf>,
}

/// Runs the demo (see the module docs). Steps whose outputs exist are reused, so a second run is quick.
pub fn run_demo(opts: &DemoOptions) -> Result<DemoReport> {
    let bag = prepare_demo_bag(
        &opts.out,
        &DemoData {
            samples: opts.samples,
            seed: opts.seed,
            width: opts.width,
            height: opts.height,
        },
    )?;

    // The first sample's six cameras, boxes in the LiDAR frame.
    let cfg = DatasetConfig {
        target_frame: Frame::Lidar,
        keep_empty: true,
        ..Default::default()
    };
    let views: Vec<Example> = Dataset::new([bag.clone()], cfg)
        .by_sample()
        .next()
        .transpose()?
        .ok_or_else(|| {
            Error::invalid(
                "demo bag",
                format!("{} holds no camera examples", bag.display()),
            )
        })?;
    let prompt = views
        .iter()
        .flat_map(|v| v.prompts.iter())
        .find(|p| !p.boxes.is_empty())
        .or_else(|| views[0].prompts.first())
        .ok_or_else(|| Error::invalid("demo sample", "no prompt"))?;
    let prompt_text = prompt.text.clone();
    let category_name = prompt.category.clone();

    let mut detector = Detector::load(
        &opts.model,
        None,
        DetectorConfig {
            frame: Frame::Camera,
            score_threshold: opts.score_threshold,
            // A model without a trained head gets a fresh one from the demo's seed, so a demo run is
            // reproducible end to end.
            head_seed: opts.seed,
            ..Default::default()
        },
        &opts.device,
        opts.dtype,
    )?;
    detector.pipeline.processor.config.max_pixels = opts.max_pixels;
    let images = views
        .iter()
        .map(Example::decode_image)
        .collect::<Result<Vec<_>>>()?;
    let start = std::time::Instant::now();
    let cameras: Vec<_> = views.iter().map(Example::view_camera).collect();
    let per_view = detector.detect(&images, &cameras, &prompt_text)?;
    let detect_seconds = start.elapsed().as_secs_f64();

    // Camera-frame boxes → LiDAR frame with each camera's extrinsics, then merge across cameras: the same
    // code the perception node runs.
    let inputs: Vec<ViewInput> = per_view
        .iter()
        .map(|vd| ViewInput {
            detections: vd,
            camera_to_lidar: &views[vd.view].cam_to_lidar,
            camera: &views[vd.view].channel,
        })
        .collect();
    let merged = merge_views(&inputs, opts.nms_iou, usize::MAX)?;
    let detections: Vec<Detection> = merged
        .boxes
        .into_iter()
        .map(|d| Detection {
            label: category_name.clone(),
            ..d
        })
        .collect();

    let mut seen = std::collections::BTreeMap::new();
    for v in &views {
        for b in &v.boxes {
            if crate::data::dataset::prompt_name(&b.category) == category_name {
                seen.insert(b.instance_id.clone(), b.params(Frame::Lidar));
            }
        }
    }
    let ground_truth: Vec<[f64; 7]> = seen.into_values().collect();

    let json_path = opts.out.join("detections.json");
    let png_path = opts.out.join("bev.png");
    let report = DemoReport {
        prompt: prompt_text,
        sample_token: views[0].sample_token.clone(),
        ground_truth,
        detections,
        raw_detections: merged.before_nms,
        detect_seconds,
        outputs: vec![json_path.clone(), png_path.clone()],
    };
    let all_gt: Vec<[f64; 7]> = views
        .iter()
        .flat_map(|v| v.boxes.iter().map(|b| b.params(Frame::Lidar)))
        .collect();
    draw_bev(&png_path, &all_gt, &report)?;
    let json = serde_json::to_string_pretty(&report)
        .map_err(|e| Error::invalid("demo report", e.to_string()))?;
    std::fs::write(&json_path, json).map_err(|e| Error::io(&json_path, e))?;
    Ok(report)
}

/// Bird's-eye view, 50 m around the LiDAR, x up in the picture: all ground truth in dark green, the prompted
/// category's ground truth in bright green, detections in red (score → brightness).
fn draw_bev(path: &Path, all_gt: &[[f64; 7]], report: &DemoReport) -> Result<()> {
    const SIZE: u32 = 800;
    const RANGE: f64 = 50.0;
    let mut img = RgbImage::from_pixel(SIZE, SIZE, Rgb([20, 20, 24]));
    let to_px = |x: f64, y: f64| {
        let s = SIZE as f64 / (2.0 * RANGE);
        (SIZE as f64 / 2.0 - y * s, SIZE as f64 / 2.0 - x * s)
    };
    for r in (10..=50).step_by(10) {
        let n = 360;
        for i in 0..n {
            let a = i as f64 / n as f64 * std::f64::consts::TAU;
            let (u, v) = to_px(r as f64 * a.cos(), r as f64 * a.sin());
            put(&mut img, u, v, Rgb([60, 60, 70]));
        }
    }
    let rect = |p: &[f64; 7], color: Rgb<u8>, img: &mut RgbImage| {
        let Ok(b) = Box3D::from_params(*p) else {
            return;
        };
        let c = b.bev_corners();
        for i in 0..4 {
            let (a, z) = (
                to_px(c[i][0], c[i][1]),
                to_px(c[(i + 1) % 4][0], c[(i + 1) % 4][1]),
            );
            line(img, a, z, color);
        }
        // Heading tick from the centre to the front edge.
        let front = [(c[0][0] + c[3][0]) / 2.0, (c[0][1] + c[3][1]) / 2.0];
        line(img, to_px(p[0], p[1]), to_px(front[0], front[1]), color);
    };
    for g in all_gt {
        rect(g, Rgb([30, 110, 40]), &mut img);
    }
    for g in &report.ground_truth {
        rect(g, Rgb([80, 255, 100]), &mut img);
    }
    for d in &report.detections {
        let v = (90.0 + 165.0 * d.score.clamp(0.0, 1.0)) as u8;
        rect(&d.bbox, Rgb([v, 30, 30]), &mut img);
    }
    // The LiDAR at the centre.
    let (u, v) = to_px(0.0, 0.0);
    for du in -3..=3 {
        for dv in -3..=3 {
            put(&mut img, u + du as f64, v + dv as f64, Rgb([240, 240, 240]));
        }
    }
    img.save(path)
        .map_err(|e| Error::invalid(format!("{}", path.display()), e.to_string()))
}

fn put(img: &mut RgbImage, u: f64, v: f64, c: Rgb<u8>) {
    if u >= 0.0 && v >= 0.0 && (u as u32) < img.width() && (v as u32) < img.height() {
        img.put_pixel(u as u32, v as u32, c);
    }
}

fn line(img: &mut RgbImage, a: (f64, f64), b: (f64, f64), c: Rgb<u8>) {
    let n = ((b.0 - a.0).abs().max((b.1 - a.1).abs()).ceil() as usize).clamp(1, 4000);
    for i in 0..=n {
        let t = i as f64 / n as f64;
        put(img, a.0 + (b.0 - a.0) * t, a.1 + (b.1 - a.1) * t, c);
    }
}

#[cfg(test)]
mod tests {
    use super::installed_model_dir;

    #[test]
    fn an_installed_binary_finds_the_demo_model_in_its_prefix() {
        let prefix = std::env::temp_dir().join(format!("vlm3d-installed-{}", std::process::id()));
        let demo = prefix.join("share/vlm3d/models/demo");
        std::fs::create_dir_all(&demo).unwrap();
        std::fs::create_dir_all(prefix.join("lib/vlm3d")).unwrap();
        let exe = prefix.join("lib/vlm3d/perception_node");
        assert_eq!(installed_model_dir(&exe), None, "no head.safetensors yet");
        std::fs::write(demo.join("head.safetensors"), b"").unwrap();
        assert_eq!(installed_model_dir(&exe), Some(demo));
        // Not an install layout: cargo's target/debug, or another package's lib folder.
        assert_eq!(
            installed_model_dir(&prefix.join("lib/other/perception_node")),
            None
        );
        assert_eq!(
            installed_model_dir(&prefix.join("target/debug/perception_node")),
            None
        );
        std::fs::remove_dir_all(&prefix).unwrap();
    }
}

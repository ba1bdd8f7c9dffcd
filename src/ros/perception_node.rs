//! The perception node: six cameras and standing prompts in, 3D boxes in the LiDAR frame out.
//!
//! One r2r `Node`, spun on a blocking task; its subscriptions are streams merged and driven by one tokio loop,
//! which feeds the approximate-time [`Synchronizer`]. A worker thread owns the model
//! ([`PerceptionRuntime`]) and gets at most one set at a time: while it is busy only the newest complete set is
//! kept (the one it replaces is counted as dropped), so a slow model never builds a backlog. Input problems
//! (undecodable images, sizes that disagree with `CameraInfo`, a silent camera, unsynchronized stamps, bad
//! prompts) are counted per cause and reported on `/diagnostics` and in the log once per interval.
//!
//! Topics (private names, remapped by `launch/perception.launch.xml`): `~/input/<camera frame>/image`
//! (`sensor_msgs/CompressedImage`, or `sensor_msgs/Image` with `image_transport: raw`),
//! `~/input/<camera frame>/camera_info`, `~/input/prompt` (`std_msgs/String`, transient-local; one standing
//! prompt per line), `/tf_static`; out: `~/output/boxes` (`vlm3d/BoundingBox3DArray`, one per prompt),
//! `~/output/detections` (`vision_msgs/Detection3DArray`), `~/output/objects`
//! (`autoware_perception_msgs/DetectedObjects`, one per frame, with `publish_autoware_objects`), `~/output/markers`
//! (`visualization_msgs/MarkerArray`), `~/debug/processing_time_ms` (+ `/<stage>`),
//! `~/debug/pipeline_latency_ms`, `~/debug/frame_stats` (JSON per frame), `/diagnostics`.
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::stream::{self, BoxStream, StreamExt};
use image::RgbImage;
use nalgebra::{Isometry3, Quaternion, Translation3, UnitQuaternion};
use r2r::autoware_perception_msgs::msg::DetectedObjects;
use r2r::builtin_interfaces::msg::Duration as RosDuration;
use r2r::diagnostic_msgs::msg::{DiagnosticArray, DiagnosticStatus, KeyValue};
use r2r::geometry_msgs::msg::{Point, Pose, Vector3};
use r2r::sensor_msgs::msg::{CameraInfo, CompressedImage, Image};
use r2r::std_msgs::msg::{ColorRGBA, Float64, Header, String as StringMsg};
use r2r::tf2_msgs::msg::TFMessage;
use r2r::vision_msgs::msg::Detection3DArray;
use r2r::visualization_msgs::msg::{Marker, MarkerArray};
use r2r::vlm3d::msg::BoundingBox3DArray;
use r2r::{Context, Node, Publisher, QosProfile};
use rayon::prelude::*;
use serde::Serialize;

use super::convert::{
    nanos_from_time, pinhole_from_camera_info, time_from_nanos, to_detected_objects,
    to_detection3d_array, yaw_to_quaternion,
};
use super::params::Params;
use crate::geometry::{Frame, PinholeCamera};
use crate::model::detector::{Detector, DetectorConfig};
use crate::model::device::{parse_dtype, select_device};
use crate::perception::health::{InputErrors, StageLatencies};
use crate::perception::image::{decode_compressed, decode_raw};
use crate::perception::markers::{box_caption, box_edge_points, label_color};
use crate::perception::prompt::{paper_prompt, parse_prompt_message};
use crate::perception::sync::{FrameSet, SyncConfig, Synchronizer};
use crate::perception::tf::TransformTree;
use crate::perception::{Detections, Rig};
use crate::runtime::{FrameInput, PerceptionRuntime, RuntimeConfig};
use crate::{Error, Result};

/// The node's parameters (`config/perception_node.param.yaml`, schema `schema/perception_node.schema.json`).
#[derive(Debug, Clone, PartialEq)]
pub struct PerceptionNodeParams {
    /// Rig YAML; empty: the compiled-in nuScenes rig.
    pub rig_file: String,
    /// Checkpoint folder; empty: the built-in demo model.
    pub model_path: String,
    /// Folder with `adapter/` and `head.safetensors`; empty: those inside the model folder.
    pub trained_path: String,
    /// `cpu`, `cuda`, `cuda:N` or `auto`.
    pub device: String,
    /// `f32`, `f16` or `bf16`.
    pub dtype: String,
    /// Pixel budget per view for the image processor.
    pub max_pixels: usize,
    /// `compressed` (`sensor_msgs/CompressedImage`) or `raw` (`sensor_msgs/Image`).
    pub image_transport: String,
    /// Standing prompts until one arrives on `~/input/prompt`.
    pub prompts: Vec<String>,
    /// Longest prompt accepted, characters.
    pub max_prompt_chars: usize,
    /// Boxes below this confidence are dropped.
    pub score_threshold: f64,
    /// BEV NMS threshold across cameras.
    pub nms_iou_threshold: f64,
    /// At most this many boxes per prompt.
    pub max_boxes: usize,
    /// Largest stamp spread of a synchronized set, seconds.
    pub sync_slop_s: f64,
    /// Messages kept per camera while waiting for a set.
    pub queue_depth: usize,
    /// Frame of the published boxes.
    pub output_frame: String,
    /// How long the first frames wait for `/tf_static` (and every `CameraInfo`) before the rig's calibration is
    /// used, seconds.
    pub tf_wait_s: f64,
    /// Use `CameraInfo`: check image sizes against it and place boxes with its K (else the rig's intrinsics).
    pub use_camera_info: bool,
    /// Reporting interval of `/diagnostics`, seconds.
    pub diagnostics_period_s: f64,
    /// Publish `~/output/objects` (`autoware_perception_msgs/DetectedObjects`).
    pub publish_autoware_objects: bool,
}

impl PerceptionNodeParams {
    /// Reads and checks the parameters (types, ranges and enums of the schema); the first bad one is an error
    /// naming it.
    pub fn from_params(p: &Params) -> Result<Self> {
        Ok(Self {
            rig_file: p.string("rig_file", "")?,
            model_path: p.string("model_path", "")?,
            trained_path: p.string("trained_path", "")?,
            device: p.choice("device", "cpu", &["cpu", "cuda", "auto"], |s| {
                s.strip_prefix("cuda:")
                    .is_some_and(|n| n.parse::<u32>().is_ok())
            })?,
            dtype: p.choice("dtype", "f32", &["f32", "f16", "bf16"], |_| false)?,
            max_pixels: p.integer("max_pixels", 112_896, 3136, 1 << 26)? as usize,
            image_transport: p.choice(
                "image_transport",
                "compressed",
                &["compressed", "raw"],
                |_| false,
            )?,
            prompts: p.strings("prompts", &[paper_prompt("car")])?,
            max_prompt_chars: p.integer("max_prompt_chars", 4096, 1, 1 << 20)? as usize,
            score_threshold: p.number("score_threshold", 0.3, 0.0, 1.0, false)?,
            nms_iou_threshold: p.number("nms_iou_threshold", 0.5, 0.0, 1.0, false)?,
            max_boxes: p.integer("max_boxes", 64, 1, 1 << 20)? as usize,
            sync_slop_s: p.number("sync_slop_s", 0.05, 0.0, 1.0, true)?,
            queue_depth: p.integer("queue_depth", 4, 1, 64)? as usize,
            output_frame: p.non_empty("output_frame", "lidar_top")?,
            tf_wait_s: p.number("tf_wait_s", 1.0, 0.0, 60.0, false)?,
            use_camera_info: p.bool("use_camera_info", true)?,
            diagnostics_period_s: p.number("diagnostics_period_s", 1.0, 0.0, 60.0, true)?,
            publish_autoware_objects: p.bool("publish_autoware_objects", true)?,
        })
    }
}

/// An image message as it arrived (decoded only if its set is processed).
#[derive(Debug, Clone)]
enum ImageMsg {
    Compressed(CompressedImage),
    Raw(Image),
}

impl ImageMsg {
    fn stamp_ns(&self) -> i64 {
        match self {
            ImageMsg::Compressed(m) => nanos_from_time(&m.header.stamp),
            ImageMsg::Raw(m) => nanos_from_time(&m.header.stamp),
        }
    }

    fn decode(&self, source: &str) -> Result<RgbImage> {
        match self {
            ImageMsg::Compressed(m) => decode_compressed(&m.data, &m.format, source),
            ImageMsg::Raw(m) => decode_raw(m.width, m.height, &m.encoding, m.step, &m.data, source),
        }
    }
}

enum Input {
    Image(usize, ImageMsg),
    Info(usize, CameraInfo),
    Prompt(String),
    Tf(TFMessage),
}

struct Job {
    set: FrameSet<ImageMsg>,
    prompts: Arc<Vec<String>>,
    camera_to_output: Vec<Isometry3<f64>>,
    intrinsics: Vec<PinholeCamera>,
    expected_sizes: Vec<Option<(u32, u32)>>,
    completed_at: Instant,
}

enum WorkerOut {
    Done {
        output: crate::runtime::FrameOutput,
        decode_ms: f64,
        completed_at: Instant,
    },
    InputError {
        cause: String,
        message: String,
    },
    Failed(String),
}

/// One line of `~/debug/frame_stats` (and of the demo's summary).
#[derive(Debug, Clone, Serialize)]
pub struct FrameStats {
    /// Stamp of the frame, ns.
    pub stamp_ns: i64,
    /// Milliseconds per stage: decode, preprocess, model, merge, publish.
    pub stage_ms: std::collections::BTreeMap<String, f64>,
    /// From the set's completion (its last image received) to the outputs published, ms.
    pub input_to_output_ms: f64,
    /// Boxes published over all prompts.
    pub boxes: usize,
    /// Complete sets so far.
    pub sets_in: u64,
    /// Sets processed so far.
    pub sets_processed: u64,
    /// Complete sets replaced by a newer one before the model got to them.
    pub sets_dropped: u64,
    /// Camera messages that never became part of a set.
    pub messages_dropped: u64,
}

/// Turns an error message into its cause: the source's own "invalid <source>: " dropped, digit runs written
/// `#` (so "1000 bytes" and "999 bytes" group), at most 80 characters.
fn cause_of(source: &str, message: &str) -> String {
    let m = message
        .strip_prefix(&format!("invalid {source}: "))
        .unwrap_or(message);
    let mut c = String::with_capacity(m.len());
    for ch in m.chars() {
        if ch.is_ascii_digit() {
            if !c.ends_with('#') {
                c.push('#');
            }
        } else {
            c.push(ch);
        }
    }
    let c: String = c.chars().take(80).collect();
    format!("{source}: {c}")
}

fn process_job(runtime: &PerceptionRuntime, cameras: &[String], job: Job) -> WorkerOut {
    let t = Instant::now();
    // The views decode in parallel (one task each); errors are then reported in camera order.
    let decoded: Vec<Result<RgbImage>> = job
        .set
        .views
        .par_iter()
        .enumerate()
        .map(|(i, (_, msg))| msg.decode(&format!("{} image", cameras[i])))
        .collect();
    let mut images = Vec::with_capacity(decoded.len());
    for (i, img) in decoded.into_iter().enumerate() {
        let source = format!("{} image", cameras[i]);
        match img {
            Ok(img) => {
                if let Some((w, h)) = job.expected_sizes[i] {
                    if (img.width(), img.height()) != (w, h) {
                        return WorkerOut::InputError {
                            cause: format!("{} image size disagrees with camera_info", cameras[i]),
                            message: format!(
                                "{source}: {}×{} but camera_info says {w}×{h}",
                                img.width(),
                                img.height()
                            ),
                        };
                    }
                }
                images.push(img);
            }
            Err(e) => {
                let message = e.to_string();
                return WorkerOut::InputError {
                    cause: cause_of(&source, &message),
                    message,
                };
            }
        }
    }
    let decode_ms = t.elapsed().as_secs_f64() * 1e3;
    let frame = FrameInput {
        stamp_ns: job.set.stamp_ns,
        images: &images,
        cameras,
        camera_to_lidar: &job.camera_to_output,
        intrinsics: &job.intrinsics,
    };
    match runtime.process(&frame, &job.prompts) {
        Ok(output) => WorkerOut::Done {
            output,
            decode_ms,
            completed_at: job.completed_at,
        },
        Err(e) => WorkerOut::Failed(e.to_string()),
    }
}

const MARKER_ADD: i32 = 0;
const MARKER_DELETEALL: i32 = 3;
const MARKER_LINE_LIST: i32 = 5;
const MARKER_TEXT: i32 = 9;

/// The markers of one frame: a DELETEALL (the previous frame's markers go), then per box its edges as a line
/// list and a text with label and score above it, coloured by label.
pub fn frame_markers(frame: &[Detections]) -> MarkerArray {
    let Some(first) = frame.first() else {
        return MarkerArray::default();
    };
    let header = Header {
        stamp: time_from_nanos(first.stamp_ns),
        frame_id: first.frame_id.clone(),
    };
    let mut markers = vec![Marker {
        header: header.clone(),
        action: MARKER_DELETEALL,
        ..Default::default()
    }];
    let mut id = 0;
    for d in frame {
        for b in &d.boxes {
            let Ok(points) = box_edge_points(b) else {
                continue;
            };
            let [r, g, bl, a] = label_color(&b.label);
            let color = ColorRGBA { r, g, b: bl, a };
            markers.push(Marker {
                header: header.clone(),
                ns: "vlm3d/boxes".into(),
                id,
                type_: MARKER_LINE_LIST,
                action: MARKER_ADD,
                pose: Pose {
                    orientation: yaw_to_quaternion(0.0),
                    ..Default::default()
                },
                scale: Vector3 {
                    x: 0.05,
                    y: 0.0,
                    z: 0.0,
                },
                color: color.clone(),
                lifetime: RosDuration::default(),
                points: points
                    .iter()
                    .map(|p| Point {
                        x: p[0],
                        y: p[1],
                        z: p[2],
                    })
                    .collect(),
                ..Default::default()
            });
            let [x, y, z] = b.center();
            markers.push(Marker {
                header: header.clone(),
                ns: "vlm3d/labels".into(),
                id,
                type_: MARKER_TEXT,
                action: MARKER_ADD,
                pose: Pose {
                    position: Point {
                        x,
                        y,
                        z: z + b.size()[2] / 2.0 + 0.3,
                    },
                    orientation: yaw_to_quaternion(0.0),
                },
                scale: Vector3 {
                    x: 0.0,
                    y: 0.0,
                    z: 0.5,
                },
                color,
                text: box_caption(b),
                ..Default::default()
            });
            id += 1;
        }
    }
    MarkerArray { markers }
}

fn isometry_of(t: &r2r::geometry_msgs::msg::Transform) -> Option<Isometry3<f64>> {
    let q = &t.rotation;
    let v = &t.translation;
    let vals = [q.w, q.x, q.y, q.z, v.x, v.y, v.z];
    if vals.iter().any(|x| !x.is_finite())
        || (q.w * q.w + q.x * q.x + q.y * q.y + q.z * q.z) < 1e-12
    {
        return None;
    }
    Some(Isometry3::from_parts(
        Translation3::new(v.x, v.y, v.z),
        UnitQuaternion::from_quaternion(Quaternion::new(q.w, q.x, q.y, q.z)),
    ))
}

struct Outputs {
    boxes: Publisher<BoundingBox3DArray>,
    detections: Publisher<Detection3DArray>,
    /// `None` without `publish_autoware_objects`.
    objects: Option<Publisher<DetectedObjects>>,
    markers: Publisher<MarkerArray>,
    processing: Publisher<Float64>,
    stages: Vec<(String, Publisher<Float64>)>,
    latency: Publisher<Float64>,
    frame_stats: Publisher<StringMsg>,
    diagnostics: Publisher<DiagnosticArray>,
}

/// Loads the model, wires the topics and runs until SIGINT / SIGTERM.
pub fn run_perception_node() -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .map_err(|e| Error::Ros(format!("cannot handle signal {sig}: {e}")))?;
    }
    let ctx = Context::create()?;
    let mut node = Node::create(ctx, "perception_node", "")?;
    // Logs and /diagnostics name the node by its full name: several may run in one graph.
    let name = node.fully_qualified_name()?;
    let given = Params::of(&node)?;
    let params = PerceptionNodeParams::from_params(&given)?;
    let rig = if params.rig_file.is_empty() {
        Rig::nuscenes().clone()
    } else {
        Rig::load(std::path::Path::new(&params.rig_file))?
    };
    let model_dir = if params.model_path.is_empty() {
        crate::demo::default_model_dir()
    } else {
        PathBuf::from(&params.model_path)
    };
    let device = select_device(match params.device.as_str() {
        "auto" => None,
        d => Some(d),
    })?;
    let trained = (!params.trained_path.is_empty()).then(|| PathBuf::from(&params.trained_path));
    let mut detector = Detector::load(
        &model_dir,
        trained.as_deref(),
        DetectorConfig {
            frame: Frame::Camera,
            ..Default::default()
        },
        &device,
        parse_dtype(&params.dtype)?,
    )?;
    detector.pipeline.processor.config.max_pixels = params.max_pixels;
    let runtime = PerceptionRuntime::new(
        detector,
        RuntimeConfig {
            score_threshold: params.score_threshold as f32,
            nms_iou: params.nms_iou_threshold,
            max_boxes: params.max_boxes,
            output_frame: params.output_frame.clone(),
        },
    );
    r2r::log_info!(
        &name,
        "model {} on {} ({}); {} cameras; {} standing prompt(s)",
        model_dir.display(),
        params.device,
        params.dtype,
        rig.cameras.len(),
        params.prompts.len()
    );

    // Subscriptions, merged into one stream.
    let cameras: Vec<String> = rig.cameras.iter().map(|c| c.frame_id.clone()).collect();
    let mut inputs: Vec<BoxStream<'static, Input>> = Vec::new();
    for (i, cam) in cameras.iter().enumerate() {
        let topic = format!("~/input/{cam}/image");
        if params.image_transport == "raw" {
            let s = node.subscribe::<Image>(&topic, QosProfile::sensor_data())?;
            inputs.push(s.map(move |m| Input::Image(i, ImageMsg::Raw(m))).boxed());
        } else {
            let s = node.subscribe::<CompressedImage>(&topic, QosProfile::sensor_data())?;
            inputs.push(
                s.map(move |m| Input::Image(i, ImageMsg::Compressed(m)))
                    .boxed(),
            );
        }
        let s = node.subscribe::<CameraInfo>(
            &format!("~/input/{cam}/camera_info"),
            QosProfile::sensor_data(),
        )?;
        inputs.push(s.map(move |m| Input::Info(i, m)).boxed());
    }
    let latched = QosProfile::default().reliable().transient_local();
    let s = node.subscribe::<StringMsg>("~/input/prompt", latched.clone().keep_last(1))?;
    inputs.push(s.map(|m| Input::Prompt(m.data)).boxed());
    let s = node.subscribe::<TFMessage>("/tf_static", latched.keep_last(100))?;
    inputs.push(s.map(Input::Tf).boxed());
    let mut inputs = stream::select_all(inputs);

    let qos = QosProfile::default();
    let out = Outputs {
        boxes: node.create_publisher("~/output/boxes", qos.clone())?,
        detections: node.create_publisher("~/output/detections", qos.clone())?,
        objects: if params.publish_autoware_objects {
            Some(node.create_publisher("~/output/objects", qos.clone())?)
        } else {
            None
        },
        markers: node.create_publisher("~/output/markers", qos.clone())?,
        processing: node.create_publisher("~/debug/processing_time_ms", qos.clone())?,
        stages: crate::perception::health::STAGES
            .iter()
            .map(|s| {
                Ok((
                    s.to_string(),
                    node.create_publisher(&format!("~/debug/processing_time_ms/{s}"), qos.clone())?,
                ))
            })
            .collect::<Result<_>>()?,
        latency: node.create_publisher("~/debug/pipeline_latency_ms", qos.clone())?,
        frame_stats: node.create_publisher("~/debug/frame_stats", qos.clone())?,
        diagnostics: node.create_publisher("/diagnostics", qos)?,
    };
    // The node's ROS clock follows /clock when the standard `use_sim_time` parameter is set (bag playback).
    if given.bool("use_sim_time", false)? {
        node.get_time_source().enable_sim_time(&mut node)?;
    }
    let clock = node.get_ros_clock();

    // The model on its own thread; at most one job in flight.
    let (job_tx, job_rx) = std::sync::mpsc::sync_channel::<Job>(1);
    let (res_tx, mut res_rx) = tokio::sync::mpsc::unbounded_channel::<WorkerOut>();
    let worker_cameras = cameras.clone();
    std::thread::Builder::new()
        .name("vlm3d-model".into())
        .spawn(move || {
            for job in job_rx {
                if res_tx
                    .send(process_job(&runtime, &worker_cameras, job))
                    .is_err()
                {
                    break;
                }
            }
        })
        .map_err(|e| Error::Ros(format!("cannot start the model thread: {e}")))?;

    let node = Arc::new(Mutex::new(node));
    let spinner = {
        let node = Arc::clone(&node);
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(mut n) = node.lock() {
                    n.spin_once(Duration::from_millis(5));
                }
            }
        })
    };

    let mut state = State {
        name: name.clone(),
        sync: Synchronizer::new(SyncConfig {
            views: cameras.len(),
            slop_ns: (params.sync_slop_s * 1e9) as i64,
            queue_depth: params.queue_depth,
        })?,
        tree: TransformTree::new(),
        prompts: Arc::new(params.prompts.clone()),
        sizes: vec![None; cameras.len()],
        received_intrinsics: vec![None; cameras.len()],
        nominal_intrinsics: (0..cameras.len())
            .map(|i| rig.pinhole(i, rig.image_width, rig.image_height))
            .collect::<crate::Result<_>>()?,
        extrinsics: Vec::new(),
        errors: InputErrors::default(),
        latencies: StageLatencies::new(1000),
        busy: false,
        pending: None,
        sets_dropped: 0,
        sets_processed: 0,
        prompts_received: 0,
        per_camera: vec![0; cameras.len()],
        newest_stamp: vec![None; cameras.len()],
        sets_at_last_tick: 0,
        tf_received: false,
        first_set_at: None,
        held: None,
        rig,
        cameras,
        params,
    };
    state.update_extrinsics();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(|e| Error::Ros(format!("tokio runtime: {e}")))?;
    rt.block_on(async {
        let mut tick =
            tokio::time::interval(Duration::from_secs_f64(state.params.diagnostics_period_s));
        let mut stop_check = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                Some(input) = inputs.next() => {
                    if let Some(job) = state.on_input(input) {
                        state.submit(job, &job_tx);
                    }
                }
                Some(res) = res_rx.recv() => {
                    state.busy = false;
                    state.on_result(res, &out, &clock);
                    if let Some(job) = state.pending.take() {
                        state.submit(job, &job_tx);
                    }
                }
                _ = tick.tick() => state.report(&out, &clock),
                _ = stop_check.tick() => {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    if let Some(job) = state.tf_grace_over() {
                        state.submit(job, &job_tx);
                    }
                }
            }
        }
    });
    stop.store(true, Ordering::Relaxed);
    let _ = spinner.join();
    r2r::log_info!(
        &name,
        "stopping: {} sets processed, {} dropped",
        state.sets_processed,
        state.sets_dropped
    );
    Ok(())
}

struct State {
    name: String,
    params: PerceptionNodeParams,
    rig: Rig,
    cameras: Vec<String>,
    sync: Synchronizer<ImageMsg>,
    tree: TransformTree,
    prompts: Arc<Vec<String>>,
    sizes: Vec<Option<(u32, u32)>>,
    /// Intrinsics from each camera's `CameraInfo` (when valid).
    received_intrinsics: Vec<Option<PinholeCamera>>,
    /// The rig's nominal intrinsics (used until `CameraInfo` arrives, or always without `use_camera_info`).
    nominal_intrinsics: Vec<PinholeCamera>,
    /// Camera → output frame per camera; empty while some camera has no transform.
    extrinsics: Vec<Isometry3<f64>>,
    errors: InputErrors,
    latencies: StageLatencies,
    busy: bool,
    pending: Option<Job>,
    sets_dropped: u64,
    sets_processed: u64,
    prompts_received: u64,
    per_camera: Vec<u64>,
    newest_stamp: Vec<Option<i64>>,
    sets_at_last_tick: u64,
    /// Whether a `/tf_static` message has arrived.
    tf_received: bool,
    /// When the first complete set formed (the `/tf_static` grace period starts).
    first_set_at: Option<Instant>,
    /// The newest set held back while waiting for `/tf_static`.
    held: Option<Job>,
}

impl State {
    /// Camera → output frame from `/tf_static` when it has the chain, else from the rig (only when the output
    /// frame is the rig's LiDAR frame).
    fn update_extrinsics(&mut self) {
        let mut out = Vec::with_capacity(self.cameras.len());
        for (i, cam) in self.cameras.iter().enumerate() {
            let t = self
                .tree
                .lookup(&self.params.output_frame, cam)
                .or_else(|| {
                    (self.params.output_frame == self.rig.lidar_frame)
                        .then(|| self.rig.camera_to_lidar(i))
                });
            match t {
                Some(t) => out.push(t),
                None => {
                    self.extrinsics.clear();
                    return;
                }
            }
        }
        self.extrinsics = out;
    }

    fn on_input(&mut self, input: Input) -> Option<Job> {
        match input {
            Input::Image(i, msg) => {
                self.per_camera[i] += 1;
                let stamp = msg.stamp_ns();
                self.newest_stamp[i] = Some(stamp);
                let set = match self.sync.push(i, stamp, msg) {
                    Ok(Some(set)) => set,
                    Ok(None) => return None,
                    Err(e) => {
                        self.errors.report("synchronizer", e.to_string());
                        return None;
                    }
                };
                if self.extrinsics.is_empty() {
                    self.report_missing_transforms();
                    return None;
                }
                let job = Job {
                    set,
                    prompts: Arc::clone(&self.prompts),
                    camera_to_output: self.extrinsics.clone(),
                    intrinsics: self.intrinsics_now(),
                    expected_sizes: self.expected_sizes(),
                    completed_at: Instant::now(),
                };
                // Extrinsics from /tf_static and intrinsics from camera_info, when published, beat the rig's
                // nominal ones: the first frames wait a little for them (latched messages, or the first
                // camera_info, may arrive after the first images).
                let since = *self.first_set_at.get_or_insert_with(Instant::now);
                if !self.calibrated()
                    && since.elapsed() < Duration::from_secs_f64(self.params.tf_wait_s)
                {
                    if self.held.replace(job).is_some() {
                        self.sets_dropped += 1;
                    }
                    return None;
                }
                Some(job)
            }
            Input::Info(i, info) => {
                if info.width == 0 || info.height == 0 {
                    self.errors.report(
                        format!("{} camera_info: zero size", self.cameras[i]),
                        format!(
                            "{} camera_info is {}×{}",
                            self.cameras[i], info.width, info.height
                        ),
                    );
                    self.sizes[i] = None;
                    self.received_intrinsics[i] = None;
                } else {
                    self.sizes[i] = Some((info.width, info.height));
                    // Uncalibrated (all-zero K) or invalid: the rig's intrinsics stand.
                    self.received_intrinsics[i] =
                        pinhole_from_camera_info(&info.k, info.width, info.height).unwrap_or_else(
                            |e| {
                                self.errors.report(
                                    format!("{} camera_info: bad K", self.cameras[i]),
                                    format!(
                                        "{} camera_info: {e}; using the rig's intrinsics",
                                        self.cameras[i]
                                    ),
                                );
                                None
                            },
                        );
                }
                if self.held.is_some() && self.calibrated() {
                    self.release_held()
                } else {
                    None
                }
            }
            Input::Prompt(text) => {
                self.prompts_received += 1;
                match parse_prompt_message(&text, self.params.max_prompt_chars) {
                    Ok(p) => {
                        r2r::log_debug!(&self.name, "standing prompts: {p:?}");
                        self.prompts = Arc::new(p);
                    }
                    Err(e) => {
                        let m = e.to_string();
                        let cause = if text.trim().is_empty() {
                            "prompt: empty".to_string()
                        } else {
                            "prompt: longer than max_prompt_chars".to_string()
                        };
                        self.errors.report(cause, m);
                    }
                }
                None
            }
            Input::Tf(msg) => {
                for t in &msg.transforms {
                    match isometry_of(&t.transform) {
                        Some(iso) => {
                            if !self.tree.set(&t.header.frame_id, &t.child_frame_id, iso) {
                                self.errors.report(
                                    "/tf_static: cycle",
                                    format!(
                                        "{} → {} would close a cycle",
                                        t.header.frame_id, t.child_frame_id
                                    ),
                                );
                            }
                        }
                        None => self.errors.report(
                            "/tf_static: invalid transform",
                            format!(
                                "{} → {}: non-finite or zero quaternion",
                                t.header.frame_id, t.child_frame_id
                            ),
                        ),
                    }
                }
                self.tf_received = true;
                self.update_extrinsics();
                if self.calibrated() {
                    self.release_held()
                } else {
                    None
                }
            }
        }
    }

    fn report_missing_transforms(&mut self) {
        self.errors.report(
            "transforms",
            format!(
                "no transform from every camera to {} (none on /tf_static and the rig's LiDAR frame is {})",
                self.params.output_frame, self.rig.lidar_frame
            ),
        );
    }

    /// Whether `/tf_static` and (with `use_camera_info`) every camera's `CameraInfo` have arrived.
    fn calibrated(&self) -> bool {
        self.tf_received && (!self.params.use_camera_info || self.sizes.iter().all(Option::is_some))
    }

    /// Each camera's intrinsics: its `CameraInfo`'s K (with `use_camera_info`), else the rig's.
    fn intrinsics_now(&self) -> Vec<PinholeCamera> {
        self.nominal_intrinsics
            .iter()
            .zip(&self.received_intrinsics)
            .map(|(nominal, got)| match got {
                Some(k) if self.params.use_camera_info => *k,
                _ => *nominal,
            })
            .collect()
    }

    /// The image sizes to check against (`CameraInfo`'s, with `use_camera_info`).
    fn expected_sizes(&self) -> Vec<Option<(u32, u32)>> {
        if self.params.use_camera_info {
            self.sizes.clone()
        } else {
            vec![None; self.cameras.len()]
        }
    }

    /// The set held back for `/tf_static` and `CameraInfo`, with the calibration known now.
    fn release_held(&mut self) -> Option<Job> {
        let mut job = self.held.take()?;
        if self.extrinsics.is_empty() {
            self.report_missing_transforms();
            return None;
        }
        job.camera_to_output = self.extrinsics.clone();
        job.intrinsics = self.intrinsics_now();
        job.expected_sizes = self.expected_sizes();
        Some(job)
    }

    /// Releases a held set once the `/tf_static` grace period is over (the rig's extrinsics then).
    fn tf_grace_over(&mut self) -> Option<Job> {
        let since = self.first_set_at?;
        if self.held.is_none() || since.elapsed() < Duration::from_secs_f64(self.params.tf_wait_s) {
            return None;
        }
        r2r::log_warn!(
            &self.name,
            "no /tf_static or not every camera_info within tf_wait_s = {} s: using the rig's calibration where missing",
            self.params.tf_wait_s
        );
        self.release_held()
    }

    fn submit(&mut self, job: Job, tx: &std::sync::mpsc::SyncSender<Job>) {
        if self.busy {
            if self.pending.replace(job).is_some() {
                self.sets_dropped += 1;
            }
            return;
        }
        match tx.try_send(job) {
            Ok(()) => self.busy = true,
            Err(std::sync::mpsc::TrySendError::Full(job)) => {
                if self.pending.replace(job).is_some() {
                    self.sets_dropped += 1;
                }
            }
            Err(std::sync::mpsc::TrySendError::Disconnected(_)) => {
                self.errors
                    .report("model thread", "the model thread has stopped");
            }
        }
    }

    fn on_result(&mut self, res: WorkerOut, out: &Outputs, clock: &Mutex<r2r::Clock>) {
        let (output, decode_ms, completed_at) = match res {
            WorkerOut::Done {
                output,
                decode_ms,
                completed_at,
            } => (output, decode_ms, completed_at),
            WorkerOut::InputError { cause, message } => {
                self.errors.report(cause, message);
                return;
            }
            WorkerOut::Failed(m) => {
                self.errors.report(cause_of("model", &m), m);
                return;
            }
        };
        let t = Instant::now();
        let mut boxes = 0;
        for d in &output.detections {
            boxes += d.boxes.len();
            let msg = BoundingBox3DArray::from(d);
            let _ = out.detections.publish(&to_detection3d_array(&msg));
            let _ = out.boxes.publish(&msg);
        }
        if let Some(objects) = &out.objects {
            match to_detected_objects(&output.detections) {
                Ok(Some(m)) => {
                    let _ = objects.publish(&m);
                }
                Ok(None) => {}
                Err(e) => self
                    .errors
                    .report("autoware objects: invalid box", e.to_string()),
            }
        }
        let _ = out.markers.publish(&frame_markers(&output.detections));
        let publish_ms = t.elapsed().as_secs_f64() * 1e3;
        self.sets_processed += 1;
        let stage_ms: std::collections::BTreeMap<String, f64> = [
            ("decode", decode_ms),
            ("preprocess", output.times.preprocess_ms),
            ("model", output.times.model_ms),
            ("merge", output.times.merge_ms),
            ("publish", publish_ms),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        for (stage, p) in &out.stages {
            let _ = p.publish(&Float64 {
                data: stage_ms[stage],
            });
        }
        let total: f64 = stage_ms.values().sum();
        let _ = out.processing.publish(&Float64 { data: total });
        let stamp = output.detections.first().map(|d| d.stamp_ns).unwrap_or(0);
        if let Some(now) = clock
            .lock()
            .ok()
            .and_then(|mut c| c.get_now().ok())
            .map(|d| d.as_nanos() as i64)
        {
            let _ = out.latency.publish(&Float64 {
                data: (now - stamp) as f64 / 1e6,
            });
        }
        let input_to_output_ms = completed_at.elapsed().as_secs_f64() * 1e3;
        for (k, v) in &stage_ms {
            self.latencies.add(k, *v);
        }
        self.latencies.add("total", total);
        self.latencies.add("input_to_output", input_to_output_ms);
        let stats = FrameStats {
            stamp_ns: stamp,
            stage_ms,
            input_to_output_ms,
            boxes,
            sets_in: self.sync.stats().sets,
            sets_processed: self.sets_processed,
            sets_dropped: self.sets_dropped,
            messages_dropped: self.sync.stats().dropped_messages,
        };
        if let Ok(line) = serde_json::to_string(&stats) {
            let _ = out.frame_stats.publish(&StringMsg { data: line });
        }
    }

    /// The interval's report: silent cameras and unsynchronized stamps become input errors, every cause is
    /// logged once, and one `/diagnostics` status carries the counters.
    fn report(&mut self, out: &Outputs, clock: &Mutex<r2r::Clock>) {
        let total: u64 = self.per_camera.iter().sum();
        if total > 0 {
            for (i, n) in self.per_camera.iter().enumerate() {
                if *n == 0 {
                    self.errors.report(
                        format!("missing camera {}", self.cameras[i]),
                        format!(
                            "{} sent no image in the last {:.1} s while others sent {total}",
                            self.cameras[i], self.params.diagnostics_period_s
                        ),
                    );
                }
            }
            let sets = self.sync.stats().sets;
            if self.per_camera.iter().all(|n| *n > 0) && sets == self.sets_at_last_tick {
                let stamps: Vec<i64> = self.newest_stamp.iter().flatten().copied().collect();
                let spread = stamps.iter().max().unwrap_or(&0) - stamps.iter().min().unwrap_or(&0);
                self.errors.report(
                    "unsynchronized stamps",
                    format!(
                        "no complete set: newest stamps span {:.1} ms, more than sync_slop_s = {} s",
                        spread as f64 / 1e6,
                        self.params.sync_slop_s
                    ),
                );
            }
        }
        self.sets_at_last_tick = self.sync.stats().sets;
        let reports = self.errors.end_interval();
        for r in &reports {
            r2r::log_warn!(
                &self.name,
                "{}: {}× in the last {:.1} s ({} in total); first: {}",
                r.cause,
                r.count,
                self.params.diagnostics_period_s,
                r.total,
                r.example
            );
        }
        let s = self.sync.stats();
        let kv = |k: &str, v: String| KeyValue {
            key: k.into(),
            value: v,
        };
        let mut values = vec![
            kv("sets_in", s.sets.to_string()),
            kv("sets_processed", self.sets_processed.to_string()),
            kv("sets_dropped", self.sets_dropped.to_string()),
            kv("messages_received", s.received.to_string()),
            kv("messages_dropped", s.dropped_messages.to_string()),
            kv("prompts_received", self.prompts_received.to_string()),
            kv("standing_prompts", self.prompts.len().to_string()),
        ];
        for (stage, l) in self.latencies.summary() {
            values.push(kv(
                &format!("{stage}_median_ms"),
                format!("{:.2}", l.median_ms),
            ));
            values.push(kv(&format!("{stage}_p95_ms"), format!("{:.2}", l.p95_ms)));
        }
        for r in &reports {
            values.push(kv(
                &format!("error: {}", r.cause),
                format!("{} in interval, {} total: {}", r.count, r.total, r.example),
            ));
        }
        let (level, message) = if !reports.is_empty() {
            (
                DiagnosticStatus::ERROR as u8,
                reports
                    .iter()
                    .map(|r| r.cause.as_str())
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        } else if self.sets_processed == 0 {
            (
                DiagnosticStatus::WARN as u8,
                "no frame processed yet".to_string(),
            )
        } else {
            (DiagnosticStatus::OK as u8, "ok".to_string())
        };
        let stamp = clock
            .lock()
            .ok()
            .and_then(|mut c| c.get_now().ok())
            .map(|d| r2r::Clock::to_builtin_time(&d))
            .unwrap_or_default();
        let _ = out.diagnostics.publish(&DiagnosticArray {
            header: Header {
                stamp,
                frame_id: String::new(),
            },
            status: vec![DiagnosticStatus {
                level,
                name: format!("{}: perception", self.name),
                message,
                hardware_id: String::new(),
                values,
            }],
        });
        self.per_camera.iter_mut().for_each(|n| *n = 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::perception::Detection;
    use r2r::ParameterValue;

    #[test]
    fn parameters_are_checked_against_the_schema_ranges() {
        let ok = PerceptionNodeParams::from_params(&Params::from_values([])).unwrap();
        assert_eq!(ok.output_frame, "lidar_top");
        assert_eq!(ok.prompts.len(), 1);
        assert!(ok.publish_autoware_objects, "on by default");
        for (k, v) in [
            ("score_threshold", ParameterValue::Double(1.5)),
            ("device", ParameterValue::String("gpu".into())),
            ("image_transport", ParameterValue::String("theora".into())),
            ("sync_slop_s", ParameterValue::Double(0.0)),
            ("max_boxes", ParameterValue::Integer(0)),
            ("prompts", ParameterValue::StringArray(vec![])),
            ("use_camera_info", ParameterValue::Integer(1)),
            (
                "publish_autoware_objects",
                ParameterValue::String("yes".into()),
            ),
        ] {
            let e = PerceptionNodeParams::from_params(&Params::from_values([(k.to_string(), v)]))
                .unwrap_err();
            assert!(e.to_string().contains(k), "{e}");
        }
        let cuda = Params::from_values([(
            "device".to_string(),
            ParameterValue::String("cuda:1".into()),
        )]);
        assert_eq!(
            PerceptionNodeParams::from_params(&cuda).unwrap().device,
            "cuda:1"
        );
    }

    #[test]
    fn markers_replace_the_previous_frame_and_outline_each_box() {
        let d = Detections {
            stamp_ns: 5_000_000_123,
            frame_id: "lidar_top".into(),
            prompt: "p".into(),
            boxes: vec![
                Detection {
                    label: "car".into(),
                    ..Detection::new([5.0, 1.0, 0.0, 4.0, 2.0, 1.5, 0.3], 0.8)
                },
                Detection {
                    label: "bus".into(),
                    ..Detection::new([-9.0, 3.0, 1.0, 10.0, 3.0, 3.0, -1.0], 0.6)
                },
            ],
        };
        let m = frame_markers(&[d]);
        assert_eq!(m.markers.len(), 1 + 2 * 2);
        assert_eq!(m.markers[0].action, MARKER_DELETEALL);
        let lines: Vec<_> = m
            .markers
            .iter()
            .filter(|m| m.type_ == MARKER_LINE_LIST)
            .collect();
        assert_eq!(lines.len(), 2);
        assert!(lines.iter().all(|l| l.points.len() == 24));
        assert_ne!(lines[0].color, lines[1].color);
        let texts: Vec<_> = m
            .markers
            .iter()
            .filter(|m| m.type_ == MARKER_TEXT)
            .collect();
        assert_eq!(texts[0].text, "car 0.80");
        assert!(m.markers.iter().all(|m| m.header.frame_id == "lidar_top"));
        assert!(frame_markers(&[]).markers.is_empty());
    }

    #[test]
    fn causes_group_messages_that_differ_in_numbers() {
        assert_eq!(
            cause_of("cam_front image", "truncated JPEG: 1000 bytes"),
            cause_of("cam_front image", "truncated JPEG: 999 bytes")
        );
        assert_eq!(
            cause_of("cam_front image", "invalid cam_front image: PNG size 0×0"),
            "cam_front image: PNG size #×#"
        );
    }
}

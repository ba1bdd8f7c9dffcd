//! `vlm3d demo` (with the `ros` feature): the perception node, the real product, on the built-in synthetic
//! bag, with everything it publishes recorded.
//!
//! 1. The synthetic scene and its rosbag2 bag ([`crate::demo::prepare_demo_bag`], reused when present).
//! 2. A recorder ([`super::record`], on a thread) into `OUT/recording/`: the inputs (six image topics, six
//!    `camera_info`, `/tf_static`) and the node's outputs (`/vlm3d/boxes`, `/vlm3d/detections`,
//!    `/vlm3d/markers`, `/perception_node/debug/frame_stats`, `/diagnostics`): a rosbag2 MCAP folder that
//!    `ros2 bag play` and Foxglove open.
//! 3. The `perception_node` binary (beside the running executable) as a child process with the demo model
//!    and the paper's prompts for the scene's two most frequent categories, its topics remapped to the bag's
//!    names, its log in `OUT/node.log`. It is stopped (SIGTERM, then killed after a grace period) on every
//!    exit path.
//! 4. Once the node and the recorder have subscribed, [`super::play`] publishes the bag at `rate`, after
//!    both (node and recorder) have matched its six image publishers.
//! 5. The demo ends when the node has reported the bag's last set on `~/debug/frame_stats`, or after
//!    `silence` without a report once the bag has been played.
//! 6. From the recording: `OUT/summary.json` and `OUT/summary.md` (sets, boxes, per-stage median and p95,
//!    [`crate::demo::summary`]) and `OUT/demo.png` (the processed frame with the most ground truth of the
//!    prompted categories: six views with true and predicted boxes projected, and a bird's-eye view,
//!    [`crate::demo::picture`]).
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use r2r::{Context, Node, PublisherUntyped, QosProfile};
use serde::Serialize;

use super::play::{play, PlayOptions, PlayReport};
use super::record::{record, RecordOptions, RecordReport};
use crate::data::bag::msgs::{BoundingBox3DArrayMsg, StringMsg};
use crate::data::bag::rosbag::BagReader;
use crate::demo::frames::{
    draw_box_from_msg, frame_with_most_truth, load_demo_frames, most_common_categories, DemoFrame,
};
use crate::demo::picture::{draw_demo_picture, DemoPicture, DrawBox, ViewPanel};
use crate::demo::summary::{summarize, DemoSummary};
use crate::demo::{default_model_dir, prepare_demo_bag, DemoData};
use crate::perception::prompt::paper_prompt;
use crate::perception::Rig;
use crate::{Error, Result};

/// The node's name (its private topics are under `/perception_node/`).
pub const NODE_NAME: &str = "perception_node";
/// Where `~/output/boxes` is remapped to.
pub const BOXES_TOPIC: &str = "/vlm3d/boxes";
/// Where `~/output/detections` is remapped to.
pub const DETECTIONS_TOPIC: &str = "/vlm3d/detections";
/// Where `~/output/markers` is remapped to.
pub const MARKERS_TOPIC: &str = "/vlm3d/markers";
/// The node's per-frame report (not remapped).
pub const FRAME_STATS_TOPIC: &str = "/perception_node/debug/frame_stats";
/// The node's health.
pub const DIAGNOSTICS_TOPIC: &str = "/diagnostics";
const TF_STATIC_TOPIC: &str = "/tf_static";
/// Stamps of a set and of a bag sample match within this.
const STAMP_TOLERANCE_NS: u64 = 1_000_000;

/// Settings of [`run_node_demo`].
#[derive(Debug, Clone)]
pub struct NodeDemoOptions {
    /// Output folder: `bag/`, `recording/`, `demo.png`, `summary.json`, `summary.md`, `node.log`.
    pub out: PathBuf,
    /// Checkpoint folder given to the node (`model_path`).
    pub model: PathBuf,
    /// Playback speed (1 = real time); the default leaves the CPU model time for every set.
    pub rate: f64,
    /// Key frames (samples) of the synthetic scene.
    pub samples: usize,
    /// Seed of the synthetic scene.
    pub seed: u64,
    /// Synthetic image width.
    pub width: u32,
    /// Synthetic image height.
    pub height: u32,
    /// The node's `score_threshold`.
    pub score_threshold: f64,
    /// The node's `device` (`cpu`, `cuda`, `cuda:N`, `auto`).
    pub device: String,
    /// The node's `dtype`.
    pub dtype: String,
    /// Prompts for the node; empty: the paper's prompt for the scene's two most frequent categories.
    pub prompts: Vec<String>,
    /// The `perception_node` executable; `None`: beside the running executable.
    pub node_binary: Option<PathBuf>,
    /// Longest wait for the node (model loading) and the recorder to subscribe.
    pub startup_timeout: Duration,
    /// After the bag has been played, stop after this long without a frame report.
    pub silence: Duration,
    /// Set (e.g. by a SIGINT / SIGTERM handler) to end early: before playing, the demo fails; while playing,
    /// it stops the player, the recorder and the node and summarizes what was recorded.
    pub interrupt: Option<Arc<AtomicBool>>,
}

impl NodeDemoOptions {
    /// Defaults: the demo model, ten samples at 640×360 played at half speed, the node's score threshold.
    pub fn new(out: impl Into<PathBuf>) -> Self {
        Self {
            out: out.into(),
            model: default_model_dir(),
            rate: 0.5,
            samples: 10,
            seed: 7,
            width: 640,
            height: 360,
            score_threshold: 0.3,
            device: "cpu".into(),
            dtype: "f32".into(),
            prompts: Vec::new(),
            node_binary: None,
            startup_timeout: Duration::from_secs(120),
            silence: Duration::from_secs(10),
            interrupt: None,
        }
    }
}

/// The frame `demo.png` shows.
#[derive(Debug, Clone, Serialize)]
pub struct PictureFrame {
    /// Stamp of the frame (CAM_FRONT image), ns.
    pub stamp_ns: i64,
    /// nuScenes sample token.
    pub sample_token: String,
    /// Ground-truth boxes of the prompted categories.
    pub truth: usize,
    /// Predicted boxes.
    pub predicted: usize,
}

/// What [`run_node_demo`] did; `summary.json` holds it.
#[derive(Debug, Clone, Serialize)]
pub struct NodeDemoReport {
    /// Sets, boxes and latencies from the node's frame reports.
    #[serde(flatten)]
    pub summary: DemoSummary,
    /// Samples (camera sets) in the bag.
    pub samples: usize,
    /// The node's prompts.
    pub prompts: Vec<String>,
    /// The model folder.
    pub model: PathBuf,
    /// The node's score threshold.
    pub score_threshold: f64,
    /// Playback speed.
    pub rate: f64,
    /// Messages the player published.
    pub messages_played: u64,
    /// Messages recorded per topic.
    pub recorded: BTreeMap<String, u64>,
    /// The frame in `demo.png`.
    pub picture: Option<PictureFrame>,
    /// Wall-clock seconds of the whole demo (data preparation included).
    pub wall_s: f64,
    /// Ended early by [`NodeDemoOptions::interrupt`].
    pub interrupted: bool,
    /// Files and folders written.
    pub outputs: Vec<PathBuf>,
}

/// The perception node as a child process: SIGTERM, then a kill after a grace period, when dropped.
struct NodeProcess {
    child: Child,
    log: PathBuf,
}

impl NodeProcess {
    /// The exit status if it has ended.
    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Stops the node: SIGTERM, up to `grace` to exit, then SIGKILL.
    fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        if let Some(s) = self.exited() {
            return Some(s);
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(s) = self.exited() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        tracing::warn!("perception_node did not stop on SIGTERM within {grace:?}: killing it");
        let _ = self.child.kill();
        self.child.wait().ok()
    }

    /// An error saying the node ended, with the end of its log.
    fn ended_error(&self, status: ExitStatus, when: &str) -> Error {
        Error::Ros(format!(
            "perception_node exited ({status}) {when}; the end of {}:\n{}",
            self.log.display(),
            log_tail(&self.log, 15)
        ))
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

/// Sets the stop flag of the player and the recorder when the demo ends, on every path.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The `perception_node` executable: beside the running one (or one folder up, for test binaries in
/// `target/*/deps/`).
pub fn find_node_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe()
        .map_err(|e| Error::Ros(format!("cannot locate the running executable: {e}")))?;
    let name = format!("perception_node{}", std::env::consts::EXE_SUFFIX);
    let dir = exe.parent().unwrap_or(Path::new("."));
    let candidates = [dir.join(&name), dir.join("..").join(&name)];
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| {
            Error::invalid(
                "perception_node binary",
                format!(
                    "{} not found: build it with `cargo build --bins` (scripts/demo.sh does)",
                    candidates[0].display()
                ),
            )
        })
}

/// A YAML flow list of single-quoted strings, for `-p name:=[...]` on the ROS command line.
fn yaml_string_list(items: &[String]) -> String {
    let quoted: Vec<String> = items
        .iter()
        .map(|s| format!("'{}'", s.replace('\'', "''")))
        .collect();
    format!("[{}]", quoted.join(", "))
}

/// The node's command-line arguments: parameters and remappings of its private topics to the bag's names.
pub fn node_arguments(rig: &Rig, opts: &NodeDemoOptions, prompts: &[String]) -> Vec<String> {
    let mut a: Vec<String> = vec!["--ros-args".into()];
    let mut param = |k: &str, v: String| {
        a.push("-p".into());
        a.push(format!("{k}:={v}"));
    };
    param("model_path", opts.model.display().to_string());
    param("prompts", yaml_string_list(prompts));
    // `{:?}` keeps the decimal point: the parameter is a double.
    param("score_threshold", format!("{:?}", opts.score_threshold));
    param("device", opts.device.clone());
    param("dtype", opts.dtype.clone());
    let mut remap = |from: String, to: &str| {
        a.push("-r".into());
        a.push(format!("{from}:={to}"));
    };
    for c in &rig.cameras {
        remap(
            format!("/{NODE_NAME}/input/{}/image", c.frame_id),
            &c.image_topic,
        );
        remap(
            format!("/{NODE_NAME}/input/{}/camera_info", c.frame_id),
            &c.camera_info_topic,
        );
    }
    for (out, to) in [
        ("boxes", BOXES_TOPIC),
        ("detections", DETECTIONS_TOPIC),
        ("markers", MARKERS_TOPIC),
    ] {
        remap(format!("/{NODE_NAME}/output/{out}"), to);
    }
    a
}

/// The topics played and recorded as inputs: (topic, type, latched).
fn input_topics(rig: &Rig) -> Vec<(String, &'static str, bool)> {
    let mut v = Vec::new();
    for c in &rig.cameras {
        v.push((
            c.image_topic.clone(),
            "sensor_msgs/msg/CompressedImage",
            false,
        ));
        v.push((
            c.camera_info_topic.clone(),
            "sensor_msgs/msg/CameraInfo",
            false,
        ));
    }
    v.push((TF_STATIC_TOPIC.into(), "tf2_msgs/msg/TFMessage", true));
    v
}

/// The node's outputs that are recorded: (topic, type).
fn output_topics() -> Vec<(String, &'static str)> {
    [
        (BOXES_TOPIC, "vlm3d/msg/BoundingBox3DArray"),
        (DETECTIONS_TOPIC, "vision_msgs/msg/Detection3DArray"),
        (MARKERS_TOPIC, "visualization_msgs/msg/MarkerArray"),
        (FRAME_STATS_TOPIC, "std_msgs/msg/String"),
        (DIAGNOSTICS_TOPIC, "diagnostic_msgs/msg/DiagnosticArray"),
    ]
    .into_iter()
    .map(|(t, ty)| (t.to_string(), ty))
    .collect()
}

/// A path relative to the crate root when under it (for titles and messages).
fn short_path(p: &Path) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    p.strip_prefix(root)
        .map(|r| r.display().to_string())
        .unwrap_or_else(|_| p.display().to_string())
}

/// Runs the node demo (see the module docs).
pub fn run_node_demo(opts: &NodeDemoOptions) -> Result<NodeDemoReport> {
    let started = Instant::now();
    let interrupted = || {
        opts.interrupt
            .as_ref()
            .is_some_and(|f| f.load(Ordering::Relaxed))
    };
    if !(opts.rate.is_finite() && opts.rate > 0.0) {
        return Err(Error::invalid(
            "demo rate",
            format!("{} (must be > 0)", opts.rate),
        ));
    }
    let node_binary = match &opts.node_binary {
        Some(p) if p.is_file() => p.clone(),
        Some(p) => {
            return Err(Error::invalid(
                "perception_node binary",
                format!("{} not found: run `cargo build --bins`", p.display()),
            ))
        }
        None => find_node_binary()?,
    };
    let rig = Rig::nuscenes();
    let bag = prepare_demo_bag(
        &opts.out,
        &DemoData {
            samples: opts.samples,
            seed: opts.seed,
            width: opts.width,
            height: opts.height,
        },
    )?;
    let frames = load_demo_frames(&bag)?;
    let categories: Vec<String> = if opts.prompts.is_empty() {
        most_common_categories(&frames, 2)
    } else {
        opts.prompts
            .iter()
            .map(|p| crate::perception::prompt::label_from_prompt(p))
            .collect()
    };
    let prompts: Vec<String> = if opts.prompts.is_empty() {
        categories.iter().map(|c| paper_prompt(c)).collect()
    } else {
        opts.prompts.clone()
    };
    let last_stamp = frames.iter().map(|f| f.stamp_ns).max().unwrap_or(0);
    tracing::info!(
        "demo: {} samples in {}; prompts for {}",
        frames.len(),
        bag.display(),
        categories.join(", ")
    );

    // The recording (an old one goes first: rosbag2 folders are not overwritten).
    let recording = opts.out.join("recording");
    if recording.exists() {
        std::fs::remove_dir_all(&recording).map_err(|e| Error::io(&recording, e))?;
    }
    let inputs = input_topics(rig);
    let outputs = output_topics();
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_guard = StopOnDrop(Arc::clone(&stop));
    let record_opts = RecordOptions {
        out: recording.clone(),
        topics: inputs
            .iter()
            .map(|t| t.0.clone())
            .chain(outputs.iter().map(|t| t.0.clone()))
            .collect(),
        duration: None,
        stop: Arc::clone(&stop),
    };
    // Publishers on every recorded topic that never publish: the topics exist (so the recorder subscribes
    // them all at once) and their matched-subscriber counts say when the node and the recorder listen.
    let ctx = Context::create()?;
    let mut probe = Node::create(ctx, &format!("vlm3d_demo_{}", std::process::id()), "")?;
    let mut probes: Vec<(String, usize, PublisherUntyped)> = Vec::new();
    for (topic, ty, latched) in &inputs {
        let qos = if *latched {
            QosProfile::default().transient_local().keep_last(1)
        } else {
            QosProfile::default()
        };
        // Node and recorder.
        probes.push((
            topic.clone(),
            2,
            probe.create_publisher_untyped(topic, ty, qos)?,
        ));
    }
    for (topic, ty) in &outputs {
        let p = probe.create_publisher_untyped(topic, ty, QosProfile::default())?;
        // The recorder (this node's own frame_stats subscription would count there too).
        if topic != FRAME_STATS_TOPIC {
            probes.push((topic.clone(), 1, p));
        }
    }
    let mut stats_sub = probe.subscribe::<r2r::std_msgs::msg::String>(
        FRAME_STATS_TOPIC,
        QosProfile::default().keep_last(1000),
    )?;
    let recorder: JoinHandle<Result<RecordReport>> = std::thread::Builder::new()
        .name("vlm3d-demo-record".into())
        .spawn(move || record(&record_opts))
        .map_err(|e| Error::Ros(format!("cannot start the recorder thread: {e}")))?;
    let mut recorder = Some(recorder);

    // The node.
    let log_path = opts.out.join("node.log");
    let args = node_arguments(rig, opts, &prompts);
    let mut log = File::create(&log_path).map_err(|e| Error::io(&log_path, e))?;
    let shell_quoted: Vec<String> = args
        .iter()
        .map(|a| {
            if a.contains([' ', '\'', '[', '(']) {
                format!("\"{a}\"")
            } else {
                a.clone()
            }
        })
        .collect();
    writeln!(
        log,
        "# {} {}",
        node_binary.display(),
        shell_quoted.join(" ")
    )
    .map_err(|e| Error::io(&log_path, e))?;
    let log_err = log.try_clone().map_err(|e| Error::io(&log_path, e))?;
    let child = Command::new(&node_binary)
        .args(&args)
        .env("RCUTILS_COLORIZED_OUTPUT", "0")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log_err))
        .spawn()
        .map_err(|e| Error::Ros(format!("cannot start {}: {e}", node_binary.display())))?;
    let mut node = NodeProcess {
        child,
        log: log_path.clone(),
    };
    tracing::info!(
        "demo: started {} (pid {}), log in {}",
        short_path(&node_binary),
        node.child.id(),
        log_path.display()
    );

    // Wait until the node (model loaded) and the recorder have subscribed.
    let deadline = Instant::now() + opts.startup_timeout;
    loop {
        probe.spin_once(Duration::from_millis(20));
        if interrupted() {
            return Err(Error::Ros("demo interrupted before playing".into()));
        }
        if let Some(s) = node.exited() {
            return Err(node.ended_error(s, "before subscribing to its inputs"));
        }
        if recorder.as_ref().is_some_and(|r| r.is_finished()) {
            return Err(join_recorder(recorder.take()).err().unwrap_or_else(|| {
                Error::Ros("the recorder stopped before the demo started".into())
            }));
        }
        let missing: Vec<&str> = probes
            .iter()
            .filter(|(_, min, p)| p.get_inter_process_subscription_count().unwrap_or(0) < *min)
            .map(|(t, _, _)| t.as_str())
            .collect();
        if missing.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            return Err(Error::Ros(format!(
                "after {:?}, still no subscriber (node and recorder) on {}; the end of {}:\n{}",
                opts.startup_timeout,
                missing.join(", "),
                log_path.display(),
                log_tail(&log_path, 15)
            )));
        }
    }
    tracing::info!(
        "demo: node and recorder subscribed after {:.1} s; playing the bag at rate {}",
        started.elapsed().as_secs_f64(),
        opts.rate
    );

    // Play, and follow the node's frame reports. The player waits until both the node and the recorder have
    // matched its image publishers (the recorder, in this process, matches first; waiting for one subscriber
    // would lose the node's first set).
    let mut popts = PlayOptions::new(&bag);
    popts.rate = opts.rate;
    popts.clock = false;
    popts.topics = inputs.iter().map(|t| t.0.clone()).collect();
    popts.wait_for = rig.cameras.iter().map(|c| c.image_topic.clone()).collect();
    popts.min_subscribers = 1 + usize::from(recorder.is_some());
    popts.delay = Duration::from_secs(1);
    popts.wait_timeout = opts.startup_timeout;
    popts.stop = Some(Arc::clone(&stop));
    let player: JoinHandle<Result<PlayReport>> = std::thread::Builder::new()
        .name("vlm3d-demo-play".into())
        .spawn(move || play(&popts))
        .map_err(|e| Error::Ros(format!("cannot start the player thread: {e}")))?;
    let mut player = Some(player);
    let mut played: Option<(PlayReport, Instant)> = None;
    let mut live_lines: Vec<String> = Vec::new();
    let mut newest: Option<i64> = None;
    let mut last_report = Instant::now();
    loop {
        probe.spin_once(Duration::from_millis(20));
        while let Some(Some(msg)) = stats_sub.next().now_or_never() {
            last_report = Instant::now();
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&msg.data) {
                let stamp = v["stamp_ns"].as_i64().unwrap_or(0);
                newest = Some(newest.map_or(stamp, |n| n.max(stamp)));
                tracing::info!(
                    "node: set {} of {} processed (stamp {:.3} s): {} boxes, model {:.0} ms, input to output {:.0} ms ({} dropped so far)",
                    v["sets_processed"],
                    frames.len(),
                    stamp as f64 / 1e9,
                    v["boxes"],
                    v["stage_ms"]["model"].as_f64().unwrap_or(f64::NAN),
                    v["input_to_output_ms"].as_f64().unwrap_or(f64::NAN),
                    v["sets_dropped"]
                );
            }
            live_lines.push(msg.data);
        }
        if interrupted() {
            tracing::warn!("demo interrupted: stopping the player, the recorder and the node");
            stop.store(true, Ordering::Relaxed);
            break;
        }
        if let Some(s) = node.exited() {
            return Err(node.ended_error(s, "while the bag was playing"));
        }
        if player.as_ref().is_some_and(|p| p.is_finished()) {
            let report = player
                .take()
                .expect("checked")
                .join()
                .map_err(|_| Error::Ros("the player thread panicked".into()))??;
            tracing::info!(
                "demo: played {} messages in {:.1} s; waiting for the node's last set",
                report.published.values().sum::<u64>(),
                report.seconds
            );
            played = Some((report, Instant::now()));
        }
        if let Some((_, ended)) = &played {
            if newest.is_some_and(|n| n as u64 + STAMP_TOLERANCE_NS >= last_stamp) {
                break;
            }
            let quiet = last_report.max(*ended).elapsed();
            if quiet >= opts.silence {
                tracing::warn!(
                    "demo: no frame report for {:.0} s after the bag ended: stopping (the last set was not processed)",
                    quiet.as_secs_f64()
                );
                break;
            }
        }
    }
    // Let the recorder take the last outputs, then stop it and the node.
    let linger = Instant::now() + Duration::from_millis(500);
    while Instant::now() < linger {
        probe.spin_once(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    let recorded = join_recorder(recorder.take())?;
    node.stop(Duration::from_secs(5));
    let play_report = match (played, player.take()) {
        (Some((r, _)), _) => r,
        // Interrupted: the player stops at the flag.
        (None, Some(p)) => p
            .join()
            .map_err(|_| Error::Ros("the player thread panicked".into()))??,
        (None, None) => PlayReport::default(),
    };

    // The summary, from the recording (the live reports when the recording missed some).
    let reader = BagReader::open(&recording)?;
    let mut lines: Vec<String> = reader
        .typed::<StringMsg>(FRAME_STATS_TOPIC)
        .map(|m| m.map(|(_, s)| s.data))
        .collect::<Result<_>>()?;
    if lines.len() < live_lines.len() {
        tracing::warn!(
            "demo: the recording has {} of the node's {} frame reports; summarizing the live ones",
            lines.len(),
            live_lines.len()
        );
        lines = live_lines;
    }
    let summary = summarize(&lines)?;
    let mut predicted: BTreeMap<i64, Vec<DrawBox>> = BTreeMap::new();
    for m in reader.typed::<BoundingBox3DArrayMsg>(BOXES_TOPIC) {
        let (_, arr) = m?;
        let stamp =
            i64::from(arr.header.stamp.sec) * 1_000_000_000 + i64::from(arr.header.stamp.nanosec);
        predicted
            .entry(stamp)
            .or_default()
            .extend(arr.boxes.iter().map(draw_box_from_msg));
    }
    let processed: Vec<i64> = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["stamp_ns"].as_i64())
        .chain(predicted.keys().copied())
        .collect();

    let png = opts.out.join("demo.png");
    let json_path = opts.out.join("summary.json");
    let md_path = opts.out.join("summary.md");
    let mut report = NodeDemoReport {
        summary,
        samples: frames.len(),
        prompts: prompts.clone(),
        model: opts.model.clone(),
        score_threshold: opts.score_threshold,
        rate: opts.rate,
        messages_played: play_report.published.values().sum(),
        recorded: recorded.messages.clone(),
        picture: None,
        wall_s: 0.0,
        interrupted: interrupted(),
        outputs: vec![
            png.clone(),
            json_path.clone(),
            md_path.clone(),
            recording.clone(),
            log_path.clone(),
        ],
    };
    let picked = frame_with_most_truth(&frames, &processed, &categories, STAMP_TOLERANCE_NS);
    if let Some((frame, stamp)) = picked {
        let boxes = predicted
            .iter()
            .filter(|(s, _)| s.abs_diff(stamp) <= STAMP_TOLERANCE_NS)
            .flat_map(|(_, b)| b.iter().cloned())
            .collect::<Vec<_>>();
        let picture = demo_picture(frame, &frames, stamp, &categories, boxes, opts, &report)?;
        report.picture = Some(PictureFrame {
            stamp_ns: stamp,
            sample_token: frame.sample_token.clone(),
            truth: picture.truth.len(),
            predicted: picture.predicted.len(),
        });
        draw_demo_picture(&png, &picture)?;
    }
    report.wall_s = started.elapsed().as_secs_f64();
    write_summary(&json_path, &md_path, &report)?;
    if report.picture.is_none() {
        return Err(Error::Ros(format!(
            "perception_node processed no set of the bag ({} complete sets reached it); summary in {}, the end of {}:\n{}",
            report.summary.sets_in,
            md_path.display(),
            log_path.display(),
            log_tail(&log_path, 15)
        )));
    }
    Ok(report)
}

fn join_recorder(h: Option<JoinHandle<Result<RecordReport>>>) -> Result<RecordReport> {
    h.ok_or_else(|| Error::Ros("the recorder was already stopped".into()))?
        .join()
        .map_err(|_| Error::Ros("the recorder thread panicked".into()))?
}

fn demo_picture(
    frame: &DemoFrame,
    frames: &[DemoFrame],
    stamp: i64,
    categories: &[String],
    predicted: Vec<DrawBox>,
    opts: &NodeDemoOptions,
    report: &NodeDemoReport,
) -> Result<DemoPicture> {
    let views = frame
        .views
        .iter()
        .map(|v| {
            Ok(ViewPanel {
                channel: v.channel.clone(),
                image: v.decode_image()?,
                camera: v.camera,
                cam_to_lidar: v.cam_to_lidar,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let index = frames
        .iter()
        .position(|f| f.sample_token == frame.sample_token)
        .unwrap_or(0);
    let truth = frame.truth_of(categories);
    // The title says what the model is.
    let caveat = if opts.model == crate::demo::default_model_dir() {
        format!(" ({})", crate::demo::DEMO_MODEL_NOTE)
    } else {
        String::new()
    };
    let title = format!(
        "perception_node on the synthetic demo bag: prompts \"{}\"; model {}{caveat}",
        categories.join("\", \""),
        short_path(&opts.model)
    );
    let subtitle = format!(
        "frame {:.3} s (sample {} of {}): {} true, {} predicted boxes (score ≥ {}); sets processed {} of {} in, {} dropped; prompt: \"{}\"",
        stamp as f64 / 1e9,
        index + 1,
        frames.len(),
        truth.len(),
        predicted.len(),
        opts.score_threshold,
        report.summary.sets_processed,
        report.summary.sets_in,
        report.summary.sets_dropped,
        crate::perception::prompt::PAPER_PROMPT
    );
    Ok(DemoPicture {
        title,
        subtitle,
        views,
        others: frame.truth_not_of(categories),
        truth,
        predicted,
    })
}

fn write_summary(json_path: &Path, md_path: &Path, report: &NodeDemoReport) -> Result<()> {
    let json = serde_json::to_string_pretty(report)
        .map_err(|e| Error::invalid("demo summary", e.to_string()))?;
    std::fs::write(json_path, json + "\n").map_err(|e| Error::io(json_path, e))?;
    let mut md = format!(
        "# vlm3d demo: perception_node on the synthetic bag\n\nModel {}, prompts for {}; {} samples played at rate {}; score threshold {}; {:.1} s wall.\n\n",
        short_path(&report.model),
        report
            .prompts
            .iter()
            .map(|p| crate::perception::prompt::label_from_prompt(p))
            .collect::<Vec<_>>()
            .join(", "),
        report.samples,
        report.rate,
        report.score_threshold,
        report.wall_s
    );
    md.push_str(&report.summary.markdown());
    md.push_str("\nRecorded messages per topic:\n\n");
    for (t, n) in &report.recorded {
        md.push_str(&format!("- `{t}`: {n}\n"));
    }
    std::fs::write(md_path, md).map_err(|e| Error::io(md_path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_gets_its_topics_remapped_and_prompts_as_a_yaml_list() {
        let rig = Rig::nuscenes();
        let opts = NodeDemoOptions::new("/tmp/x");
        let prompts = vec![paper_prompt("car"), "it's a 'test'".to_string()];
        let a = node_arguments(rig, &opts, &prompts);
        assert_eq!(a[0], "--ros-args");
        assert!(a.contains(&format!(
            "prompts:=['{}', 'it''s a ''test''']",
            paper_prompt("car")
        )));
        assert!(a.contains(&"score_threshold:=0.3".to_string()));
        assert!(a.contains(
            &"/perception_node/input/cam_back_left/image:=/cam_back_left/image_rect_compressed"
                .to_string()
        ));
        assert!(a.contains(&"/perception_node/output/markers:=/vlm3d/markers".to_string()));
        assert_eq!(a.iter().filter(|x| *x == "-r").count(), 6 * 2 + 3);
        let mut o = opts.clone();
        o.score_threshold = 0.0;
        assert!(node_arguments(rig, &o, &prompts).contains(&"score_threshold:=0.0".to_string()));
    }

    #[test]
    fn a_missing_node_binary_says_how_to_build_it() {
        let mut opts = NodeDemoOptions::new(std::env::temp_dir().join("vlm3d-no-node"));
        opts.node_binary = Some(PathBuf::from("/nonexistent/perception_node"));
        let e = run_node_demo(&opts).unwrap_err().to_string();
        assert!(e.contains("cargo build --bins"), "{e}");
    }
}

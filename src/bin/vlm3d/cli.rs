//! Argument parsing of the `vlm3d` binary; each subcommand calls into the library.
use clap::{Parser, Subcommand};

/// Offline tools of the vlm3d package (convert, synth, generate, detect, eval, bench, demo).
#[derive(Debug, Parser)]
#[command(name = "vlm3d", version, about)]
pub struct Cli {
    /// Log filter (tracing's EnvFilter syntax), e.g. `info` or `vlm3d=debug`. `RUST_LOG` overrides it.
    #[arg(long, global = true, default_value = "info")]
    pub log: String,
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands. Later issues add theirs here.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the version and the compiled-in features.
    Info,
    /// The built-in demo: perception_node with the demo model, the synthetic bag played into it, its output
    /// recorded and drawn (`--offline`: the same detector in-process, without ROS).
    Demo(DemoArgs),
    /// Convert a nuScenes version (tables + samples/) to a rosbag2 folder (MCAP, CDR).
    ConvertNuscenes(ConvertArgs),
    /// Benchmark the converter against the `rosbags` Python library on synthetic sets.
    BenchConvert(BenchConvertArgs),
    /// Greedy text answer of a Qwen2-VL checkpoint to a prompt about images (checks a checkpoint).
    Generate(GenerateArgs),
    /// Detect 3D boxes: images + prompt → JSON boxes per view.
    Detect(DetectArgs),
    /// Time the detector (vision tower, prefill, prompt + queries, box head; then a second prompt on the same
    /// frame) with random weights at tiny and Qwen2-VL-2B sizes.
    Bench(BenchArgs),
    /// Generate a synthetic dataset in the nuScenes v1.0 layout (tables, camera JPEGs, LiDAR .pcd.bin).
    Synth(SynthArgs),
    /// Write a Qwen2-VL checkpoint folder with fresh random weights for a config.json (a base to pre-train).
    InitModel(InitModelArgs),
    /// Write a trained run as one merged Hugging Face Qwen2-VL folder (LoRA folded into the weights, with the
    /// tokenizer and processor files, and head.safetensors) for runtimes that take plain checkpoints.
    Export(ExportArgs),
    /// Train the LoRA adapters and the box head (the paper's two stages) on rosbag2 bags.
    Train(TrainArgs),
    /// Score a model (or the mean-box baseline) on an annotated bag: paper and nuScenes metrics, report.
    Eval(EvalArgs),
    /// Plot a training run's learning curves (its `metrics.jsonl`) to a PNG.
    PlotTraining(PlotTrainingArgs),
    /// Publish a rosbag2 folder's messages with their recorded timing and /clock (for machines without
    /// `ros2 bag play`).
    #[cfg(feature = "ros")]
    Play(PlayArgs),
    /// Record topics to a rosbag2 MCAP folder (for machines without `ros2 bag record`).
    #[cfg(feature = "ros")]
    Record(RecordArgs),
}

/// Arguments of `vlm3d play`.
#[cfg(feature = "ros")]
#[derive(Debug, clap::Args)]
pub struct PlayArgs {
    /// The rosbag2 folder.
    pub bag: std::path::PathBuf,
    /// Speed factor (2 = twice as fast).
    #[arg(long, default_value_t = 1.0)]
    pub rate: f64,
    /// Start over at the end until stopped (Ctrl-C).
    #[arg(long = "loop")]
    pub looped: bool,
    /// Only these topics (comma-separated or repeated; default all).
    #[arg(long, value_delimiter = ',')]
    pub topics: Vec<String>,
    /// Do not publish /clock.
    #[arg(long)]
    pub no_clock: bool,
    /// Wait until these topics have a subscriber before the first message (comma-separated or repeated).
    #[arg(long, value_delimiter = ',')]
    pub wait_for: Vec<String>,
    /// Subscribers each `--wait-for` topic needs (e.g. 2: a node and a recorder).
    #[arg(long, default_value_t = 1)]
    pub wait_subscribers: usize,
    /// Seconds to wait after the subscribers matched, before the first message.
    #[arg(long, default_value_t = 0.0)]
    pub delay: f64,
}

/// Arguments of `vlm3d record`.
#[cfg(feature = "ros")]
#[derive(Debug, clap::Args)]
pub struct RecordArgs {
    /// Output rosbag2 folder (must not exist).
    #[arg(long)]
    pub out: std::path::PathBuf,
    /// Topics to record (comma-separated or repeated).
    #[arg(long, value_delimiter = ',', required = true)]
    pub topics: Vec<String>,
    /// Stop after this many seconds (default: at Ctrl-C / SIGTERM).
    #[arg(long)]
    pub duration: Option<f64>,
}

/// Arguments of `vlm3d eval`.
#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// Annotated rosbag2 folder (vlm3d convert-nuscenes output).
    #[arg(long)]
    pub bag: std::path::PathBuf,
    /// Output folder (metrics.json, report.md).
    #[arg(long)]
    pub out: std::path::PathBuf,
    /// Qwen2-VL checkpoint folder (default: the demo model, models/demo, when present; else the tiny fixture).
    #[arg(long)]
    pub model: Option<std::path::PathBuf>,
    /// Folder with adapter/ and head.safetensors (default: the model folder).
    #[arg(long)]
    pub trained: Option<std::path::PathBuf>,
    /// Also score a baseline: mean-box (each category's mean camera-frame box in every view).
    #[arg(long)]
    pub baseline: Option<String>,
    /// Bag whose boxes give the baseline's means (default: --bag).
    #[arg(long)]
    pub baseline_bag: Option<std::path::PathBuf>,
    /// Minimum confidence of a predicted box.
    #[arg(long, default_value_t = 0.3)]
    pub score_threshold: f32,
    /// BEV NMS threshold when merging cameras.
    #[arg(long, default_value_t = 0.3)]
    pub nms_iou: f64,
    /// Prompts for absent categories per sample.
    #[arg(long, default_value_t = 2)]
    pub absent_prompts: usize,
    /// Where the model runs: cpu, cuda or cuda:N.
    #[arg(long)]
    pub device: Option<String>,
    /// Weight precision: f32, bf16 or f16 (f32 is the right choice on CPU).
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Upper bound on pixels per view.
    #[arg(long, default_value_t = 448 * 252)]
    pub max_pixels: usize,
    /// The trainer's metrics log (`metrics.jsonl`): also plot the training curves.
    #[arg(long)]
    pub training_log: Option<std::path::PathBuf>,
    /// Query every sample with exactly these categories (prompt names, comma-separated: car,pedestrian), present
    /// or not, with the paper's prompt, instead of the present ones plus --absent-prompts absent ones; with
    /// --recorded: score only these of the recorded prompts.
    #[arg(long, value_delimiter = ',')]
    pub categories: Option<Vec<String>>,
    /// Score a recording of the perception node (rosbag2 folder with its vlm3d/BoundingBox3DArray output, fed
    /// --bag) instead of running a model: the same metrics on the frames it covers.
    #[arg(long, conflicts_with_all = ["model", "trained", "baseline", "baseline_bag"])]
    pub recorded: Option<std::path::PathBuf>,
    /// The recording's boxes topic (default: its one topic of type vlm3d/msg/BoundingBox3DArray).
    #[arg(long, requires = "recorded")]
    pub boxes_topic: Option<String>,
    /// Open set: categories held out of training (prompt names, comma-separated: "construction vehicle,trailer"),
    /// reported apart from the seen ones (report.md, metrics.json, open_set.png). Default: the
    /// `holdout_categories` of --holdout-from, else of --trained's train_config.yaml when it has some.
    #[arg(long, value_delimiter = ',')]
    pub holdout: Option<Vec<String>>,
    /// Read the held-out categories from this training recipe (YAML) or training output folder.
    #[arg(long, conflicts_with = "holdout")]
    pub holdout_from: Option<std::path::PathBuf>,
    /// prompts: the paper's metrics and nuScenes AP on the camera-visible boxes of the prompted categories.
    /// nuscenes: also the official devkit's detection protocol (all annotations of its 10 classes with points,
    /// class ranges, mAP, TP errors, NDS), every sample queried with the prompts of those classes unless
    /// --categories says otherwise.
    #[arg(long, default_value = "prompts", value_parser = ["prompts", "nuscenes"])]
    pub protocol: String,
}

/// Arguments of `vlm3d train`.
#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    /// The recipe (YAML; `config/train.yaml` is the paper's).
    #[arg(long)]
    pub config: std::path::PathBuf,
    /// Output folder: `adapter/`, `head.safetensors`, `metrics.jsonl`, `checkpoints/`.
    #[arg(long)]
    pub out: std::path::PathBuf,
    /// Continue from the newest complete checkpoint in `OUT/checkpoints`.
    #[arg(long)]
    pub resume: bool,
    /// Stop after this many more optimizer steps (a checkpoint is written).
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// Where to train (`cpu`, `cuda`, `cuda:N`, `auto`); overrides the recipe's `device`.
    #[arg(long)]
    pub device: Option<String>,
    /// Precision: only f32 trains today (weights, activations and AdamW moments); bf16 and f16 are refused.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

/// Arguments shared by `generate` and `detect`.
#[derive(Debug, clap::Args)]
pub struct ModelArgs {
    /// Hugging Face Qwen2-VL checkpoint folder.
    #[arg(long)]
    pub model: std::path::PathBuf,
    /// Image files (one per camera view), in order.
    #[arg(long = "image", num_args = 1..)]
    pub images: Vec<std::path::PathBuf>,
    /// The prompt.
    #[arg(long)]
    pub prompt: String,
    /// Most new tokens to generate.
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: usize,
    /// Upper bound on pixels per image after resizing (overrides preprocessor_config.json).
    #[arg(long)]
    pub max_pixels: Option<usize>,
    /// Weight precision: f32, bf16 or f16 (f32 is the right choice on CPU).
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Where the model runs: cpu, cuda or cuda:N (default: the first GPU when built with `cuda` and one is
    /// present, else the CPU).
    #[arg(long)]
    pub device: Option<String>,
}

impl ModelArgs {
    /// The requested device and dtype (errors name the flag's value).
    pub fn device_dtype(&self) -> anyhow::Result<(candle_core::Device, candle_core::DType)> {
        let dtype = vlm3d::model::device::parse_dtype(&self.dtype)?;
        let device = vlm3d::model::device::select_device(self.device.as_deref())?;
        Ok((device, dtype))
    }
}

/// Arguments of `generate`.
#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub common: ModelArgs,
    /// A PEFT LoRA adapter folder (`adapter_config.json`, `adapter_model.safetensors`; made by `vlm3d train`
    /// or by peft) applied to the model, as `PeftModel.from_pretrained` does.
    #[arg(long)]
    pub adapter: Option<std::path::PathBuf>,
}

/// Arguments of `detect`.
#[derive(Debug, clap::Args)]
pub struct DetectArgs {
    #[command(flatten)]
    pub common: ModelArgs,
    /// Folder with `adapter/` (PEFT LoRA) and `head.safetensors`; default: the model folder.
    #[arg(long)]
    pub trained: Option<std::path::PathBuf>,
    /// Minimum confidence of a reported box.
    #[arg(long, default_value_t = 0.5)]
    pub score_threshold: f32,
    /// Seed of the head's queries and weights when no trained `head.safetensors` is found.
    #[arg(long, default_value_t = 0)]
    pub head_seed: u64,
    /// Camera intrinsics of every image, `fx,fy,cx,cy` in pixels of the image files; default: a nominal camera
    /// (fx = fy = 0.79 × width, principal point at the centre). Boxes are in each camera's frame.
    #[arg(long, value_parser = parse_intrinsics)]
    pub intrinsics: Option<[f64; 4]>,
}

fn parse_intrinsics(s: &str) -> Result<[f64; 4], String> {
    let v: Vec<f64> = s
        .split(',')
        .map(|x| x.trim().parse::<f64>().map_err(|e| format!("{x:?}: {e}")))
        .collect::<Result<_, _>>()?;
    <[f64; 4]>::try_from(v).map_err(|v| format!("want fx,fy,cx,cy (4 numbers), got {}", v.len()))
}

/// Arguments of `bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Which sizes: tiny, 2b or all.
    #[arg(long, default_value = "all")]
    pub models: String,
    /// Comma-separated view counts.
    #[arg(long, default_value = "1,6")]
    pub views: String,
    /// Image width in pixels.
    #[arg(long, default_value_t = 448)]
    pub width: usize,
    /// Image height in pixels.
    #[arg(long, default_value_t = 252)]
    pub height: usize,
    /// Prompt tokens.
    #[arg(long, default_value_t = 40)]
    pub prompt_tokens: usize,
    /// Where the model runs: cpu, cuda or cuda:N (default: the first GPU when built with `cuda`, else the CPU).
    #[arg(long)]
    pub device: Option<String>,
    /// Precision: f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Untimed detections before timing (use ≥ 3 on a GPU).
    #[arg(long, default_value_t = 0)]
    pub warmup: usize,
    /// Timed detections per row; the table shows medians (use ≥ 10 on a GPU). Default 1; 20 with --frame.
    #[arg(long)]
    pub repeat: Option<usize>,
    /// Time the frame path instead: six camera JPEGs of --camera-size decoded and pre-processed into the
    /// model input (the node's decode + preprocess stages), against the path it replaced.
    #[arg(long)]
    pub frame: bool,
    /// With --frame: camera image size, WIDTHxHEIGHT (nuScenes: 1600x900).
    #[arg(long, default_value = "1600x900")]
    pub camera_size: String,
    /// With --frame: the model's pixel budget per view (the demo model's: 448 × 252).
    #[arg(long, default_value_t = 112_896)]
    pub max_pixels: usize,
    /// With --frame: idle this many milliseconds before each timed set, as a node fed slower than it works
    /// (the demo plays 1 set/s: 800 ms idle between sets). 0: sets back to back, as a busy node.
    #[arg(long, default_value_t = 0, requires = "frame")]
    pub idle_ms: u64,
    /// Time LoRA training steps instead (examples/s, peak host memory; f32, on --device).
    #[arg(long)]
    pub train: bool,
    /// With --train: examples per step.
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// With --train: train every decoder weight instead of LoRA adapters (full fine-tuning).
    #[arg(long, requires = "train")]
    pub full: bool,
}

/// Arguments of `vlm3d convert-nuscenes`.
#[derive(Debug, clap::Args)]
pub struct ConvertArgs {
    /// nuScenes root (holds `<version>/*.json` and `samples/`).
    #[arg(long)]
    pub dataroot: std::path::PathBuf,
    /// Table version folder, e.g. v1.0-mini or v1.0-trainval.
    #[arg(long, default_value = "v1.0-mini")]
    pub version: String,
    /// Output bag folder (written as `<out>.partial/` and renamed when complete).
    #[arg(long)]
    pub out: std::path::PathBuf,
    /// Do not convert LiDAR point clouds.
    #[arg(long)]
    pub no_lidar: bool,
    /// Replace an existing bag.
    #[arg(long)]
    pub force: bool,
    /// YAML file with topic names and frames (keys of `vlm3d::data::bag::bagschema::BagLayout`).
    #[arg(long)]
    pub config: Option<std::path::PathBuf>,
    /// Prefix for every topic except /tf and /tf_static (overrides the config file).
    #[arg(long)]
    pub topic_prefix: Option<String>,
    /// Annotations topic (overrides the config file).
    #[arg(long)]
    pub annotations_topic: Option<String>,
    /// Convert only the first N scenes.
    #[arg(long)]
    pub max_scenes: Option<usize>,
    /// MCAP chunk size in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    pub chunk_size: u64,
    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,
    /// Also write the conversion report (with this process's peak memory) as JSON here.
    #[arg(long)]
    pub report_json: Option<std::path::PathBuf>,
}

/// Arguments of `vlm3d bench-convert`.
#[derive(Debug, clap::Args)]
pub struct BenchConvertArgs {
    /// Sample counts to benchmark (comma separated); each gets its own synthetic set.
    #[arg(long, value_delimiter = ',', default_value = "200,400")]
    pub samples: Vec<usize>,
    /// Working folder for the synthetic sets (and the bags, unless --bag-dir).
    #[arg(long, default_value = "target/bench-convert")]
    pub work: std::path::PathBuf,
    /// Where the bags are written (e.g. a tmpfs such as /dev/shm, to time the converters rather than the
    /// disk's writeback); default: --work.
    #[arg(long)]
    pub bag_dir: Option<std::path::PathBuf>,
    /// Runs per converter and size; the fastest is reported (peak memory: the largest).
    #[arg(long, default_value_t = 2)]
    pub repeat: usize,
    /// Image width of the synthetic sets.
    #[arg(long, default_value_t = 1600)]
    pub width: u32,
    /// Image height of the synthetic sets.
    #[arg(long, default_value_t = 900)]
    pub height: u32,
    /// Python with `rosbags` installed, for the side-by-side run (skipped when absent).
    #[arg(long, default_value = ".venv-peers/rosbags/bin/python")]
    pub python: std::path::PathBuf,
    /// The rosbags writer script.
    #[arg(long, default_value = "scripts/bench_rosbags_write.py")]
    pub script: std::path::PathBuf,
}

/// Arguments of `vlm3d demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Output folder.
    #[arg(long, default_value = "out/demo")]
    pub out: std::path::PathBuf,
    /// Qwen2-VL checkpoint folder with `adapter/` and `head.safetensors` (default: the demo model, models/demo).
    #[arg(long)]
    pub model: Option<std::path::PathBuf>,
    /// Where the model runs: cpu, cuda or cuda:N (default: the first GPU when built with `cuda`, else the CPU).
    #[arg(long)]
    pub device: Option<String>,
    /// Weight precision: f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Minimum score of a drawn and reported box (0 keeps every box). The default suits the demo model: of its
    /// held-out boxes scoring ≥ 0.05, the median scores 0.24 and 11 % score ≥ 0.5, of which 32 % lie within 2 m of
    /// a true box of their class (9 % of those ≥ 0.25); the node's own default, for real checkpoints, is 0.3.
    #[arg(long, default_value_t = 0.5)]
    pub score_threshold: f32,
    /// The offline pipeline instead (one sample through the detector in this process, `bev.png`); without
    /// the `ros` feature the demo is always offline.
    #[arg(long)]
    pub offline: bool,
    /// Playback speed of the bag into the perception node (1 = real time, 2 Hz samples).
    #[arg(long, default_value_t = 0.5)]
    pub rate: f64,
    /// Key frames (samples) of the synthetic scene (2 Hz); the offline demo runs the first.
    #[arg(long, default_value_t = 10)]
    pub samples: usize,
    /// Camera image size of the synthetic scene, WIDTHxHEIGHT (nuScenes' is 1600x900; the model's pixel
    /// budget is the same either way, so this sizes the decode and pre-processing work).
    #[arg(long, default_value = "640x360")]
    pub camera_size: String,
}

/// Parses `WIDTHxHEIGHT` (both ≥ 1) for the option `flag`.
fn parse_size(s: &str, flag: &str) -> anyhow::Result<(u32, u32)> {
    s.split_once('x')
        .and_then(|(w, h)| Some((w.trim().parse::<u32>().ok()?, h.trim().parse::<u32>().ok()?)))
        .filter(|&(w, h)| w > 0 && h > 0)
        .ok_or_else(|| anyhow::anyhow!("{flag} {s:?} is not WIDTHxHEIGHT (e.g. 1600x900)"))
}

/// Arguments of `vlm3d export`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// The base Qwen2-VL checkpoint folder the run trained on.
    #[arg(long)]
    pub model: std::path::PathBuf,
    /// The run folder (`adapter/` and/or a fine-tuned `model.safetensors`, `head.safetensors`).
    #[arg(long)]
    pub trained: std::path::PathBuf,
    /// Output folder (created; must be empty).
    #[arg(long)]
    pub out: std::path::PathBuf,
    /// Precision of the written weights: f32, bf16 or f16 (default: the base checkpoint's).
    #[arg(long)]
    pub dtype: Option<String>,
}

/// Arguments of `vlm3d plot-training`.
#[derive(Debug, clap::Args)]
pub struct PlotTrainingArgs {
    /// The run's metrics log (`OUT/metrics.jsonl` of `vlm3d train`).
    #[arg(long)]
    pub metrics: std::path::PathBuf,
    /// The PNG to write.
    #[arg(long)]
    pub out: std::path::PathBuf,
}

/// Arguments of `vlm3d init-model`.
#[derive(Debug, clap::Args)]
pub struct InitModelArgs {
    /// The Qwen2-VL `config.json` to instantiate.
    #[arg(long)]
    pub config: std::path::PathBuf,
    /// A checkpoint folder whose tokenizer and processor files are copied (its vocabulary must fit the config).
    #[arg(long)]
    pub like: std::path::PathBuf,
    /// Output folder (created).
    #[arg(long)]
    pub out: std::path::PathBuf,
    /// Seed of the weights.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// Arguments of `vlm3d synth`.
#[derive(Debug, clap::Args)]
pub struct SynthArgs {
    /// Output dataroot (created; tables go to `<out>/<version>/`, files to `<out>/samples/`).
    #[arg(long)]
    pub out: std::path::PathBuf,
    /// Number of scenes.
    #[arg(long, default_value_t = 2)]
    pub scenes: usize,
    /// RNG seed; the same seed writes the same bytes.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Image width in pixels.
    #[arg(long, default_value_t = 1600)]
    pub width: u32,
    /// Image height in pixels.
    #[arg(long, default_value_t = 900)]
    pub height: u32,
    /// Key frames (samples, 2 Hz) per scene.
    #[arg(long, default_value_t = 10)]
    pub samples_per_scene: usize,
    /// Objects placed per scene.
    #[arg(long, default_value_t = 16)]
    pub objects: usize,
    /// Table folder name.
    #[arg(long, default_value = "v1.0-mini")]
    pub version: String,
    /// Also write non-key frames (sweeps): cameras at 12 Hz, LIDAR_TOP at 20 Hz.
    #[arg(long)]
    pub sweeps: bool,
    /// Give trailers, construction vehicles and bicycles surface patterns of their own (the open-set recipe's
    /// held-out categories; off keeps existing seeds' output unchanged).
    #[arg(long)]
    pub distinct_looks: bool,
    /// Hide the progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// Sets up `tracing` logging to stderr with `RUST_LOG` taking precedence over `default_filter`.
pub fn init_logging(default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        #[cfg(feature = "ros")]
        Command::Play(a) => {
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
                signal_hook::flag::register(sig, std::sync::Arc::clone(&stop))?;
            }
            let mut opts = vlm3d::ros::play::PlayOptions::new(&a.bag);
            opts.rate = a.rate;
            opts.looped = a.looped;
            opts.topics = a.topics;
            opts.clock = !a.no_clock;
            opts.wait_for = a.wait_for;
            opts.min_subscribers = a.wait_subscribers;
            opts.delay = std::time::Duration::try_from_secs_f64(a.delay)
                .map_err(|e| anyhow::anyhow!("--delay {}: {e}", a.delay))?;
            opts.stop = Some(stop);
            let r = vlm3d::ros::play::play(&opts)?;
            let total: u64 = r.published.values().sum();
            eprintln!(
                "played {total} messages on {} topics in {:.1} s ({} pass(es))",
                r.published.len(),
                r.seconds,
                r.passes
            );
            Ok(())
        }
        #[cfg(feature = "ros")]
        Command::Record(a) => {
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
                signal_hook::flag::register(sig, std::sync::Arc::clone(&stop))?;
            }
            let r = vlm3d::ros::record::record(&vlm3d::ros::record::RecordOptions {
                out: a.out,
                topics: a.topics,
                duration: a.duration.map(std::time::Duration::from_secs_f64),
                stop,
            })?;
            for (t, n) in &r.messages {
                eprintln!("{t}: {n} messages");
            }
            for t in &r.never_seen {
                eprintln!("{t}: never published");
            }
            eprintln!("bag: {}", r.bag.display());
            Ok(())
        }
        Command::Info => {
            println!("vlm3d {}", env!("CARGO_PKG_VERSION"));
            println!(
                "features: ros={} cuda={}",
                cfg!(feature = "ros"),
                cfg!(feature = "cuda")
            );
            Ok(())
        }
        Command::Generate(g) => {
            let a = &g.common;
            let mut pipe = load_pipeline(a)?;
            if let Some(dir) = &g.adapter {
                if !dir.join("adapter_config.json").is_file() {
                    anyhow::bail!(
                        "--adapter {}: no adapter_config.json there (a PEFT adapter folder holds \
                         adapter_config.json and adapter_model.safetensors)",
                        dir.display()
                    );
                }
                let (cfg, _) = pipe.model.load_lora(dir)?;
                pipe.model.merge_lora()?;
                eprintln!(
                    "adapter {}: LoRA r {} alpha {} on {:?}, merged",
                    dir.display(),
                    cfg.r,
                    cfg.lora_alpha,
                    cfg.target_modules
                );
            }
            let images = read_images(&a.images)?;
            println!(
                "{}",
                pipe.generate_text(&images, &a.prompt, a.max_new_tokens)?
            );
            Ok(())
        }
        Command::Detect(a) => {
            use vlm3d::model::detector::{Detector, DetectorConfig};
            let cfg = DetectorConfig {
                score_threshold: a.score_threshold,
                head_seed: a.head_seed,
                ..Default::default()
            };
            // Bad input files fail before the model loads.
            let images = read_images(&a.common.images)?;
            let (dev, dtype) = a.common.device_dtype()?;
            let mut det = Detector::load(&a.common.model, a.trained.as_deref(), cfg, &dev, dtype)?;
            if let Some(mp) = a.common.max_pixels {
                det.pipeline.processor.config.max_pixels = mp;
            }
            let cameras = images
                .iter()
                .map(|img| {
                    let (w, h) = img.dimensions();
                    Ok(match a.intrinsics {
                        None => vlm3d::geometry::ViewCamera::nominal(w, h)?,
                        Some([fx, fy, cx, cy]) => vlm3d::geometry::ViewCamera {
                            camera: vlm3d::geometry::PinholeCamera::from_rows(
                                [[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]],
                                w,
                                h,
                            )?,
                            camera_to_lidar: nalgebra::Isometry3::identity(),
                        },
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let out = det.detect(&images, &cameras, &a.common.prompt)?;
            println!("{}", serde_json::to_string_pretty(&out)?);
            Ok(())
        }
        Command::Bench(a) => {
            use vlm3d::bench::forward::{run, table, BenchModel, ForwardBenchOptions};
            let models: Vec<BenchModel> = match a.models.as_str() {
                "tiny" => vec![BenchModel::Tiny],
                "2b" => vec![BenchModel::Qwen2Vl2b],
                "all" => vec![BenchModel::Tiny, BenchModel::Qwen2Vl2b],
                o => anyhow::bail!("unknown --models {o} (tiny, 2b, all)"),
            };
            if a.frame {
                let (w, h) = parse_size(&a.camera_size, "--camera-size")?;
                let repeat = a.repeat.unwrap_or(20);
                let b = vlm3d::bench::frame::run(&vlm3d::bench::frame::FrameBenchOptions {
                    width: w,
                    height: h,
                    max_pixels: a.max_pixels,
                    repeat,
                    idle: std::time::Duration::from_millis(a.idle_ms),
                    work: std::path::PathBuf::from("target/bench-frame"),
                })?;
                print!("{}", vlm3d::bench::frame::table(&b, repeat));
                return Ok(());
            }
            let repeat = a.repeat.unwrap_or(1);
            if a.train {
                let device = vlm3d::model::device::select_device(a.device.as_deref())?;
                let mut rows = Vec::new();
                for m in &models {
                    let r = vlm3d::bench::train::run(
                        *m,
                        a.full,
                        a.batch,
                        repeat.max(1),
                        a.width,
                        a.height,
                        a.prompt_tokens,
                        &device,
                    )?;
                    eprintln!("{} training step {:.2}s", r.model, r.step_s);
                    rows.push(r);
                }
                print!("{}", vlm3d::bench::train::table(&rows));
                return Ok(());
            }
            let device = vlm3d::model::device::select_device(a.device.as_deref())?;
            let dtype = vlm3d::model::device::parse_dtype(&a.dtype)?;
            // A CPU bench without OpenBLAS is ≈ 2× slower: say which GEMM ran, so tables are not mixed up.
            eprintln!(
                "{dtype:?} on {}, CPU matrix products through {}; median of {} after {} warm-up",
                vlm3d::model::device::describe(&device),
                vlm3d::model::cpu::sgemm::backend(),
                repeat,
                a.warmup
            );
            let views = a
                .views
                .split(',')
                .map(|v| {
                    v.trim()
                        .parse::<usize>()
                        .ok()
                        .filter(|&n| n > 0)
                        .ok_or_else(|| {
                            anyhow::anyhow!("--views: {v:?} is not a view count (1 or more)")
                        })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let mut rows = Vec::new();
            for m in models {
                for &v in &views {
                    let r = run(&ForwardBenchOptions {
                        model: m,
                        views: v,
                        width: a.width,
                        height: a.height,
                        prompt_tokens: a.prompt_tokens,
                        device: device.clone(),
                        dtype,
                        warmup: a.warmup,
                        repeat,
                    })?;
                    eprintln!("{} views={} total {:.2}s", r.model, r.views, r.total_s);
                    rows.push(r);
                }
            }
            print!("{}", table(&rows));
            Ok(())
        }
        Command::ConvertNuscenes(args) => run_convert(args),
        Command::Eval(a) => {
            use vlm3d::eval::{
                evaluate_bag, mean_boxes, write_report_protocols, EvalOptions, Predictor,
            };
            let holdout = match (&a.holdout, &a.holdout_from, &a.trained) {
                (Some(h), _, _) => vlm3d::train::prompts::normalize_categories(h, "--holdout")?,
                (None, Some(from), _) => vlm3d::train::config::holdout_of(from)?,
                (None, None, Some(t))
                    if t.join(vlm3d::train::config::TRAIN_CONFIG_FILE).is_file() =>
                {
                    vlm3d::train::config::holdout_of(t)?
                }
                _ => Vec::new(),
            };
            if !holdout.is_empty() {
                println!("open set: held-out (unseen) categories {holdout:?}");
            }
            let nusc_protocol = a.protocol == "nuscenes";
            let opts = EvalOptions {
                bag: a.bag.clone(),
                nms_iou: a.nms_iou,
                absent_prompts: a.absent_prompts,
                // The devkit's protocol scores every class in every sample: each is asked for.
                categories: match (&a.categories, nusc_protocol && a.recorded.is_none()) {
                    (Some(c), _) => Some(c.clone()),
                    (None, true) => Some(vlm3d::eval::nuscenes::class_prompts()),
                    (None, false) => None,
                },
            };
            let (name, run) = match &a.recorded {
                Some(rec) => {
                    let r = vlm3d::eval::evaluate_recording(rec, &opts, a.boxes_topic.as_deref())?;
                    println!("{}", r.coverage());
                    (rec.display().to_string(), r.run)
                }
                None => {
                    let model = a
                        .model
                        .clone()
                        .unwrap_or_else(vlm3d::demo::default_model_dir);
                    let device = vlm3d::model::device::select_device(a.device.as_deref())?;
                    let dtype = vlm3d::model::device::parse_dtype(&a.dtype)?;
                    let mut det = vlm3d::model::detector::Detector::load(
                        &model,
                        a.trained.as_deref(),
                        vlm3d::model::detector::DetectorConfig {
                            score_threshold: a.score_threshold,
                            ..Default::default()
                        },
                        &device,
                        dtype,
                    )?;
                    det.pipeline.processor.config.max_pixels = a.max_pixels;
                    let run = evaluate_bag(&Predictor::Model(Box::new(det)), &opts)?;
                    // The trained parts name the model when they come from elsewhere.
                    let name = match &a.trained {
                        Some(t) => format!("{} + {}", model.display(), t.display()),
                        None => model.display().to_string(),
                    };
                    (name, run)
                }
            };
            std::fs::create_dir_all(&a.out)?;
            let rp = a.out.join("results_nusc.json");
            vlm3d::eval::write_nuscenes_results(&rp, &run)?;
            println!("wrote {}", rp.display());
            let mut results = vec![(name.as_str(), &run.metrics, run.queries.as_slice())];
            let base = match a.baseline.as_deref() {
                None => None,
                Some("mean-box") => {
                    let mut means = mean_boxes(a.baseline_bag.as_deref().unwrap_or(&a.bag))?;
                    // A closed-set baseline knows no held-out category.
                    means.retain(|c, _| !holdout.contains(c));
                    Some(evaluate_bag(&Predictor::MeanBox(means), &opts)?)
                }
                Some(o) => anyhow::bail!("unknown --baseline {o:?} (mean-box)"),
            };
            if let Some(b) = &base {
                results.push(("mean-box baseline", &b.metrics, b.queries.as_slice()));
            }
            let nusc: Vec<vlm3d::eval::nuscenes::NuscMetrics> = if nusc_protocol {
                let truth = vlm3d::eval::nuscenes::ground_truth(&a.bag)?;
                let mut v = vec![vlm3d::eval::nuscenes::evaluate(
                    &truth,
                    &vlm3d::eval::nuscenes::predictions(&run)?,
                )?];
                if let Some(b) = &base {
                    v.push(vlm3d::eval::nuscenes::evaluate(
                        &truth,
                        &vlm3d::eval::nuscenes::predictions(b)?,
                    )?);
                }
                v
            } else {
                Vec::new()
            };
            let nusc_refs: Vec<Option<&vlm3d::eval::nuscenes::NuscMetrics>> =
                nusc.iter().map(Some).collect();
            for p in write_report_protocols(&a.out, &a.bag, &results, &holdout, &nusc_refs)? {
                println!("wrote {}", p.display());
            }
            let bars = a.out.join("categories.png");
            let metrics: Vec<(&str, &vlm3d::eval::metrics::Metrics)> =
                results.iter().map(|(n, m, _)| (*n, *m)).collect();
            vlm3d::eval::plots::category_bars(&bars, &metrics)?;
            let pr = a.out.join("precision_recall_2m.png");
            let curves: Vec<(&str, &[vlm3d::eval::metrics::Query])> =
                results.iter().map(|(n, _, q)| (*n, *q)).collect();
            vlm3d::eval::plots::pr_curves(&pr, &curves, 2.0)?;
            println!("wrote {}\nwrote {}", bars.display(), pr.display());
            if let Some(log) = &a.training_log {
                let tc = a.out.join("training.png");
                vlm3d::eval::plots::training_curves(&tc, log)?;
                println!("wrote {}", tc.display());
            }
            print!(
                "{}",
                std::fs::read_to_string(a.out.join("report.md"))?
                    .split("\n## ")
                    .next()
                    .unwrap_or("")
            );
            for ((name, _, _), n) in results.iter().zip(&nusc) {
                let e = n.tp_errors;
                println!(
                    "protocol nuscenes, {name}: mAP {:.4}, NDS {:.4} (mATE {:.3} m, mASE {:.3}, mAOE {:.3} rad, \
                     mAVE {:.3} m/s, mAAE {:.3})",
                    n.mean_ap, n.nd_score, e[0], e[1], e[2], e[3], e[4]
                );
            }
            if !holdout.is_empty() {
                let splits = results
                    .iter()
                    .map(|(n, _, q)| Ok((*n, vlm3d::eval::openset::split(q, &holdout)?)))
                    .collect::<anyhow::Result<Vec<_>>>()?;
                let rows: Vec<(&str, &vlm3d::eval::openset::OpenSetSplit)> =
                    splits.iter().map(|(n, s)| (*n, s)).collect();
                println!(
                    "\nseen and unseen categories (held out of training: {}):\n\n{}",
                    holdout.join(", "),
                    vlm3d::eval::openset::summary_table(&rows)
                );
            }
            Ok(())
        }
        Command::Train(a) => {
            if vlm3d::model::device::parse_dtype(&a.dtype)? != candle_core::DType::F32 {
                anyhow::bail!(
                    "--dtype {}: training runs in f32 only (bf16 compute with f32 master weights and moments is \
                     not implemented); leave --dtype out or pass f32",
                    a.dtype
                );
            }
            let mut cfg = vlm3d::train::TrainConfig::load(&a.config)?;
            if let Some(d) = a.device {
                cfg.device = Some(d);
                cfg.validate()?;
            }
            let mut t = vlm3d::train::Trainer::new(cfg, &a.out, a.resume)?;
            t.progress = !a.no_progress;
            let (s1, s2) = t.stage_steps();
            eprintln!(
                "training on {} examples: stage 1 {s1} steps, stage 2 {s2} steps",
                t.items().len()
            );
            let s = t.run(a.max_steps)?;
            if let Some(m) = &s.last {
                println!(
                    "step {}: loss {:.4} (mse {:.4}, 1 - IoU {:.3}, confidence {:.3}, localization {:.3}, presence {:.3})",
                    m.step, m.loss, m.mse, m.iou_loss, m.confidence, m.localization, m.presence
                );
            }
            let vlm = if s.trained.join("model.safetensors").exists() {
                "model.safetensors (fine-tuned weights)"
            } else {
                "adapter/"
            };
            println!(
                "wrote {} ({vlm}, head.safetensors, metrics.jsonl, checkpoints/)",
                s.trained.display()
            );
            Ok(())
        }
        Command::BenchConvert(a) => Ok(vlm3d::bench::convert::run(
            &vlm3d::bench::convert::ConvertBenchOptions {
                samples: a.samples,
                work: a.work,
                bag_dir: a.bag_dir,
                repeat: a.repeat,
                width: a.width,
                height: a.height,
                python: a.python,
                script: a.script,
            },
        )?),
        Command::Demo(a) => {
            let (width, height) = parse_size(&a.camera_size, "--camera-size")?;
            // The perception node on the synthetic bag (vlm3d::ros::node_demo), then its summary table.
            #[cfg(feature = "ros")]
            if !a.offline {
                let mut opts = vlm3d::ros::node_demo::NodeDemoOptions::new(&a.out);
                if let Some(m) = a.model {
                    opts.model = m;
                }
                opts.samples = a.samples;
                opts.rate = a.rate;
                (opts.width, opts.height) = (width, height);
                // As typed (0.3, not the f32's 0.30000001192092896).
                opts.score_threshold = a
                    .score_threshold
                    .to_string()
                    .parse()
                    .unwrap_or(f64::from(a.score_threshold));
                opts.device = a.device.unwrap_or_else(|| "auto".into());
                opts.dtype = a.dtype;
                // Ctrl-C / SIGTERM: stop the node and the recorder, and summarize what was recorded.
                let interrupt = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
                for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
                    signal_hook::flag::register(sig, std::sync::Arc::clone(&interrupt))?;
                }
                opts.interrupt = Some(interrupt);
                let r = vlm3d::ros::node_demo::run_node_demo(&opts)?;
                println!(
                    "perception_node, model {}, prompts: {}",
                    opts.model.display(),
                    r.prompts.join(" | ")
                );
                println!("{}", r.summary.markdown());
                if let Some(p) = &r.picture {
                    println!(
                        "demo.png: frame {:.3} s (sample {}): {} true and {} predicted boxes",
                        p.stamp_ns as f64 / 1e9,
                        p.sample_token,
                        p.truth,
                        p.predicted
                    );
                }
                if opts.model == vlm3d::demo::default_model_dir() {
                    println!(
                        "({}; measured in the README, Training and evaluation)",
                        vlm3d::demo::DEMO_MODEL_NOTE
                    );
                }
                for p in &r.outputs {
                    println!("wrote {}", p.display());
                }
                println!("{:.1} s wall", r.wall_s);
                if r.interrupted {
                    anyhow::bail!("interrupted (the summary covers what was recorded)");
                }
                return Ok(());
            }
            #[cfg(not(feature = "ros"))]
            let _ = (a.offline, a.rate);
            let mut opts = vlm3d::demo::DemoOptions::new(&a.out);
            if let Some(m) = a.model {
                opts.model = m;
            }
            opts.samples = a.samples;
            (opts.width, opts.height) = (width, height);
            opts.score_threshold = a.score_threshold;
            opts.device = vlm3d::model::device::select_device(a.device.as_deref())?;
            opts.dtype = vlm3d::model::device::parse_dtype(&a.dtype)?;
            let r = vlm3d::demo::run_demo(&opts)?;
            println!("prompt: {}", r.prompt);
            println!(
                "sample {}: {} ground-truth boxes of that category in view; {} boxes from 6 views, {} after BEV NMS; detector {:.2} s",
                r.sample_token,
                r.ground_truth.len(),
                r.raw_detections,
                r.detections.len(),
                r.detect_seconds
            );
            for d in r.detections.iter().take(5) {
                let b = d.bbox;
                println!(
                    "  {:<16} score {:.2}  [x {:7.2} y {:7.2} z {:6.2}  l {:5.2} w {:5.2} h {:5.2}  yaw {:5.2}]",
                    d.camera, d.score, b[0], b[1], b[2], b[3], b[4], b[5], b[6]
                );
            }
            if opts.model == vlm3d::demo::default_model_dir() {
                println!(
                    "({}; measured in the README, Training and evaluation)",
                    vlm3d::demo::DEMO_MODEL_NOTE
                );
            }
            for p in &r.outputs {
                println!("wrote {}", p.display());
            }
            Ok(())
        }
        Command::PlotTraining(a) => {
            vlm3d::eval::plots::training_curves(&a.out, &a.metrics)?;
            println!("wrote {}", a.out.display());
            Ok(())
        }
        Command::Export(a) => {
            let dtype = a
                .dtype
                .as_deref()
                .map(vlm3d::model::device::parse_dtype)
                .transpose()?;
            let r = vlm3d::model::export::export_merged(&a.model, &a.trained, &a.out, dtype)?;
            println!(
                "{}: {} tensors ({:?}), {} with a LoRA update folded in, {} fine-tuned",
                a.out.display(),
                r.tensors,
                r.dtype,
                r.merged,
                r.fine_tuned
            );
            for f in &r.files {
                println!("wrote {}", f.display());
            }
            Ok(())
        }
        Command::InitModel(a) => {
            let n = anyhow::Context::with_context(
                vlm3d::model::qwen2vl::init::write_random_checkpoint(
                    &a.config, &a.like, &a.out, a.seed,
                ),
                || format!("vlm3d init-model into {}", a.out.display()),
            )?;
            println!(
                "wrote {n} random weights (seed {}) to {}",
                a.seed,
                a.out.display()
            );
            Ok(())
        }
        Command::Synth(a) => {
            let cfg = vlm3d::data::synth::SynthConfig {
                scenes: a.scenes,
                seed: a.seed,
                width: a.width,
                height: a.height,
                samples_per_scene: a.samples_per_scene,
                objects_per_scene: a.objects,
                version: a.version,
                sweeps: a.sweeps,
                distinct_looks: a.distinct_looks,
                progress: !a.quiet,
                ..Default::default()
            };
            let start = std::time::Instant::now();
            let s =
                anyhow::Context::with_context(vlm3d::data::synth::generate(&a.out, &cfg), || {
                    format!("vlm3d synth into {}", a.out.display())
                })?;
            println!(
                "wrote {} scenes, {} samples, {} annotations, {} images, {} LiDAR points to {} in {:.1} s",
                s.scenes,
                s.samples,
                s.annotations,
                s.images,
                s.lidar_points,
                a.out.display(),
                start.elapsed().as_secs_f64()
            );
            Ok(())
        }
    }
}

fn load_pipeline(a: &ModelArgs) -> anyhow::Result<vlm3d::model::qwen2vl::Pipeline> {
    let (dev, dtype) = a.device_dtype()?;
    let mut pipe = vlm3d::model::qwen2vl::Pipeline::load(&a.model, &dev, dtype)?;
    if let Some(mp) = a.max_pixels {
        pipe.processor.config.max_pixels = mp;
    }
    Ok(pipe)
}

/// Reads `--image` files with the strict decoder: a truncated or corrupt file is an error naming it.
fn read_images(paths: &[std::path::PathBuf]) -> anyhow::Result<Vec<image::RgbImage>> {
    paths
        .iter()
        .map(|p| Ok(vlm3d::perception::image::read_image_file(p)?))
        .collect()
}

fn run_convert(args: ConvertArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    use vlm3d::data::bag::bagschema::BagLayout;
    let mut layout = match &args.config {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            serde_yaml::from_str::<BagLayout>(&text)
                .with_context(|| format!("parsing {}", p.display()))?
        }
        None => BagLayout::default(),
    };
    if let Some(p) = args.topic_prefix {
        layout.topic_prefix = p;
    }
    if let Some(t) = args.annotations_topic {
        layout.annotations_topic = t;
    }
    let mut opts = vlm3d::data::convert::ConvertOptions::new(&args.out);
    opts.lidar = !args.no_lidar;
    opts.force = args.force;
    opts.layout = layout;
    opts.chunk_size = args.chunk_size;
    opts.progress = !args.no_progress;
    opts.max_scenes = args.max_scenes;
    let started = std::time::Instant::now();
    let mut r = vlm3d::data::convert::convert_nuscenes(&args.dataroot, &args.version, &opts)?;
    // Include loading the tables, as the rosbags baseline does.
    r.seconds = started.elapsed().as_secs_f64();
    let peak = vlm3d::proc::peak_rss_kb();
    eprintln!(
        "wrote {}: {} scenes, {} samples, {} messages, {} annotations, {:.1} MB in {:.2} s ({:.1} samples/s, {:.1} MB/s), peak RSS {} MB",
        args.out.display(),
        r.scenes,
        r.samples,
        r.messages,
        r.annotations,
        r.bag_bytes as f64 / 1e6,
        r.seconds,
        r.samples as f64 / r.seconds.max(1e-9),
        r.bag_bytes as f64 / 1e6 / r.seconds.max(1e-9),
        peak.map_or_else(|| "?".into(), |kb| (kb / 1024).to_string())
    );
    for (topic, ty, n) in &r.topics {
        eprintln!("  {topic:<40} {ty:<36} {n}");
    }
    if let Some(p) = args.report_json {
        let j = serde_json::json!({
            "scenes": r.scenes, "samples": r.samples, "messages": r.messages,
            "annotations": r.annotations, "bag_bytes": r.bag_bytes, "source_bytes": r.source_bytes,
            "seconds": r.seconds, "cpu_seconds": vlm3d::proc::cpu_seconds(), "peak_rss_kb": peak, "missing_lidar": r.missing_lidar,
        });
        std::fs::write(&p, j.to_string()).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    /// clap's own consistency check of the command tree, and a subcommand parsed into its fields: an argument
    /// that shadows the global `--log` (as `plot-training --log` once did) passes the check and only panics when
    /// its subcommand is parsed.
    #[test]
    fn command_line_parses() {
        <super::Cli as clap::CommandFactory>::command().debug_assert();
        let cli = super::Cli::try_parse_from([
            "vlm3d",
            "plot-training",
            "--metrics",
            "run/metrics.jsonl",
            "--out",
            "curves.png",
        ])
        .unwrap();
        match cli.command {
            super::Command::PlotTraining(a) => {
                assert!(a.metrics.ends_with("run/metrics.jsonl") && a.out.ends_with("curves.png"))
            }
            other => panic!("parsed as {other:?}"),
        }
    }
}

//! The `vlm3d` command line: argument parsing only; each subcommand calls into the library.
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
    /// Convert a nuScenes version (tables + samples/) to a rosbag2 folder (MCAP, CDR).
    ConvertNuscenes(ConvertArgs),
    /// Benchmark the converter against the `rosbags` Python library on synthetic sets.
    BenchConvert(BenchArgs),
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
    /// YAML file with topic names and frames (keys of `vlm3d::data::bagschema::BagLayout`).
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
pub struct BenchArgs {
    /// Sample counts to benchmark (comma separated); each gets its own synthetic set.
    #[arg(long, value_delimiter = ',', default_value = "200,400")]
    pub samples: Vec<usize>,
    /// Working folder for the synthetic sets and bags.
    #[arg(long, default_value = "target/bench-convert")]
    pub work: std::path::PathBuf,
    /// Image width of the synthetic sets.
    #[arg(long, default_value_t = 1600)]
    pub width: u32,
    /// Image height of the synthetic sets.
    #[arg(long, default_value_t = 900)]
    pub height: u32,
    /// Python with `rosbags` installed, for the side-by-side run (skipped when absent).
    #[arg(long, default_value = "target/peer-venv-rosbags/bin/python")]
    pub python: std::path::PathBuf,
    /// The rosbags writer script.
    #[arg(long, default_value = "scripts/bench_rosbags_write.py")]
    pub script: std::path::PathBuf,
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
        Command::Info => {
            println!("vlm3d {}", env!("CARGO_PKG_VERSION"));
            println!(
                "features: ros={} cuda={}",
                cfg!(feature = "ros"),
                cfg!(feature = "cuda")
            );
            Ok(())
        }
        Command::ConvertNuscenes(args) => run_convert(args),
        Command::BenchConvert(args) => Ok(crate::data::bench::run(&args)?),
    }
}

/// Peak resident memory of this process (VmHWM), kB; 0 where /proc is unavailable.
pub fn peak_rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn run_convert(args: ConvertArgs) -> anyhow::Result<()> {
    use crate::data::bagschema::BagLayout;
    use anyhow::Context;
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
    let mut opts = crate::data::convert::ConvertOptions::new(&args.out);
    opts.lidar = !args.no_lidar;
    opts.force = args.force;
    opts.layout = layout;
    opts.chunk_size = args.chunk_size;
    opts.progress = !args.no_progress;
    opts.max_scenes = args.max_scenes;
    let r = crate::data::convert::convert_nuscenes(&args.dataroot, &args.version, &opts)?;
    let peak = peak_rss_kb();
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
        peak / 1024
    );
    for (topic, ty, n) in &r.topics {
        eprintln!("  {topic:<40} {ty:<36} {n}");
    }
    if let Some(p) = args.report_json {
        let j = serde_json::json!({
            "scenes": r.scenes, "samples": r.samples, "messages": r.messages,
            "annotations": r.annotations, "bag_bytes": r.bag_bytes, "source_bytes": r.source_bytes,
            "seconds": r.seconds, "peak_rss_kb": peak, "missing_lidar": r.missing_lidar,
        });
        std::fs::write(&p, j.to_string()).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

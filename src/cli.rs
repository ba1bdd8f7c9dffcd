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
    /// Greedy text answer of a Qwen2-VL checkpoint to a prompt about images (checks a checkpoint).
    Generate(ModelArgs),
    /// Detect 3D boxes: images + prompt → JSON boxes per view.
    Detect(DetectArgs),
    /// Time one forward pass (prefill + box head) with random weights at tiny and Qwen2-VL-2B sizes.
    Bench(BenchArgs),
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
}

impl ModelArgs {
    /// The device (the first CUDA GPU when built with `cuda`, else the CPU) and the requested dtype.
    pub fn device_dtype(&self) -> anyhow::Result<(candle_core::Device, candle_core::DType)> {
        let dtype = match self.dtype.as_str() {
            "f32" => candle_core::DType::F32,
            "bf16" => candle_core::DType::BF16,
            "f16" => candle_core::DType::F16,
            o => anyhow::bail!("unknown --dtype {o} (f32, bf16, f16)"),
        };
        let device = if cfg!(feature = "cuda") {
            candle_core::Device::cuda_if_available(0)?
        } else {
            candle_core::Device::Cpu
        };
        Ok((device, dtype))
    }
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
        Command::Generate(a) => {
            let pipe = load_pipeline(&a)?;
            let images = read_images(&a.images)?;
            println!(
                "{}",
                pipe.generate_text(&images, &a.prompt, a.max_new_tokens)?
            );
            Ok(())
        }
        Command::Detect(a) => {
            use crate::model::detector::{Detector, DetectorConfig};
            let cfg = DetectorConfig {
                score_threshold: a.score_threshold,
                ..Default::default()
            };
            let dev = candle_core::Device::Cpu;
            let mut det = Detector::load(
                &a.common.model,
                a.trained.as_deref(),
                cfg,
                &dev,
                candle_core::DType::F32,
            )?;
            if let Some(mp) = a.common.max_pixels {
                det.pipeline.processor.config.max_pixels = mp;
            }
            let images = read_images(&a.common.images)?;
            let out = det.detect(&images, &a.common.prompt)?;
            println!("{}", serde_json::to_string_pretty(&out)?);
            Ok(())
        }
        Command::Bench(a) => {
            use crate::model::bench::{run, table, BenchModel};
            let models: Vec<BenchModel> = match a.models.as_str() {
                "tiny" => vec![BenchModel::Tiny],
                "2b" => vec![BenchModel::Qwen2Vl2b],
                "all" => vec![BenchModel::Tiny, BenchModel::Qwen2Vl2b],
                o => anyhow::bail!("unknown --models {o} (tiny, 2b, all)"),
            };
            let mut rows = Vec::new();
            for m in models {
                for v in a.views.split(',') {
                    let v: usize = v.trim().parse()?;
                    let r = run(m, v, a.width, a.height, a.prompt_tokens)?;
                    eprintln!("{} views={} total {:.2}s", r.model, r.views, r.total_s);
                    rows.push(r);
                }
            }
            print!("{}", table(&rows));
            Ok(())
        }
    }
}

fn load_pipeline(a: &ModelArgs) -> anyhow::Result<crate::model::qwen2vl::Pipeline> {
    let mut pipe = crate::model::qwen2vl::Pipeline::load(
        &a.model,
        &candle_core::Device::Cpu,
        candle_core::DType::F32,
    )?;
    if let Some(mp) = a.max_pixels {
        pipe.processor.config.max_pixels = mp;
    }
    Ok(pipe)
}

fn read_images(paths: &[std::path::PathBuf]) -> anyhow::Result<Vec<image::RgbImage>> {
    paths
        .iter()
        .map(|p| {
            let img = image::open(p)
                .map_err(|e| anyhow::anyhow!("{}: cannot read image: {e}", p.display()))?;
            Ok(img.to_rgb8())
        })
        .collect()
}

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
    /// Generate a synthetic dataset in the nuScenes v1.0 layout (tables, camera JPEGs, LiDAR .pcd.bin).
    Synth(SynthArgs),
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
        Command::Info => {
            println!("vlm3d {}", env!("CARGO_PKG_VERSION"));
            println!(
                "features: ros={} cuda={}",
                cfg!(feature = "ros"),
                cfg!(feature = "cuda")
            );
            Ok(())
        }
        Command::Synth(a) => {
            let cfg = crate::data::synth::SynthConfig {
                scenes: a.scenes,
                seed: a.seed,
                width: a.width,
                height: a.height,
                samples_per_scene: a.samples_per_scene,
                objects_per_scene: a.objects,
                version: a.version,
                progress: !a.quiet,
                ..Default::default()
            };
            let start = std::time::Instant::now();
            let s =
                anyhow::Context::with_context(crate::data::synth::generate(&a.out, &cfg), || {
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

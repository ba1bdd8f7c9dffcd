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
    }
}

//! The `vlm3d` command line: offline tools of the package. Argument parsing lives here (`cli.rs`); every
//! subcommand calls into the library, and `anyhow` stays at this edge.
use clap::Parser;

mod cli;

fn main() -> anyhow::Result<()> {
    vlm3d::model::cpu::init_threads();
    let cli = cli::Cli::parse();
    cli::init_logging(&cli.log);
    cli::run(cli)
}

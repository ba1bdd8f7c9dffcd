use clap::Parser;

fn main() -> anyhow::Result<()> {
    let cli = vlm3d::cli::Cli::parse();
    vlm3d::cli::init_logging(&cli.log);
    vlm3d::cli::run(cli)
}

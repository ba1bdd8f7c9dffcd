//! `training_node`: the trainer as a ROS 2 node (logic in `vlm3d::ros::training_node`).
fn main() -> anyhow::Result<()> {
    vlm3d::model::cpu::init_threads();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let s = vlm3d::ros::training_node::run_training_node()?;
    eprintln!(
        "training_node: {} steps; trained parts in {}",
        s.steps,
        s.trained.display()
    );
    Ok(())
}

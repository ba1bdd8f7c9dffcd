//! `perception_node`: six cameras and a prompt in, 3D boxes out (logic in `vlm3d::ros::perception_node`).
//!
//! `ros2 run vlm3d perception_node --ros-args --params-file config/perception_node.param.yaml`
fn main() -> anyhow::Result<()> {
    vlm3d::model::cpu::init_threads();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    vlm3d::ros::perception_node::run_perception_node()?;
    Ok(())
}

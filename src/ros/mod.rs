//! ROS 2 glue (r2r): the only module that imports r2r, compiled with the `ros` feature.
//!
//! * [`convert`]: the package's messages (`vlm3d/msg/BoundingBox3DArray`) to and from the library's
//!   [`crate::perception::Detections`], and to the ecosystem's `vision_msgs/Detection3DArray` and Autoware's
//!   `autoware_perception_msgs/DetectedObjects`.
//! * [`perception_node`]: the product: six cameras and standing prompts in, boxes, markers and health out.
//! * [`params`]: typed, range-checked ROS parameters.
//! * [`play`] and [`record`]: a rosbag2 player and recorder over r2r (`vlm3d play`, `vlm3d record`).
//! * [`node_demo`]: `vlm3d demo`: the perception node on the built-in synthetic bag, played and recorded.
//! * [`training_node`]: the trainer as a ROS 2 node (progress, diagnostics, clean stop on signals).
//! * [`wait`]: start-up helpers that wait for discovery to match publishers and subscribers, so that a
//!   burst of messages right after start is not lost.
//!
//! The message types are r2r's generated ones, e.g. [`r2r::vlm3d::msg::BoundingBox3DArray`]; they exist
//! when the crate is built with `env.sh` sourced (see `scripts/setup.sh`).
pub mod convert;
pub mod node_demo;
pub mod params;
pub mod perception_node;
pub mod play;
pub mod record;
pub mod training_node;
pub mod wait;

impl From<r2r::Error> for crate::Error {
    fn from(e: r2r::Error) -> Self {
        crate::Error::Ros(e.to_string())
    }
}

//! vlm3d: open-world 3D perception with a LoRA-adapted Qwen2-VL (the VLM-3D paper) as a ROS 2 package.
//!
//! Modules follow the house plan (`DESIGN.md`): pure math in [`geometry`], the network in [`model`], datasets and
//! rosbag2 I/O in [`data`], training and metrics in [`train`], and the only r2r-dependent code in `ros`.
pub mod cli;
pub mod data;
pub mod demo;
pub mod error;
pub mod geometry;
pub mod model;
#[cfg(feature = "ros")]
pub mod ros;
pub mod train;

pub use error::{Error, Result};

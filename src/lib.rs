//! vlm3d: open-world 3D perception with a LoRA-adapted Qwen2-VL (the VLM-3D paper) as a ROS 2 package.
//!
//! Modules follow the house plan (`DESIGN.md`); arrows run one way, from the top of this list down:
//! * [`geometry`]: pure math (boxes, frames, cameras, IoU, NMS); [`proc`]: this process's memory and CPU time.
//! * [`perception`]: the rig, the one detection type, camera → LiDAR + merge across cameras (ROS-free).
//! * [`model`]: Qwen2-VL in candle, LoRA, the box head and the [`model::detector::Detector`].
//! * [`data`]: nuScenes tables, rosbag2 files, the synthetic world, the converter and the dataset.
//! * [`train`]: the two-stage LoRA trainer (matching, losses, checkpoints); [`eval`]: metrics and reports.
//! * [`runtime`]: one synchronized frame through the detector and the merge (the node's work, ROS-free).
//! * [`demo`] and [`bench`]: the built-in demo and the benchmarks, users of the above.
//! * `ros` (feature `ros`): the only r2r code.
//!
//! The `vlm3d` command line lives with its binary (`src/bin/vlm3d/`), not in the library.
pub mod bench;
pub mod data;
pub mod demo;
pub mod error;
pub mod eval;
pub mod geometry;
pub mod model;
pub mod perception;
pub mod proc;
#[cfg(feature = "ros")]
pub mod ros;
pub mod runtime;
pub mod train;

pub use error::{Error, Result};

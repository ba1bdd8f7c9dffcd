//! The ROS-free last step of perception, shared by the demo, `eval` and the perception node (what Autoware
//! calls the library under the node): the camera [`rig`] (from `config/nuscenes_rig.yaml`), the one
//! detection type ([`detections`]), and camera → LiDAR + BEV NMS across cameras ([`merge`]); for the node:
//! approximate-time [`sync`] of the views, the static transform tree ([`tf`]), prompt handling ([`prompt`]),
//! rviz2 [`markers`] geometry and [`health`] bookkeeping.
pub mod detections;
pub mod health;
pub mod image;
pub mod markers;
pub mod merge;
pub mod prompt;
pub mod rig;
pub mod sync;
pub mod tf;

pub use detections::{Detection, Detections, ViewDetections};
pub use merge::{merge_views, Merged, ViewInput};
pub use rig::Rig;

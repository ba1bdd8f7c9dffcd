//! The ROS-free last step of perception, shared by the demo, `eval` and the perception node (what Autoware
//! calls the library under the node): the camera [`rig`] (from `config/nuscenes_rig.yaml`), the one
//! detection type ([`detections`]), and camera → LiDAR + BEV NMS across cameras ([`merge`]).
pub mod detections;
pub mod merge;
pub mod rig;

pub use detections::{Detection, Detections, ViewDetections};
pub use merge::{merge_views, Merged, ViewInput};
pub use rig::Rig;

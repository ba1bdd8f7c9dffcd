//! Datasets and their files: everything that reads or writes data on disk, ROS-free.
//!
//! * [`nuscenes`]: the nuScenes v1.0 tables (load, validate, look up, write) and the per-scene split of the big
//!   tables that lets the converter stream them.
//! * [`bag`]: the ROS 2 wire format and rosbag2 files: CDR, the message structs, their type hashes, the bag
//!   layout (topics, frames, the sample index) and the MCAP reader/writer.
//! * [`synth`]: the synthetic world (a nuScenes-like scene generator) and its renderer (camera JPEGs, LiDAR).
//! * [`convert`]: nuScenes folder → rosbag2 bag.
//! * [`dataset`]: bag → per-camera training examples (image, prompts, visible boxes in the configured frame).
//! * [`augment`]: training-time flip, crop-and-scale and colour jitter that keep image, camera and boxes consistent.
pub mod augment;
pub mod bag;
pub mod convert;
pub mod dataset;
pub mod nuscenes;
mod progress;
pub mod synth;

pub(crate) use progress::progress_bar;

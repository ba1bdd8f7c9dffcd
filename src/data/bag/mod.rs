//! The ROS 2 wire format and rosbag2 files, without any ROS 2 install: [`cdr`] (XCDR1 little-endian
//! encoding), [`msgs`] (the message structs the converter and the dataset use, with their definitions),
//! [`typehash`] (RIHS01 type description hashes), [`bagschema`] (topic and frame names, the per-sample index
//! message) and [`rosbag`] (rosbag2 folders: MCAP chunks, `metadata.yaml`, reader and writer).
mod background_file;
pub mod bagschema;
pub mod cdr;
pub mod msgs;
pub mod rosbag;
pub mod typehash;

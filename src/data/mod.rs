//! See the house plan (DESIGN.md) for what this module owns.
mod background_file;
pub mod bagschema;
pub mod bench;
pub mod cdr;
pub mod convert;
pub mod dataset;
pub mod msgs;
pub mod nuscenes;
mod progress;
pub mod render;
pub mod rosbag;
pub mod scene_split;
pub mod synth;
pub mod typehash;

//! See the house plan (DESIGN.md) for what this module owns.
pub mod nuscenes;
pub mod render;
pub mod synth;

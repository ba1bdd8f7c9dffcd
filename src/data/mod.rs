//! See the house plan (DESIGN.md) for what this module owns.
pub mod nuscenes;

//! Benchmarks, apart from the concerns they measure: [`forward`] times the [`crate::model::detector::Detector`]
//! on random weights at the tiny fixture's and Qwen2-VL-2B's dimensions, [`convert`] times
//! `vlm3d convert-nuscenes` against the `rosbags` Python library, [`frame`] times the frame path (six camera JPEGs
//! → model input), and [`train`] times a LoRA training step (memory and CPU time from [`crate::proc`]). Each
//! prints a table. The part-by-part profile of one vision block and one decoder layer is the `cargo bench --bench
//! profile` target (`benches/profile.rs`).
pub mod convert;
pub mod forward;
pub mod frame;
pub mod train;

/// The median of timings (the upper one of an even count); NaN for none.
pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

//! The CPU kernels under the model: f32 matrix products through OpenBLAS ([`sgemm`], feature `openblas`) and
//! one-pass fused activations and attention ([`fused`]), each a candle op with a backward pass where training
//! needs one. Other devices and dtypes take candle's own ops; [`linear_2d`] is the one entry the layers call.
pub mod fused;
pub mod sgemm;

use candle_core::Tensor;
use candle_nn::Linear;

/// Applies a linear layer with all leading dimensions folded into the rows, so a `[batch, seq, in]` input is one
/// large GEMM instead of `batch` small ones. The GEMM goes through [`sgemm::linear_xwt_bias`]
/// (OpenBLAS on f32 CPU tensors when built with the `openblas` feature).
pub fn linear_2d(l: &Linear, x: &Tensor) -> candle_core::Result<Tensor> {
    let mut dims = x.dims().to_vec();
    let din = dims.pop().unwrap_or(0);
    let rows: usize = dims.iter().product();
    let y = sgemm::linear_xwt_bias(&x.reshape((rows, din))?, l.weight(), l.bias())?;
    dims.push(y.dim(1)?);
    y.reshape(dims)
}

/// Fixes the CPU thread count for the process: sets `RAYON_NUM_THREADS` to the available parallelism when it is
/// unset. candle reads that variable on every matrix product and, without it, counts the physical cores by
/// parsing `/proc/cpuinfo` each time (a few percent of a tiny model's training step, measured with `perf`).
/// Call it first thing in `main`, before any thread starts (it writes the environment).
pub fn init_threads() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
}

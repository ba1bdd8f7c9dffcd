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

/// Fixes the CPU thread counts for the process, before any thread starts (it writes the environment; call it
/// first thing in `main`):
/// - `RAYON_NUM_THREADS` (rayon's pool, candle's matrix products) to the available parallelism when unset.
///   candle reads that variable on every matrix product and, without it, counts the physical cores by parsing
///   `/proc/cpuinfo` each time (a few percent of a tiny model's training step, measured with `perf`).
/// - `CANDLE_NUM_THREADS` (candle's barrier pool, which splits elementwise ops of 64 Ki elements or more) to 1
///   when unset and the machine has at most [`SHARED_POOL_MAX_CORES`] cores. There the pool's worker shares the
///   cores with rayon's and OpenBLAS' threads, and the caller spins at every op's barrier until the preempted
///   worker runs: on 2 cores a tiny LoRA training step ran 8 % and a pre-training step 10 % faster with one
///   thread on an idle machine, and 2.5 times faster while another job ran (README, benchmarks).
///
/// It also sets glibc's allocator to keep freed memory (see [`keep_freed_memory`]).
pub fn init_threads() {
    keep_freed_memory();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        std::env::set_var("RAYON_NUM_THREADS", cores.to_string());
    }
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        if let Some(n) = barrier_pool_threads(cores) {
            std::env::set_var("CANDLE_NUM_THREADS", n.to_string());
        }
    }
}

/// Sets glibc's `malloc` to serve blocks up to [`MMAP_THRESHOLD`] from its heap and to return freed heap to
/// the kernel only above [`TRIM_THRESHOLD`] of free space at its top, unless the user tuned the allocator
/// (`GLIBC_TUNABLES` or a `MALLOC_…_` variable). A training step allocates and frees the same activation and
/// gradient buffers (hundreds of KiB to MiBs) every step; by default each large one was a fresh `mmap`, zeroed
/// page by page by the kernel on first touch and unmapped on free (with TLB shoot-downs on the other core): a
/// pre-training step of the demo recipe ran 13 % faster with these two settings (README, benchmarks). The cost
/// is that the process keeps up to its peak heap after a peak.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let tuned = std::env::vars_os().any(|(k, _)| {
            let k = k.to_string_lossy();
            k == "GLIBC_TUNABLES" || (k.starts_with("MALLOC_") && k.ends_with('_'))
        });
        if !tuned {
            // SAFETY: mallopt only changes the allocator's thresholds; called before other threads start.
            unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int);
                libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD as libc::c_int);
            }
        }
    }
}

/// Blocks up to this size come from the heap ([`keep_freed_memory`]); glibc's largest allowed value.
pub const MMAP_THRESHOLD: usize = 32 << 20;

/// Free heap kept before glibc gives memory back ([`keep_freed_memory`]).
pub const TRIM_THRESHOLD: usize = 1 << 30;

/// Up to this many cores, candle's elementwise barrier pool runs on the calling thread alone.
pub const SHARED_POOL_MAX_CORES: usize = 2;

/// The barrier pool's thread count for a machine of `cores` cores: `Some(1)` up to
/// [`SHARED_POOL_MAX_CORES`], otherwise `None` (candle's default, one per core).
pub fn barrier_pool_threads(cores: usize) -> Option<usize> {
    (cores <= SHARED_POOL_MAX_CORES).then_some(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_barrier_pool_runs_alone_only_on_small_machines() {
        assert_eq!(barrier_pool_threads(1), Some(1));
        assert_eq!(barrier_pool_threads(2), Some(1));
        assert_eq!(barrier_pool_threads(3), None);
        assert_eq!(barrier_pool_threads(16), None);
    }
}

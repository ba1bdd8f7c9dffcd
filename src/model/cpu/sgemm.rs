//! The linear layers' `x · Wᵀ` on the CPU through OpenBLAS' `cblas_sgemm` (cargo feature `openblas`).
//!
//! candle's own CPU GEMM (the `gemm` crate) reaches ≈ 80 GFLOP/s on this project's 2-core machines for
//! Qwen2-VL's shapes, OpenBLAS ≈ 190 (measured in `tests/model_profile.rs`); the linear layers are ≈ 90 % of
//! a forward pass's FLOPs. Everything else (attention, norms, other devices and dtypes) stays with candle.
//! A linear layer's bias and the attention's `1/√d` scale are folded into the GEMM (`beta = 1` over an output
//! pre-filled with the bias, `alpha = scale`), which saves a full pass over the output each. The ops have
//! backward passes, so the training path's gradients flow through them unchanged.
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

#[cfg(feature = "openblas")]
mod ffi {
    use std::os::raw::c_int;

    pub const ROW_MAJOR: c_int = 101;
    pub const NO_TRANS: c_int = 111;
    pub const TRANS: c_int = 112;

    #[link(name = "openblas")]
    extern "C" {
        #[allow(clippy::too_many_arguments)]
        pub fn cblas_sgemm(
            order: c_int,
            trans_a: c_int,
            trans_b: c_int,
            m: c_int,
            n: c_int,
            k: c_int,
            alpha: f32,
            a: *const f32,
            lda: c_int,
            b: *const f32,
            ldb: c_int,
            beta: f32,
            c: *mut f32,
            ldc: c_int,
        );
        pub fn openblas_set_num_threads(n: c_int);
    }
}

/// Products of fewer multiply-adds than this run on the calling thread alone; larger ones are split into one
/// block of rows (or columns) per rayon thread, each block a single-threaded OpenBLAS call. OpenBLAS' own
/// threads are never used: after each product its workers spin in `sched_yield` for about 0.1 s, on the cores
/// where rayon runs the rest of the step (on 2 cores a tiny model's LoRA step ran at 60 or 165 examples/s from
/// one run to the next with them, and a pre-training step spent 20 % of its samples in the scheduler).
/// `VLM3D_BLAS_SINGLE_MACS` overrides the bound.
const SINGLE_THREAD_MACS: usize = 1 << 24;

/// [`SINGLE_THREAD_MACS`], or `VLM3D_BLAS_SINGLE_MACS` when set.
fn single_thread_macs() -> usize {
    use std::sync::OnceLock;
    static LIMIT: OnceLock<usize> = OnceLock::new();
    *LIMIT.get_or_init(|| {
        std::env::var("VLM3D_BLAS_SINGLE_MACS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(SINGLE_THREAD_MACS)
    })
}

/// Sets OpenBLAS to one thread, once (its products are split across rayon's threads instead).
#[cfg(feature = "openblas")]
fn blas_single_threaded() {
    use std::sync::Once;
    static ONCE: Once = Once::new();
    // SAFETY: a plain setter of OpenBLAS' global thread count.
    ONCE.call_once(|| unsafe { ffi::openblas_set_num_threads(1) });
}

/// The f32 elements of a contiguous CPU tensor's storage, for custom ops; `what` names the op in the error
/// for another dtype or a strided layout.
pub(crate) fn cpu_f32<'a>(
    s: &'a CpuStorage,
    l: &Layout,
    what: &str,
) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("{what} takes f32 tensors");
    };
    let Some((o, e)) = l.contiguous_offsets() else {
        candle_core::bail!("{what} takes contiguous tensors");
    };
    Ok(&v[o..e])
}

/// Which library computes f32 CPU matrix products in this build.
pub fn backend() -> &'static str {
    if cfg!(feature = "openblas") {
        "OpenBLAS (cblas_sgemm)"
    } else {
        "candle's gemm crate (built without the `openblas` feature)"
    }
}

/// Whether [`linear_xwt`] takes the OpenBLAS path for tensors like `x`.
pub fn uses_blas(x: &Tensor) -> bool {
    cfg!(feature = "openblas") && x.device().is_cpu() && x.dtype() == candle_core::DType::F32
}

/// `x · wᵀ` for `x: [m, k]`, `w: [n, k]` (a linear layer without bias): the batch-of-one case of
/// [`batched_matmul_bt`].
pub fn linear_xwt(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    batched(x, w, true, 1.0)
}

/// `x · wᵀ + bias` for `x: [m, k]`, `w: [n, k]`, `bias: [n]`: on the OpenBLAS path the bias is the GEMM's
/// initial output (`beta = 1`) instead of a separate broadcast add.
pub fn linear_xwt_bias(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
) -> candle_core::Result<Tensor> {
    let Some(bias) = bias else {
        return linear_xwt(x, w);
    };
    let fits = x.rank() == 2
        && w.rank() == 2
        && bias.rank() == 1
        && uses_blas(x)
        && w.dtype() == x.dtype()
        && bias.dtype() == x.dtype()
        && w.device().is_cpu()
        && bias.device().is_cpu();
    if !fits {
        return linear_xwt(x, w)?.broadcast_add(bias);
    }
    x.contiguous()?
        .apply_op3(&w.contiguous()?, &bias.contiguous()?, GemmBias)
}

/// `a · bᵀ` over matching leading (batch) dimensions: `a: [..., m, k]`, `b: [..., n, k]` → `[..., m, n]`.
/// OpenBLAS on f32 CPU tensors (feature `openblas`), candle's matmul otherwise.
pub fn batched_matmul_bt(a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    batched(a, b, true, 1.0)
}

/// `alpha · a · bᵀ` (attention scores `q kᵀ / √d`): the scale rides on the GEMM's `alpha`.
pub fn batched_matmul_bt_scaled(a: &Tensor, b: &Tensor, alpha: f64) -> candle_core::Result<Tensor> {
    batched(a, b, true, alpha as f32)
}

/// `a · b` over matching leading (batch) dimensions: `a: [..., m, k]`, `b: [..., k, n]` → `[..., m, n]`
/// (attention-weighted values). OpenBLAS on f32 CPU tensors (feature `openblas`), candle's matmul otherwise.
pub fn batched_matmul(a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    batched(a, b, false, 1.0)
}

fn batched(a: &Tensor, b: &Tensor, trans_b: bool, alpha: f32) -> candle_core::Result<Tensor> {
    let (ra, rb) = (a.rank(), b.rank());
    let same_batch = ra >= 2 && ra == rb && a.dims()[..ra - 2] == b.dims()[..rb - 2];
    if !(same_batch && uses_blas(a) && b.dtype() == a.dtype() && b.device().is_cpu()) {
        let y = if trans_b {
            a.matmul(&b.t()?)
        } else {
            a.matmul(b)
        }?;
        return if alpha == 1.0 {
            Ok(y)
        } else {
            y * alpha as f64
        };
    }
    let lead = &a.dims()[..ra - 2];
    let batch: usize = lead.iter().product();
    let (m, k) = (a.dim(ra - 2)?, a.dim(ra - 1)?);
    let (b0, b1) = (b.dim(rb - 2)?, b.dim(rb - 1)?);
    let a3 = a.contiguous()?.reshape((batch, m, k))?;
    let b3 = b.contiguous()?.reshape((batch, b0, b1))?;
    let y = a3.apply_op2(&b3, Gemm { trans_b, alpha })?;
    let mut dims = lead.to_vec();
    dims.extend_from_slice(&[m, y.dim(2)?]);
    y.reshape(dims)
}

/// The batched custom op: `alpha · a · b` or `alpha · a · bᵀ` per batch element of `[batch, rows, cols]`
/// tensors.
struct Gemm {
    trans_b: bool,
    alpha: f32,
}

impl CustomOp2 for Gemm {
    fn name(&self) -> &'static str {
        if self.trans_b {
            "openblas-sgemm-batched-a-bt"
        } else {
            "openblas-sgemm-batched-a-b"
        }
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        // The forward pass is the general product with `a` as it is.
        let fwd = GemmT {
            trans: (false, self.trans_b),
            alpha: self.alpha,
        };
        fwd.cpu_fwd(s1, l1, s2, l2)
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        // y = α a bᵀ: da = α g b, db = α gᵀ a.   y = α a b: da = α g bᵀ, db = α aᵀ g.
        // Through OpenBLAS as well (candle's matmul here was a fifth of a pre-training step), outside the graph:
        // gradients are not differentiated again.
        let al = self.alpha;
        let da = a
            .track_op()
            .then(|| product(grad, b, (false, !self.trans_b), al))
            .transpose()?;
        let db = b
            .track_op()
            .then(|| {
                if self.trans_b {
                    product(grad, a, (true, false), al)
                } else {
                    product(a, grad, (true, false), al)
                }
            })
            .transpose()?;
        Ok((da, db))
    }
}

/// `alpha · op(a) · op(b)` for f32 CPU tensors of rank 2 or 3 (a batch of matrices), `op` transposing as
/// `trans` says; computed outside the autograd graph (the backward passes' products).
fn product(a: &Tensor, b: &Tensor, trans: (bool, bool), alpha: f32) -> candle_core::Result<Tensor> {
    let a = a.contiguous()?;
    let b = b.contiguous()?;
    if a.rank() == 2 && b.rank() == 2 {
        let y = a
            .unsqueeze(0)?
            .apply_op2_no_bwd(&b.unsqueeze(0)?, &GemmT { trans, alpha })?;
        return y.squeeze(0);
    }
    a.apply_op2_no_bwd(&b, &GemmT { trans, alpha })
}

/// The batched product of [`product`]: `[batch, rows, cols]` operands, each optionally transposed.
struct GemmT {
    trans: (bool, bool),
    alpha: f32,
}

impl CustomOp2 for GemmT {
    fn name(&self) -> &'static str {
        "openblas-sgemm-batched-op-a-op-b"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (ta, tb) = self.trans;
        let (batch, r1, c1) = l1.shape().dims3()?;
        let (batch2, r2, c2) = l2.shape().dims3()?;
        let (m, k) = if ta { (c1, r1) } else { (r1, c1) };
        let (k2, n) = if tb { (c2, r2) } else { (r2, c2) };
        if batch != batch2 || k != k2 {
            candle_core::bail!(
                "batched gemm: a is {batch}×{r1}×{c1} (transposed: {ta}), b is {batch2}×{r2}×{c2} (transposed: {tb})"
            );
        }
        let a = cpu_f32(s1, l1, "batched gemm through OpenBLAS")?;
        let b = cpu_f32(s2, l2, "batched gemm through OpenBLAS")?;
        let mut out = vec![0f32; batch * m * n];
        let one = |i: usize, o: &mut [f32]| {
            sgemm_ld_t(
                (&a[i * m * k..(i + 1) * m * k], if ta { m } else { k }),
                (&b[i * k * n..(i + 1) * k * n], if tb { k } else { n }),
                (o, n),
                (m, n, k),
                (ta, tb, self.alpha, 0.0),
            )
        };
        par_batch(&mut out, m * n, m * n * k, one)?;
        Ok((CpuStorage::F32(out), Shape::from((batch, m, n))))
    }
}

/// Runs `one(i, out_i)` for each batch element's `chunk` of `out`: in parallel when each product is small
/// enough for one BLAS thread (else OpenBLAS splits each product itself).
fn par_batch(
    out: &mut [f32],
    chunk: usize,
    macs: usize,
    one: impl Fn(usize, &mut [f32]) -> candle_core::Result<()> + Sync,
) -> candle_core::Result<()> {
    if chunk == 0 {
        return Ok(());
    }
    let batch = out.len() / chunk;
    if batch > 1 && macs < single_thread_macs() {
        out.par_chunks_mut(chunk)
            .enumerate()
            .try_for_each(|(i, o)| one(i, o))
    } else {
        out.chunks_mut(chunk)
            .enumerate()
            .try_for_each(|(i, o)| one(i, o))
    }
}

/// `x · wᵀ + bias` for `x: [m, k]`, `w: [n, k]`, `bias: [n]`.
struct GemmBias;

impl CustomOp3 for GemmBias {
    fn name(&self) -> &'static str {
        "openblas-sgemm-linear-bias"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (m, k) = l1.shape().dims2()?;
        let (n, k2) = l2.shape().dims2()?;
        let nb = l3.shape().dims1()?;
        if k != k2 || nb != n {
            candle_core::bail!("linear: x is {m}×{k}, w is {n}×{k2}, bias has {nb}");
        }
        let x = cpu_f32(s1, l1, "linear through OpenBLAS")?;
        let w = cpu_f32(s2, l2, "linear through OpenBLAS")?;
        let bias = cpu_f32(s3, l3, "linear through OpenBLAS")?;
        let mut out = vec![0f32; m * n];
        if n > 0 {
            out.par_chunks_mut(n)
                .for_each(|row| row.copy_from_slice(bias));
        }
        sgemm(x, w, &mut out, (m, n, k), (true, 1.0, 1.0))?;
        Ok((CpuStorage::F32(out), Shape::from((m, n))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dx = x
            .track_op()
            .then(|| product(grad, w, (false, false), 1.0))
            .transpose()?;
        let dw = w
            .track_op()
            .then(|| product(grad, x, (true, false), 1.0))
            .transpose()?;
        let db = bias.track_op().then(|| grad.sum(0)).transpose()?;
        Ok((dx, dw, db))
    }
}

/// `out = alpha · a · b + beta · out` (`trans_b`: `a · bᵀ`) for contiguous row-major `a: m×k`, `b: k×n`
/// (`n×k` when transposed), `out: m×n`.
fn sgemm(
    a: &[f32],
    b: &[f32],
    out: &mut [f32],
    (m, n, k): (usize, usize, usize),
    (trans_b, alpha, beta): (bool, f32, f32),
) -> candle_core::Result<()> {
    let ldb = if trans_b { k } else { n };
    sgemm_ld(
        (a, k),
        (b, ldb),
        (out, n),
        (m, n, k),
        (trans_b, alpha, beta),
    )
}

/// [`sgemm`] on row-major sub-matrices with explicit leading dimensions (row strides), so a head's columns
/// of a `[rows, 3·dim]` qkv tensor are used in place. Checks that every row a leading dimension reaches lies
/// inside its slice.
#[cfg(feature = "openblas")]
pub(crate) fn sgemm_ld(
    a: (&[f32], usize),
    b: (&[f32], usize),
    out: (&mut [f32], usize),
    dims: (usize, usize, usize),
    (trans_b, alpha, beta): (bool, f32, f32),
) -> candle_core::Result<()> {
    sgemm_ld_t(a, b, out, dims, (false, trans_b, alpha, beta))
}

/// [`sgemm_ld`] with `a` transposed too (`trans_a`: `a` is stored `k×m`, leading dimension ≥ m).
#[cfg(feature = "openblas")]
pub(crate) fn sgemm_ld_t(
    (a, lda): (&[f32], usize),
    (b, ldb): (&[f32], usize),
    (out, ldc): (&mut [f32], usize),
    (m, n, k): (usize, usize, usize),
    (trans_a, trans_b, alpha, beta): (bool, bool, f32, f32),
) -> candle_core::Result<()> {
    use std::os::raw::c_int;
    if m == 0 || n == 0 {
        return Ok(());
    }
    let (a_rows, a_cols) = if trans_a { (k, m) } else { (m, k) };
    let (b_rows, b_cols) = if trans_b { (n, k) } else { (k, n) };
    let fits = |len: usize, rows: usize, cols: usize, ld: usize| {
        cols <= ld && (rows == 0 || cols == 0 || (rows - 1) * ld + cols <= len)
    };
    let inside = fits(a.len(), a_rows, a_cols, lda.max(1))
        && fits(b.len(), b_rows, b_cols, ldb.max(1))
        && fits(out.len(), m, n, ldc);
    if !inside {
        candle_core::bail!(
            "sgemm: {m}×{n}×{k} (ld {lda}/{ldb}/{ldc}) does not fit slices of {}/{}/{}",
            a.len(),
            b.len(),
            out.len()
        );
    }
    for v in [m, n, k, lda, ldb, ldc] {
        c_int::try_from(v)
            .map_err(|_| candle_core::Error::Msg(format!("{v} is too large for BLAS")))?;
    }
    blas_single_threaded();
    let call = Gemm3 {
        trans: (trans_a, trans_b),
        ld: (lda.max(1), ldb.max(1), ldc),
        alpha,
        beta,
    };
    let (a, b, out) = (a.as_ptr(), b.as_ptr(), SendPtr(out.as_mut_ptr()));
    let parts = rayon::current_num_threads().min(if m >= n { m } else { n });
    if m.saturating_mul(n).saturating_mul(k) < single_thread_macs() || parts < 2 {
        // SAFETY: the checks above keep every element BLAS touches (rows × leading dimension) inside the
        // slices; BLAS reads a and b and writes only `out`.
        unsafe { call.run(a, b, out.0, (m, n, k)) };
        return Ok(());
    }
    // Blocks of rows (or of columns when there are more columns): each block's rows of `a` (columns of `b`)
    // and its part of `out`, disjoint between blocks.
    let (a, b) = (SendPtr(a as *mut f32), SendPtr(b as *mut f32));
    (0..parts).into_par_iter().for_each(|p| {
        let (a, b, out) = (&a, &b, &out);
        let len = if m >= n { m } else { n };
        let (r0, r1) = (len * p / parts, len * (p + 1) / parts);
        if r0 == r1 {
            return;
        }
        // SAFETY: sub-matrices of the checked ones; the blocks write disjoint elements of `out`.
        unsafe {
            if m >= n {
                let a_off = if trans_a { r0 } else { r0 * lda };
                call.run(a.0.add(a_off), b.0, out.0.add(r0 * ldc), (r1 - r0, n, k));
            } else {
                let b_off = if trans_b { r0 * ldb } else { r0 };
                call.run(a.0, b.0.add(b_off), out.0.add(r0), (m, r1 - r0, k));
            }
        }
    });
    Ok(())
}

/// A raw pointer that may cross into rayon's threads (blocks of one product write disjoint elements).
#[cfg(feature = "openblas")]
struct SendPtr(*mut f32);
// SAFETY: used only for disjoint blocks of one product, which outlives the parallel loop.
#[cfg(feature = "openblas")]
unsafe impl Send for SendPtr {}
// SAFETY: as above.
#[cfg(feature = "openblas")]
unsafe impl Sync for SendPtr {}

/// One `cblas_sgemm` call's fixed parameters.
#[cfg(feature = "openblas")]
struct Gemm3 {
    trans: (bool, bool),
    ld: (usize, usize, usize),
    alpha: f32,
    beta: f32,
}

#[cfg(feature = "openblas")]
impl Gemm3 {
    /// # Safety
    /// `a`, `b` and `out` must hold the `m×k`, `k×n` (as transposed) and `m×n` matrices at the leading
    /// dimensions of `self`, every dimension within `c_int` (checked by the caller).
    unsafe fn run(
        &self,
        a: *const f32,
        b: *const f32,
        out: *mut f32,
        (m, n, k): (usize, usize, usize),
    ) {
        use std::os::raw::c_int;
        let t = |x: bool| if x { ffi::TRANS } else { ffi::NO_TRANS };
        ffi::cblas_sgemm(
            ffi::ROW_MAJOR,
            t(self.trans.0),
            t(self.trans.1),
            m as c_int,
            n as c_int,
            k as c_int,
            self.alpha,
            a,
            self.ld.0 as c_int,
            b,
            self.ld.1 as c_int,
            self.beta,
            out,
            self.ld.2 as c_int,
        );
    }
}

#[cfg(not(feature = "openblas"))]
pub(crate) fn sgemm_ld_t(
    _a: (&[f32], usize),
    _b: (&[f32], usize),
    _out: (&mut [f32], usize),
    _dims: (usize, usize, usize),
    _params: (bool, bool, f32, f32),
) -> candle_core::Result<()> {
    candle_core::bail!("built without the `openblas` feature")
}

#[cfg(not(feature = "openblas"))]
pub(crate) fn sgemm_ld(
    _a: (&[f32], usize),
    _b: (&[f32], usize),
    _out: (&mut [f32], usize),
    _dims: (usize, usize, usize),
    _params: (bool, f32, f32),
) -> candle_core::Result<()> {
    candle_core::bail!("built without the `openblas` feature")
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// Against a triple loop, on shapes that are not multiples of any kernel's block size.
    #[test]
    fn matches_a_naive_product_and_its_gradients() {
        let (m, n, k) = (7, 13, 29);
        let xs: Vec<f32> = (0..m * k)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
            .collect();
        let ws: Vec<f32> = (0..n * k)
            .map(|i| ((i * 53 % 97) as f32 - 48.0) / 30.0)
            .collect();
        let x = Var::from_vec(xs.clone(), (m, k), &Device::Cpu).unwrap();
        let w = Var::from_vec(ws.clone(), (n, k), &Device::Cpu).unwrap();
        let y = linear_xwt(x.as_tensor(), w.as_tensor()).unwrap();
        let got: Vec<Vec<f32>> = y.to_vec2().unwrap();
        for i in 0..m {
            for j in 0..n {
                let want: f32 = (0..k).map(|t| xs[i * k + t] * ws[j * k + t]).sum();
                assert!(
                    (got[i][j] - want).abs() < 1e-4,
                    "({i},{j}) {} vs {want}",
                    got[i][j]
                );
            }
        }
        // Loss = sum(y): dL/dx[i][t] = sum_j w[j][t]; dL/dw[j][t] = sum_i x[i][t].
        let grads = y.sum_all().unwrap().backward().unwrap();
        let gx: Vec<Vec<f32>> = grads.get(x.as_tensor()).unwrap().to_vec2().unwrap();
        let gw: Vec<Vec<f32>> = grads.get(w.as_tensor()).unwrap().to_vec2().unwrap();
        for t in 0..k {
            let sw: f32 = (0..n).map(|j| ws[j * k + t]).sum();
            let sx: f32 = (0..m).map(|i| xs[i * k + t]).sum();
            assert!((gx[0][t] - sw).abs() < 1e-4 && (gw[0][t] - sx).abs() < 1e-4);
        }
        // A transposed (non-contiguous) input gives the same product.
        let xt = x
            .as_tensor()
            .t()
            .unwrap()
            .contiguous()
            .unwrap()
            .t()
            .unwrap();
        let y2 = linear_xwt(&xt, w.as_tensor()).unwrap();
        let d = (y2 - &y).unwrap().abs().unwrap().max_all().unwrap();
        assert!(d.to_scalar::<f32>().unwrap() < 1e-5);
    }

    /// Batched products against candle's matmul, values and gradients, including a 4-D (batch, heads) case.
    #[test]
    fn batched_products_match_candle() {
        let dev = Device::Cpu;
        let a = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 3, 5, 7), &dev).unwrap()).unwrap();
        let b = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 3, 6, 7), &dev).unwrap()).unwrap();
        let c = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 3, 7, 4), &dev).unwrap()).unwrap();
        let close = |x: &Tensor, y: &Tensor| {
            let d = (x - y).unwrap().abs().unwrap().max_all().unwrap();
            d.to_scalar::<f32>().unwrap() < 1e-4
        };
        let (a, b, c) = (a.as_tensor(), b.as_tensor(), c.as_tensor());
        let y1 = batched_matmul_bt(a, b).unwrap();
        assert!(close(&y1, &a.matmul(&b.t().unwrap()).unwrap()));
        let y2 = batched_matmul(a, c).unwrap();
        assert!(close(&y2, &a.matmul(c).unwrap()));
        // Gradients of sum(y1²) + sum(y2²) against the same expression in candle's ops.
        let loss = |y1: &Tensor, y2: &Tensor| {
            (y1.sqr().unwrap().sum_all().unwrap() + y2.sqr().unwrap().sum_all().unwrap()).unwrap()
        };
        let g = loss(&y1, &y2).backward().unwrap();
        let r1 = a.matmul(&b.t().unwrap()).unwrap();
        let r2 = a.matmul(c).unwrap();
        let gr = loss(&r1, &r2).backward().unwrap();
        for t in [a, b, c] {
            assert!(close(g.get(t).unwrap(), gr.get(t).unwrap()));
        }
    }

    /// The bias folded into the GEMM and the scale on `alpha`: values and gradients against candle's
    /// `matmul + broadcast_add` and `matmul * scale`.
    #[test]
    fn bias_and_scale_match_candle() {
        let dev = Device::Cpu;
        let var =
            |s: &[usize]| Var::from_tensor(&Tensor::randn(0f32, 1.0, s, &dev).unwrap()).unwrap();
        let (x, w, bias) = (var(&[9, 11]), var(&[5, 11]), var(&[5]));
        let (a, b) = (var(&[2, 4, 6]), var(&[2, 3, 6]));
        let (x, w, bias, a, b) = (
            x.as_tensor(),
            w.as_tensor(),
            bias.as_tensor(),
            a.as_tensor(),
            b.as_tensor(),
        );
        let wts = Tensor::randn(0f32, 1.0, (9, 5), &dev).unwrap();
        let wts2 = Tensor::randn(0f32, 1.0, (2, 4, 3), &dev).unwrap();
        let y = linear_xwt_bias(x, w, Some(bias)).unwrap();
        let s = batched_matmul_bt_scaled(a, b, 0.37).unwrap();
        let yr = x
            .matmul(&w.t().unwrap())
            .unwrap()
            .broadcast_add(bias)
            .unwrap();
        let sr = (a.matmul(&b.t().unwrap()).unwrap() * 0.37).unwrap();
        let close = |p: &Tensor, q: &Tensor| {
            let d: f32 = (p - q)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar()
                .unwrap();
            assert!(d < 1e-4, "{d}");
        };
        close(&y, &yr);
        close(&s, &sr);
        let loss = |y: &Tensor, s: &Tensor| {
            ((y * &wts).unwrap().sum_all().unwrap() + (s * &wts2).unwrap().sum_all().unwrap())
                .unwrap()
        };
        let g = loss(&y, &s).backward().unwrap();
        let gr = loss(&yr, &sr).backward().unwrap();
        for t in [x, w, bias, a, b] {
            close(g.get(t).unwrap(), gr.get(t).unwrap());
        }
        // No bias is the plain product; an empty input is an empty output.
        close(
            &linear_xwt_bias(x, w, None).unwrap(),
            &x.matmul(&w.t().unwrap()).unwrap(),
        );
        let e = linear_xwt_bias(&x.narrow(0, 0, 0).unwrap(), w, Some(bias)).unwrap();
        assert_eq!(e.dims(), &[0, 5]);
    }
}

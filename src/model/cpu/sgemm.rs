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
        pub fn openblas_get_num_threads() -> c_int;
    }
}

/// Products of fewer multiply-adds than this run on the calling thread alone. OpenBLAS splits any product
/// above 262,144 multiply-adds across its threads, whose workers then spin for about 0.1 s waiting for the
/// next one, on the cores where rayon runs the rest of the step (the fused kernels, candle's backward
/// products): on 2 cores a tiny model's LoRA step ran at 60 or 165 examples/s from one run to the next. At
/// 2²⁴ a tiny decoder's attention projections (884 × 128 × 128) stay on one thread, its MLP's and every
/// Qwen2-VL-2B product are split (README, Benchmarks). `VLM3D_BLAS_SINGLE_MACS` overrides it (0: always split,
/// OpenBLAS' own rule).
#[cfg(feature = "openblas")]
const SINGLE_THREAD_MACS: usize = 1 << 24;

/// Sets OpenBLAS' thread count for a product of `macs` multiply-adds: one below [`SINGLE_THREAD_MACS`], its
/// start-up count above it. Calls OpenBLAS only when the count changes; concurrent callers may race on it,
/// which changes only the speed.
#[cfg(feature = "openblas")]
fn blas_threads_for(macs: usize) {
    use std::os::raw::c_int;
    use std::sync::atomic::{AtomicI32, Ordering};
    use std::sync::OnceLock;
    static DEFAULT: OnceLock<c_int> = OnceLock::new();
    static CURRENT: AtomicI32 = AtomicI32::new(0);
    static LIMIT: OnceLock<usize> = OnceLock::new();
    let limit = *LIMIT.get_or_init(|| {
        std::env::var("VLM3D_BLAS_SINGLE_MACS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(SINGLE_THREAD_MACS)
    });
    // SAFETY: plain getters/setters of OpenBLAS' global thread count.
    let default = *DEFAULT.get_or_init(|| unsafe { ffi::openblas_get_num_threads() }.max(1));
    let want = if macs < limit { 1 } else { default };
    if CURRENT.swap(want, Ordering::Relaxed) != want {
        // SAFETY: as above; OpenBLAS starts any missing workers itself.
        unsafe { ffi::openblas_set_num_threads(want) };
    }
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
        let (batch, m, k) = l1.shape().dims3()?;
        let (batch2, r, c) = l2.shape().dims3()?;
        let (k2, n) = if self.trans_b { (c, r) } else { (r, c) };
        if batch != batch2 || k != k2 {
            candle_core::bail!(
                "batched gemm: a is {batch}×{m}×{k}, b is {batch2}×{r}×{c} (transposed: {})",
                self.trans_b
            );
        }
        let a = cpu_f32(s1, l1, "batched gemm through OpenBLAS")?;
        let b = cpu_f32(s2, l2, "batched gemm through OpenBLAS")?;
        let mut out = vec![0f32; batch * m * n];
        for i in 0..batch {
            sgemm(
                &a[i * m * k..(i + 1) * m * k],
                &b[i * k * n..(i + 1) * k * n],
                &mut out[i * m * n..(i + 1) * m * n],
                (m, n, k),
                (self.trans_b, self.alpha, 0.0),
            )?;
        }
        Ok((CpuStorage::F32(out), Shape::from((batch, m, n))))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        // y = α a bᵀ: da = α g b, db = α gᵀ a.   y = α a b: da = α g bᵀ, db = α aᵀ g.
        let grad = &if self.alpha == 1.0 {
            grad.clone()
        } else {
            (grad * self.alpha as f64)?
        };
        let da = a
            .track_op()
            .then(|| {
                if self.trans_b {
                    grad.matmul(b)
                } else {
                    grad.matmul(&b.t()?)
                }
            })
            .transpose()?;
        let db = b
            .track_op()
            .then(|| {
                if self.trans_b {
                    grad.t()?.matmul(a)
                } else {
                    a.t()?.matmul(grad)
                }
            })
            .transpose()?;
        Ok((da, db))
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
        let dx = x.track_op().then(|| grad.matmul(w)).transpose()?;
        let dw = w.track_op().then(|| grad.t()?.matmul(x)).transpose()?;
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
    (a, lda): (&[f32], usize),
    (b, ldb): (&[f32], usize),
    (out, ldc): (&mut [f32], usize),
    (m, n, k): (usize, usize, usize),
    (trans_b, alpha, beta): (bool, f32, f32),
) -> candle_core::Result<()> {
    use std::os::raw::c_int;
    if m == 0 || n == 0 {
        return Ok(());
    }
    let (b_rows, b_cols) = if trans_b { (n, k) } else { (k, n) };
    let fits = |len: usize, rows: usize, cols: usize, ld: usize| {
        cols <= ld && (rows == 0 || cols == 0 || (rows - 1) * ld + cols <= len)
    };
    let inside = fits(a.len(), m, k, lda.max(1))
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
    let dim = |v: usize| {
        c_int::try_from(v.max(1))
            .map_err(|_| candle_core::Error::Msg(format!("{v} is too large for BLAS")))
    };
    let (mi, ni, ki) = (
        dim(m)?,
        dim(n)?,
        c_int::try_from(k)
            .map_err(|_| candle_core::Error::Msg(format!("{k} is too large for BLAS")))?,
    );
    let tb = if trans_b { ffi::TRANS } else { ffi::NO_TRANS };
    blas_threads_for(m.saturating_mul(n).saturating_mul(k));
    // SAFETY: the checks above keep every element BLAS touches (rows × leading dimension) inside the
    // slices; BLAS reads a and b and writes only `out`.
    unsafe {
        ffi::cblas_sgemm(
            ffi::ROW_MAJOR,
            ffi::NO_TRANS,
            tb,
            mi,
            ni,
            ki,
            alpha,
            a.as_ptr(),
            dim(lda)?,
            b.as_ptr(),
            dim(ldb)?,
            beta,
            out.as_mut_ptr(),
            dim(ldc)?,
        );
    }
    Ok(())
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

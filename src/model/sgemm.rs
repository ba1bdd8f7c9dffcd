//! The linear layers' `x · Wᵀ` on the CPU through OpenBLAS' `cblas_sgemm` (cargo feature `openblas`).
//!
//! candle's own CPU GEMM (the `gemm` crate) reaches ≈ 80 GFLOP/s on this project's 2-core machines for
//! Qwen2-VL's shapes, OpenBLAS ≈ 190 (measured in `tests/model_profile.rs`); the linear layers are ≈ 90 % of
//! a forward pass's FLOPs. Everything else (attention, norms, other devices and dtypes) stays with candle.
//! The op has a backward pass, so the training path's gradients flow through it unchanged.
use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};

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
    }
}

/// Whether [`linear_xwt`] takes the OpenBLAS path for tensors like `x`.
pub fn uses_blas(x: &Tensor) -> bool {
    cfg!(feature = "openblas") && x.device().is_cpu() && x.dtype() == candle_core::DType::F32
}

/// `x · wᵀ` for `x: [m, k]`, `w: [n, k]` (a linear layer): the batch-of-one case of [`batched_matmul_bt`].
pub fn linear_xwt(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    batched(x, w, true)
}

/// `a · bᵀ` over matching leading (batch) dimensions: `a: [..., m, k]`, `b: [..., n, k]` → `[..., m, n]`
/// (attention scores). OpenBLAS on f32 CPU tensors (feature `openblas`), candle's matmul otherwise.
pub fn batched_matmul_bt(a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    batched(a, b, true)
}

/// `a · b` over matching leading (batch) dimensions: `a: [..., m, k]`, `b: [..., k, n]` → `[..., m, n]`
/// (attention-weighted values). OpenBLAS on f32 CPU tensors (feature `openblas`), candle's matmul otherwise.
pub fn batched_matmul(a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    batched(a, b, false)
}

fn batched(a: &Tensor, b: &Tensor, trans_b: bool) -> candle_core::Result<Tensor> {
    let (ra, rb) = (a.rank(), b.rank());
    let same_batch = ra >= 2 && ra == rb && a.dims()[..ra - 2] == b.dims()[..rb - 2];
    if !(same_batch && uses_blas(a) && b.dtype() == a.dtype() && b.device().is_cpu()) {
        return if trans_b {
            a.matmul(&b.t()?)
        } else {
            a.matmul(b)
        };
    }
    let lead = &a.dims()[..ra - 2];
    let batch: usize = lead.iter().product();
    let (m, k) = (a.dim(ra - 2)?, a.dim(ra - 1)?);
    let (b0, b1) = (b.dim(rb - 2)?, b.dim(rb - 1)?);
    let a3 = a.contiguous()?.reshape((batch, m, k))?;
    let b3 = b.contiguous()?.reshape((batch, b0, b1))?;
    let y = a3.apply_op2(&b3, Gemm { trans_b })?;
    let mut dims = lead.to_vec();
    dims.extend_from_slice(&[m, y.dim(2)?]);
    y.reshape(dims)
}

/// The batched custom op: `a · b` or `a · bᵀ` per batch element of `[batch, rows, cols]` tensors.
struct Gemm {
    trans_b: bool,
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
        let (CpuStorage::F32(a), CpuStorage::F32(b)) = (s1, s2) else {
            candle_core::bail!("batched gemm through OpenBLAS takes f32 tensors");
        };
        let (Some((ao, ae)), Some((bo, be))) = (l1.contiguous_offsets(), l2.contiguous_offsets())
        else {
            candle_core::bail!("batched gemm through OpenBLAS takes contiguous tensors");
        };
        let (a, b) = (&a[ao..ae], &b[bo..be]);
        let mut out = vec![0f32; batch * m * n];
        for i in 0..batch {
            sgemm(
                &a[i * m * k..(i + 1) * m * k],
                &b[i * k * n..(i + 1) * k * n],
                &mut out[i * m * n..(i + 1) * m * n],
                (m, n, k),
                self.trans_b,
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
        // y = a bᵀ: da = g b, db = gᵀ a.   y = a b: da = g bᵀ, db = aᵀ g.
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

/// `out = a · b` (`trans_b`: `a · bᵀ`) for row-major `a: m×k`, `b: k×n` (`n×k` when transposed).
#[cfg(feature = "openblas")]
fn sgemm(
    a: &[f32],
    b: &[f32],
    out: &mut [f32],
    (m, n, k): (usize, usize, usize),
    trans_b: bool,
) -> candle_core::Result<()> {
    use std::os::raw::c_int;
    let dim = |v: usize| {
        c_int::try_from(v)
            .map_err(|_| candle_core::Error::Msg(format!("{v} is too large for BLAS")))
    };
    if m == 0 || n == 0 {
        return Ok(());
    }
    let (mi, ni, ki) = (dim(m)?, dim(n)?, dim(k)?);
    let (tb, ldb) = if trans_b {
        (ffi::TRANS, ki.max(1))
    } else {
        (ffi::NO_TRANS, ni)
    };
    // SAFETY: the slices hold m·k, k·n and m·n contiguous row-major f32 (the callers slice them from
    // layouts checked to be contiguous with these shapes); BLAS reads a and b and writes only `out`.
    unsafe {
        ffi::cblas_sgemm(
            ffi::ROW_MAJOR,
            ffi::NO_TRANS,
            tb,
            mi,
            ni,
            ki,
            1.0,
            a.as_ptr(),
            ki.max(1),
            b.as_ptr(),
            ldb,
            0.0,
            out.as_mut_ptr(),
            ni,
        );
    }
    Ok(())
}

#[cfg(not(feature = "openblas"))]
fn sgemm(
    _a: &[f32],
    _b: &[f32],
    _out: &mut [f32],
    _dims: (usize, usize, usize),
    _trans_b: bool,
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
}

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

/// `x · wᵀ` for `x: [m, k]`, `w: [n, k]`: OpenBLAS on f32 CPU tensors (feature `openblas`), candle's matmul
/// otherwise.
pub fn linear_xwt(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    if uses_blas(x) && w.dtype() == x.dtype() && w.device().is_cpu() {
        x.contiguous()?.apply_op2(&w.contiguous()?, XwT)
    } else {
        x.matmul(&w.t()?)
    }
}

/// The custom op: `x · wᵀ`.
struct XwT;

impl CustomOp2 for XwT {
    fn name(&self) -> &'static str {
        "openblas-sgemm-x-wt"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (m, k) = l1.shape().dims2()?;
        let (n, k2) = l2.shape().dims2()?;
        if k != k2 {
            candle_core::bail!("x·wᵀ: x is {m}×{k} but w is {n}×{k2}");
        }
        let (CpuStorage::F32(x), CpuStorage::F32(w)) = (s1, s2) else {
            candle_core::bail!("x·wᵀ through OpenBLAS takes f32 tensors");
        };
        let (Some((xo, xe)), Some((wo, we))) = (l1.contiguous_offsets(), l2.contiguous_offsets())
        else {
            candle_core::bail!("x·wᵀ through OpenBLAS takes contiguous tensors");
        };
        let (x, w) = (&x[xo..xe], &w[wo..we]);
        let mut out = vec![0f32; m * n];
        sgemm_xwt(x, w, &mut out, m, n, k)?;
        Ok((CpuStorage::F32(out), Shape::from((m, n))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        // d/dx (x wᵀ) = g w; d/dw = gᵀ x — the latter only when w is trained (frozen base weights are not).
        let dx = x.track_op().then(|| grad.matmul(w)).transpose()?;
        let dw = w.track_op().then(|| grad.t()?.matmul(x)).transpose()?;
        Ok((dx, dw))
    }
}

#[cfg(feature = "openblas")]
fn sgemm_xwt(
    x: &[f32],
    w: &[f32],
    out: &mut [f32],
    m: usize,
    n: usize,
    k: usize,
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
    // SAFETY: the slices hold m·k, n·k and m·n contiguous row-major f32 (checked by the caller's layouts and
    // the allocation above); BLAS reads x and w and writes only `out`.
    unsafe {
        ffi::cblas_sgemm(
            ffi::ROW_MAJOR,
            ffi::NO_TRANS,
            ffi::TRANS,
            mi,
            ni,
            ki,
            1.0,
            x.as_ptr(),
            ki.max(1),
            w.as_ptr(),
            ki.max(1),
            0.0,
            out.as_mut_ptr(),
            ni,
        );
    }
    Ok(())
}

#[cfg(not(feature = "openblas"))]
fn sgemm_xwt(
    _x: &[f32],
    _w: &[f32],
    _out: &mut [f32],
    _m: usize,
    _n: usize,
    _k: usize,
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
}

//! One-pass, multi-threaded versions of the activations that candle runs as several single-threaded
//! elementwise passes on the CPU: the vision MLP's quick-GELU `x·σ(1.702x)` (three passes and two temporaries
//! in candle) and the decoder MLP's gate `silu(g)·u` (two passes). At six camera views they were about a tenth
//! of a forward pass (`tests/model_profile.rs`). Both have backward passes, checked against candle's own ops,
//! and fall back to candle's ops off the f32 CPU path.
//!
//! [`segment_attention`] is the vision tower's attention (rotary embedding, scores, softmax, weighted values)
//! one image and head at a time, so the scores stay in cache and no `[heads, rows, rows]` tensor is ever
//! allocated; it has no backward pass (inference) and falls back to candle's ops likewise. Training takes
//! [`softmax_last_dim_diff`] and [`rope_diff`], fused with fused backward passes.
use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::model::cpu::sgemm::{
    batched_matmul, batched_matmul_bt_scaled, cpu_f32, sgemm_ld, sgemm_ld_t, uses_blas,
};

/// Elements per rayon task: large enough that scheduling is negligible, small enough to balance two to
/// sixteen cores on a vision MLP's 3 M–18 M activations.
const CHUNK: usize = 1 << 14;

/// `eˣ` to about 1 ulp (relative error ≈ 1e-7 against f64), in plain arithmetic the compiler vectorizes:
/// libm's scalar `expf` made softmax and the activations a third of the vision attention's time.
/// `x = n·ln2 + r` with `|r| ≤ ln2/2` (Cody–Waite split of ln2), `eʳ` by its degree-7 Taylor polynomial
/// (truncation error < 1e-8), `2ⁿ` written into the exponent bits (`n` read off the rounding constant's
/// mantissa, so no float-to-int conversion). Exactly 0 below −87.3 (masked scores of −∞ weigh nothing),
/// +∞ from 88.3 on; NaN stays NaN.
#[inline(always)]
pub fn fast_exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding 1.5·2²³ rounds to an integer, which then sits in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let xc = x.clamp(-87.3, 88.3);
    let t = xc * LOG2E + ROUND;
    let n = t - ROUND;
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    let two_n = f32::from_bits(t.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(127) << 23);
    if x < -87.3 {
        0.0
    } else if x >= 88.3 {
        f32::INFINITY
    } else {
        p * two_n
    }
}

/// Runs `f` compiled for AVX2 and FMA (8 lanes instead of SSE2's 4) when the CPU has them: the crate is
/// built for baseline x86-64, so this is the one place the elementwise loops get wider vectors. Setting
/// `VLM3D_SIMD=baseline` keeps the baseline code on any CPU (CI runs the model tests both ways).
#[inline(always)]
fn simd<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        if use_avx2() {
            // SAFETY: the CPU supports the features the function is compiled for (checked in `use_avx2`).
            return unsafe { avx2(f) };
        }
    }
    f()
}

#[cfg(target_arch = "x86_64")]
fn use_avx2() -> bool {
    static USE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *USE.get_or_init(|| {
        std::env::var("VLM3D_SIMD").as_deref() != Ok("baseline")
            && is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
    })
}

#[inline(always)]
fn sigmoid(v: f32) -> f32 {
    1.0 / (1.0 + fast_exp(-v))
}

fn fast_path(xs: &[&Tensor]) -> bool {
    xs.iter()
        .all(|x| x.device().is_cpu() && x.dtype() == candle_core::DType::F32)
}

/// `x · σ(1.702 x)`, the vision tower's activation.
pub fn quick_gelu(x: &Tensor) -> candle_core::Result<Tensor> {
    if fast_path(&[x]) {
        x.contiguous()?.apply_op1(QuickGelu)
    } else {
        x * candle_nn::ops::sigmoid(&(x * 1.702)?)?
    }
}

/// `silu(gate) · up`, the decoder MLP's gated activation.
pub fn silu_mul(gate: &Tensor, up: &Tensor) -> candle_core::Result<Tensor> {
    if fast_path(&[gate, up]) && gate.dims() == up.dims() {
        gate.contiguous()?.apply_op2(&up.contiguous()?, SiluMul)
    } else {
        gate.silu()? * up
    }
}

/// `f(a[i], b[i])` for every element (equal lengths), in parallel chunks and in the widest SIMD the CPU has.
/// A unary map passes its input twice (the second read hits the same cache lines).
#[inline(always)]
fn zip_map(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32 + Sync) -> Vec<f32> {
    let mut y = vec![0f32; a.len()];
    y.par_chunks_mut(CHUNK)
        .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
        .for_each(|(y, (a, b))| {
            simd(|| {
                for ((y, &a), &b) in y.iter_mut().zip(a).zip(b) {
                    *y = f(a, b);
                }
            })
        });
    y
}

/// The two f32 inputs of an elementwise [`CustomOp2`], which must have one shape (`what` names the op in errors).
fn cpu_f32_pair<'a>(
    s1: &'a CpuStorage,
    l1: &Layout,
    s2: &'a CpuStorage,
    l2: &Layout,
    what: &str,
) -> candle_core::Result<(&'a [f32], &'a [f32])> {
    if l1.shape() != l2.shape() {
        candle_core::bail!("{what}: {:?} vs {:?}", l1.shape(), l2.shape());
    }
    Ok((cpu_f32(s1, l1, what)?, cpu_f32(s2, l2, what)?))
}

struct QuickGelu;

impl CustomOp1 for QuickGelu {
    fn name(&self) -> &'static str {
        "fused-quick-gelu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = cpu_f32(s, l, "quick-GELU")?;
        let y = zip_map(x, x, |x, _| x * sigmoid(1.702 * x));
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        // d/dx x·σ(ax) = σ(ax) + a·x·σ(ax)·(1 − σ(ax)).
        let s = candle_nn::ops::sigmoid(&(x * 1.702)?)?;
        let ds = ((x * 1.702)? * (&s * (1.0 - &s)?)?)?;
        Ok(Some(g.mul(&(s + ds)?)?))
    }
}

struct SiluMul;

impl CustomOp2 for SiluMul {
    fn name(&self) -> &'static str {
        "fused-silu-mul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (g, u) = cpu_f32_pair(s1, l1, s2, l2, "silu·mul")?;
        let y = zip_map(g, u, |g, u| g * sigmoid(g) * u);
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        // y = silu(a)·u: dy/da = u·σ(a)·(1 + a·(1 − σ(a))), dy/du = silu(a).
        let dgate = gate
            .track_op()
            .then(|| {
                let s = candle_nn::ops::sigmoid(gate)?;
                let d = (&s * ((gate * (1.0 - &s)?)? + 1.0)?)?;
                g.mul(&(d * up)?)
            })
            .transpose()?;
        let dup = up.track_op().then(|| g.mul(&gate.silu()?)).transpose()?;
        Ok((dgate, dup))
    }
}

/// Softmax over the last dimension, rows in parallel, with [`fast_exp`]; records no backward pass (inference;
/// [`softmax_last_dim_diff`] for training). Other devices and dtypes use candle's kernel.
pub fn softmax_last_dim(x: &Tensor) -> candle_core::Result<Tensor> {
    if fast_path(&[x]) && x.rank() > 0 && x.dim(x.rank() - 1)? > 0 {
        x.contiguous()?.apply_op1_no_bwd(&SoftmaxLastDim)
    } else {
        candle_nn::ops::softmax_last_dim(x)
    }
}

/// [`softmax_last_dim`] with a backward pass, for training: the fused kernel forward and the fused row rule
/// `dx = y ⊙ (g − Σ g ⊙ y)` backward (candle's composite softmax took about half of a pre-training step with
/// the vision tower learning: five full passes over the scores forward and more backward). Other devices and
/// dtypes use candle's composite softmax.
pub fn softmax_last_dim_diff(x: &Tensor) -> candle_core::Result<Tensor> {
    if fast_path(&[x]) && x.rank() > 0 && x.dim(x.rank() - 1)? > 0 {
        x.contiguous()?.apply_op1(SoftmaxLastDim)
    } else {
        candle_nn::ops::softmax(x, candle_core::D::Minus1)
    }
}

struct SoftmaxLastDim;

impl CustomOp1 for SoftmaxLastDim {
    fn name(&self) -> &'static str {
        "fused-softmax-last-dim"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = cpu_f32(s, l, "softmax")?;
        let width = l.shape().dims().last().copied().unwrap_or(1).max(1);
        let mut y = x.to_vec();
        y.par_chunks_mut(width).for_each(softmax_row);
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        if fast_path(&[y, g]) {
            let (y, g) = (y.contiguous()?, g.contiguous()?);
            return Ok(Some(y.apply_op2_no_bwd(&g, &SoftmaxBackward)?));
        }
        let dot = (g * y)?.sum_keepdim(candle_core::D::Minus1)?;
        Ok(Some((y * g.broadcast_sub(&dot)?)?))
    }
}

/// The softmax's backward pass per row: `dx = y ⊙ (g − Σ g ⊙ y)`.
struct SoftmaxBackward;

impl CustomOp2 for SoftmaxBackward {
    fn name(&self) -> &'static str {
        "fused-softmax-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (y, g) = cpu_f32_pair(s1, l1, s2, l2, "softmax backward")?;
        let width = l1.shape().dims().last().copied().unwrap_or(1).max(1);
        let mut dx = vec![0f32; y.len()];
        dx.par_chunks_mut(width)
            .zip(y.par_chunks(width).zip(g.par_chunks(width)))
            .for_each(|(dx, (y, g))| {
                simd(|| {
                    let dot: f32 = y.iter().zip(g).map(|(y, g)| y * g).sum();
                    for ((dx, &y), &g) in dx.iter_mut().zip(y).zip(g) {
                        *dx = y * (g - dot);
                    }
                })
            });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// `softmax(scale · q kᵀ + mask) v` for `q: [batch, lq, d]`, `k: [batch, lk, d]`, `v: [batch, lk, dv]`,
/// differentiable in all three; with `causal` query `i` sees keys `0 ..= lk − lq + i` (the decoder's mask: the
/// queries are the last `lq` of `lk` positions), else every key. On the f32 CPU path with OpenBLAS it is one
/// op: forward, each batch element's scores, softmax and weighted values in a rayon task (the probabilities
/// kept for the backward pass); backward, per element `dv = pᵀ g`, `dp = g vᵀ`, `ds = p ⊙ (dp − Σ dp ⊙ p)`,
/// `dq = scale · ds k`, `dk = scale · dsᵀ q`. So the autograd graph holds no `[batch, lq, lk]` tensor: as
/// separate ops (two products, the mask and the softmax) each score-sized gradient was zero-filled and added
/// into by candle's backward, which with the vision tower training was the largest memory traffic of a
/// pre-training step. Elsewhere candle's products around [`softmax_last_dim_diff`].
pub fn attention_diff(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    causal: bool,
) -> candle_core::Result<Tensor> {
    let (b, lq, d) = q.dims3()?;
    let (bk, lk, dk) = k.dims3()?;
    let (bv, lv, _) = v.dims3()?;
    if bk != b || dk != d || bv != b || lv != lk || (causal && lq > lk) {
        candle_core::bail!(
            "attention: q {:?}, k {:?}, v {:?} (causal: {causal})",
            q.shape(),
            k.shape(),
            v.shape()
        );
    }
    if cfg!(feature = "openblas") && fast_path(&[q, k, v]) && lq > 0 && lk > 0 && d > 0 {
        let op = Attention {
            scale: scale as f32,
            causal,
            probs: std::sync::Mutex::new(None),
        };
        return q
            .contiguous()?
            .apply_op3(&k.contiguous()?, &v.contiguous()?, op);
    }
    let att = batched_matmul_bt_scaled(q, k, scale)?;
    let att = if causal && lq > 1 {
        let past = lk - lq;
        let m: Vec<f32> = (0..lq)
            .flat_map(|i| (0..lk).map(move |j| if j > past + i { f32::NEG_INFINITY } else { 0.0 }))
            .collect();
        att.broadcast_add(&Tensor::from_vec(m, (lq, lk), q.device())?.to_dtype(att.dtype())?)?
    } else {
        att
    };
    batched_matmul(&softmax_last_dim_diff(&att)?, v)
}

/// The op of [`attention_diff`]; `probs` holds the forward pass's probabilities until the backward pass.
struct Attention {
    scale: f32,
    causal: bool,
    probs: std::sync::Mutex<Option<Vec<f32>>>,
}

impl Attention {
    /// Per batch element: the probabilities `softmax(scale · q kᵀ + mask)` into `probs` (`[batch, lq, lk]`)
    /// and, with `out`, the weighted values.
    fn forward(
        &self,
        (q, k, v): (&[f32], &[f32], &[f32]),
        (lq, lk, d, dv): (usize, usize, usize, usize),
        probs: &mut [f32],
        out: Option<&mut [f32]>,
    ) -> candle_core::Result<()> {
        let past = lk.saturating_sub(lq);
        let one = |i: usize, p: &mut [f32], o: Option<&mut [f32]>| {
            let (qi, ki) = (
                &q[i * lq * d..(i + 1) * lq * d],
                &k[i * lk * d..(i + 1) * lk * d],
            );
            sgemm_ld_t(
                (qi, d),
                (ki, d),
                (p, lk),
                (lq, lk, d),
                (false, true, self.scale, 0.0),
            )?;
            for (r, row) in p.chunks_mut(lk).enumerate() {
                if self.causal {
                    row[(past + r + 1).min(lk)..].fill(f32::NEG_INFINITY);
                }
                softmax_row(row);
            }
            match o {
                Some(o) => sgemm_ld_t(
                    (p, lk),
                    (&v[i * lk * dv..(i + 1) * lk * dv], dv),
                    (o, dv),
                    (lq, dv, lk),
                    (false, false, 1.0, 0.0),
                ),
                None => Ok(()),
            }
        };
        match out {
            Some(out) => probs
                .par_chunks_mut(lq * lk)
                .zip(out.par_chunks_mut(lq * dv))
                .enumerate()
                .try_for_each(|(i, (p, o))| one(i, p, Some(o))),
            None => probs
                .par_chunks_mut(lq * lk)
                .enumerate()
                .try_for_each(|(i, p)| one(i, p, None)),
        }
    }
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "fused-attention"
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
        let q = cpu_f32(s1, l1, "attention")?;
        let k = cpu_f32(s2, l2, "attention")?;
        let v = cpu_f32(s3, l3, "attention")?;
        let (b, lq, d) = l1.shape().dims3()?;
        let lk = l2.shape().dims3()?.1;
        let dv = l3.shape().dims3()?.2;
        let mut probs = vec![0f32; b * lq * lk];
        let mut out = vec![0f32; b * lq * dv];
        self.forward((q, k, v), (lq, lk, d, dv), &mut probs, Some(&mut out))?;
        *self
            .probs
            .lock()
            .map_err(|_| candle_core::Error::Msg("attention: poisoned lock".into()))? = Some(probs);
        Ok((CpuStorage::F32(out), Shape::from((b, lq, dv))))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (b, lq, d) = q.dims3()?;
        let (lk, dv) = (k.dim(1)?, v.dim(2)?);
        let data = |t: &Tensor| t.flatten_all()?.to_vec1::<f32>();
        let (qs, ks, vs, gs) = (data(q)?, data(k)?, data(v)?, data(grad)?);
        let kept = self
            .probs
            .lock()
            .map_err(|_| candle_core::Error::Msg("attention: poisoned lock".into()))?
            .take();
        let probs = match kept {
            Some(p) => p,
            None => {
                let mut p = vec![0f32; b * lq * lk];
                self.forward((&qs, &ks, &vs), (lq, lk, d, dv), &mut p, None)?;
                p
            }
        };
        let (mut dq, mut dk, mut dvs) = (
            vec![0f32; b * lq * d],
            vec![0f32; b * lk * d],
            vec![0f32; b * lk * dv],
        );
        let scale = self.scale;
        dq.par_chunks_mut(lq * d)
            .zip(dk.par_chunks_mut(lk * d))
            .zip(dvs.par_chunks_mut(lk * dv))
            .enumerate()
            .try_for_each(|(i, ((dqi, dki), dvi))| {
                let p = &probs[i * lq * lk..(i + 1) * lq * lk];
                let qi = &qs[i * lq * d..(i + 1) * lq * d];
                let ki = &ks[i * lk * d..(i + 1) * lk * d];
                let vi = &vs[i * lk * dv..(i + 1) * lk * dv];
                let gi = &gs[i * lq * dv..(i + 1) * lq * dv];
                // dv = pᵀ g, then dp = g vᵀ turned into ds in place.
                sgemm_ld_t(
                    (p, lk),
                    (gi, dv),
                    (dvi, dv),
                    (lk, dv, lq),
                    (true, false, 1.0, 0.0),
                )?;
                let mut ds = vec![0f32; lq * lk];
                sgemm_ld_t(
                    (gi, dv),
                    (vi, dv),
                    (&mut ds, lk),
                    (lq, lk, dv),
                    (false, true, 1.0, 0.0),
                )?;
                for (dsr, pr) in ds.chunks_mut(lk).zip(p.chunks(lk)) {
                    simd(|| {
                        let dot: f32 = dsr.iter().zip(pr).map(|(a, b)| a * b).sum();
                        for (x, &y) in dsr.iter_mut().zip(pr) {
                            *x = y * (*x - dot);
                        }
                    });
                }
                sgemm_ld_t(
                    (&ds, lk),
                    (ki, d),
                    (dqi, d),
                    (lq, d, lk),
                    (false, false, scale, 0.0),
                )?;
                sgemm_ld_t(
                    (&ds, lk),
                    (qi, d),
                    (dki, d),
                    (lk, d, lq),
                    (true, false, scale, 0.0),
                )
            })?;
        let make = |x: Vec<f32>, t: &Tensor| Tensor::from_vec(x, t.shape(), t.device());
        Ok((Some(make(dq, q)?), Some(make(dk, k)?), Some(make(dvs, v)?)))
    }
}

/// Rotate-half rotary embedding of `x: [batch, heads, tokens, head_dim]` with the tables `cos, sin: [batch,
/// tokens, head_dim / 2]` (or a batch of 1 shared by all), differentiable in `x` (the tables are constants):
/// `[x1 cos − x2 sin, x2 cos + x1 sin]`. On the f32 CPU path one fused pass forward and backward (the inverse
/// rotation, `sin → −sin`); elsewhere candle's ops.
pub fn rope_diff(x: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
    let (b, _, t, d) = x.dims4()?;
    let (cb, ct, half) = cos.dims3()?;
    if sin.dims() != cos.dims() || ct != t || 2 * half != d || (cb != b && cb != 1) {
        candle_core::bail!(
            "rotary embedding: x {:?}, cos {:?}, sin {:?}",
            x.shape(),
            cos.shape(),
            sin.shape()
        );
    }
    if fast_path(&[x, cos, sin]) {
        let table = |t: &Tensor| t.flatten_all()?.to_vec1::<f32>();
        x.contiguous()?.apply_op1(Rope {
            cos: table(cos)?,
            sin: table(sin)?,
            batched: cb != 1,
        })
    } else {
        let c = Tensor::cat(&[cos, cos], candle_core::D::Minus1)?.unsqueeze(1)?;
        let s = Tensor::cat(&[sin, sin], candle_core::D::Minus1)?.unsqueeze(1)?;
        let x1 = x.narrow(candle_core::D::Minus1, 0, half)?;
        let x2 = x.narrow(candle_core::D::Minus1, half, half)?;
        let rotated = Tensor::cat(&[&x2.neg()?, &x1], candle_core::D::Minus1)?;
        x.broadcast_mul(&c)? + rotated.broadcast_mul(&s)?
    }
}

/// [`rope_diff`]'s fused pass; the tables flattened, `batched`: one table per batch entry.
struct Rope {
    cos: Vec<f32>,
    sin: Vec<f32>,
    batched: bool,
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "fused-rope"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = cpu_f32(s, l, "rotary embedding")?;
        let (_, h, t, d) = l.shape().dims4()?;
        let half = d / 2;
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(d)
            .zip(x.par_chunks(d))
            .enumerate()
            .for_each(|(row, (y, x))| {
                let (bi, ti) = (row / (h * t), row % t);
                let at = (if self.batched { bi * t } else { 0 } + ti) * half;
                rope_row(x, &self.cos[at..at + half], &self.sin[at..at + half], y);
            });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        // A rotation's transpose is the rotation by the opposite angle.
        let inverse = Rope {
            cos: self.cos.clone(),
            sin: self.sin.iter().map(|s| -s).collect(),
            batched: self.batched,
        };
        Ok(Some(g.contiguous()?.apply_op1(inverse)?))
    }
}

/// Multi-head self-attention whose rows attend only within their segment (the images of a vision batch, as
/// the reference's `cu_seqlens`): `qkv: [rows, 3·dim]` (q, k, v side by side, heads contiguous within each),
/// rotary tables `cos, sin: [rows, head_dim / 2]` applied rotate-half style to q and k, segment bounds
/// `segments = [0, …, rows]`; returns `[rows, dim]` with heads side by side, scaled by `1/√head_dim`.
pub fn segment_attention(
    qkv: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    segments: &[usize],
    heads: usize,
) -> candle_core::Result<Tensor> {
    let (rows, width) = qkv.dims2()?;
    if heads == 0 || !width.is_multiple_of(3 * heads) || !(width / (3 * heads)).is_multiple_of(2) {
        candle_core::bail!(
            "attention: qkv width {width} is not 3 × {heads} heads × an even head size"
        );
    }
    let hd = width / 3 / heads;
    for t in [cos, sin] {
        if t.dims() != [rows, hd / 2] {
            candle_core::bail!(
                "attention: rotary table {:?}, expected [{rows}, {}]",
                t.shape(),
                hd / 2
            );
        }
    }
    if segments.first() != Some(&0)
        || segments.last() != Some(&rows)
        || segments.windows(2).any(|w| w[1] < w[0])
    {
        candle_core::bail!("attention: segments {segments:?} do not split 0..{rows}");
    }
    if uses_blas(qkv) && fast_path(&[cos, sin]) {
        qkv.contiguous()?.apply_op3_no_bwd(
            &cos.contiguous()?,
            &sin.contiguous()?,
            &SegmentAttention {
                heads,
                segments: segments.to_vec(),
            },
        )
    } else {
        segment_attention_unfused(qkv, cos, sin, segments, heads)
    }
}

/// [`segment_attention`] in candle's ops: the reference the fused kernel is tested against, and the path
/// for other devices and dtypes.
pub fn segment_attention_unfused(
    qkv: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    segments: &[usize],
    heads: usize,
) -> candle_core::Result<Tensor> {
    let (n, width) = qkv.dims2()?;
    let dim = width / 3;
    let hd = dim / heads;
    let qkv = qkv
        .reshape((n, 3, heads, hd))?
        .permute((1, 2, 0, 3))?
        .contiguous()?;
    let rope = |t: Tensor| candle_nn::rotary_emb::rope(&t.unsqueeze(0)?, cos, sin)?.squeeze(0);
    let q = rope(qkv.get(0)?)?;
    let k = rope(qkv.get(1)?)?;
    let v = qkv.get(2)?;
    let scale = 1.0 / (hd as f64).sqrt();
    let mut outs = Vec::with_capacity(segments.len().saturating_sub(1));
    for w in segments.windows(2) {
        let (s, len) = (w[0], w[1] - w[0]);
        if len == 0 {
            continue; // candle's softmax panics on empty rows
        }
        let att = batched_matmul_bt_scaled(&q.narrow(1, s, len)?, &k.narrow(1, s, len)?, scale)?;
        let att = candle_nn::ops::softmax_last_dim(&att)?;
        outs.push(batched_matmul(&att, &v.narrow(1, s, len)?)?);
    }
    Tensor::cat(&outs, 1)?.transpose(0, 1)?.reshape((n, dim))
}

struct SegmentAttention {
    heads: usize,
    segments: Vec<usize>,
}

/// Rotate-half rotary embedding of one head's row: `[x1 cos − x2 sin, x2 cos + x1 sin]`.
fn rope_row(x: &[f32], cos: &[f32], sin: &[f32], out: &mut [f32]) {
    let half = cos.len();
    let (x1, x2) = x.split_at(half);
    let (o1, o2) = out.split_at_mut(half);
    for i in 0..half {
        o1[i] = x1[i] * cos[i] - x2[i] * sin[i];
        o2[i] = x2[i] * cos[i] + x1[i] * sin[i];
    }
}

fn softmax_row(row: &mut [f32]) {
    simd(|| softmax_row_body(row))
}

#[inline(always)]
fn softmax_row_body(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    row.iter_mut().for_each(|v| *v = fast_exp(*v - max));
    let inv = 1.0 / row.iter().sum::<f32>();
    row.iter_mut().for_each(|v| *v *= inv);
}

impl CustomOp3 for SegmentAttention {
    fn name(&self) -> &'static str {
        "fused-segment-attention"
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
        let qkv = cpu_f32(s1, l1, "attention")?;
        let cos = cpu_f32(s2, l2, "attention")?;
        let sin = cpu_f32(s3, l3, "attention")?;
        let (rows, width) = l1.shape().dims2()?;
        let (heads, dim) = (self.heads, width / 3);
        let (hd, half) = (dim / heads, dim / heads / 2);
        let scale = 1.0 / (hd as f32).sqrt();
        let longest = self
            .segments
            .windows(2)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or(0);
        let mut out = vec![0f32; rows * dim];
        // Per segment: rotated q and k, head-major (`[heads, len, hd]`) so each head is one contiguous
        // matrix; the scores of one head at a time.
        let mut q = vec![0f32; longest * dim];
        let mut k = vec![0f32; longest * dim];
        let mut scores = vec![0f32; longest * longest];
        for w in self.segments.windows(2) {
            let (start, len) = (w[0], w[1] - w[0]);
            if len == 0 {
                continue;
            }
            q[..len * dim]
                .par_chunks_mut(len * hd)
                .zip(k[..len * dim].par_chunks_mut(len * hd))
                .enumerate()
                .for_each(|(h, (qh, kh))| {
                    for i in 0..len {
                        let r = start + i;
                        let base = r * width + h * hd;
                        let (c, s) = (
                            &cos[r * half..(r + 1) * half],
                            &sin[r * half..(r + 1) * half],
                        );
                        rope_row(&qkv[base..base + hd], c, s, &mut qh[i * hd..(i + 1) * hd]);
                        let kb = base + dim;
                        rope_row(&qkv[kb..kb + hd], c, s, &mut kh[i * hd..(i + 1) * hd]);
                    }
                });
            for h in 0..heads {
                let qh = &q[h * len * hd..(h + 1) * len * hd];
                let kh = &k[h * len * hd..(h + 1) * len * hd];
                let sc = &mut scores[..len * len];
                sgemm_ld(
                    (qh, hd),
                    (kh, hd),
                    (sc, len),
                    (len, len, hd),
                    (true, scale, 0.0),
                )?;
                sc.par_chunks_mut(len).for_each(softmax_row);
                // Weighted values straight from qkv's v columns into the output's head columns.
                let v = &qkv[start * width + 2 * dim + h * hd..];
                let o = &mut out[start * dim + h * hd..];
                sgemm_ld(
                    (sc, len),
                    (v, width),
                    (o, dim),
                    (len, hd, len),
                    (false, 1.0, 0.0),
                )?;
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((rows, dim))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap()
    }

    /// The fused training attention against candle's own ops (matmul, softmax, matmul): values and the
    /// gradients of q, k and v under a random upstream gradient, on sizes off any kernel's block size, with a
    /// value width other than the key width.
    #[test]
    fn fused_attention_matches_candle_with_gradients() {
        let dev = Device::Cpu;
        let cases = [
            (3, 37, 37, 16, 16, false),
            (2, 5, 5, 8, 12, false),
            (1, 1, 1, 4, 4, false),
            (2, 9, 9, 8, 8, true),
            (3, 6, 20, 8, 4, true),
            (2, 1, 7, 4, 4, true),
            (2, 4, 11, 8, 8, false),
        ];
        for (b, lq, lk, d, dv, causal) in cases {
            let var = |s: (usize, usize, usize)| {
                Var::from_tensor(&Tensor::randn(0f32, 1.0, s, &dev).unwrap()).unwrap()
            };
            let (q, k, v) = (var((b, lq, d)), var((b, lk, d)), var((b, lk, dv)));
            let w = Tensor::randn(0f32, 1.0, (b, lq, dv), &dev).unwrap();
            let scale = 1.0 / (d as f64).sqrt();
            let y =
                attention_diff(q.as_tensor(), k.as_tensor(), v.as_tensor(), scale, causal).unwrap();
            // The reference: candle's ops, the causal mask written out (query i is position lk − lq + i).
            let s = (q.as_tensor().matmul(&k.as_tensor().t().unwrap()).unwrap() * scale).unwrap();
            let mask: Vec<f32> = (0..lq)
                .flat_map(|i| {
                    (0..lk).map(move |j| {
                        if causal && j > lk - lq + i {
                            f32::NEG_INFINITY
                        } else {
                            0.0
                        }
                    })
                })
                .collect();
            let s = s
                .broadcast_add(&Tensor::from_vec(mask, (lq, lk), &dev).unwrap())
                .unwrap();
            let p = candle_nn::ops::softmax(&s, candle_core::D::Minus1).unwrap();
            let y_ref = p.matmul(v.as_tensor()).unwrap();
            assert!(max_diff(&y, &y_ref) < 1e-5, "{}", max_diff(&y, &y_ref));
            let g = (&y * &w).unwrap().sum_all().unwrap().backward().unwrap();
            let g_ref = (&y_ref * &w)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            for t in [&q, &k, &v] {
                let (a, r) = (
                    g.get(t.as_tensor()).unwrap(),
                    g_ref.get(t.as_tensor()).unwrap(),
                );
                assert!(
                    max_diff(a, r) < 1e-5,
                    "{:?}: {}",
                    (b, lq, lk, d, dv, causal),
                    max_diff(a, r)
                );
            }
        }
    }

    /// The training softmax and rotary embedding: values and gradients (under a random upstream gradient)
    /// against candle's composite ops and the rotate-half formula written out, with per-batch and shared
    /// tables and a non-contiguous input.
    #[test]
    fn differentiable_softmax_and_rope_match_candle() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 3.0, (2, 3, 5, 17), &dev).unwrap()).unwrap();
        let w = Tensor::randn(0f32, 1.0, (2, 3, 5, 17), &dev).unwrap();
        let grad = |y: &Tensor| {
            let g = (y * &w).unwrap().sum_all().unwrap().backward().unwrap();
            g.get(x.as_tensor()).unwrap().clone()
        };
        let y = softmax_last_dim_diff(x.as_tensor()).unwrap();
        let y_ref = candle_nn::ops::softmax(x.as_tensor(), candle_core::D::Minus1).unwrap();
        assert!(max_diff(&y, &y_ref) < 1e-6, "{}", max_diff(&y, &y_ref));
        let (g, g_ref) = (grad(&y), grad(&y_ref));
        assert!(max_diff(&g, &g_ref) < 1e-5, "{}", max_diff(&g, &g_ref));
        // A transposed (non-contiguous) input gives the same as its contiguous copy.
        let xt = x.as_tensor().transpose(2, 3).unwrap();
        let yt = softmax_last_dim_diff(&xt).unwrap();
        let yt_ref = softmax_last_dim_diff(&xt.contiguous().unwrap()).unwrap();
        assert_eq!(max_diff(&yt, &yt_ref), 0.0);

        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 3, 5, 8), &dev).unwrap()).unwrap();
        let w = Tensor::randn(0f32, 1.0, (2, 3, 5, 8), &dev).unwrap();
        let grad = |y: &Tensor| {
            let g = (y * &w).unwrap().sum_all().unwrap().backward().unwrap();
            g.get(x.as_tensor()).unwrap().clone()
        };
        for tables in [2, 1] {
            let angle = Tensor::randn(0f32, 2.0, (tables, 5, 4), &dev).unwrap();
            let (cos, sin) = (angle.cos().unwrap(), angle.sin().unwrap());
            let y = rope_diff(x.as_tensor(), &cos, &sin).unwrap();
            // By hand: [x1 cos − x2 sin, x2 cos + x1 sin].
            let t = x.as_tensor();
            let (x1, x2) = (t.narrow(3, 0, 4).unwrap(), t.narrow(3, 4, 4).unwrap());
            let (c, s) = (cos.unsqueeze(1).unwrap(), sin.unsqueeze(1).unwrap());
            let y1 = (x1.broadcast_mul(&c).unwrap() - x2.broadcast_mul(&s).unwrap()).unwrap();
            let y2 = (x2.broadcast_mul(&c).unwrap() + x1.broadcast_mul(&s).unwrap()).unwrap();
            let y_ref = Tensor::cat(&[y1, y2], 3).unwrap();
            assert!(max_diff(&y, &y_ref) < 1e-6, "{}", max_diff(&y, &y_ref));
            let (g, g_ref) = (grad(&y), grad(&y_ref));
            assert!(max_diff(&g, &g_ref) < 1e-6, "{}", max_diff(&g, &g_ref));
        }
        // Tables that do not fit are errors.
        let bad = Tensor::zeros((3, 5, 4), candle_core::DType::F32, &dev).unwrap();
        assert!(rope_diff(x.as_tensor(), &bad, &bad).is_err());
    }

    /// Values and gradients against candle's unfused ops, on sizes that straddle the chunk boundary, and a
    /// non-contiguous input.
    #[test]
    fn fused_activations_match_candle() {
        let dev = Device::Cpu;
        let shape = (3, CHUNK / 2 + 7);
        let x = Var::from_tensor(&(Tensor::randn(0f32, 3.0, shape, &dev).unwrap())).unwrap();
        let u = Var::from_tensor(&(Tensor::randn(0f32, 1.0, shape, &dev).unwrap())).unwrap();
        let (x, u) = (x.as_tensor(), u.as_tensor());
        let qg = quick_gelu(x).unwrap();
        let qg_ref = (x * candle_nn::ops::sigmoid(&(x * 1.702).unwrap()).unwrap()).unwrap();
        // Values reach ≈ 40, so a few f32 ulps are ≈ 1e-5.
        assert!(max_diff(&qg, &qg_ref) < 2e-5, "{}", max_diff(&qg, &qg_ref));
        let sm = silu_mul(x, u).unwrap();
        let sm_ref = (x.silu().unwrap() * u).unwrap();
        assert!(max_diff(&sm, &sm_ref) < 2e-5, "{}", max_diff(&sm, &sm_ref));
        // A loss that weights every element differently, so a wrong gradient cannot cancel out.
        let wts = Tensor::randn(0f32, 1.0, shape, &dev).unwrap();
        let loss = |y: &Tensor| (y * &wts).unwrap().sum_all().unwrap();
        let g = (loss(&qg) + loss(&sm)).unwrap().backward().unwrap();
        let gr = (loss(&qg_ref) + loss(&sm_ref)).unwrap().backward().unwrap();
        for t in [x, u] {
            let d = max_diff(g.get(t).unwrap(), gr.get(t).unwrap());
            assert!(d < 5e-5, "{d}");
        }
        // A transposed (non-contiguous) view gives the same values.
        let d = max_diff(&quick_gelu(&x.t().unwrap()).unwrap(), &qg.t().unwrap());
        assert_eq!(d, 0.0);
        let d = max_diff(
            &silu_mul(&x.t().unwrap(), &u.t().unwrap()).unwrap(),
            &sm.t().unwrap(),
        );
        assert_eq!(d, 0.0);
        // A closed form: quick-GELU(0) = 0, quick-GELU(x) → x for large x.
        let pts = Tensor::new(&[0f32, 20.0, -20.0], &dev).unwrap();
        let v: Vec<f32> = quick_gelu(&pts).unwrap().to_vec1().unwrap();
        assert!(v[0] == 0.0 && (v[1] - 20.0).abs() < 1e-6 && v[2].abs() < 1e-6);
    }

    /// The fused attention against the same computation in candle's ops, on segments of unequal length
    /// (one empty) and a head size whose half is not a multiple of a vector width.
    #[test]
    fn segment_attention_matches_candle() {
        let dev = Device::Cpu;
        let (heads, hd) = (3, 10);
        let segments = [0, 7, 7, 20, 21];
        let rows = 21;
        let qkv = Tensor::randn(0f32, 1.0, (rows, 3 * heads * hd), &dev).unwrap();
        let ang = Tensor::randn(0f32, 2.0, (rows, hd / 2), &dev).unwrap();
        let (cos, sin) = (ang.cos().unwrap(), ang.sin().unwrap());
        let got = segment_attention(&qkv, &cos, &sin, &segments, heads).unwrap();
        let want = segment_attention_unfused(&qkv, &cos, &sin, &segments, heads).unwrap();
        assert_eq!(got.dims(), &[rows, heads * hd]);
        let d = max_diff(&got, &want);
        assert!(d < 1e-5, "{d}");
        // Attention stays within a segment: changing the last row's values changes no other segment.
        let mut data: Vec<f32> = qkv.flatten_all().unwrap().to_vec1().unwrap();
        let w = 3 * heads * hd;
        data[(rows - 1) * w + 2 * heads * hd] += 5.0;
        let qkv2 = Tensor::from_vec(data, (rows, w), &dev).unwrap();
        let got2 = segment_attention(&qkv2, &cos, &sin, &segments, heads).unwrap();
        assert_eq!(
            max_diff(
                &got2.narrow(0, 0, 20).unwrap(),
                &got.narrow(0, 0, 20).unwrap()
            ),
            0.0
        );
        assert!(max_diff(&got2, &got) > 1.0);
        // The standalone softmax against candle's, on masked (−∞) entries too.
        let mut sc: Vec<f32> = Tensor::randn(0f32, 4.0, (5, 9), &dev)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        sc[3] = f32::NEG_INFINITY;
        let sc = Tensor::from_vec(sc, (5, 9), &dev).unwrap();
        let p = softmax_last_dim(&sc).unwrap();
        assert!(max_diff(&p, &candle_nn::ops::softmax_last_dim(&sc).unwrap()) < 1e-6);
        assert_eq!(
            p.get(0)
                .unwrap()
                .get(3)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
            0.0
        );
        // Bad shapes and bounds are errors, not panics.
        assert!(segment_attention(&qkv, &cos, &sin, &[0, 5], heads).is_err());
        assert!(segment_attention(&qkv, &cos, &sin, &[0, 9, 5, 21], heads).is_err());
        assert!(segment_attention(&qkv, &cos, &sin, &segments, 4).is_err());
        assert!(
            segment_attention(&qkv, &cos.narrow(0, 0, 20).unwrap(), &sin, &segments, heads)
                .is_err()
        );
    }

    /// `fast_exp` against f64's `exp` over the range softmax and the activations use, and at the edges.
    #[test]
    fn fast_exp_is_accurate() {
        let mut worst = 0f64;
        for i in 0..=2_000_000 {
            let x = -87.0 + 175.0 * i as f32 / 2_000_000.0;
            if x >= 88.3 {
                continue;
            }
            let want = (x as f64).exp();
            let got = fast_exp(x) as f64;
            worst = worst.max((got - want).abs() / want);
        }
        println!("fast_exp: worst relative error {worst:.3e}");
        assert!(worst < 3e-7, "relative error {worst}");
        assert_eq!(fast_exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(fast_exp(-100.0), 0.0);
        assert_eq!(fast_exp(0.0), 1.0);
        assert!(fast_exp(f32::NAN).is_nan());
        assert_eq!(fast_exp(100.0), f32::INFINITY);
        // The vectorized loops use it too: a softmax row sums to 1 and matches f64.
        let mut row: Vec<f32> = (0..37).map(|i| (i as f32 * 0.7).sin() * 9.0).collect();
        let want: Vec<f64> = {
            let m = row.iter().fold(f32::MIN, |a, &b| a.max(b)) as f64;
            let e: Vec<f64> = row.iter().map(|&v| (v as f64 - m).exp()).collect();
            let s: f64 = e.iter().sum();
            e.iter().map(|v| v / s).collect()
        };
        softmax_row(&mut row);
        for (g, w) in row.iter().zip(&want) {
            assert!((*g as f64 - w).abs() < 1e-6 * w.max(1e-3), "{g} vs {w}");
        }
    }
}

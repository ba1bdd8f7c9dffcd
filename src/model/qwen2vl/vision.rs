//! The Qwen2-VL vision tower: Conv3d patch embedding (as a matmul), 2D rotary embeddings, pre-norm transformer
//! blocks whose attention stays inside each image, and the 2×2 patch merger.
//!
//! # Which attention kernel each device runs ([`VisionAttention::Auto`], the default)
//! | device, dtype, mode | kernel |
//! |---|---|
//! | CPU, f32, built with `openblas`, inference | the fused CPU kernel [`segment_attention`]: one image and head at a time, scores kept in cache. At 2B widths and six 448 × 252 views it took 0.18 s a block where the batched path took 0.37 s and the per-image candle ops 0.34 s (`cargo bench --bench profile`, 2026-12-07, the shared 2-core machine), so the CPU keeps it |
//! | CUDA, Metal, any dtype; the CPU in bf16/f16 or without `openblas`; every device when the tower trains (`diff`) | [`segment_attention_batched`]: all images and heads in one batched product per distinct image size, in candle's ops |
//!
//! [`segment_attention_unfused`] (one image after another in candle's ops) is the per-image reference the other
//! two are tested against ([`VisionAttention::PerImage`]); its rotary kernel and softmax have no backward pass,
//! so when the tower trained through it only the `v` third of `qkv` got a gradient. The batched path with
//! `diff` is differentiable throughout.
//!
//! No flash-attention kernel is used: `candle-flash-attn` builds about thirty CUDA files (with CUTLASS) through
//! `nvcc` in its build script, on top of candle's own kernels, which already take about 28 minutes on two cores
//! (`scripts/gpu_check.sh`), and it covers only f16/bf16; so it does not build without a CUDA toolkit and was
//! not tried.
use candle_core::{DType, Device, IndexOp, Module, Tensor};
use candle_nn::{LayerNorm, Linear, VarBuilder};

use super::config::VisionConfig;
use super::preprocess::GridThw;
use super::tables::TableCache;
use super::weights::{layer_norm, linear, tensor};
use crate::model::cpu::fused::{
    attention_diff, quick_gelu, rope_diff, segment_attention, segment_attention_unfused,
    softmax_last_dim, softmax_last_dim_diff,
};
use crate::model::cpu::linear_2d;
use crate::model::cpu::sgemm::{batched_matmul, batched_matmul_bt_scaled, linear_xwt, uses_blas};
use crate::model::lora::LoraLinear;
use crate::{Error, Result};

pub(crate) struct Block {
    norm1: LayerNorm,
    norm2: LayerNorm,
    /// Attention input projection (LoRA target `qkv`).
    pub(crate) qkv: LoraLinear,
    /// Attention output projection (LoRA target `proj`).
    pub(crate) proj: LoraLinear,
    fc1: Linear,
    fc2: Linear,
    num_heads: usize,
}

/// The vision tower's attention kernel (see the module's table for what [`VisionAttention::Auto`] picks).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum VisionAttention {
    /// Per device: the fused CPU kernel for f32 CPU inference with OpenBLAS, the batched path everywhere else.
    #[default]
    Auto,
    /// The fused CPU kernel [`segment_attention`] (which itself falls back to the per-image candle ops off the
    /// f32 OpenBLAS CPU path); no backward pass.
    Fused,
    /// [`segment_attention_batched`] on every device (differentiable when the tower trains).
    Batched,
    /// [`segment_attention_unfused`]: one image after another in candle's ops, the reference; its rotary
    /// embedding and softmax have no backward pass, so it is no path for training.
    PerImage,
}

impl Block {
    fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        cu: &[usize],
        diff: bool,
        path: VisionAttention,
    ) -> candle_core::Result<Tensor> {
        let h = norm(&self.norm1, x, diff)?;
        let qkv = self.qkv.forward_t(&h, diff)?;
        let heads = self.num_heads;
        let o = match path {
            VisionAttention::Auto if !diff && uses_blas(&qkv) => {
                segment_attention(&qkv, cos, sin, cu, heads)?
            }
            VisionAttention::Auto | VisionAttention::Batched => {
                segment_attention_batched(&qkv, cos, sin, cu, heads, diff)?
            }
            VisionAttention::Fused => segment_attention(&qkv, cos, sin, cu, heads)?,
            VisionAttention::PerImage => segment_attention_unfused(&qkv, cos, sin, cu, heads)?,
        };
        let x = (x + self.proj.forward_t(&o, diff)?)?;
        let h = norm(&self.norm2, &x, diff)?;
        let h = linear_2d(&self.fc2, &quick_gelu(&linear_2d(&self.fc1, &h)?)?)?;
        x + h
    }
}

/// Score elements (`images × heads × len × len`) one batched product may hold: images of one size beyond it
/// are split into several products, so large images cost no more memory than about a gigabyte of f32 scores
/// (or one image's, where that alone is larger).
const MAX_BATCH_SCORES: usize = 1 << 28;

/// The vision tower's attention with all images at once: the same arguments and result as
/// [`segment_attention`] (`qkv: [rows, 3·dim]`, rotary `cos, sin: [rows, head_dim / 2]`, `segments = [0, …,
/// rows]`, heads side by side in the `[rows, dim]` output), in candle's ops, so it runs on every device.
///
/// Segments are grouped by length: the segments of one length (a camera rig's six views, all temporal frames
/// of an image) become one `[segments × heads, len, head_dim]` batch (each segment with its own rotary table),
/// and each batch is one scaled `q kᵀ` product, one softmax over the last dimension (in f32
/// whatever the dtype, as the reference computes it) and one product with `v`. Grouping is exact where a
/// padded batch with a block-diagonal mask would compute and mask `max_len² − len²` scores per image: a rig
/// with one image size is a single batch, and images of different sizes cost one batch per distinct size
/// (split further only past [`MAX_BATCH_SCORES`]). Empty segments are skipped.
///
/// With `diff` every op has a backward pass ([`rope_diff`], and in f32 [`attention_diff`]: scores, softmax and
/// weighted values as one op on the CPU with OpenBLAS; [`softmax_last_dim_diff`] between the products in other
/// dtypes); without it candle's `rope` kernel and [`softmax_last_dim`].
pub fn segment_attention_batched(
    qkv: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    segments: &[usize],
    heads: usize,
    diff: bool,
) -> candle_core::Result<Tensor> {
    batched_attention(qkv, cos, sin, segments, heads, diff, MAX_BATCH_SCORES)
}

fn batched_attention(
    qkv: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    segments: &[usize],
    heads: usize,
    diff: bool,
    max_scores: usize,
) -> candle_core::Result<Tensor> {
    let (rows, width) = qkv.dims2()?;
    if heads == 0 || !width.is_multiple_of(3 * heads) || !(width / (3 * heads)).is_multiple_of(2) {
        candle_core::bail!(
            "attention: qkv width {width} is not 3 × {heads} heads × an even head size"
        );
    }
    let (dim, hd) = (width / 3, width / 3 / heads);
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
    let dtype = qkv.dtype();
    let qkv = qkv.reshape((rows, 3, heads, hd))?;
    let (cos, sin) = (cos.to_dtype(dtype)?, sin.to_dtype(dtype)?);
    // Segments by length, in order of first appearance; each group split to fit the score budget.
    let mut groups: Vec<(usize, Vec<usize>)> = Vec::new();
    for w in segments.windows(2) {
        let (start, len) = (w[0], w[1] - w[0]);
        if len == 0 {
            continue;
        }
        match groups.iter_mut().find(|(l, _)| *l == len) {
            Some((_, starts)) => starts.push(start),
            None => groups.push((len, vec![start])),
        }
    }
    let scale = 1.0 / (hd as f64).sqrt();
    // Output pieces `(first row, [rows of the piece, dim])`, put back in row order at the end.
    let mut pieces: Vec<(usize, Tensor)> = Vec::new();
    for (len, starts) in &groups {
        let per_batch = (max_scores / (heads * len * len).max(1)).max(1);
        for chunk in starts.chunks(per_batch) {
            let count = chunk.len();
            let consecutive = chunk.windows(2).all(|w| w[1] == w[0] + len);
            // The chunk's rows of `t` (`[rows, …]`), its segments side by side.
            let rows_of = |t: &Tensor| -> candle_core::Result<Tensor> {
                if consecutive {
                    t.narrow(0, chunk[0], count * len)
                } else {
                    let parts = chunk
                        .iter()
                        .map(|&s| t.narrow(0, s, *len))
                        .collect::<candle_core::Result<Vec<_>>>()?;
                    Tensor::cat(&parts, 0)
                }
            };
            // q, k or v as `[count, heads, len, head_dim]`.
            let chunk_qkv = rows_of(&qkv)?.reshape((count, *len, 3, heads, hd))?;
            let part = |p: usize| -> candle_core::Result<Tensor> {
                chunk_qkv.i((.., .., p))?.transpose(1, 2)?.contiguous()
            };
            // Rotary tables `[count, len, head_dim / 2]`, one per image (candle's rope takes a batch of them).
            let (c, s) = (
                rows_of(&cos)?.reshape((count, *len, hd / 2))?,
                rows_of(&sin)?.reshape((count, *len, hd / 2))?,
            );
            let rotate = |t: Tensor| -> candle_core::Result<Tensor> {
                if diff {
                    rope_diff(&t, &c, &s)
                } else {
                    candle_nn::rotary_emb::rope(&t, &c.contiguous()?, &s.contiguous()?)
                }
            };
            let flat = |t: Tensor| t.reshape((count * heads, *len, hd));
            let qb = flat(rotate(part(0)?)?)?;
            let kb = flat(rotate(part(1)?)?)?;
            let vb = flat(part(2)?)?;
            let o = if diff && dtype == DType::F32 {
                attention_diff(&qb, &kb, &vb, scale, false)?
            } else {
                let att = batched_matmul_bt_scaled(&qb, &kb, scale)?.to_dtype(DType::F32)?;
                let att = if diff {
                    softmax_last_dim_diff(&att)?
                } else {
                    softmax_last_dim(&att)?
                };
                batched_matmul(&att.to_dtype(dtype)?, &vb)?
            };
            let o = o
                .reshape((count, heads, *len, hd))?
                .transpose(1, 2)?
                .reshape((count * len, dim))?;
            if consecutive {
                pieces.push((chunk[0], o));
            } else {
                for (i, &s) in chunk.iter().enumerate() {
                    pieces.push((s, o.narrow(0, i * len, *len)?));
                }
            }
        }
    }
    pieces.sort_by_key(|(s, _)| *s);
    match pieces.len() {
        0 => Tensor::zeros((rows, dim), dtype, qkv.device()),
        1 => Ok(pieces.remove(0).1),
        _ => Tensor::cat(&pieces.iter().map(|(_, t)| t).collect::<Vec<_>>(), 0),
    }
}

/// A LayerNorm; with `diff` in candle's differentiable ops (its fused kernel has no backward pass).
fn norm(ln: &LayerNorm, x: &Tensor, diff: bool) -> candle_core::Result<Tensor> {
    match (diff, ln.bias()) {
        (true, Some(b)) => candle_nn::ops::layer_norm_slow(x, ln.weight(), b, ln.eps() as f32),
        _ => ln.forward(x),
    }
}

/// The vision tower with its merger; output rows are image tokens in the text model's width.
pub struct VisionModel {
    patch_w: Tensor,
    pub(crate) blocks: Vec<Block>,
    ln_q: LayerNorm,
    mlp0: Linear,
    mlp2: Linear,
    cfg: VisionConfig,
    attention: VisionAttention,
    /// Rotary cos/sin per (image grids, dtype), on the device.
    rotary_cache: TableCache<(Vec<GridThw>, DType)>,
}

impl VisionModel {
    /// Loads the weights under `visual.` (pass the builder already prefixed).
    pub fn load(vb: VarBuilder, cfg: &VisionConfig, src: &std::path::Path) -> Result<Self> {
        let c = cfg;
        let k = c.in_channels * c.temporal_patch_size * c.patch_size * c.patch_size;
        let pw = tensor(
            &vb,
            (
                c.embed_dim,
                c.in_channels,
                c.temporal_patch_size,
                c.patch_size,
                c.patch_size,
            ),
            "patch_embed.proj.weight",
            src,
        )?;
        let patch_w = pw.reshape((c.embed_dim, k))?;
        let mut blocks = Vec::with_capacity(c.depth);
        for i in 0..c.depth {
            let b = vb.pp(format!("blocks.{i}"));
            blocks.push(Block {
                norm1: layer_norm(&b.pp("norm1"), c.embed_dim, 1e-6, src)?,
                norm2: layer_norm(&b.pp("norm2"), c.embed_dim, 1e-6, src)?,
                qkv: LoraLinear::new(linear(
                    &b.pp("attn.qkv"),
                    c.embed_dim,
                    3 * c.embed_dim,
                    true,
                    src,
                )?),
                proj: LoraLinear::new(linear(
                    &b.pp("attn.proj"),
                    c.embed_dim,
                    c.embed_dim,
                    true,
                    src,
                )?),
                fc1: linear(&b.pp("mlp.fc1"), c.embed_dim, c.mlp_hidden(), true, src)?,
                fc2: linear(&b.pp("mlp.fc2"), c.mlp_hidden(), c.embed_dim, true, src)?,
                num_heads: c.num_heads,
            });
        }
        let m2 = c.embed_dim * c.spatial_merge_size * c.spatial_merge_size;
        Ok(Self {
            patch_w,
            blocks,
            ln_q: layer_norm(&vb.pp("merger.ln_q"), c.embed_dim, 1e-6, src)?,
            mlp0: linear(&vb.pp("merger.mlp.0"), m2, m2, true, src)?,
            mlp2: linear(&vb.pp("merger.mlp.2"), m2, c.hidden_size, true, src)?,
            cfg: c.clone(),
            attention: VisionAttention::Auto,
            rotary_cache: TableCache::default(),
        })
    }

    /// The attention kernel the blocks run ([`VisionAttention::Auto`] unless set).
    pub fn attention(&self) -> VisionAttention {
        self.attention
    }

    /// Chooses the attention kernel (tests and benchmarks compare them; [`VisionAttention::Auto`] is the one
    /// to run).
    pub fn set_attention(&mut self, path: VisionAttention) {
        self.attention = path;
    }

    /// cos/sin tables `[patches, head_dim / 2]` (height frequencies, then width frequencies) of the 2D rotary
    /// embedding, rows in the processor's merge order.
    fn rotary(&self, grids: &[GridThw], device: &Device, dtype: DType) -> Result<(Tensor, Tensor)> {
        let hd = self.cfg.head_dim();
        let quarter = hd / 4; // frequencies per axis
        let m = self.cfg.spatial_merge_size;
        let inv: Vec<f32> = (0..quarter)
            .map(|i| 1.0 / 10000f32.powf((2 * i) as f32 / (hd / 2) as f32))
            .collect();
        let n: usize = grids.iter().map(GridThw::patches).sum();
        let mut cos = Vec::with_capacity(n * hd);
        let mut sin = Vec::with_capacity(n * hd);
        let mut ang = vec![0f32; hd / 2];
        for g in grids {
            for _ in 0..g.t {
                for bh in 0..g.h / m {
                    for bw in 0..g.w / m {
                        for mh in 0..m {
                            for mw in 0..m {
                                let (y, x) = ((bh * m + mh) as f32, (bw * m + mw) as f32);
                                for i in 0..quarter {
                                    // [h freqs, w freqs]; rotate-half applies them to both halves.
                                    ang[i] = y * inv[i];
                                    ang[quarter + i] = x * inv[i];
                                }
                                cos.extend(ang.iter().map(|a| a.cos()));
                                sin.extend(ang.iter().map(|a| a.sin()));
                            }
                        }
                    }
                }
            }
        }
        let cos = Tensor::from_vec(cos, (n, hd / 2), device)?.to_dtype(dtype)?;
        let sin = Tensor::from_vec(sin, (n, hd / 2), device)?.to_dtype(dtype)?;
        Ok((cos, sin))
    }

    /// Encodes the patches of several images in one pass: `[sum patches, C*T*P*P]` → `[sum merged tokens, hidden]`.
    pub fn forward(&self, pixel_values: &Tensor, grids: &[GridThw]) -> Result<Tensor> {
        self.forward_t(pixel_values, grids, false)
    }

    /// [`VisionModel::forward`]; with `diff` only gradient-capable ops are used (training the tower).
    pub fn forward_t(
        &self,
        pixel_values: &Tensor,
        grids: &[GridThw],
        diff: bool,
    ) -> Result<Tensor> {
        let n: usize = grids.iter().map(GridThw::patches).sum();
        let m2 = self.cfg.spatial_merge_size * self.cfg.spatial_merge_size;
        for g in grids {
            if g.h % self.cfg.spatial_merge_size != 0 || g.w % self.cfg.spatial_merge_size != 0 {
                return Err(Error::invalid(
                    "image grid",
                    format!("{g:?} not divisible by the merge size"),
                ));
            }
        }
        let (rows, k) = pixel_values.dims2()?;
        if rows != n || k != self.patch_w.dim(1)? {
            return Err(Error::invalid(
                "pixel values",
                format!(
                    "shape {:?} does not match grids ({n} patches × {})",
                    pixel_values.shape(),
                    self.patch_w.dim(1)?
                ),
            ));
        }
        let dtype = self.patch_w.dtype();
        let x = linear_xwt(&pixel_values.to_dtype(dtype)?, &self.patch_w)?;
        let rot = self
            .rotary_cache
            .get_or_build((grids.to_vec(), dtype), || {
                let (cos, sin) = self.rotary(grids, x.device(), dtype)?;
                Ok(vec![cos, sin])
            })?;
        let (cos, sin) = (&rot[0], &rot[1]);
        // Attention segments: one per temporal frame of each image.
        let mut cu = vec![0usize];
        for g in grids {
            for _ in 0..g.t {
                cu.push(cu.last().copied().unwrap_or(0) + g.h * g.w);
            }
        }
        let mut x = x;
        for b in &self.blocks {
            x = b.forward(&x, cos, sin, &cu, diff, self.attention)?;
        }
        let x = norm(&self.ln_q, &x, diff)?.reshape((n / m2, self.cfg.embed_dim * m2))?;
        let x = linear_2d(&self.mlp2, &linear_2d(&self.mlp0, &x)?.gelu_erf()?)?;
        Ok(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Var, D};

    /// `[−x2, x1]` of the halves of the last dimension (the reference's rotate-half).
    fn rotate_half(x: &Tensor) -> candle_core::Result<Tensor> {
        let d = x.dim(D::Minus1)?;
        let x1 = x.narrow(D::Minus1, 0, d / 2)?;
        let x2 = x.narrow(D::Minus1, d / 2, d - d / 2)?;
        Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap()
    }

    fn inputs(rows: usize, heads: usize, hd: usize) -> (Tensor, Tensor, Tensor) {
        let dev = Device::Cpu;
        let qkv = Tensor::randn(0f32, 1.0, (rows, 3 * heads * hd), &dev).unwrap();
        let ang = Tensor::randn(0f32, 2.0, (rows, hd / 2), &dev).unwrap();
        (qkv, ang.cos().unwrap(), ang.sin().unwrap())
    }

    /// The batched path against the per-image reference, with and without `diff`, on segments of unequal
    /// lengths whose equal-length ones are not neighbours (lengths 7, 13, 7, 0, 5, 13, 7), under score budgets
    /// that make one batch per length, one per segment, and chunks of two.
    #[test]
    fn batched_matches_per_image() {
        let (heads, hd) = (3, 10);
        let segments = [0, 7, 20, 27, 27, 32, 45, 52];
        let rows = 52;
        let (qkv, cos, sin) = inputs(rows, heads, hd);
        let want = segment_attention_unfused(&qkv, &cos, &sin, &segments, heads).unwrap();
        for budget in [MAX_BATCH_SCORES, 1, 2 * heads * 13 * 13] {
            for diff in [false, true] {
                let got =
                    batched_attention(&qkv, &cos, &sin, &segments, heads, diff, budget).unwrap();
                assert_eq!(got.dims(), &[rows, heads * hd]);
                let d = max_diff(&got, &want);
                assert!(d < 1e-5, "budget {budget}, diff {diff}: {d}");
            }
        }
        // One length (a rig of equal views): a single batch, no reassembly.
        let segments = [0, 13, 26, 39, 52];
        let want = segment_attention_unfused(&qkv, &cos, &sin, &segments, heads).unwrap();
        let got = segment_attention_batched(&qkv, &cos, &sin, &segments, heads, false).unwrap();
        assert!(max_diff(&got, &want) < 1e-5);
        // Bad shapes and bounds are errors, not panics; all-empty input gives an empty output.
        let batched =
            |s: &[usize], h: usize| segment_attention_batched(&qkv, &cos, &sin, s, h, false);
        assert!(batched(&[0, 5], heads).is_err());
        assert!(batched(&[0, 9, 5, 52], heads).is_err());
        assert!(batched(&segments, 4).is_err());
        let (e, ec, es) = inputs(0, heads, hd);
        let out = segment_attention_batched(&e, &ec, &es, &[0, 0], heads, false).unwrap();
        assert_eq!(out.dims(), &[0, heads * hd]);
    }

    /// In bf16 the batched path stays within bf16's precision of the f32 reference.
    #[test]
    fn batched_bf16_close_to_f32() {
        let (heads, hd) = (2, 16);
        let segments = [0, 24, 40, 64];
        let (qkv, cos, sin) = inputs(64, heads, hd);
        let want = segment_attention_unfused(&qkv, &cos, &sin, &segments, heads).unwrap();
        let b = |t: &Tensor| t.to_dtype(DType::BF16).unwrap();
        let got = segment_attention_batched(&b(&qkv), &b(&cos), &b(&sin), &segments, heads, false)
            .unwrap();
        assert_eq!(got.dtype(), DType::BF16);
        let d = max_diff(&got.to_dtype(DType::F32).unwrap(), &want);
        assert!(d < 3e-2, "{d}");
    }

    /// With `diff` the batched path's gradients equal those of per-image attention written in differentiable
    /// candle ops, and reach q and k (the per-image reference's rotary kernel and softmax have no backward
    /// pass, so its gradient reaches only v).
    #[test]
    fn batched_gradients() {
        let (heads, hd) = (2, 8);
        let segments = [0, 6, 15, 21];
        let rows = 21;
        let (qkv0, cos, sin) = inputs(rows, heads, hd);
        let qkv = Var::from_tensor(&qkv0).unwrap();
        let wts = Tensor::randn(0f32, 1.0, (rows, heads * hd), &Device::Cpu).unwrap();
        let loss = |y: &Tensor| (y * &wts).unwrap().sum_all().unwrap();
        let got =
            segment_attention_batched(qkv.as_tensor(), &cos, &sin, &segments, heads, true).unwrap();
        let g = loss(&got).backward().unwrap();
        let g = g.get(qkv.as_tensor()).unwrap();
        // Reference: per segment and head, every op differentiable.
        let x = qkv.as_tensor().reshape((rows, 3, heads, hd)).unwrap();
        let c = Tensor::cat(&[&cos, &cos], 1).unwrap().unsqueeze(1).unwrap();
        let s = Tensor::cat(&[&sin, &sin], 1).unwrap().unsqueeze(1).unwrap();
        let rot = |t: Tensor| {
            (t.broadcast_mul(&c).unwrap() + rotate_half(&t).unwrap().broadcast_mul(&s).unwrap())
                .unwrap()
        };
        let (q, k) = (rot(x.i((.., 0)).unwrap()), rot(x.i((.., 1)).unwrap()));
        let v = x.i((.., 2)).unwrap();
        let mut outs = vec![];
        for w in segments.windows(2) {
            let seg = |t: &Tensor| {
                t.narrow(0, w[0], w[1] - w[0])
                    .unwrap()
                    .transpose(0, 1)
                    .unwrap()
            };
            let att =
                (seg(&q).matmul(&seg(&k).t().unwrap()).unwrap() / (hd as f64).sqrt()).unwrap();
            let att = candle_nn::ops::softmax(&att, D::Minus1).unwrap();
            outs.push(att.matmul(&seg(&v)).unwrap().transpose(0, 1).unwrap());
        }
        let want = Tensor::cat(&outs, 0)
            .unwrap()
            .reshape((rows, heads * hd))
            .unwrap();
        assert!(max_diff(&got, &want) < 1e-5);
        let gw = loss(&want).backward().unwrap();
        let gw = gw.get(qkv.as_tensor()).unwrap();
        let d = max_diff(g, gw);
        assert!(d < 1e-4, "{d}");
        let q_grad: f32 = g
            .narrow(1, 0, heads * hd)
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!(q_grad > 1e-3, "{q_grad}");
    }
}

//! The Qwen2-VL vision tower: Conv3d patch embedding (as a matmul), 2D rotary embeddings, pre-norm transformer
//! blocks whose attention stays inside each image, and the 2×2 patch merger.
use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{LayerNorm, Linear, VarBuilder};

use super::config::VisionConfig;
use super::preprocess::GridThw;
use super::weights::{layer_norm, linear, tensor};
use crate::model::cpu::fused::{quick_gelu, segment_attention, segment_attention_unfused};
use crate::model::cpu::linear_2d;
use crate::model::cpu::sgemm::linear_xwt;
use crate::model::lora::LoraLinear;
use crate::{Error, Result};

/// Swaps the two halves of the last dimension, negating the second: `[-x2, x1]`.
pub(crate) fn rotate_half(x: &Tensor) -> candle_core::Result<Tensor> {
    let d = x.dim(D::Minus1)?;
    let x1 = x.narrow(D::Minus1, 0, d / 2)?;
    let x2 = x.narrow(D::Minus1, d / 2, d - d / 2)?;
    Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)
}

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

impl Block {
    fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        cu: &[usize],
        diff: bool,
    ) -> candle_core::Result<Tensor> {
        let h = norm(&self.norm1, x, diff)?;
        // Rotary embedding, scores and weighted values per image and head in one fused op (candle's ops
        // off the f32 CPU path, and when the tower trains: the fused op has no backward pass).
        let qkv = self.qkv.forward_t(&h, diff)?;
        let o = if diff {
            segment_attention_unfused(&qkv, cos, sin, cu, self.num_heads)?
        } else {
            segment_attention(&qkv, cos, sin, cu, self.num_heads)?
        };
        let x = (x + self.proj.forward_t(&o, diff)?)?;
        let h = norm(&self.norm2, &x, diff)?;
        let h = linear_2d(&self.fc2, &quick_gelu(&linear_2d(&self.fc1, &h)?)?)?;
        x + h
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
        })
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
        let (cos, sin) = self.rotary(grids, x.device(), dtype)?;
        // Attention segments: one per temporal frame of each image.
        let mut cu = vec![0usize];
        for g in grids {
            for _ in 0..g.t {
                cu.push(cu.last().copied().unwrap_or(0) + g.h * g.w);
            }
        }
        let mut x = x;
        for b in &self.blocks {
            x = b.forward(&x, &cos, &sin, &cu, diff)?;
        }
        let x = norm(&self.ln_q, &x, diff)?.reshape((n / m2, self.cfg.embed_dim * m2))?;
        let x = linear_2d(&self.mlp2, &linear_2d(&self.mlp0, &x)?.gelu_erf()?)?;
        Ok(x)
    }
}

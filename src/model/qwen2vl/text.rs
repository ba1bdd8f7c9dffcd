//! The Qwen2 text decoder with multimodal rotary embeddings (M-RoPE), grouped-query attention, an explicit
//! KV cache, and LoRA-capable attention projections. Every forward takes a `diff` flag: `false` uses candle's
//! fused kernels (fast, no gradients), `true` uses gradient-capable ops only (for training).
use candle_core::{DType, Device, Tensor};
use candle_nn::{Embedding, Linear, VarBuilder};

use super::config::TextConfig;
use super::tables::TableCache;
use super::weights::{linear, tensor};
use super::Positions;
use crate::model::cpu::fused::{attention_diff, rope_diff, silu_mul};
use crate::model::cpu::linear_2d;
use crate::model::cpu::sgemm::{batched_matmul, batched_matmul_bt_scaled};
use crate::model::lora::LoraLinear;
use crate::{Error, Result};

/// Key/value tensors of every layer for the tokens seen so far (`[batch, kv_heads, seq, head_dim]`).
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
}

impl KvCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }
    /// Number of cached positions (0 when empty).
    pub fn len(&self) -> usize {
        self.layers
            .first()
            .and_then(|l| l.as_ref())
            .and_then(|(k, _)| k.dim(2).ok())
            .unwrap_or(0)
    }
    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Batch size of the cached tensors, if any.
    pub fn batch(&self) -> Option<usize> {
        self.layers
            .first()
            .and_then(|l| l.as_ref())
            .and_then(|(k, _)| k.dim(0).ok())
    }

    /// A cache whose batch row `i` is this cache's row `rows[i]` (rows may repeat: several sequences continue one
    /// prefix). Differentiable: gradients of the new rows sum into the rows they came from.
    pub fn select(&self, rows: &Tensor) -> Result<Self> {
        let layers = self
            .layers
            .iter()
            .map(|l| match l {
                Some((k, v)) => Ok(Some((k.index_select(rows, 0)?, v.index_select(rows, 0)?))),
                None => Ok(None),
            })
            .collect::<candle_core::Result<_>>()?;
        Ok(Self { layers })
    }
}

fn rms_norm(x: &Tensor, w: &Tensor, eps: f64, diff: bool) -> candle_core::Result<Tensor> {
    if diff {
        candle_nn::ops::rms_norm_slow(x, w, eps as f32)
    } else {
        candle_nn::ops::rms_norm(&x.contiguous()?, w, eps as f32)
    }
}

/// Self-attention of one decoder layer; q/k/v/o are [`LoraLinear`] so adapters can be attached.
pub struct Attention {
    /// Query projection (with bias).
    pub q_proj: LoraLinear,
    /// Key projection (with bias).
    pub k_proj: LoraLinear,
    /// Value projection (with bias).
    pub v_proj: LoraLinear,
    /// Output projection (no bias).
    pub o_proj: LoraLinear,
    n_heads: usize,
    n_kv: usize,
    hd: usize,
}

impl Attention {
    fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
        cache: &mut Option<(Tensor, Tensor)>,
        diff: bool,
    ) -> candle_core::Result<Tensor> {
        let (b, s, _) = x.dims3()?;
        let shape =
            |t: Tensor, h: usize| t.reshape((b, s, h, self.hd))?.transpose(1, 2)?.contiguous();
        let q = shape(self.q_proj.forward_t(x, diff)?, self.n_heads)?;
        let k = shape(self.k_proj.forward_t(x, diff)?, self.n_kv)?;
        let v = shape(self.v_proj.forward_t(x, diff)?, self.n_kv)?;
        let (q, k) = if diff {
            (rope_diff(&q, cos, sin)?, rope_diff(&k, cos, sin)?)
        } else {
            (
                candle_nn::rotary_emb::rope(&q, cos, sin)?,
                candle_nn::rotary_emb::rope(&k, cos, sin)?,
            )
        };
        let (k, v) = match cache.take() {
            Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
            None => (k, v),
        };
        *cache = Some((k.clone(), v.clone()));
        let rep = self.n_heads / self.n_kv;
        let kv_len = k.dim(2)?;
        let (k, v) = if rep > 1 {
            let e = |t: &Tensor| {
                t.unsqueeze(2)?
                    .expand((b, self.n_kv, rep, kv_len, self.hd))?
                    .reshape((b, self.n_heads, kv_len, self.hd))
            };
            (e(&k)?, e(&v)?)
        } else {
            (k, v)
        };
        let scale = 1.0 / (self.hd as f64).sqrt();
        if diff && q.dtype() == DType::F32 {
            // Training: one op with its own backward pass; the mask the model passes is the causal one of
            // `forward_embeds` (new tokens after the cached ones), which the op applies itself.
            let flat = |t: &Tensor, len: usize| t.reshape((b * self.n_heads, len, self.hd));
            let o = attention_diff(
                &flat(&q, s)?,
                &flat(&k, kv_len)?,
                &flat(&v, kv_len)?,
                scale,
                mask.is_some(),
            )?;
            let o = o
                .reshape((b, self.n_heads, s, self.hd))?
                .transpose(1, 2)?
                .reshape((b, s, self.n_heads * self.hd))?;
            return self.o_proj.forward_t(&o, diff);
        }
        let att = batched_matmul_bt_scaled(&q, &k, scale)?;
        let att = match mask {
            Some(m) => att.broadcast_add(m)?,
            None => att,
        };
        let att = if diff {
            crate::model::cpu::fused::softmax_last_dim_diff(&att)?
        } else {
            crate::model::cpu::fused::softmax_last_dim(&att)?
        };
        let o = batched_matmul(&att, &v)?;
        let o = o.transpose(1, 2)?.reshape((b, s, self.n_heads * self.hd))?;
        self.o_proj.forward_t(&o, diff)
    }
}

/// One pre-norm decoder layer.
pub struct DecoderLayer {
    /// Self-attention.
    pub self_attn: Attention,
    gate: Linear,
    up: Linear,
    down: Linear,
    ln1: Tensor,
    ln2: Tensor,
    eps: f64,
}

impl DecoderLayer {
    fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
        cache: &mut Option<(Tensor, Tensor)>,
        diff: bool,
    ) -> candle_core::Result<Tensor> {
        let h = rms_norm(x, &self.ln1, self.eps, diff)?;
        let x = (x + self.self_attn.forward(&h, cos, sin, mask, cache, diff)?)?;
        let h = rms_norm(&x, &self.ln2, self.eps, diff)?;
        let h = silu_mul(&linear_2d(&self.gate, &h)?, &linear_2d(&self.up, &h)?)?;
        x + linear_2d(&self.down, &h)?
    }
}

/// The decoder stack (embedding, layers, final norm). The LM head lives in the parent model.
pub struct TextModel {
    /// Token embedding table.
    pub embed: Embedding,
    /// Decoder layers.
    pub layers: Vec<DecoderLayer>,
    norm: Tensor,
    cfg: TextConfig,
    inv_freq: Vec<f32>,
    /// M-RoPE cos/sin per (positions, dtype), on the device.
    rope_cache: TableCache<(Positions, DType)>,
    /// Causal masks per (new tokens, cached tokens, dtype), on the device.
    mask_cache: TableCache<(usize, usize, DType)>,
}

impl TextModel {
    /// Loads the weights under `model.` (pass the builder already prefixed).
    pub fn load(vb: VarBuilder, cfg: &TextConfig, src: &std::path::Path) -> Result<Self> {
        let c = cfg;
        let hd = c.head_dim();
        let embed_w = tensor(
            &vb,
            (c.vocab_size, c.hidden_size),
            "embed_tokens.weight",
            src,
        )?;
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let l = vb.pp(format!("layers.{i}"));
            let a = l.pp("self_attn");
            let (h, nq, nkv) = (
                c.hidden_size,
                c.num_attention_heads * hd,
                c.num_key_value_heads * hd,
            );
            layers.push(DecoderLayer {
                self_attn: Attention {
                    q_proj: LoraLinear::new(linear(&a.pp("q_proj"), h, nq, true, src)?),
                    k_proj: LoraLinear::new(linear(&a.pp("k_proj"), h, nkv, true, src)?),
                    v_proj: LoraLinear::new(linear(&a.pp("v_proj"), h, nkv, true, src)?),
                    o_proj: LoraLinear::new(linear(&a.pp("o_proj"), nq, h, false, src)?),
                    n_heads: c.num_attention_heads,
                    n_kv: c.num_key_value_heads,
                    hd,
                },
                gate: linear(&l.pp("mlp.gate_proj"), h, c.intermediate_size, false, src)?,
                up: linear(&l.pp("mlp.up_proj"), h, c.intermediate_size, false, src)?,
                down: linear(&l.pp("mlp.down_proj"), c.intermediate_size, h, false, src)?,
                ln1: tensor(&l, h, "input_layernorm.weight", src)?,
                ln2: tensor(&l, h, "post_attention_layernorm.weight", src)?,
                eps: c.rms_norm_eps,
            });
        }
        let norm = tensor(&vb, c.hidden_size, "norm.weight", src)?;
        let inv_freq = (0..hd / 2)
            .map(|i| 1.0 / (c.rope_theta.powf((2 * i) as f64 / hd as f64)) as f32)
            .collect();
        Ok(Self {
            embed: Embedding::new(embed_w, c.hidden_size),
            layers,
            norm,
            cfg: c.clone(),
            inv_freq,
            rope_cache: TableCache::default(),
            mask_cache: TableCache::default(),
        })
    }

    /// Configuration of the decoder.
    pub fn config(&self) -> &TextConfig {
        &self.cfg
    }

    /// M-RoPE cos/sin `[batch, seq, head_dim/2]`: frequency `j` rotates with the temporal, height or width
    /// position depending on which `mrope_section` it falls in. `positions[axis][b][s]`.
    pub fn rope_tables(
        &self,
        positions: &[Vec<Vec<i64>>; 3],
        device: &Device,
        dtype: DType,
    ) -> Result<(Tensor, Tensor)> {
        let half = self.inv_freq.len();
        let sec = self.cfg.mrope_section;
        let axis_of: Vec<usize> = (0..half)
            .map(|j| {
                if j < sec[0] {
                    0
                } else if j < sec[0] + sec[1] {
                    1
                } else {
                    2
                }
            })
            .collect();
        let b = positions[0].len();
        let s = positions[0].first().map(Vec::len).unwrap_or(0);
        let mut cos = Vec::with_capacity(b * s * half);
        let mut sin = Vec::with_capacity(b * s * half);
        #[allow(clippy::needless_range_loop)]
        for bi in 0..b {
            for si in 0..s {
                for j in 0..half {
                    let p = positions[axis_of[j]][bi][si] as f32;
                    let a = p * self.inv_freq[j];
                    cos.push(a.cos());
                    sin.push(a.sin());
                }
            }
        }
        let cos = Tensor::from_vec(cos, (b, s, half), device)?.to_dtype(dtype)?;
        let sin = Tensor::from_vec(sin, (b, s, half), device)?.to_dtype(dtype)?;
        Ok((cos, sin))
    }

    /// Runs the decoder over input embeddings `[batch, seq, hidden]` at the given M-RoPE positions, appending
    /// to `cache`; returns the final-normed hidden states `[batch, seq, hidden]`.
    pub fn forward_embeds(
        &self,
        embeds: &Tensor,
        positions: &[Vec<Vec<i64>>; 3],
        cache: &mut KvCache,
        diff: bool,
    ) -> Result<Tensor> {
        let (b, s, h) = embeds.dims3()?;
        if h != self.cfg.hidden_size {
            return Err(Error::invalid(
                "embeddings",
                format!("width {h} != hidden_size {}", self.cfg.hidden_size),
            ));
        }
        if positions
            .iter()
            .any(|p| p.len() != b || p.iter().any(|r| r.len() != s))
        {
            return Err(Error::invalid(
                "positions",
                format!("expected 3 × {b} × {s}"),
            ));
        }
        if let Some(cb) = cache.batch() {
            if cb != b {
                return Err(Error::invalid(
                    "kv cache",
                    format!("batch {cb} != input batch {b}"),
                ));
            }
        }
        if cache.layers.len() != self.layers.len() {
            cache.layers = vec![None; self.layers.len()];
        }
        let past = cache.len();
        let dev = embeds.device();
        let dtype = embeds.dtype();
        let rope = self
            .rope_cache
            .get_or_build((positions.clone(), dtype), || {
                let (cos, sin) = self.rope_tables(positions, dev, dtype)?;
                Ok(vec![cos, sin])
            })?;
        let mask = if s > 1 {
            let m = self.mask_cache.get_or_build((s, past, dtype), || {
                let m: Vec<f32> = (0..s)
                    .flat_map(|i| {
                        (0..past + s)
                            .map(move |j| if j > past + i { f32::NEG_INFINITY } else { 0.0 })
                    })
                    .collect();
                Ok(vec![
                    Tensor::from_vec(m, (s, past + s), dev)?.to_dtype(dtype)?
                ])
            })?;
            Some(m[0].clone())
        } else {
            None
        };
        let mut x = embeds.clone();
        for (layer, c) in self.layers.iter().zip(cache.layers.iter_mut()) {
            x = layer.forward(&x, &rope[0], &rope[1], mask.as_ref(), c, diff)?;
        }
        Ok(rms_norm(&x, &self.norm, self.cfg.rms_norm_eps, diff)?)
    }
}

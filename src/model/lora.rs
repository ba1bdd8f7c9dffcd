//! Low-rank adapters: `y = W x + b + (alpha / r) · B (A dropout(x))`, with `B` zero-initialized so a fresh adapter
//! leaves the model unchanged, and a merge that folds the update into `W` for inference.
use candle_core::{Tensor, Var};
use candle_nn::Linear;
use serde::{Deserialize, Serialize};

use crate::model::cpu::linear_2d;
use crate::model::cpu::sgemm::{batched_matmul_bt_scaled, linear_xwt};
use crate::Result;

/// Names of the decoder's attention projections LoRA can target (the paper's targets).
pub const ATTENTION_MODULES: [&str; 4] = ["q_proj", "k_proj", "v_proj", "o_proj"];

/// Names of the vision tower's attention projections LoRA can target (PEFT matches them as module-name suffixes:
/// `visual.blocks.N.attn.qkv` and `.attn.proj`).
pub const VISION_ATTENTION_MODULES: [&str; 2] = ["qkv", "proj"];

/// A `target_modules` entry as PEFT writes or reads it → our target name: PEFT matches an entry as a suffix of
/// whole module-name components, so `attn.proj` (what we write, since a bare `proj` would also catch the
/// vision tower's `patch_embed.proj`), `self_attn.q_proj` or `attn.qkv` name the same projections as `proj`,
/// `q_proj`, `qkv`.
pub fn target_from_peft(entry: &str) -> &str {
    match entry {
        "attn.proj" | "attn.qkv" => &entry[5..],
        e if e.starts_with("self_attn.") && ATTENTION_MODULES.contains(&&e[10..]) => &e[10..],
        e => e,
    }
}

/// Our target name → the `target_modules` entry PEFT needs to adapt exactly that projection.
pub fn target_to_peft(target: &str) -> &str {
    match target {
        "proj" => "attn.proj",
        t => t,
    }
}

/// Whether `target` names a LoRA target of either tower.
pub fn is_lora_target(target: &str) -> bool {
    ATTENTION_MODULES.contains(&target) || VISION_ATTENTION_MODULES.contains(&target)
}

/// Hyper-parameters of the adapters; serializes to PEFT's `adapter_config.json` fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    /// Rank.
    pub r: usize,
    /// Scaling numerator: the update is scaled by `lora_alpha / r`.
    pub lora_alpha: f64,
    /// Dropout probability on the adapter input during training.
    #[serde(default)]
    pub lora_dropout: f32,
    /// Which projections of the text decoder's self-attention get adapters.
    pub target_modules: Vec<String>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            r: 16,
            lora_alpha: 32.0,
            lora_dropout: 0.0,
            target_modules: ATTENTION_MODULES.iter().map(|s| s.to_string()).collect(),
        }
    }
}

impl LoraConfig {
    /// `lora_alpha / r`.
    pub fn scale(&self) -> f64 {
        self.lora_alpha / self.r as f64
    }
}

/// The trainable part of a [`LoraLinear`].
#[derive(Debug, Clone)]
pub struct LoraAdapter {
    /// Down projection `[r, in]`.
    pub a: Var,
    /// Up projection `[out, r]` (zero at initialization).
    pub b: Var,
    /// `alpha / r`.
    pub scale: f64,
    /// Dropout probability applied in training mode.
    pub dropout: f32,
}

/// A frozen linear layer with an optional low-rank adapter.
#[derive(Debug, Clone)]
pub struct LoraLinear {
    base: Linear,
    /// The adapter, when attached and not merged.
    pub adapter: Option<LoraAdapter>,
}

impl LoraLinear {
    /// Wraps a frozen base layer without adapter.
    pub fn new(base: Linear) -> Self {
        Self {
            base,
            adapter: None,
        }
    }

    /// The frozen base layer.
    pub fn base(&self) -> &Linear {
        &self.base
    }

    /// `(in, out)` features.
    pub fn dims(&self) -> Result<(usize, usize)> {
        let (o, i) = self.base.weight().dims2()?;
        Ok((i, o))
    }

    /// Forward pass; `train` enables adapter dropout.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let y = linear_2d(&self.base, x)?;
        match &self.adapter {
            None => Ok(y),
            Some(ad) => {
                let xin = if train && ad.dropout > 0.0 {
                    candle_nn::ops::dropout(x, ad.dropout)?
                } else {
                    x.clone()
                };
                // Leading dimensions folded into rows, the scale on the second product's alpha: two GEMMs
                // (OpenBLAS on the f32 CPU path) instead of products broadcast over the batch, whose backward
                // passes summed a copy of A and B per batch element.
                let din = xin.dim(xin.rank() - 1)?;
                let rows = xin.elem_count() / din.max(1);
                let low = linear_xwt(&xin.reshape((rows, din))?, ad.a.as_tensor())?;
                let up = batched_matmul_bt_scaled(&low, ad.b.as_tensor(), ad.scale)?;
                let up = up.reshape(y.shape())?;
                y + up
            }
        }
    }

    /// Folds the adapter into the base weight (`W + scale · B A`) and drops it.
    pub fn merge(&mut self) -> Result<()> {
        if let Some(ad) = self.adapter.take() {
            let w = self.base.weight();
            let delta =
                (ad.b.as_tensor().matmul(ad.a.as_tensor())? * ad.scale)?.to_dtype(w.dtype())?;
            let w = (w + delta)?;
            self.base = Linear::new(w, self.base.bias().cloned());
        }
        Ok(())
    }
}

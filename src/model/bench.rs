//! `vlm3d bench`: one detection forward pass (vision tower over all views, decoder prefill over
//! `[template, image, prompt, suffix, queries]` per view, box head; no generation) with random weights at the
//! tiny fixture's or the real Qwen2-VL-2B's dimensions, timing and peak resident memory per row.
use std::collections::HashMap;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use super::box_head::{DetectionHead, DEFAULT_QUERIES};
use super::qwen2vl::{
    mrope_positions, Config, GridThw, KvCache, Positions, Qwen2VL, TextConfig, VisionConfig,
};
use crate::Result;

/// Text tokens before the image (system turn and user opening of the chat template).
pub const PREFIX_TOKENS: usize = 14;
/// Text tokens after the prompt (`<|im_end|>\n<|im_start|>assistant\n`).
pub const SUFFIX_TOKENS: usize = 5;

/// Model sizes the bench knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BenchModel {
    /// The test fixture's dimensions.
    Tiny,
    /// Qwen2-VL-2B-Instruct's dimensions.
    Qwen2Vl2b,
}

impl BenchModel {
    /// Display name.
    pub fn name(&self) -> &'static str {
        match self {
            BenchModel::Tiny => "tiny",
            BenchModel::Qwen2Vl2b => "qwen2-vl-2b",
        }
    }

    /// The configuration with these dimensions.
    pub fn config(&self) -> Config {
        let (text, vision) = match self {
            BenchModel::Tiny => (
                TextConfig {
                    hidden_size: 64,
                    intermediate_size: 128,
                    num_hidden_layers: 2,
                    num_attention_heads: 4,
                    num_key_value_heads: 2,
                    rms_norm_eps: 1e-6,
                    rope_theta: 10000.0,
                    mrope_section: [1, 4, 3],
                    vocab_size: 384,
                    tie_word_embeddings: true,
                },
                VisionConfig {
                    depth: 2,
                    embed_dim: 32,
                    num_heads: 2,
                    mlp_ratio: 2.0,
                    in_channels: 3,
                    hidden_size: 64,
                    patch_size: 14,
                    spatial_merge_size: 2,
                    temporal_patch_size: 2,
                },
            ),
            BenchModel::Qwen2Vl2b => (
                TextConfig {
                    hidden_size: 1536,
                    intermediate_size: 8960,
                    num_hidden_layers: 28,
                    num_attention_heads: 12,
                    num_key_value_heads: 2,
                    rms_norm_eps: 1e-6,
                    rope_theta: 1_000_000.0,
                    mrope_section: [16, 24, 24],
                    vocab_size: 151_936,
                    tie_word_embeddings: true,
                },
                VisionConfig {
                    depth: 32,
                    embed_dim: 1280,
                    num_heads: 16,
                    mlp_ratio: 4.0,
                    in_channels: 3,
                    hidden_size: 1536,
                    patch_size: 14,
                    spatial_merge_size: 2,
                    temporal_patch_size: 2,
                },
            ),
        };
        let base = if text.vocab_size > 1000 { 151_643 } else { 0 };
        Config {
            text,
            vision,
            image_token_id: base as u32 + 12,
            vision_start_token_id: base as u32 + 9,
            vision_end_token_id: base as u32 + 10,
            eos_token_ids: vec![],
        }
    }
}

/// Random weights (normal, std 0.02; norms 1) under the Hugging Face names for `cfg`.
pub fn random_weights(cfg: &Config, device: &Device) -> Result<HashMap<String, Tensor>> {
    let mut w = HashMap::new();
    let mut put = |name: String, shape: &[usize]| -> Result<()> {
        let t = if name.contains("norm") || name.contains("ln_q") || name.contains("layernorm") {
            if name.ends_with("bias") {
                Tensor::zeros(shape, DType::F32, device)?
            } else {
                Tensor::ones(shape, DType::F32, device)?
            }
        } else {
            (Tensor::randn(0f32, 1.0, shape, device)? * 0.02)?
        };
        w.insert(name, t);
        Ok(())
    };
    let (t, v) = (&cfg.text, &cfg.vision);
    let hd = t.head_dim();
    put(
        "model.embed_tokens.weight".into(),
        &[t.vocab_size, t.hidden_size],
    )?;
    put("model.norm.weight".into(), &[t.hidden_size])?;
    for i in 0..t.num_hidden_layers {
        let p = format!("model.layers.{i}");
        let (h, q, kv) = (
            t.hidden_size,
            t.num_attention_heads * hd,
            t.num_key_value_heads * hd,
        );
        for (n, o, i_) in [("q_proj", q, h), ("k_proj", kv, h), ("v_proj", kv, h)] {
            put(format!("{p}.self_attn.{n}.weight"), &[o, i_])?;
            put(format!("{p}.self_attn.{n}.bias"), &[o])?;
        }
        put(format!("{p}.self_attn.o_proj.weight"), &[h, q])?;
        put(
            format!("{p}.mlp.gate_proj.weight"),
            &[t.intermediate_size, h],
        )?;
        put(format!("{p}.mlp.up_proj.weight"), &[t.intermediate_size, h])?;
        put(
            format!("{p}.mlp.down_proj.weight"),
            &[h, t.intermediate_size],
        )?;
        put(format!("{p}.input_layernorm.weight"), &[h])?;
        put(format!("{p}.post_attention_layernorm.weight"), &[h])?;
    }
    let e = v.embed_dim;
    put(
        "visual.patch_embed.proj.weight".into(),
        &[
            e,
            v.in_channels,
            v.temporal_patch_size,
            v.patch_size,
            v.patch_size,
        ],
    )?;
    for i in 0..v.depth {
        let p = format!("visual.blocks.{i}");
        for (n, o, i_) in [
            ("attn.qkv", 3 * e, e),
            ("attn.proj", e, e),
            ("mlp.fc1", v.mlp_hidden(), e),
            ("mlp.fc2", e, v.mlp_hidden()),
        ] {
            put(format!("{p}.{n}.weight"), &[o, i_])?;
            put(format!("{p}.{n}.bias"), &[o])?;
        }
        for n in ["norm1", "norm2"] {
            put(format!("{p}.{n}.weight"), &[e])?;
            put(format!("{p}.{n}.bias"), &[e])?;
        }
    }
    let m2 = e * v.spatial_merge_size * v.spatial_merge_size;
    put("visual.merger.ln_q.weight".into(), &[e])?;
    put("visual.merger.ln_q.bias".into(), &[e])?;
    put("visual.merger.mlp.0.weight".into(), &[m2, m2])?;
    put("visual.merger.mlp.0.bias".into(), &[m2])?;
    put("visual.merger.mlp.2.weight".into(), &[v.hidden_size, m2])?;
    put("visual.merger.mlp.2.bias".into(), &[v.hidden_size])?;
    Ok(w)
}

/// One line of the bench table.
#[derive(Debug, Clone)]
pub struct BenchRow {
    /// Model size.
    pub model: &'static str,
    /// Camera views.
    pub views: usize,
    /// Decoder tokens per view.
    pub seq_per_view: usize,
    /// Seconds in the vision tower.
    pub vision_s: f64,
    /// Seconds in decoder + head.
    pub decoder_s: f64,
    /// Total seconds of the forward pass.
    pub total_s: f64,
    /// Peak resident memory of the process during the row (weights included), MiB.
    pub peak_rss_mib: f64,
}

/// Peak resident set size of this process in MiB (Linux `VmHWM`), if known.
pub fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Resets the peak-RSS counter (Linux), so each row reports its own peak.
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Builds a random model of `which` size and times one forward pass for `views` images of `width`×`height` and a
/// `prompt_tokens`-token prompt.
pub fn run(
    which: BenchModel,
    views: usize,
    width: usize,
    height: usize,
    prompt_tokens: usize,
) -> Result<BenchRow> {
    reset_peak_rss();
    let dev = Device::Cpu;
    let cfg = which.config();
    let weights = random_weights(&cfg, &dev)?;
    let vb = VarBuilder::from_tensors(weights, DType::F32, &dev);
    let model = Qwen2VL::from_var_builder(cfg.clone(), vb, std::path::Path::new(which.name()))?;
    let head = DetectionHead::new(cfg.text.hidden_size, DEFAULT_QUERIES, DType::F32, &dev, 0)?;
    let p = cfg.vision.patch_size;
    let grid = GridThw {
        t: 1,
        h: height / p,
        w: width / p,
    };
    let m = cfg.vision.spatial_merge_size;
    let row_len = cfg.vision.in_channels * cfg.vision.temporal_patch_size * p * p;
    let pixels = Tensor::randn(0f32, 1.0, (views * grid.patches(), row_len), &dev)?;
    // Sequence per view: template prefix, image, prompt, suffix (queries are appended as embeddings).
    let mut ids: Vec<u32> = (0..PREFIX_TOKENS as u32).map(|i| 100 + i).collect();
    ids.push(cfg.vision_start_token_id);
    ids.extend(std::iter::repeat_n(
        cfg.image_token_id,
        grid.merged_tokens(m),
    ));
    ids.push(cfg.vision_end_token_id);
    ids.extend((0..prompt_tokens as u32).map(|i| 200 + i));
    ids.extend((0..SUFFIX_TOKENS as u32).map(|i| 300 + i));
    let (pos, next) = mrope_positions(&ids, &[grid], cfg.image_token_id, m, 0)?;
    let k = head.num_queries();
    let mut full: [Vec<i64>; 3] = pos.clone();
    for a in &mut full {
        a.extend((0..k as i64).map(|i| next + i));
    }
    let seq = ids.len() + k;

    let t0 = Instant::now();
    let grids = vec![grid; views];
    let feats = model.vision.forward(&pixels, &grids)?;
    let t1 = Instant::now();
    let per = grid.merged_tokens(m);
    let mut embs = Vec::with_capacity(views);
    for v in 0..views {
        let e = model.embed(&ids, Some(&feats.narrow(0, v * per, per)?))?;
        embs.push(Tensor::cat(&[&e, &head.queries], 0)?);
    }
    let emb = Tensor::stack(&embs, 0)?;
    let positions: Positions = std::array::from_fn(|a| vec![full[a].clone(); views]);
    let h = model
        .text
        .forward_embeds(&emb, &positions, &mut KvCache::new(), false)?;
    let out = head.head.forward(&h.narrow(1, seq - k, k)?)?;
    let _ = out.logits.to_vec2::<f32>()?;
    let t2 = Instant::now();
    Ok(BenchRow {
        model: which.name(),
        views,
        seq_per_view: seq,
        vision_s: (t1 - t0).as_secs_f64(),
        decoder_s: (t2 - t1).as_secs_f64(),
        total_s: (t2 - t0).as_secs_f64(),
        peak_rss_mib: peak_rss_mib().unwrap_or(f64::NAN),
    })
}

/// Formats rows as a markdown table.
pub fn table(rows: &[BenchRow]) -> String {
    let mut s = String::from(
        "| model | views | tokens/view | vision s | decoder+head s | total s | peak RSS MiB |\n|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        s.push_str(&format!(
            "| {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.0} |\n",
            r.model, r.views, r.seq_per_view, r.vision_s, r.decoder_s, r.total_s, r.peak_rss_mib
        ));
    }
    s
}

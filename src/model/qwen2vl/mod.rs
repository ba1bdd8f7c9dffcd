//! Qwen2-VL (vision tower + Qwen2 decoder with M-RoPE) written for candle, loading Hugging Face checkpoint
//! folders: [`config`] (config.json), [`weights`] (safetensors), [`preprocess`] (the reference's image
//! processor), [`vision`] and [`text`] (the two towers), this file (the network: position rule, embedding with
//! image features, forward, greedy generation), [`pipeline`] (tokenizer, chat format, [`Pipeline`]) and
//! [`adapters`] (PEFT LoRA files); `tables` keeps the position tables on the device.
pub mod adapters;
pub mod config;
pub mod init;
pub mod pipeline;
pub mod preprocess;
mod tables;
pub mod text;
pub mod vision;
pub mod weights;

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor, Var};
use candle_nn::{Linear, VarBuilder};

pub use adapters::peft_module_name;
pub use config::{Config, PreprocessorConfig, TextConfig, VisionConfig};
pub use pipeline::{chat_prefix, chat_suffix, check_prompt, Pipeline, DEFAULT_SYSTEM};
pub use preprocess::{GridThw, ImageProcessor, ProcessedImages};
pub use text::{KvCache, TextModel};
pub use vision::VisionModel;

use crate::{Error, Result};

/// M-RoPE position ids `[axis][batch][seq]` (axes: temporal, height, width).
pub type Positions = [Vec<Vec<i64>>; 3];

/// The reference's position rule for one sequence: a text token takes the running position `p` on all three
/// axes (then `p += 1`); an image's run of merged tokens over a (t, h/m, w/m) grid takes `(p + t, p + y, p + x)`,
/// then `p += max(t, h/m, w/m)`. Image runs are the maximal runs of `image_token_id`, consumed one grid at a time.
/// Returns the positions and the next free position.
pub fn mrope_positions(
    ids: &[u32],
    grids: &[GridThw],
    image_token_id: u32,
    merge: usize,
    start: i64,
) -> Result<([Vec<i64>; 3], i64)> {
    let mut pos: [Vec<i64>; 3] = [
        Vec::with_capacity(ids.len()),
        Vec::with_capacity(ids.len()),
        Vec::with_capacity(ids.len()),
    ];
    let mut p = start;
    let mut g = grids.iter();
    let mut i = 0;
    while i < ids.len() {
        if ids[i] != image_token_id {
            for a in &mut pos {
                a.push(p);
            }
            p += 1;
            i += 1;
            continue;
        }
        let grid = g
            .next()
            .ok_or_else(|| Error::invalid("input ids", "more <|image_pad|> runs than images"))?;
        let (t, h, w) = (grid.t, grid.h / merge, grid.w / merge);
        if i + t * h * w > ids.len() || ids[i..i + t * h * w].iter().any(|&x| x != image_token_id) {
            return Err(Error::invalid(
                "input ids",
                format!(
                    "image run at {i} shorter than its grid needs ({} tokens)",
                    t * h * w
                ),
            ));
        }
        for ti in 0..t {
            for y in 0..h {
                for x in 0..w {
                    pos[0].push(p + ti as i64);
                    pos[1].push(p + y as i64);
                    pos[2].push(p + x as i64);
                }
            }
        }
        p += t.max(h).max(w) as i64;
        i += t * h * w;
    }
    if g.next().is_some() {
        return Err(Error::invalid(
            "input ids",
            "fewer <|image_pad|> runs than images",
        ));
    }
    Ok((pos, p))
}

/// Qwen2-VL weights: vision tower, text decoder and LM head.
pub struct Qwen2VL {
    /// Checkpoint configuration.
    pub config: Config,
    /// Vision tower with merger.
    pub vision: VisionModel,
    /// Text decoder.
    pub text: TextModel,
    lm_head: Linear,
    device: Device,
    dtype: DType,
}

impl Qwen2VL {
    /// Loads `config.json` and the safetensors weights (single or sharded) of a checkpoint folder.
    pub fn load(dir: &Path, device: &Device, dtype: DType) -> Result<Self> {
        Ok(Self::load_with(dir, &[], device, dtype, None)?.0)
    }

    /// Loads `config.json` from `dir` and the weights from `files` (a fine-tuned `model.safetensors` beside the
    /// base checkpoint's configuration), optionally with the weights whose full names `trainable` accepts as
    /// [`Var`]s (full fine-tuning), which are returned with their checkpoint names.
    pub fn load_with(
        dir: &Path,
        files: &[std::path::PathBuf],
        device: &Device,
        dtype: DType,
        trainable: Option<weights::WeightFilter>,
    ) -> Result<(Self, weights::NamedVars)> {
        let cfg_path = dir.join("config.json");
        if !cfg_path.exists() {
            return Err(Error::format(
                dir,
                None,
                "config.json missing: not a checkpoint folder",
            ));
        }
        let config = Config::from_file(&cfg_path)?;
        // Errors name the checkpoint folder, or the fine-tuned file given in its place.
        let (files, src) = if files.is_empty() {
            (weights::safetensors_files(dir)?, dir.to_path_buf())
        } else {
            (files.to_vec(), files[0].clone())
        };
        let inner = weights::var_builder(&files, dtype, device)?;
        let Some(trainable) = trainable else {
            return Ok((Self::from_var_builder(config, inner, &src)?, Vec::new()));
        };
        let (backend, vars) = weights::TrainableBackend::new(inner, trainable);
        let vb = VarBuilder::from_backend(Box::new(backend), dtype, device.clone());
        let model = Self::from_var_builder(config, vb, &src)?;
        let vars = vars
            .lock()
            .map(|v| v.clone())
            .map_err(|_| Error::invalid("trainable weights", "lock poisoned"))?;
        Ok((model, vars))
    }

    /// Writes a whole checkpoint's weights to `path`: every tensor of this model's source `files`, with those
    /// named in `trained` replaced by their current values (a fully fine-tuned model, loadable by
    /// [`Qwen2VL::load_with`] or by transformers beside the base `config.json`).
    pub fn save_full(
        files: &[std::path::PathBuf],
        trained: &[(String, Var)],
        path: &Path,
    ) -> Result<()> {
        let mut all = std::collections::HashMap::new();
        for f in files {
            all.extend(weights::read_file(f)?);
        }
        for (name, v) in trained {
            let src = all.get(name).ok_or_else(|| {
                Error::invalid(
                    "fine-tuned weight",
                    format!("{name} is not in the checkpoint"),
                )
            })?;
            let t = v
                .as_tensor()
                .to_device(&Device::Cpu)?
                .to_dtype(src.dtype())?;
            all.insert(name.clone(), t);
        }
        candle_core::safetensors::save(&all, path)?;
        Ok(())
    }

    /// Builds the model from a [`VarBuilder`] holding Hugging Face tensor names; `src` names the source in errors.
    pub fn from_var_builder(config: Config, vb: VarBuilder, src: &Path) -> Result<Self> {
        // Accept both the 4.x names (`model.`, `visual.`) and the 5.x module paths (`model.language_model.`, `model.visual.`).
        let text_vb = if vb.contains_tensor("model.embed_tokens.weight") {
            vb.pp("model")
        } else if vb.contains_tensor("model.language_model.embed_tokens.weight") {
            vb.pp("model.language_model")
        } else {
            vb.pp("model")
        };
        let vis_vb = if vb.contains_tensor("model.visual.patch_embed.proj.weight") {
            vb.pp("model.visual")
        } else {
            vb.pp("visual")
        };
        let vision = VisionModel::load(vis_vb, &config.vision, src)?;
        let text = TextModel::load(text_vb, &config.text, src)?;
        let t = &config.text;
        let lm_head = if vb.contains_tensor("lm_head.weight") {
            weights::linear(&vb.pp("lm_head"), t.hidden_size, t.vocab_size, false, src)?
        } else if t.tie_word_embeddings {
            Linear::new(text.embed.embeddings().clone(), None)
        } else {
            return Err(Error::format(
                src,
                Some("lm_head.weight".into()),
                "missing and embeddings are not tied",
            ));
        };
        let device = vb.device().clone();
        let dtype = vb.dtype();
        Ok(Self {
            config,
            vision,
            text,
            lm_head,
            device,
            dtype,
        })
    }

    /// Device of the weights.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Floating-point type of the weights.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Vision features of several images in one pass: `[sum merged tokens, hidden]`.
    pub fn encode_images(&self, images: &ProcessedImages) -> Result<Tensor> {
        self.vision.forward(&images.pixel_values, &images.grids)
    }

    /// [`Qwen2VL::encode_images`]; with `diff` through gradient-capable ops (training the vision tower).
    pub fn encode_images_t(&self, images: &ProcessedImages, diff: bool) -> Result<Tensor> {
        self.vision
            .forward_t(&images.pixel_values, &images.grids, diff)
    }

    /// Token embeddings `[seq, hidden]` with the `<|image_pad|>` rows replaced, in order, by `image_features`.
    pub fn embed(&self, ids: &[u32], image_features: Option<&Tensor>) -> Result<Tensor> {
        if ids.is_empty() {
            return Err(Error::invalid("input ids", "empty sequence"));
        }
        let vocab = self.config.text.vocab_size as u32;
        if let Some(bad) = ids.iter().find(|&&t| t >= vocab) {
            return Err(Error::invalid(
                "input ids",
                format!("token {bad} outside the vocabulary ({vocab})"),
            ));
        }
        let idt = Tensor::new(ids, &self.device)?;
        let emb = self.text.embed.forward(&idt)?;
        let n_img = ids
            .iter()
            .filter(|&&t| t == self.config.image_token_id)
            .count();
        match image_features {
            None if n_img == 0 => Ok(emb),
            None => Err(Error::invalid(
                "input ids",
                format!("{n_img} image tokens but no image features"),
            )),
            Some(f) => {
                let rows = f.dim(0)?;
                if rows != n_img {
                    return Err(Error::invalid(
                        "image features",
                        format!("{rows} feature rows for {n_img} <|image_pad|> tokens"),
                    ));
                }
                let s = ids.len() as u32;
                let mut k = 0u32;
                let idx: Vec<u32> = ids
                    .iter()
                    .enumerate()
                    .map(|(i, &t)| {
                        if t == self.config.image_token_id {
                            k += 1;
                            s + k - 1
                        } else {
                            i as u32
                        }
                    })
                    .collect();
                let all = Tensor::cat(&[&emb, &f.to_dtype(emb.dtype())?], 0)?;
                Ok(all.index_select(&Tensor::new(idx.as_slice(), &self.device)?, 0)?)
            }
        }
    }

    /// Logits `[.., vocab]` of hidden states `[.., hidden]`.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        Ok(crate::model::cpu::linear_2d(&self.lm_head, hidden)?)
    }

    /// Embeds one sequence (with its images' features) and runs it through the decoder, filling `cache`: returns
    /// the final hidden states `[1, seq, hidden]`, the positions and the next free position.
    fn prefill(
        &self,
        ids: &[u32],
        images: Option<&ProcessedImages>,
        cache: &mut KvCache,
    ) -> Result<(Tensor, [Vec<i64>; 3], i64)> {
        let feats = images.map(|im| self.encode_images(im)).transpose()?;
        let grids: &[GridThw] = images.map(|im| im.grids.as_slice()).unwrap_or(&[]);
        let (pos, next) = mrope_positions(
            ids,
            grids,
            self.config.image_token_id,
            self.config.vision.spatial_merge_size,
            0,
        )?;
        let emb = self.embed(ids, feats.as_ref())?.unsqueeze(0)?;
        let p: Positions = [
            vec![pos[0].clone()],
            vec![pos[1].clone()],
            vec![pos[2].clone()],
        ];
        let h = self.text.forward_embeds(&emb, &p, cache, false)?;
        Ok((h, pos, next))
    }

    /// One uncached forward pass over a single sequence: returns `(final hidden [1, seq, hidden], positions)`.
    pub fn forward(
        &self,
        ids: &[u32],
        images: Option<&ProcessedImages>,
    ) -> Result<(Tensor, [Vec<i64>; 3])> {
        let (h, pos, _) = self.prefill(ids, images, &mut KvCache::new())?;
        Ok((h, pos))
    }

    /// Greedy decoding with a KV cache: returns up to `max_new` generated ids, stopping after any of `stop`.
    pub fn generate(
        &self,
        ids: &[u32],
        images: Option<&ProcessedImages>,
        max_new: usize,
        stop: &[u32],
    ) -> Result<Vec<u32>> {
        let mut cache = KvCache::new();
        let (h, _, mut next) = self.prefill(ids, images, &mut cache)?;
        let mut out = Vec::new();
        let mut last = h.narrow(1, h.dim(1)? - 1, 1)?;
        for _ in 0..max_new {
            let tok = self
                .logits(&last)?
                .flatten_all()?
                .argmax(0)?
                .to_scalar::<u32>()?;
            out.push(tok);
            if stop.contains(&tok) {
                break;
            }
            let emb = self.embed(&[tok], None)?.unsqueeze(0)?;
            let p: Positions = [vec![vec![next]], vec![vec![next]], vec![vec![next]]];
            next += 1;
            last = self.text.forward_embeds(&emb, &p, &mut cache, false)?;
        }
        Ok(out)
    }
}

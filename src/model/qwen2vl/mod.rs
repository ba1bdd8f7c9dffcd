//! Qwen2-VL (vision tower + Qwen2 decoder with M-RoPE) written for candle, loading Hugging Face checkpoint
//! folders, with the reference's image processor, position rule, chat format and greedy generation.
pub mod config;
pub mod preprocess;
pub mod text;
pub mod vision;
pub mod weights;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Module, Tensor, Var};
use candle_nn::{Linear, VarBuilder};

pub use config::{Config, PreprocessorConfig, TextConfig, VisionConfig};
pub use preprocess::{GridThw, ImageProcessor, ProcessedImages};
pub use text::{KvCache, TextModel};
pub use vision::VisionModel;

use crate::model::lora::{LoraAdapter, LoraConfig, LoraLinear};
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
        let cfg_path = dir.join("config.json");
        if !cfg_path.exists() {
            return Err(Error::format(
                dir,
                None,
                "config.json missing: not a checkpoint folder",
            ));
        }
        let config = Config::from_file(&cfg_path)?;
        let files = weights::safetensors_files(dir)?;
        let vb = weights::var_builder(&files, dtype, device)?;
        Self::from_var_builder(config, vb, dir)
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
        Ok(crate::model::lora::linear_2d(&self.lm_head, hidden)?)
    }

    /// One uncached forward pass over a single sequence: returns `(final hidden [1, seq, hidden], positions)`.
    pub fn forward(
        &self,
        ids: &[u32],
        images: Option<&ProcessedImages>,
    ) -> Result<(Tensor, [Vec<i64>; 3])> {
        let feats = images.map(|im| self.encode_images(im)).transpose()?;
        let grids: &[GridThw] = images.map(|im| im.grids.as_slice()).unwrap_or(&[]);
        let (pos, _) = mrope_positions(
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
        let h = self
            .text
            .forward_embeds(&emb, &p, &mut KvCache::new(), false)?;
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
        let feats = images.map(|im| self.encode_images(im)).transpose()?;
        let grids: &[GridThw] = images.map(|im| im.grids.as_slice()).unwrap_or(&[]);
        let (pos, mut next) = mrope_positions(
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
        let mut cache = KvCache::new();
        let h = self.text.forward_embeds(&emb, &p, &mut cache, false)?;
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

    /// Attaches fresh adapters (A uniform in ±1/√in as PEFT's Kaiming init, B zero) to the targeted attention
    /// projections of every decoder layer; the new variables are returned with their PEFT names.
    pub fn attach_lora(&mut self, cfg: &LoraConfig) -> Result<Vec<(String, Var)>> {
        let mut vars = Vec::new();
        let (dev, dt) = (self.device.clone(), self.dtype);
        for (i, name, proj) in self.lora_targets(&cfg.target_modules)? {
            let (din, dout) = proj.dims()?;
            let bound = 1.0 / (din as f64).sqrt();
            let a =
                Var::from_tensor(&Tensor::rand(-bound, bound, (cfg.r, din), &dev)?.to_dtype(dt)?)?;
            let b = Var::from_tensor(&Tensor::zeros((dout, cfg.r), dt, &dev)?)?;
            let base = peft_module_name(i, &name);
            vars.push((format!("{base}.lora_A.weight"), a.clone()));
            vars.push((format!("{base}.lora_B.weight"), b.clone()));
            proj.adapter = Some(LoraAdapter {
                a,
                b,
                scale: cfg.scale(),
                dropout: cfg.lora_dropout,
            });
        }
        Ok(vars)
    }

    fn lora_targets(
        &mut self,
        targets: &[String],
    ) -> Result<Vec<(usize, String, &mut LoraLinear)>> {
        for t in targets {
            if !crate::model::lora::ATTENTION_MODULES.contains(&t.as_str()) {
                return Err(Error::invalid(
                    "LoRA target",
                    format!("{t} (supported: q_proj, k_proj, v_proj, o_proj)"),
                ));
            }
        }
        let mut out = Vec::new();
        for (i, l) in self.text.layers.iter_mut().enumerate() {
            let a = &mut l.self_attn;
            for (name, proj) in [
                ("q_proj", &mut a.q_proj),
                ("k_proj", &mut a.k_proj),
                ("v_proj", &mut a.v_proj),
                ("o_proj", &mut a.o_proj),
            ] {
                if targets.iter().any(|t| t == name) {
                    out.push((i, name.to_string(), proj));
                }
            }
        }
        Ok(out)
    }

    /// The attached (unmerged) adapter tensors under their PEFT names.
    pub fn lora_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (i, l) in self.text.layers.iter().enumerate() {
            let a = &l.self_attn;
            for (name, proj) in [
                ("q_proj", &a.q_proj),
                ("k_proj", &a.k_proj),
                ("v_proj", &a.v_proj),
                ("o_proj", &a.o_proj),
            ] {
                if let Some(ad) = &proj.adapter {
                    let base = peft_module_name(i, name);
                    out.push((format!("{base}.lora_A.weight"), ad.a.as_tensor().clone()));
                    out.push((format!("{base}.lora_B.weight"), ad.b.as_tensor().clone()));
                }
            }
        }
        out
    }

    /// Writes `adapter_model.safetensors` and `adapter_config.json` (PEFT layout) into `dir`.
    pub fn save_lora(&self, dir: &Path, cfg: &LoraConfig) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let tensors: HashMap<String, Tensor> = self.lora_tensors().into_iter().collect();
        if tensors.is_empty() {
            return Err(Error::invalid("LoRA", "no adapters attached"));
        }
        let path = dir.join("adapter_model.safetensors");
        candle_core::safetensors::save(&tensors, &path)?;
        let json = serde_json::json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "r": cfg.r,
            "lora_alpha": cfg.lora_alpha,
            "lora_dropout": cfg.lora_dropout,
            "target_modules": cfg.target_modules,
            "bias": "none",
            "fan_in_fan_out": false,
        });
        let cpath = dir.join("adapter_config.json");
        std::fs::write(
            &cpath,
            serde_json::to_string_pretty(&json).unwrap_or_default(),
        )
        .map_err(|e| Error::io(&cpath, e))?;
        Ok(())
    }

    /// Loads PEFT adapters from `dir` (also accepting 5.x module paths), attaches them as trainable variables and
    /// returns their config and variables.
    pub fn load_lora(&mut self, dir: &Path) -> Result<(LoraConfig, Vec<(String, Var)>)> {
        let cpath = dir.join("adapter_config.json");
        let text = std::fs::read_to_string(&cpath).map_err(|e| Error::io(&cpath, e))?;
        let cfg: LoraConfig = serde_json::from_str(&text)
            .map_err(|e| Error::format(&cpath, None, format!("bad adapter config: {e}")))?;
        if cfg.r == 0 {
            return Err(Error::format(
                &cpath,
                Some("r".into()),
                "rank must be positive",
            ));
        }
        let path = dir.join("adapter_model.safetensors");
        let data = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let raw = candle_core::safetensors::load_buffer(&data, &self.device).map_err(|e| {
            Error::format(&path, None, format!("not a valid safetensors file: {e}"))
        })?;
        let raw: HashMap<String, Tensor> = raw
            .into_iter()
            .map(|(k, v)| (k.replace("model.language_model.", "model."), v))
            .collect();
        let dt = self.dtype;
        let mut vars = Vec::new();
        let targets = self.lora_targets(&cfg.target_modules)?;
        for (i, name, proj) in targets {
            let base = peft_module_name(i, &name);
            let (din, dout) = proj.dims()?;
            let get = |suffix: &str, shape: (usize, usize)| -> Result<Tensor> {
                let key = format!("{base}.{suffix}");
                let t = raw
                    .get(&key)
                    .ok_or_else(|| Error::format(&path, Some(key.clone()), "missing"))?;
                if t.dims() != [shape.0, shape.1] {
                    return Err(Error::format(
                        &path,
                        Some(key),
                        format!("shape {:?}, expected {shape:?}", t.dims()),
                    ));
                }
                Ok(t.to_dtype(dt)?)
            };
            let a = Var::from_tensor(&get("lora_A.weight", (cfg.r, din))?)?;
            let b = Var::from_tensor(&get("lora_B.weight", (dout, cfg.r))?)?;
            vars.push((format!("{base}.lora_A.weight"), a.clone()));
            vars.push((format!("{base}.lora_B.weight"), b.clone()));
            proj.adapter = Some(LoraAdapter {
                a,
                b,
                scale: cfg.scale(),
                dropout: cfg.lora_dropout,
            });
        }
        Ok((cfg, vars))
    }

    /// Folds every attached adapter into its base weight (inference).
    pub fn merge_lora(&mut self) -> Result<()> {
        for l in &mut self.text.layers {
            let a = &mut l.self_attn;
            for p in [&mut a.q_proj, &mut a.k_proj, &mut a.v_proj, &mut a.o_proj] {
                p.merge()?;
            }
        }
        Ok(())
    }
}

/// PEFT's module name of a decoder attention projection.
pub fn peft_module_name(layer: usize, proj: &str) -> String {
    format!("base_model.model.model.layers.{layer}.self_attn.{proj}")
}

/// The default system message of the official chat template.
pub const DEFAULT_SYSTEM: &str = "You are a helpful assistant.";

/// Chat text before the user's prompt: system turn, user turn opening and one vision block per image.
pub fn chat_prefix(n_images: usize) -> String {
    let mut s = format!("<|im_start|>system\n{DEFAULT_SYSTEM}<|im_end|>\n<|im_start|>user\n");
    for _ in 0..n_images {
        s.push_str("<|vision_start|><|image_pad|><|vision_end|>");
    }
    s
}

/// Chat text from the user's prompt to the assistant turn's opening.
pub fn chat_suffix(prompt: &str) -> String {
    format!("{prompt}<|im_end|>\n<|im_start|>assistant\n")
}

/// A loaded checkpoint: model, tokenizer and image processor.
pub struct Pipeline {
    /// The network.
    pub model: Qwen2VL,
    /// `tokenizer.json`.
    pub tokenizer: tokenizers::Tokenizer,
    /// Image processor from `preprocessor_config.json`.
    pub processor: ImageProcessor,
    /// The checkpoint folder.
    pub dir: PathBuf,
}

impl Pipeline {
    /// Loads a checkpoint folder (config.json, safetensors, tokenizer.json, preprocessor_config.json).
    pub fn load(dir: &Path, device: &Device, dtype: DType) -> Result<Self> {
        let model = Qwen2VL::load(dir, device, dtype)?;
        let tpath = dir.join("tokenizer.json");
        if !tpath.exists() {
            return Err(Error::format(dir, None, "tokenizer.json missing"));
        }
        let tokenizer = tokenizers::Tokenizer::from_file(&tpath)
            .map_err(|e| Error::format(&tpath, None, format!("cannot read tokenizer: {e}")))?;
        let ppath = dir.join("preprocessor_config.json");
        let pcfg = if ppath.exists() {
            PreprocessorConfig::from_file(&ppath)?
        } else {
            PreprocessorConfig::default()
        };
        let pipe = Self {
            model,
            tokenizer,
            processor: ImageProcessor::new(pcfg),
            dir: dir.to_path_buf(),
        };
        let img = pipe.token_id("<|image_pad|>")?;
        if img != pipe.model.config.image_token_id {
            return Err(Error::format(
                &tpath,
                Some("<|image_pad|>".into()),
                format!(
                    "id {img} != config image_token_id {}",
                    pipe.model.config.image_token_id
                ),
            ));
        }
        Ok(pipe)
    }

    /// The id of a (special) token.
    pub fn token_id(&self, tok: &str) -> Result<u32> {
        self.tokenizer.token_to_id(tok).ok_or_else(|| {
            Error::format(
                self.dir.join("tokenizer.json"),
                Some(tok.into()),
                "token not in the vocabulary",
            )
        })
    }

    /// Token ids of `text` (special tokens in the text are recognized; nothing is added).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| Error::invalid("text", format!("tokenizer failed: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Decodes ids to text, skipping special tokens.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer
            .decode(ids, true)
            .map_err(|e| Error::invalid("ids", format!("tokenizer failed: {e}")))
    }

    /// Replaces each single `<|image_pad|>` by as many pads as its image has merged tokens.
    pub fn expand_image_pads(&self, ids: &[u32], grids: &[GridThw]) -> Result<Vec<u32>> {
        let pad = self.model.config.image_token_id;
        let m = self.model.config.vision.spatial_merge_size;
        let mut g = grids.iter();
        let mut out = Vec::with_capacity(ids.len());
        for &t in ids {
            if t == pad {
                let grid = g.next().ok_or_else(|| {
                    Error::invalid("prompt", "more image placeholders than images")
                })?;
                out.extend(std::iter::repeat_n(pad, grid.merged_tokens(m)));
            } else {
                out.push(t);
            }
        }
        if g.next().is_some() {
            return Err(Error::invalid(
                "prompt",
                "fewer image placeholders than images",
            ));
        }
        Ok(out)
    }

    /// Ids of the full chat for `n` images (already expanded for `grids`) and a prompt.
    pub fn chat_ids(&self, grids: &[GridThw], prompt: &str) -> Result<Vec<u32>> {
        check_prompt(prompt)?;
        let mut ids = self.encode(&chat_prefix(grids.len()))?;
        ids.extend(self.encode(&chat_suffix(prompt))?);
        self.expand_image_pads(&ids, grids)
    }

    /// Stop tokens: the config's EOS ids plus `<|im_end|>` and `<|endoftext|>` when the tokenizer has them.
    pub fn stop_ids(&self) -> Vec<u32> {
        let mut s = self.model.config.eos_token_ids.clone();
        for t in ["<|im_end|>", "<|endoftext|>"] {
            if let Some(id) = self.tokenizer.token_to_id(t) {
                s.push(id);
            }
        }
        s
    }

    /// Greedy answer to a prompt about zero or more images.
    pub fn generate_text(
        &self,
        images: &[image::RgbImage],
        prompt: &str,
        max_new: usize,
    ) -> Result<String> {
        let processed = if images.is_empty() {
            None
        } else {
            Some(self.processor.process(images, self.model.device())?)
        };
        let grids: Vec<GridThw> = processed
            .as_ref()
            .map(|p| p.grids.clone())
            .unwrap_or_default();
        let ids = self.chat_ids(&grids, prompt)?;
        let out = self
            .model
            .generate(&ids, processed.as_ref(), max_new, &self.stop_ids())?;
        self.decode(&out)
    }
}

/// Rejects an empty or whitespace-only prompt.
pub fn check_prompt(prompt: &str) -> Result<()> {
    if prompt.trim().is_empty() {
        return Err(Error::invalid("prompt", "empty prompt"));
    }
    Ok(())
}

//! A checkpoint as users call it: the network with its tokenizer and image processor, the chat format of the
//! official template, and greedy text generation.
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};

use super::{GridThw, ImageProcessor, PreprocessorConfig, Qwen2VL};
use crate::{Error, Result};

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
        Self::with_model(dir, Qwen2VL::load(dir, device, dtype)?)
    }

    /// A loaded network with the tokenizer and image processor of checkpoint folder `dir`.
    pub fn with_model(dir: &Path, model: Qwen2VL) -> Result<Self> {
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

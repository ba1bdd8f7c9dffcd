//! Checkpoint configuration: `config.json` (flat transformers-4.x layout and nested 5.x layout) and
//! `preprocessor_config.json` (top-level `min_pixels`/`max_pixels` or a `size` object).
use std::path::Path;

use serde_json::Value;

use crate::{Error, Result};

/// Text decoder dimensions (Qwen2 with multimodal rotary embeddings).
#[derive(Debug, Clone, PartialEq)]
pub struct TextConfig {
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the SwiGLU MLP.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention).
    pub num_key_value_heads: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// Rotary base.
    pub rope_theta: f64,
    /// M-RoPE split of the `head_dim / 2` rotary frequencies into (temporal, height, width) sections.
    pub mrope_section: [usize; 3],
    /// Vocabulary size (rows of the embedding table).
    pub vocab_size: usize,
    /// Whether the LM head shares the embedding matrix.
    pub tie_word_embeddings: bool,
}

impl TextConfig {
    /// Per-head width.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

/// Vision tower dimensions.
#[derive(Debug, Clone, PartialEq)]
pub struct VisionConfig {
    /// Number of transformer blocks.
    pub depth: usize,
    /// Width of the vision transformer.
    pub embed_dim: usize,
    /// Attention heads.
    pub num_heads: usize,
    /// MLP width = `embed_dim * mlp_ratio`.
    pub mlp_ratio: f64,
    /// Input channels (3).
    pub in_channels: usize,
    /// Output width of the patch merger (the text hidden size).
    pub hidden_size: usize,
    /// Patch edge in pixels (14).
    pub patch_size: usize,
    /// Spatial merge factor (2 → 2×2 patches become one token).
    pub spatial_merge_size: usize,
    /// Frames per temporal patch (2).
    pub temporal_patch_size: usize,
}

impl VisionConfig {
    /// Per-head width.
    pub fn head_dim(&self) -> usize {
        self.embed_dim / self.num_heads
    }
    /// MLP hidden width.
    pub fn mlp_hidden(&self) -> usize {
        (self.embed_dim as f64 * self.mlp_ratio).round() as usize
    }
}

/// Whole-model configuration of a Qwen2-VL checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Text decoder.
    pub text: TextConfig,
    /// Vision tower.
    pub vision: VisionConfig,
    /// `<|image_pad|>` id.
    pub image_token_id: u32,
    /// `<|vision_start|>` id.
    pub vision_start_token_id: u32,
    /// `<|vision_end|>` id.
    pub vision_end_token_id: u32,
    /// End-of-sequence ids (generation stops on any of them).
    pub eos_token_ids: Vec<u32>,
}

fn get<'a>(objs: &[&'a Value], key: &str) -> Option<&'a Value> {
    objs.iter()
        .find_map(|o| o.get(key).filter(|v| !v.is_null()))
}

fn req_usize(path: &Path, objs: &[&Value], key: &str) -> Result<usize> {
    get(objs, key)
        .and_then(Value::as_u64)
        .map(|v| v as usize)
        .ok_or_else(|| {
            Error::format(
                path,
                Some(key.into()),
                "missing or not a non-negative integer",
            )
        })
}

fn opt_f64(objs: &[&Value], key: &str) -> Option<f64> {
    get(objs, key).and_then(Value::as_f64)
}

impl Config {
    /// Reads `config.json` from a file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json_str(&text, path)
    }

    /// Parses the JSON text of a `config.json`; `path` is used in error messages only.
    pub fn from_json_str(text: &str, path: &Path) -> Result<Self> {
        let root: Value = serde_json::from_str(text)
            .map_err(|e| Error::format(path, None, format!("not JSON: {e}")))?;
        let arch_ok = |v: &Value| {
            v.as_str()
                .is_some_and(|s| s.starts_with("Qwen2VL") || s.starts_with("Qwen2_VL"))
        };
        let model_type_ok = root
            .get("model_type")
            .and_then(Value::as_str)
            .is_none_or(|m| m == "qwen2_vl");
        let archs_ok = match root.get("architectures").and_then(Value::as_array) {
            Some(a) => a.iter().any(arch_ok),
            None => true,
        };
        if !model_type_ok || !archs_ok {
            return Err(Error::format(
                path,
                Some("architectures/model_type".into()),
                format!(
                    "unsupported architecture (model_type {:?}, architectures {:?}); expected Qwen2-VL",
                    root.get("model_type"),
                    root.get("architectures")
                ),
            ));
        }
        let empty = Value::Null;
        let text_cfg = root.get("text_config").unwrap_or(&empty);
        // Nested (5.x) fields take precedence, the flat top level is the fallback.
        let t: Vec<&Value> = vec![text_cfg, &root];
        let rope = get(&t, "rope_parameters").or_else(|| get(&t, "rope_scaling"));
        let rope_objs: Vec<&Value> = rope.into_iter().collect();
        let section = get(&rope_objs, "mrope_section")
            .and_then(Value::as_array)
            .ok_or_else(|| Error::format(path, Some("mrope_section".into()), "missing"))?;
        let section: Vec<usize> = section
            .iter()
            .filter_map(Value::as_u64)
            .map(|v| v as usize)
            .collect();
        if section.len() != 3 {
            return Err(Error::format(
                path,
                Some("mrope_section".into()),
                "expected three integers",
            ));
        }
        let rope_theta = opt_f64(&rope_objs, "rope_theta")
            .or_else(|| opt_f64(&t, "rope_theta"))
            .unwrap_or(1_000_000.0);
        let text = TextConfig {
            hidden_size: req_usize(path, &t, "hidden_size")?,
            intermediate_size: req_usize(path, &t, "intermediate_size")?,
            num_hidden_layers: req_usize(path, &t, "num_hidden_layers")?,
            num_attention_heads: req_usize(path, &t, "num_attention_heads")?,
            num_key_value_heads: req_usize(path, &t, "num_key_value_heads")?,
            rms_norm_eps: opt_f64(&t, "rms_norm_eps").unwrap_or(1e-6),
            rope_theta,
            mrope_section: [section[0], section[1], section[2]],
            vocab_size: req_usize(path, &t, "vocab_size")?,
            tie_word_embeddings: get(&[&root, text_cfg], "tie_word_embeddings")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        };
        let v = root
            .get("vision_config")
            .ok_or_else(|| Error::format(path, Some("vision_config".into()), "missing"))?;
        let vo: Vec<&Value> = vec![v];
        let vision = VisionConfig {
            depth: req_usize(path, &vo, "depth")?,
            embed_dim: req_usize(path, &vo, "embed_dim")?,
            num_heads: req_usize(path, &vo, "num_heads")?,
            mlp_ratio: opt_f64(&vo, "mlp_ratio").unwrap_or(4.0),
            in_channels: get(&vo, "in_channels")
                .or_else(|| get(&vo, "in_chans"))
                .and_then(Value::as_u64)
                .unwrap_or(3) as usize,
            hidden_size: get(&vo, "hidden_size")
                .and_then(Value::as_u64)
                .map(|x| x as usize)
                .unwrap_or(text.hidden_size),
            patch_size: get(&vo, "patch_size").and_then(Value::as_u64).unwrap_or(14) as usize,
            spatial_merge_size: get(&vo, "spatial_merge_size")
                .and_then(Value::as_u64)
                .unwrap_or(2) as usize,
            temporal_patch_size: get(&vo, "temporal_patch_size")
                .and_then(Value::as_u64)
                .unwrap_or(2) as usize,
        };
        let tok = |key: &str, default: u32| -> u32 {
            get(&[&root, text_cfg], key)
                .and_then(Value::as_u64)
                .map(|x| x as u32)
                .unwrap_or(default)
        };
        let mut eos_token_ids = Vec::new();
        match get(&[&root, text_cfg], "eos_token_id") {
            Some(Value::Array(a)) => {
                eos_token_ids.extend(a.iter().filter_map(Value::as_u64).map(|x| x as u32))
            }
            Some(Value::Number(n)) => eos_token_ids.extend(n.as_u64().map(|x| x as u32)),
            _ => {}
        }
        let cfg = Config {
            text,
            vision,
            image_token_id: tok("image_token_id", 151655),
            vision_start_token_id: tok("vision_start_token_id", 151652),
            vision_end_token_id: tok("vision_end_token_id", 151653),
            eos_token_ids,
        };
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// Checks the internal consistency of the dimensions.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let t = &self.text;
        let bad = |k: &str, why: String| Err(Error::format(path, Some(k.into()), why));
        if t.num_attention_heads == 0 || !t.hidden_size.is_multiple_of(t.num_attention_heads) {
            return bad("num_attention_heads", "must divide hidden_size".into());
        }
        if t.num_key_value_heads == 0
            || !t.num_attention_heads.is_multiple_of(t.num_key_value_heads)
        {
            return bad(
                "num_key_value_heads",
                "must divide num_attention_heads".into(),
            );
        }
        if !t.head_dim().is_multiple_of(2)
            || t.mrope_section.iter().sum::<usize>() != t.head_dim() / 2
        {
            return bad(
                "mrope_section",
                format!(
                    "{:?} must sum to head_dim/2 = {}",
                    t.mrope_section,
                    t.head_dim() / 2
                ),
            );
        }
        let v = &self.vision;
        if v.num_heads == 0
            || !v.embed_dim.is_multiple_of(v.num_heads)
            || !v.head_dim().is_multiple_of(4)
        {
            return bad(
                "vision_config.num_heads",
                "head_dim must be a multiple of 4".into(),
            );
        }
        if v.hidden_size != t.hidden_size {
            return bad(
                "vision_config.hidden_size",
                format!(
                    "merger width {} != text hidden_size {}",
                    v.hidden_size, t.hidden_size
                ),
            );
        }
        if v.patch_size == 0 || v.spatial_merge_size == 0 || v.temporal_patch_size == 0 {
            return bad("vision_config", "zero patch/merge/temporal size".into());
        }
        Ok(())
    }
}

/// Image preprocessing parameters (`preprocessor_config.json`).
#[derive(Debug, Clone, PartialEq)]
pub struct PreprocessorConfig {
    /// Lower bound on the resized pixel count.
    pub min_pixels: usize,
    /// Upper bound on the resized pixel count.
    pub max_pixels: usize,
    /// Per-channel mean after rescaling to [0, 1].
    pub image_mean: [f32; 3],
    /// Per-channel standard deviation.
    pub image_std: [f32; 3],
    /// Patch edge in pixels.
    pub patch_size: usize,
    /// Merge factor.
    pub merge_size: usize,
    /// Frames per temporal patch.
    pub temporal_patch_size: usize,
}

impl Default for PreprocessorConfig {
    fn default() -> Self {
        Self {
            min_pixels: 56 * 56,
            max_pixels: 28 * 28 * 1280,
            image_mean: [0.481_454_66, 0.457_827_5, 0.408_210_73],
            image_std: [0.268_629_54, 0.261_302_6, 0.275_777_1],
            patch_size: 14,
            merge_size: 2,
            temporal_patch_size: 2,
        }
    }
}

impl PreprocessorConfig {
    /// Reads `preprocessor_config.json`; both published shapes are accepted.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json_str(&text, path)
    }

    /// Parses the JSON text; `path` is used in error messages only.
    pub fn from_json_str(text: &str, path: &Path) -> Result<Self> {
        let root: Value = serde_json::from_str(text)
            .map_err(|e| Error::format(path, None, format!("not JSON: {e}")))?;
        let mut c = Self::default();
        let size = root.get("size");
        let num = |keys: &[(&Option<&Value>, &str)]| -> Option<u64> {
            keys.iter()
                .find_map(|(o, k)| o.and_then(|o| o.get(*k)).and_then(Value::as_u64))
        };
        let r = Some(&root);
        if let Some(v) = num(&[
            (&r, "min_pixels"),
            (&size, "shortest_edge"),
            (&size, "min_pixels"),
        ]) {
            c.min_pixels = v as usize;
        }
        if let Some(v) = num(&[
            (&r, "max_pixels"),
            (&size, "longest_edge"),
            (&size, "max_pixels"),
        ]) {
            c.max_pixels = v as usize;
        }
        let arr3 = |k: &str| -> Result<Option<[f32; 3]>> {
            match root.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::Array(a)) if a.len() == 3 && a.iter().all(Value::is_number) => {
                    Ok(Some([
                        a[0].as_f64().unwrap_or(0.0) as f32,
                        a[1].as_f64().unwrap_or(0.0) as f32,
                        a[2].as_f64().unwrap_or(0.0) as f32,
                    ]))
                }
                Some(_) => Err(Error::format(
                    path,
                    Some(k.into()),
                    "expected three numbers",
                )),
            }
        };
        if let Some(m) = arr3("image_mean")? {
            c.image_mean = m;
        }
        if let Some(s) = arr3("image_std")? {
            c.image_std = s;
        }
        if let Some(v) = root.get("patch_size").and_then(Value::as_u64) {
            c.patch_size = v as usize;
        }
        if let Some(v) = root.get("merge_size").and_then(Value::as_u64) {
            c.merge_size = v as usize;
        }
        if let Some(v) = root.get("temporal_patch_size").and_then(Value::as_u64) {
            c.temporal_patch_size = v as usize;
        }
        if c.min_pixels > c.max_pixels
            || c.patch_size == 0
            || c.merge_size == 0
            || c.temporal_patch_size == 0
        {
            return Err(Error::format(
                path,
                None,
                "inconsistent min/max pixels or zero patch sizes",
            ));
        }
        if c.image_std.iter().any(|s| *s <= 0.0) {
            return Err(Error::format(
                path,
                Some("image_std".into()),
                "must be positive",
            ));
        }
        Ok(c)
    }
}

//! `vlm3d bench`: one detection on random weights at the tiny fixture's or the real Qwen2-VL-2B's dimensions,
//! through [`Detector`] itself (pre-processing, vision tower over all views, image prefill, prompt and box
//! queries with the cached image prefix, box head), timing each part and the process's peak resident memory.
//! A second prompt on the same frame shows what the image-prefix reuse saves.
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use image::RgbImage;
use rand::{Rng, SeedableRng};

use crate::geometry::ViewCamera;
use crate::model::detector::{Detector, DetectorConfig};
use crate::model::qwen2vl::{
    Config, ImageProcessor, Pipeline, PreprocessorConfig, Qwen2VL, TextConfig, VisionConfig,
};
use crate::proc::{peak_rss_mib, reset_peak_rss};
use crate::{Error, Result};

/// Qwen2's pre-tokenization pattern (from its `tokenizer.json`): with it, a word-level vocabulary cuts the chat
/// template into as many tokens as the real BPE tokenizer does (14 before the image, 5 after the prompt).
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

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

/// Random weights under the Hugging Face names for `cfg` on `device` ([`crate::model::qwen2vl::init`]'s draw:
/// norms 1, biases 0, the rest normal with std √(1 / fan_in)).
pub fn random_weights(cfg: &Config, device: &Device) -> Result<HashMap<String, Tensor>> {
    crate::model::qwen2vl::init::random_weights(cfg, 0)?
        .into_iter()
        .map(|(k, t)| Ok((k, t.to_device(device)?)))
        .collect()
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
    /// Seconds in pre-processing and the vision tower.
    pub vision_s: f64,
    /// Seconds in the decoder (image prefill, prompt, queries) and the head.
    pub decoder_s: f64,
    /// Total seconds of the detection (first prompt): the median of vision + decoder over the repeats.
    pub total_s: f64,
    /// Seconds for a second prompt on the same frame (image prefix reused).
    pub second_prompt_s: f64,
    /// Peak resident memory of the process during the row (weights included), MiB.
    pub peak_rss_mib: f64,
}

/// A tokenizer for random-weight models: Qwen2's special tokens at `cfg`'s ids and every other pre-token one
/// unknown-word id, so sequences have the real template's length without a vocabulary file.
pub fn bench_tokenizer(cfg: &Config) -> Result<tokenizers::Tokenizer> {
    use tokenizers::models::wordlevel::WordLevel;
    use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
    use tokenizers::{AddedToken, SplitDelimiterBehavior};
    let bad = |e: tokenizers::Error| Error::invalid("bench tokenizer", e.to_string());
    let base = cfg.image_token_id - 12;
    let special = [
        ("<|endoftext|>", base),
        ("<|im_start|>", base + 1),
        ("<|im_end|>", base + 2),
        ("<|vision_start|>", cfg.vision_start_token_id),
        ("<|vision_end|>", cfg.vision_end_token_id),
        ("<|image_pad|>", cfg.image_token_id),
        ("<|video_pad|>", base + 13),
    ];
    let mut vocab: HashMap<String, u32> =
        special.iter().map(|&(t, i)| (t.to_string(), i)).collect();
    vocab.insert("[UNK]".into(), base + 20);
    let model = WordLevel::builder()
        .vocab(vocab.into_iter().collect())
        .unk_token("[UNK]".into())
        .build()
        .map_err(bad)?;
    let mut tok = tokenizers::Tokenizer::new(model);
    let split = Split::new(
        SplitPattern::Regex(QWEN2_SPLIT.into()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .map_err(bad)?;
    tok.with_pre_tokenizer(Some(split));
    let added: Vec<AddedToken> = special
        .iter()
        .map(|&(t, _)| AddedToken::from(t, true))
        .collect();
    tok.add_special_tokens(added).map_err(bad)?;
    Ok(tok)
}

/// A [`Detector`] with random weights of `which` size on `device` in `dtype`, its image processor bounded to
/// `max_pixels` per view.
pub fn random_detector(
    which: BenchModel,
    max_pixels: usize,
    device: &Device,
    dtype: DType,
) -> Result<Detector> {
    Ok(random_detector_with(which, max_pixels, device, dtype, None)?.0)
}

/// [`random_detector`] whose weights that `trainable` accepts (by checkpoint name) are variables, returned beside
/// it, as full fine-tuning loads them.
pub fn random_detector_with(
    which: BenchModel,
    max_pixels: usize,
    device: &Device,
    dtype: DType,
    trainable: Option<crate::model::qwen2vl::weights::WeightFilter>,
) -> Result<(Detector, crate::model::qwen2vl::weights::NamedVars)> {
    let cfg = which.config();
    let weights = random_weights(&cfg, device)?;
    let vb = VarBuilder::from_tensors(weights, dtype, device);
    let (vb, vars) = match trainable {
        None => (vb, None),
        Some(f) => {
            let (backend, vars) = crate::model::qwen2vl::weights::TrainableBackend::new(vb, f);
            (
                VarBuilder::from_backend(Box::new(backend), dtype, device.clone()),
                Some(vars),
            )
        }
    };
    let model = Qwen2VL::from_var_builder(cfg.clone(), vb, std::path::Path::new(which.name()))?;
    let vars = match vars {
        None => Vec::new(),
        Some(v) => v
            .lock()
            .map(|v| v.clone())
            .map_err(|_| crate::Error::invalid("trainable weights", "lock poisoned"))?,
    };
    let processor = ImageProcessor::new(PreprocessorConfig {
        max_pixels,
        ..PreprocessorConfig::default()
    });
    let pipeline = Pipeline {
        model,
        tokenizer: bench_tokenizer(&cfg)?,
        processor,
        dir: PathBuf::from(which.name()),
    };
    let det = Detector::new(
        pipeline,
        DetectorConfig {
            score_threshold: 0.0,
            ..DetectorConfig::default()
        },
    )?;
    Ok((det, vars))
}

/// A prompt of `n` tokens under [`bench_tokenizer`] (one word each).
pub fn bench_prompt(n: usize, word: &str) -> String {
    vec![word; n.max(1)].join(" ")
}

/// What one `vlm3d bench` row runs.
#[derive(Debug, Clone)]
pub struct ForwardBenchOptions {
    /// Model size.
    pub model: BenchModel,
    /// Camera views per frame.
    pub views: usize,
    /// Image width, pixels.
    pub width: usize,
    /// Image height, pixels.
    pub height: usize,
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Where the model runs.
    pub device: Device,
    /// Weight and activation precision.
    pub dtype: DType,
    /// Untimed detections before the clock starts (kernel compilation, allocator warm-up).
    pub warmup: usize,
    /// Timed detections; each column reports their median.
    pub repeat: usize,
}

/// Builds a random model and times detections of `views` random images and a prompt, then a second prompt on
/// the same frame (the image prefix reused). The device is synchronized before every clock reading, so GPU
/// times are not just launch times.
pub fn run(o: &ForwardBenchOptions) -> Result<BenchRow> {
    if o.views == 0 || o.width == 0 || o.height == 0 || o.repeat == 0 {
        return Err(Error::invalid(
            "bench",
            format!(
                "{} views of {}×{}, {} repeats: each must be at least 1",
                o.views, o.width, o.height, o.repeat
            ),
        ));
    }
    reset_peak_rss();
    let det = random_detector(o.model, o.width * o.height, &o.device, o.dtype)?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let images: Vec<RgbImage> = (0..o.views)
        .map(|_| {
            RgbImage::from_fn(o.width as u32, o.height as u32, |_, _| {
                image::Rgb(rng.random())
            })
        })
        .collect();
    let cameras = vec![ViewCamera::nominal(o.width as u32, o.height as u32)?; o.views];
    let prompt = bench_prompt(o.prompt_tokens, "car");
    let second = bench_prompt(o.prompt_tokens, "bus");
    let clock = || -> Result<Instant> {
        o.device.synchronize()?;
        Ok(Instant::now())
    };
    let mut samples: Vec<[f64; 3]> = Vec::with_capacity(o.repeat);
    let mut grids = Vec::new();
    for i in 0..o.warmup + o.repeat {
        let t0 = clock()?;
        let (feats, g) = det.encode_images(&images)?;
        let t1 = clock()?;
        let prefix = det.prefill(&feats, &g, &cameras)?;
        let first = det.detect_cached(&prefix, &prompt)?;
        let t2 = clock()?;
        let again = det.detect_cached(&prefix, &second)?;
        let t3 = clock()?;
        std::hint::black_box((first, again));
        grids = g;
        if i >= o.warmup {
            samples.push([
                (t1 - t0).as_secs_f64(),
                (t2 - t1).as_secs_f64(),
                (t3 - t2).as_secs_f64(),
            ]);
        }
    }
    let median = |k: usize| super::median(samples.iter().map(|s| s[k]).collect());
    let seq = det.pipeline.chat_ids(&grids[..1], &prompt)?.len() + det.head.num_queries();
    Ok(BenchRow {
        model: o.model.name(),
        views: o.views,
        seq_per_view: seq,
        vision_s: median(0),
        decoder_s: median(1),
        total_s: super::median(samples.iter().map(|s| s[0] + s[1]).collect()),
        second_prompt_s: median(2),
        peak_rss_mib: peak_rss_mib().unwrap_or(f64::NAN),
    })
}

/// Formats rows as a markdown table.
pub fn table(rows: &[BenchRow]) -> String {
    let mut s = String::from(
        "| model | views | tokens/view | vision s | decoder+head s | total s | 2nd prompt s | peak RSS MiB |\n|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        s.push_str(&format!(
            "| {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.3} | {:.0} |\n",
            r.model,
            r.views,
            r.seq_per_view,
            r.vision_s,
            r.decoder_s,
            r.total_s,
            r.second_prompt_s,
            r.peak_rss_mib
        ));
    }
    s
}

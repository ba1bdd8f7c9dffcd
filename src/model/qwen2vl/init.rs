//! Fresh random weights for a Qwen2-VL configuration: the starting point of a base trained from scratch (the
//! pre-training recipe's `models/tiny-synth`), written under the checkpoint names the loader reads, so the
//! folder is an ordinary Hugging Face checkpoint.
//!
//! The model's own loading code asks for every tensor it needs; [`InitBackend`] answers each request with a
//! draw seeded by the run's seed and the tensor's name (so a tensor's values do not depend on the loading
//! order): norms 1, biases 0, the rest normal with std √(1 / fan_in) (unit-variance activations at any width).
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::VarBuilder;
use rand::SeedableRng;

use super::config::Config;
use super::Qwen2VL;
use crate::{Error, Result};

/// A [`VarBuilder`] backend that draws every requested tensor (see the module's documentation) and records it.
struct InitBackend {
    seed: u64,
    tied: bool,
    drawn: Arc<Mutex<HashMap<String, Tensor>>>,
}

impl InitBackend {
    fn draw(&self, shape: &Shape, name: &str) -> candle_core::Result<Tensor> {
        let mut drawn = self
            .drawn
            .lock()
            .map_err(|_| candle_core::Error::Msg("init: lock poisoned".into()))?;
        if let Some(t) = drawn.get(name) {
            return Ok(t.clone());
        }
        let dims = shape.dims();
        let n = shape.elem_count();
        let leaf = name.rsplit('.').nth(1).unwrap_or("");
        let values: Vec<f32> = if name.ends_with(".bias") {
            vec![0.0; n]
        } else if leaf.contains("norm") || leaf == "ln_q" {
            vec![1.0; n]
        } else {
            let fan_in: usize = dims.iter().skip(1).product::<usize>().max(1);
            let std = (1.0 / fan_in as f64).sqrt();
            // 64-bit FNV-1a of "seed/name" (the data module's `fnv1a64`, which this layer cannot import).
            let key = format!("{}/{name}", self.seed)
                .bytes()
                .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                    (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
                });
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(key);
            (0..n)
                .map(|_| (std * standard_normal(&mut rng)) as f32)
                .collect()
        };
        let t = Tensor::from_vec(values, dims, &Device::Cpu)?;
        drawn.insert(name.to_string(), t.clone());
        Ok(t)
    }
}

impl candle_nn::var_builder::SimpleBackend for InitBackend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.draw(&s, name)?.to_dtype(dtype)?.to_device(dev)
    }

    fn get_unchecked(
        &self,
        name: &str,
        _dtype: DType,
        _dev: &Device,
    ) -> candle_core::Result<Tensor> {
        candle_core::bail!("init: {name} requested without a shape")
    }

    fn contains_tensor(&self, name: &str) -> bool {
        // The transformers 4.x names (one naming; the loader tries the 5.x module paths only when these are
        // missing), and no separate output layer when the embeddings are tied.
        !(name.starts_with("model.visual.")
            || name.starts_with("model.language_model.")
            || (self.tied && name == "lm_head.weight"))
    }
}

/// A standard normal draw (Box–Muller).
fn standard_normal(rng: &mut impl rand::Rng) -> f64 {
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// Every weight of a model of `config` drawn from `seed`, by checkpoint name (f32, on the CPU).
pub fn random_weights(config: &Config, seed: u64) -> Result<HashMap<String, Tensor>> {
    let drawn = Arc::new(Mutex::new(HashMap::new()));
    let backend = InitBackend {
        seed,
        tied: config.text.tie_word_embeddings,
        drawn: drawn.clone(),
    };
    let vb = VarBuilder::from_backend(Box::new(backend), DType::F32, Device::Cpu);
    Qwen2VL::from_var_builder(config.clone(), vb, Path::new("<random init>"))?;
    let map = drawn
        .lock()
        .map_err(|_| Error::invalid("init", "lock poisoned"))?
        .clone();
    Ok(map)
}

/// Files of a checkpoint folder besides its configuration and weights (tokenizer and processor).
pub const SIDE_FILES: [&str; 4] = [
    "tokenizer.json",
    "preprocessor_config.json",
    "generation_config.json",
    "chat_template.json",
];

/// Writes a fresh checkpoint folder `out`: `config_path`'s configuration, weights drawn from `seed`, and the
/// tokenizer and processor files of `like` (a checkpoint folder whose tokenizer fits the configuration's
/// vocabulary). Returns the number of weights.
pub fn write_random_checkpoint(
    config_path: &Path,
    like: &Path,
    out: &Path,
    seed: u64,
) -> Result<usize> {
    let config = Config::from_file(config_path)?;
    let weights = random_weights(&config, seed)?;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    for f in SIDE_FILES {
        let src = like.join(f);
        if src.exists() {
            std::fs::copy(&src, out.join(f)).map_err(|e| Error::io(&src, e))?;
        }
    }
    let cfg_out = out.join("config.json");
    std::fs::copy(config_path, &cfg_out).map_err(|e| Error::io(config_path, e))?;
    candle_core::safetensors::save(&weights, out.join("model.safetensors"))?;
    Ok(weights.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fixture's configuration: every tensor of the fixture checkpoint is drawn, with the fixture's shapes,
    /// the draws have the documented statistics, and the written folder loads.
    #[test]
    fn random_weights_cover_the_checkpoint() {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qwen2vl_tiny");
        let config = Config::from_file(&fixture.join("config.json")).unwrap();
        let drawn = random_weights(&config, 3).unwrap();
        let reference =
            super::super::weights::read_file(&fixture.join("model.safetensors")).unwrap();
        let mut names: Vec<&String> = drawn.keys().collect();
        names.sort();
        let mut want: Vec<&String> = reference.keys().collect();
        want.sort();
        assert_eq!(names, want);
        for (name, t) in &drawn {
            assert_eq!(t.dims(), reference[name].dims(), "{name}");
        }
        let v = |n: &str| -> Vec<f32> { drawn[n].flatten_all().unwrap().to_vec1().unwrap() };
        assert!(v("model.norm.weight").iter().all(|&x| x == 1.0));
        assert!(v("model.layers.0.self_attn.q_proj.bias")
            .iter()
            .all(|&x| x == 0.0));
        let w = v("model.layers.0.mlp.down_proj.weight");
        let std = (w.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>() / w.len() as f64).sqrt();
        let want = (1.0 / config.text.intermediate_size as f64).sqrt();
        assert!((std / want - 1.0).abs() < 0.1, "{std} vs {want}");
        // Another seed, other values; the same seed, the same.
        let embedding = |seed| -> Vec<f32> {
            random_weights(&config, seed).unwrap()["model.embed_tokens.weight"]
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap()
        };
        assert_eq!(v("model.embed_tokens.weight"), embedding(3));
        assert_ne!(v("model.embed_tokens.weight"), embedding(4));
        let out = std::env::temp_dir().join(format!("vlm3d-init-{}", std::process::id()));
        write_random_checkpoint(&fixture.join("config.json"), &fixture, &out, 3).unwrap();
        Qwen2VL::load(&out, &Device::Cpu, DType::F32).unwrap();
        std::fs::remove_dir_all(&out).unwrap();
    }
}

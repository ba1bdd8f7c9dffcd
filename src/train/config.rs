//! The training recipe (`config/train.yaml`, schema `schema/train.schema.json`): the paper's two stages as the
//! default. Unknown keys and impossible values are errors that name the key.
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::geometry::Frame;
use crate::model::lora::{LoraConfig, ATTENTION_MODULES};
use crate::{Error, Result};

/// One training stage: its length, learning rate and loss weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageConfig {
    /// Length in optimizer steps (exactly one of `steps` and `epochs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<usize>,
    /// Length in passes over the training items.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epochs: Option<usize>,
    /// Peak learning rate (AdamW).
    pub lr: f64,
    /// λ1: weight of the embedding MSE.
    pub lambda_mse: f64,
    /// λ2: weight of `1 − IoU3D`.
    pub lambda_iou: f64,
}

/// LoRA settings (the paper: rank 16, alpha 32 on the decoder's q, k, v, o).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraSettings {
    /// Rank.
    pub r: usize,
    /// Scaling numerator (update scaled by alpha / r).
    pub alpha: f64,
    /// Dropout on the adapter input.
    #[serde(default)]
    pub dropout: f32,
    /// Decoder self-attention projections that get adapters.
    pub targets: Vec<String>,
}

/// Learning-rate schedule after the warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// Cosine decay to 0 over each stage.
    Cosine,
    /// The stage's rate throughout.
    Constant,
}

/// The whole recipe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Qwen2-VL checkpoint folder (Hugging Face layout).
    pub model: PathBuf,
    /// rosbag2 folders to train on.
    pub train_bags: Vec<PathBuf>,
    /// rosbag2 folders for validation (may be empty).
    #[serde(default)]
    pub val_bags: Vec<PathBuf>,
    /// Frame of the box targets (camera by default; lidar is the paper's setting).
    #[serde(default)]
    pub frame: Frame,
    /// Seed of the head, the adapters' initialization and the data order.
    pub seed: u64,
    /// Box queries per view.
    pub queries: usize,
    /// Upper bound on pixels per image given to the image processor.
    pub max_pixels: usize,
    /// Prompts for absent categories per view ("no object" examples), at most; all when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_negatives: Option<usize>,
    /// Examples (view, prompt) per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accumulation: usize,
    /// AdamW weight decay.
    pub weight_decay: f64,
    /// Largest global gradient norm (0: no clipping).
    pub grad_clip: f64,
    /// Linear warm-up steps at the start of each stage.
    pub warmup_steps: usize,
    /// Schedule after the warm-up.
    pub schedule: Schedule,
    /// Weight of the confidence loss.
    pub confidence_weight: f64,
    /// Stage 1 (MSE).
    pub stage1: StageConfig,
    /// Stage 2 (MSE + IoU).
    pub stage2: StageConfig,
    /// Adapters.
    pub lora: LoraSettings,
    /// A checkpoint every this many optimizer steps (and at the end of each epoch).
    pub checkpoint_every: usize,
    /// Most megabytes of cached vision features (the frozen tower's output is computed once per image).
    pub feature_cache_mb: usize,
}

fn bad(key: &str, why: impl Into<String>) -> Error {
    Error::invalid(format!("training config key `{key}`"), why)
}

impl TrainConfig {
    /// Reads and validates a YAML recipe; relative paths are taken from the file's folder.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let mut cfg: TrainConfig =
            serde_yaml::from_str(&text).map_err(|e| Error::format(path, None, e.to_string()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut cfg.model);
        cfg.train_bags.iter_mut().for_each(fix);
        cfg.val_bags.iter_mut().for_each(fix);
        cfg.validate()
            .map_err(|e| Error::format(path, None, e.to_string()))?;
        Ok(cfg)
    }

    /// Checks every value; the error names the key.
    pub fn validate(&self) -> Result<()> {
        if self.train_bags.is_empty() {
            return Err(bad("train_bags", "no training bag"));
        }
        for (key, v) in [
            ("queries", self.queries),
            ("max_pixels", self.max_pixels),
            ("batch_size", self.batch_size),
            ("grad_accumulation", self.grad_accumulation),
            ("checkpoint_every", self.checkpoint_every),
            ("lora.r", self.lora.r),
        ] {
            if v == 0 {
                return Err(bad(key, "must be at least 1"));
            }
        }
        for (key, v) in [
            ("weight_decay", self.weight_decay),
            ("grad_clip", self.grad_clip),
            ("confidence_weight", self.confidence_weight),
            ("lora.alpha", self.lora.alpha),
        ] {
            if !v.is_finite() || v < 0.0 {
                return Err(bad(key, format!("{v} (must be finite and ≥ 0)")));
            }
        }
        if !(0.0..1.0).contains(&self.lora.dropout) {
            return Err(bad(
                "lora.dropout",
                format!("{} (must be in [0, 1))", self.lora.dropout),
            ));
        }
        if self.lora.targets.is_empty() {
            return Err(bad("lora.targets", "no projection"));
        }
        for t in &self.lora.targets {
            if !ATTENTION_MODULES.contains(&t.as_str()) {
                return Err(bad(
                    "lora.targets",
                    format!("{t:?} is not one of {ATTENTION_MODULES:?}"),
                ));
            }
        }
        for (name, s) in [("stage1", &self.stage1), ("stage2", &self.stage2)] {
            match (s.steps, s.epochs) {
                (Some(_), Some(_)) => return Err(bad(name, "give steps or epochs, not both")),
                (None, None) => return Err(bad(name, "give steps or epochs")),
                _ => {}
            }
            if !s.lr.is_finite() || s.lr <= 0.0 {
                return Err(bad(
                    &format!("{name}.lr"),
                    format!("{} (must be > 0)", s.lr),
                ));
            }
            for (k, v) in [("lambda_mse", s.lambda_mse), ("lambda_iou", s.lambda_iou)] {
                if !v.is_finite() || v < 0.0 {
                    return Err(bad(&format!("{name}.{k}"), format!("{v} (must be ≥ 0)")));
                }
            }
        }
        Ok(())
    }

    /// The adapters' PEFT configuration.
    pub fn lora_config(&self) -> LoraConfig {
        LoraConfig {
            r: self.lora.r,
            lora_alpha: self.lora.alpha,
            lora_dropout: self.lora.dropout,
            target_modules: self.lora.targets.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHIPPED: &str = include_str!("../../config/train.yaml");

    #[test]
    fn the_shipped_recipe_is_the_papers() {
        let c: TrainConfig = serde_yaml::from_str(SHIPPED).unwrap();
        c.validate().unwrap();
        assert_eq!(
            (c.stage1.lr, c.stage1.lambda_mse, c.stage1.lambda_iou),
            (1e-4, 1.0, 0.0)
        );
        assert_eq!(
            (c.stage2.lr, c.stage2.lambda_mse, c.stage2.lambda_iou),
            (1e-5, 0.2, 0.8)
        );
        assert_eq!((c.lora.r, c.lora.alpha), (16, 32.0));
        assert_eq!(c.lora.targets, ATTENTION_MODULES);
    }

    #[test]
    fn bad_recipes_name_the_key() {
        let unknown = SHIPPED.replace("seed:", "colour: red\nseed:");
        let e = serde_yaml::from_str::<TrainConfig>(&unknown)
            .unwrap_err()
            .to_string();
        assert!(e.contains("colour"), "{e}");
        let mut c: TrainConfig = serde_yaml::from_str(SHIPPED).unwrap();
        c.stage1.lr = -1e-4;
        assert!(c.validate().unwrap_err().to_string().contains("stage1.lr"));
        let mut c: TrainConfig = serde_yaml::from_str(SHIPPED).unwrap();
        c.batch_size = 0;
        assert!(c.validate().unwrap_err().to_string().contains("batch_size"));
        let mut c: TrainConfig = serde_yaml::from_str(SHIPPED).unwrap();
        c.lora.targets = vec!["gate_proj".into()];
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("lora.targets"));
        let mut c: TrainConfig = serde_yaml::from_str(SHIPPED).unwrap();
        c.stage2.epochs = Some(1);
        c.stage2.steps = Some(1);
        assert!(c.validate().unwrap_err().to_string().contains("stage2"));
    }
}

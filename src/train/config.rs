//! The training recipe (`config/train.yaml`, schema `schema/train.schema.json`): the paper's two stages as the
//! default. Unknown keys and impossible values are errors that name the key.
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::model::box_head::{CentreCoding, HeadKind};

pub use super::prompts::PromptConfig;
pub use crate::data::augment::AugmentConfig;
use crate::geometry::Frame;
use crate::model::lora::{is_lora_target, LoraConfig, ATTENTION_MODULES, VISION_ATTENTION_MODULES};
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
    /// Projections that get adapters: the decoder's `q_proj`, `k_proj`, `v_proj`, `o_proj` (the paper), and the
    /// vision tower's `qkv`, `proj` (its features are then recomputed for every example, not cached).
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

/// Which weights of the VLM train.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Finetune {
    /// LoRA adapters on the decoder's attention, the base frozen (the paper).
    #[default]
    Lora,
    /// Every decoder weight (and with `train_vision` the vision tower's): for small models trained from scratch.
    Full,
}

impl Finetune {
    fn is_default(&self) -> bool {
        *self == Self::Lora
    }
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
    /// Order each epoch by view (not in the paper; default off): the views are shuffled and each view's prompts
    /// follow one another, so the examples of a micro-batch share views and the vision tower runs once per view
    /// of the batch instead of once per example (the image tokens precede the prompt in the causal decoder, so
    /// a view's tower output does not depend on its prompts).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub batch_by_view: bool,
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
    /// Weight of the readout's localization loss (not in the paper; 0 = off, the paper's recipe).
    #[serde(default)]
    pub localization_weight: f64,
    /// What a matched query's confidence learns (`matched`: 1, the paper's; `distance`: graded by centre distance).
    #[serde(default)]
    pub confidence_target: crate::train::loss::ConfidenceTarget,
    /// Weight of the presence map's loss (not in the paper; 0 = no presence map, the paper's head). When > 0 the
    /// head gets a presence map and a box's score is the geometric mean of its confidence and the map's
    /// probability where it looks.
    #[serde(default)]
    pub presence_weight: f64,
    /// Which head reads the decoder: `queries` (the paper's K box queries, default) or `dense` (the same MLP on
    /// every image token with a heat map, CenterNet-style; `localization_weight` then weighs its centre term).
    #[serde(default, skip_serializing_if = "is_default_head")]
    pub head: HeadKind,
    /// Units of the head's centre channels: `fixed` (default: one scale for every view) or `view` (scaled by
    /// each view's token angle, so that a depth is read from an object's apparent size in tokens). It overrides
    /// the coding of an `init_head` file; the saved head records it.
    #[serde(default, skip_serializing_if = "is_default_centre")]
    pub centre_units: CentreCoding,
    /// Dense head: the box terms also apply at the tokens within this many tokens of a box's centre token
    /// (Chebyshev distance) whose heat-map target is ≥ 0.5, each box's tokens sharing its weight (FCOS's centre
    /// sampling; not in the paper). 0 (default): CenterNet's one token per box.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub box_radius: usize,
    /// A `head.safetensors` (e.g. a pre-training run's) that a fresh run's head starts from instead of the seed's
    /// draw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_head: Option<PathBuf>,
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
    /// Categories (prompt names such as `construction vehicle`, or nuScenes names) that never reach training:
    /// no prompt names them and their boxes are no target (the open-set protocol, [`super::prompts`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub holdout_categories: Vec<String>,
    /// Prompt variety in training: paraphrase templates, synonyms, multi-category prompts (default: the paper's
    /// prompt only).
    #[serde(default, skip_serializing_if = "PromptConfig::is_default")]
    pub prompts: PromptConfig,
    /// Image augmentations of training examples (default: none).
    #[serde(default, skip_serializing_if = "is_default_augment")]
    pub augment: AugmentConfig,
    /// `lora` (the paper, default) or `full` fine-tuning of the decoder.
    #[serde(default, skip_serializing_if = "Finetune::is_default")]
    pub finetune: Finetune,
    /// With `finetune: full`, the vision tower and merger train too (no feature cache then).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub train_vision: bool,
    /// Where training runs: `cpu` (default, deterministic), `cuda`, `cuda:N` or `auto`; `vlm3d train --device`
    /// overrides it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
}

fn is_default_centre(c: &CentreCoding) -> bool {
    *c == CentreCoding::default()
}

fn is_zero(v: &usize) -> bool {
    *v == 0
}

fn is_default_head(h: &HeadKind) -> bool {
    *h == HeadKind::default()
}

fn is_default_augment(a: &AugmentConfig) -> bool {
    *a == AugmentConfig::default()
}

/// What [`holdout_of`] reads: the `holdout_categories` of a recipe, whatever else it holds.
#[derive(Deserialize)]
struct HoldoutOnly {
    #[serde(default)]
    holdout_categories: Vec<String>,
}

/// The held-out categories (prompt names) of a training recipe file, or of a training output folder (its
/// `train_config.yaml`, which the trainer writes).
pub fn holdout_of(path: &Path) -> Result<Vec<String>> {
    let file = if path.is_dir() {
        path.join(TRAIN_CONFIG_FILE)
    } else {
        path.to_path_buf()
    };
    let text = std::fs::read_to_string(&file).map_err(|e| Error::io(&file, e))?;
    let h: HoldoutOnly =
        serde_yaml::from_str(&text).map_err(|e| Error::format(&file, None, e.to_string()))?;
    super::prompts::normalize_categories(
        &h.holdout_categories,
        &format!("{}: holdout_categories", file.display()),
    )
}

/// The recipe a training run writes into its output folder.
pub const TRAIN_CONFIG_FILE: &str = "train_config.yaml";

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
        if let Some(p) = cfg.init_head.as_mut() {
            fix(p);
        }
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
            ("localization_weight", self.localization_weight),
            ("presence_weight", self.presence_weight),
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
            if !is_lora_target(t) {
                return Err(bad(
                    "lora.targets",
                    format!(
                        "{t:?} is not one of {ATTENTION_MODULES:?} (decoder) or {VISION_ATTENTION_MODULES:?} (vision tower)"
                    ),
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
        if self.box_radius > 3 {
            return Err(bad(
                "box_radius",
                format!("{} (must be at most 3 tokens)", self.box_radius),
            ));
        }
        if self.box_radius > 0 && self.head != HeadKind::Dense {
            return Err(bad(
                "box_radius",
                "applies to the dense head only (`head: dense`)",
            ));
        }
        if self.train_vision && self.finetune != Finetune::Full {
            return Err(bad(
                "train_vision",
                "the vision tower trains only with `finetune: full` (no LoRA on the vision tower)",
            ));
        }
        if let Some(d) = &self.device {
            crate::model::device::check_device_name(d).map_err(|e| bad("device", e.to_string()))?;
        }
        let holdout = self.holdout()?;
        self.prompts.validate(&holdout)?;
        self.augment.validate()?;
        Ok(())
    }

    /// The held-out categories as prompt names (nuScenes names mapped by
    /// [`crate::data::dataset::prompt_name`]); an unknown name is an error naming `holdout_categories`.
    pub fn holdout(&self) -> Result<Vec<String>> {
        super::prompts::normalize_categories(
            &self.holdout_categories,
            "training config key `holdout_categories`",
        )
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
        c.box_radius = 1;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("box_radius") && e.contains("dense"), "{e}");
        c.head = HeadKind::Dense;
        c.validate().unwrap();
        c.box_radius = 4;
        assert!(c.validate().unwrap_err().to_string().contains("box_radius"));
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
        let mut c: TrainConfig = serde_yaml::from_str(SHIPPED).unwrap();
        c.holdout_categories = vec!["trialer".into()];
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("holdout_categories"));
        let e = serde_yaml::from_str::<TrainConfig>(&format!(
            "{SHIPPED}\naugment: {{flip: 0.5, mirror: 1}}"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("mirror"), "{e}");
    }

    #[test]
    fn the_holdout_example_recipe_holds_out_four_categories() {
        let c: TrainConfig =
            serde_yaml::from_str(include_str!("../../config/train_holdout.yaml")).unwrap();
        c.validate().unwrap();
        assert_eq!(
            c.holdout().unwrap(),
            ["construction vehicle", "trailer", "barrier", "bicycle"]
        );
        assert!(c.augment.is_active() && c.prompts.multi_category > 0.0);
        // The defaults leave the shipped recipe's text unchanged (old checkpoints' recipes compare equal).
        let shipped: TrainConfig = serde_yaml::from_str(SHIPPED).unwrap();
        let text = serde_yaml::to_string(&shipped).unwrap();
        assert!(
            !text.contains("holdout") && !text.contains("augment") && !text.contains("prompts")
        );
        let dir = std::env::temp_dir().join(format!("vlm3d-holdout-of-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join(TRAIN_CONFIG_FILE),
            serde_yaml::to_string(&c).unwrap(),
        )
        .unwrap();
        assert_eq!(holdout_of(&dir).unwrap(), c.holdout().unwrap());
        let _ = std::fs::remove_dir_all(&dir);
    }
}

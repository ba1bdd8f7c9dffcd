//! The training loop: per (camera view, prompt) example, the box queries' states through the LoRA-adapted decoder
//! (the vision tower frozen, its features computed once per image and cached), the box head, the matched
//! two-stage loss; AdamW with warm-up and a cosine or constant schedule per stage, gradient clipping and
//! accumulation; a metrics log (JSON lines), checkpoints and resume.
//!
//! Open-set training and variety: held-out categories are removed from the views as they load
//! ([`super::prompts::apply_holdout`]); each training item's prompt (template, synonyms, several categories) and
//! each view's augmentation (flip, crop and scale, colour jitter: [`crate::data::augment`]) are drawn from the seed,
//! the epoch and the item ([`Trainer::assemble`]), so a resumed run draws the same.
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor};
use image::RgbImage;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::Serialize;

use super::checkpoint::{latest_checkpoint, write_checkpoint, write_synced, TrainState};
use super::config::{Finetune, Schedule, TrainConfig, TRAIN_CONFIG_FILE};
use super::loss::{dense_loss, two_stage_loss, BoxEmbedding, LossWeights};
use super::optim::AdamW;
use super::prompts::{apply_holdout, choose, training_vocabulary};
use crate::data::augment::{apply_boxes, apply_camera, apply_image, Augmentation};
use crate::data::dataset::{fnv1a64, Dataset, DatasetConfig, Example};
use crate::geometry::{Frame, ViewCamera, VisibilityRule};
use crate::model::box_head::HeadKind;
use crate::model::detector::{Detector, DetectorConfig};
use crate::model::qwen2vl::weights::NamedVars;
use crate::model::qwen2vl::{GridThw, Qwen2VL};

/// The fully fine-tuned weights' file in a run's output and checkpoints (the checkpoint's own name).
pub const FULL_WEIGHTS: &str = "model.safetensors";
use crate::{Error, Result};

/// One training example: a camera view and one of its prompts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Item {
    /// Index of the view in the loaded examples.
    pub example: usize,
    /// Index of the prompt in that view's prompts.
    pub prompt: usize,
}

/// A training item as a batch feeds it: the prompt drawn for it, the view's augmentation this epoch, and the
/// target boxes (of the augmented view, in the recipe's frame).
#[derive(Debug, Clone, PartialEq)]
pub struct TrainingExample {
    /// The item.
    pub item: Item,
    /// The prompt text.
    pub text: String,
    /// The categories (prompt names) the prompt asks for.
    pub categories: Vec<String>,
    /// The words it uses for them (prompt names or synonyms).
    pub words: Vec<String>,
    /// The augmentation of the view's image and boxes (the same for every item of the view in an epoch).
    pub augmentation: Augmentation,
    /// Target boxes [x, y, z, l, w, h, yaw] in the recipe's frame.
    pub targets: Vec<[f64; 7]>,
    /// nuScenes category of each target.
    pub target_categories: Vec<String>,
    /// Each target's centre projected into the augmented image, scaled to [-1, 1] (u right, v down); `None`
    /// outside the image (the localization loss skips it).
    pub image_centres: Vec<Option<[f64; 2]>>,
    /// The augmented view's camera (what the head's rays are computed from).
    pub camera: ViewCamera,
    /// Each target's centre in the camera frame (the dense head's depth and ray targets).
    pub camera_centres: Vec<[f64; 3]>,
}

/// Stage, learning rate and loss weights of optimizer step `step` (0-based), given the stage lengths in steps.
pub fn schedule_at(
    cfg: &TrainConfig,
    stage1_steps: usize,
    stage2_steps: usize,
    step: usize,
) -> (u8, f64, LossWeights) {
    let (stage, s, local, len) = if step < stage1_steps {
        (1, &cfg.stage1, step, stage1_steps)
    } else {
        (2, &cfg.stage2, step - stage1_steps, stage2_steps)
    };
    let warm = if cfg.warmup_steps > 0 {
        ((local + 1) as f64 / cfg.warmup_steps as f64).min(1.0)
    } else {
        1.0
    };
    let decay = match cfg.schedule {
        Schedule::Constant => 1.0,
        Schedule::Cosine => {
            0.5 * (1.0 + (std::f64::consts::PI * local as f64 / len.max(1) as f64).cos())
        }
    };
    (
        stage,
        s.lr * warm * decay,
        LossWeights {
            mse: s.lambda_mse,
            iou: s.lambda_iou,
            confidence: cfg.confidence_weight,
            localization: cfg.localization_weight,
            confidence_target: cfg.confidence_target,
            presence: cfg.presence_weight,
            box_radius: cfg.box_radius,
        },
    )
}

/// Vision features of the frozen tower, computed once per image and kept within a memory budget.
///
/// Keyed by (view, epoch): without augmentation the epoch part is always 0, so a view is encoded once per run.
/// With augmentation the image fed to the tower is the view's augmented one, drawn per (view, epoch) and shared
/// by the view's prompts in that epoch, so its features are keyed by the epoch too and never served for the
/// original image or another epoch's augmentation; the cache then holds one epoch at a time (cleared when the
/// epoch changes), which still saves the tower's work for every prompt of a view after the first.
struct FeatureCache {
    budget: usize,
    used: usize,
    /// The epoch the entries belong to (with augmentation).
    epoch: usize,
    map: HashMap<(usize, usize), (Tensor, GridThw)>,
}

/// Decodes JPEGs on a background thread (the paper's asynchronous loading): the next step's images are decoded
/// while the current step computes. Decoding is the project's strict decoder
/// ([`crate::perception::image::decode_compressed`], as in [`Example::decode_image`]).
struct Decoder {
    /// (example, JPEG bytes, what errors call the image)
    requests: std::sync::mpsc::Sender<(usize, Vec<u8>, String)>,
    results: std::sync::mpsc::Receiver<(usize, Result<RgbImage>)>,
    requested: std::collections::HashSet<usize>,
    done: HashMap<usize, Result<RgbImage>>,
}

impl Decoder {
    fn new() -> Self {
        let (req_tx, req_rx) = std::sync::mpsc::channel::<(usize, Vec<u8>, String)>();
        let (res_tx, res_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for (i, jpeg, source) in req_rx {
                let img = crate::perception::image::decode_compressed(&jpeg, "jpeg", &source);
                if res_tx.send((i, img)).is_err() {
                    break;
                }
            }
        });
        Self {
            requests: req_tx,
            results: res_rx,
            requested: Default::default(),
            done: HashMap::new(),
        }
    }

    /// Queues the image of `view` (example number `example`) unless it is already queued or decoded.
    fn request(&mut self, example: usize, view: &Example) {
        if self.requested.insert(example) {
            let _ = self
                .requests
                .send((example, view.image_jpeg.clone(), view.image_source()));
        }
    }

    /// The decoded image of `view` (example number `example`; decoded here when it was never requested).
    fn take(&mut self, example: usize, view: &Example) -> Result<RgbImage> {
        if !self.requested.contains(&example) {
            return view.decode_image();
        }
        while !self.done.contains_key(&example) {
            match self.results.recv() {
                Ok((i, img)) => {
                    self.done.insert(i, img);
                }
                Err(_) => {
                    return Err(Error::invalid(
                        view.image_source(),
                        "the decoding thread ended",
                    ))
                }
            }
        }
        self.requested.remove(&example);
        self.done.remove(&example).expect("checked")
    }
}

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, Serialize)]
pub struct StepMetrics {
    /// Optimizer steps done.
    pub step: usize,
    /// Epoch.
    pub epoch: usize,
    /// Stage (1 or 2).
    pub stage: u8,
    /// Learning rate of the step.
    pub lr: f64,
    /// Weighted total loss (mean over the step's examples).
    pub loss: f64,
    /// Embedding MSE.
    pub mse: f64,
    /// Mean 1 − IoU3D of matched queries.
    pub iou_loss: f64,
    /// Confidence BCE (a dense head: the heat map's focal loss per object).
    pub confidence: f64,
    /// The readout's localization loss (a dense head: the centre L1 per object; 0 when its weight is 0 for the
    /// query head).
    pub localization: f64,
    /// The presence map's loss (0 when its weight is 0).
    pub presence: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Examples per second of the step.
    pub examples_per_s: f64,
    /// Resident memory of the process after the step, MiB (Linux; absent elsewhere): flat over a run, or
    /// something is kept from step to step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_mib: Option<f64>,
}

/// Keeps the lines of a metrics log up to step `step` and drops the rest, as well as a line cut short by a crash
/// (one that does not parse); the file is rewritten through a synced temporary and a rename. Returns how many
/// lines were dropped (0 when there is no log).
pub fn truncate_log_after(path: &Path, step: usize) -> Result<usize> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(Error::io(path, e)),
    };
    let mut kept = String::with_capacity(text.len());
    let mut dropped = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let logged = serde_json::from_str::<serde_json::Value>(line)
            .ok()
            .and_then(|v| v.get("step")?.as_u64());
        match logged {
            Some(n) if n as usize <= step => {
                kept.push_str(line);
                kept.push('\n');
            }
            _ => dropped += 1,
        }
    }
    if dropped > 0 {
        let partial = path.with_extension("jsonl.partial");
        write_synced(&partial, kept.as_bytes())?;
        std::fs::rename(&partial, path).map_err(|e| Error::io(path, e))?;
    }
    Ok(dropped)
}

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    /// Optimizer steps done.
    pub steps: usize,
    /// Training examples (view, prompt).
    pub examples: usize,
    /// The last step's metrics.
    pub last: Option<StepMetrics>,
    /// Folder with `adapter/` and `head.safetensors` (what `Detector::load` and `--trained` read).
    pub trained: PathBuf,
}

/// A training run.
pub struct Trainer {
    cfg: TrainConfig,
    cfg_text: String,
    out: PathBuf,
    /// The detector being trained (LoRA attached, unmerged).
    pub detector: Detector,
    views: Vec<Example>,
    items: Vec<Item>,
    /// Held-out categories (prompt names).
    holdout: Vec<String>,
    /// The dataset's visibility rule (augmented views drop the boxes it no longer sees).
    visibility: VisibilityRule,
    cache: FeatureCache,
    embedding: BoxEmbedding,
    opt: AdamW,
    step: usize,
    epoch: usize,
    position: usize,
    stage_steps: (usize, usize),
    decoder: Decoder,
    /// Full fine-tuning: the base checkpoint's weight files and the weights that train, by checkpoint name.
    tuned: Option<(Vec<PathBuf>, NamedVars)>,
    /// The vision tower trains (fully or through adapters): features are recomputed per example.
    vision_trains: bool,
    /// Show a progress bar.
    pub progress: bool,
}

fn check_finite(t: &Tensor, what: impl FnOnce() -> String) -> Result<f64> {
    let v = f64::from(t.to_dtype(DType::F32)?.to_scalar::<f32>()?);
    if !v.is_finite() {
        return Err(Error::invalid("training", format!("{} is {v}", what())));
    }
    Ok(v)
}

impl Trainer {
    /// Loads the model and the training bags; with `resume`, continues from the newest complete checkpoint in
    /// `out/checkpoints` (a fresh run when there is none).
    pub fn new(cfg: TrainConfig, out: &Path, resume: bool) -> Result<Self> {
        cfg.validate()?;
        let holdout = cfg.holdout()?;
        let cfg_text =
            serde_yaml::to_string(&cfg).map_err(|e| Error::invalid("config", e.to_string()))?;
        std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
        // The recipe beside the trained parts: `vlm3d eval --trained OUT` reads the held-out categories from it.
        write_synced(&out.join(TRAIN_CONFIG_FILE), cfg_text.as_bytes())?;
        let device =
            crate::model::device::select_device_auto(cfg.device.as_deref().unwrap_or("cpu"))?;
        let ckpt_root = out.join("checkpoints");
        let found = if resume {
            latest_checkpoint(&ckpt_root)?
        } else {
            None
        };
        // The base checkpoint only: training starts from a fresh head (drawn from the seed) and fresh adapters;
        // full fine-tuning loads the weights it trains as variables (a resumed run: the checkpoint's weights).
        let (pipeline, tuned) = if cfg.finetune == Finetune::Full {
            let base_files = crate::model::qwen2vl::weights::safetensors_files(&cfg.model)?;
            let files = match &found {
                Some((dir, _)) => vec![dir.join(FULL_WEIGHTS)],
                None => base_files.clone(),
            };
            let vision = cfg.train_vision;
            let trainable = move |name: &str| {
                let is_vision = name.starts_with("visual.") || name.starts_with("model.visual.");
                !name.starts_with("lm_head.") && (vision || !is_vision)
            };
            let (model, vars) = Qwen2VL::load_with(
                &cfg.model,
                &files,
                &device,
                DType::F32,
                Some(Box::new(trainable)),
            )?;
            let pipeline = crate::model::qwen2vl::Pipeline::with_model(&cfg.model, model)?;
            (pipeline, Some((base_files, vars)))
        } else {
            let pipeline = crate::model::qwen2vl::Pipeline::load(&cfg.model, &device, DType::F32)?;
            (pipeline, None)
        };
        let mut detector = Detector::new(
            pipeline,
            DetectorConfig {
                num_queries: cfg.queries,
                frame: cfg.frame,
                score_threshold: 0.0,
                head_seed: cfg.seed,
            },
        )?;
        detector.pipeline.processor.config.max_pixels = cfg.max_pixels;
        if cfg.presence_weight > 0.0 {
            // Before the optimizer collects the head's variables (and before a resume loads them).
            detector.head.enable_presence(cfg.seed)?;
        }
        if cfg.head == HeadKind::Dense {
            detector.head.enable_dense(cfg.seed)?;
        }
        if let (Some(init), None) = (&cfg.init_head, &found) {
            detector.head.load(init)?;
            if detector.head.kind() != cfg.head {
                return Err(Error::invalid(
                    "init_head",
                    format!(
                        "{} holds a {:?} head, the recipe asks for {:?}",
                        init.display(),
                        detector.head.kind(),
                        cfg.head
                    ),
                ));
            }
        }

        // Examples: every camera view of the training bags, each with its prompts; held-out categories are
        // neither negatives (the vocabulary leaves them out) nor positives or targets (removed per view).
        let dcfg = DatasetConfig {
            target_frame: cfg.frame,
            keep_empty: true,
            max_negatives: cfg.max_negatives,
            vocabulary: if holdout.is_empty() {
                Vec::new()
            } else {
                training_vocabulary(&holdout)
            },
            ..Default::default()
        };
        let visibility = dcfg.visibility;
        let mut views = Vec::new();
        let mut held_boxes = 0;
        for ex in Dataset::new(cfg.train_bags.clone(), dcfg) {
            let mut ex = ex?;
            held_boxes += apply_holdout(&mut ex, &holdout);
            views.push(ex);
        }
        if !holdout.is_empty() {
            tracing::info!(
                "held out {holdout:?}: {held_boxes} boxes removed from {} views",
                views.len()
            );
        }
        if views.is_empty() {
            return Err(Error::invalid(
                "training bags",
                format!("{:?} hold no camera examples", cfg.train_bags),
            ));
        }
        let items: Vec<Item> = views
            .iter()
            .enumerate()
            .flat_map(|(e, v)| {
                (0..v.prompts.len()).map(move |p| Item {
                    example: e,
                    prompt: p,
                })
            })
            .collect();
        if items.is_empty() {
            return Err(Error::invalid(
                "training bags",
                "no prompts: the bags carry no annotations",
            ));
        }
        if !items
            .iter()
            .any(|i| !views[i.example].prompts[i.prompt].boxes.is_empty())
        {
            return Err(Error::invalid(
                "training bags",
                "no prompt has a box: nothing to learn",
            ));
        }
        let micro = items.len().div_ceil(cfg.batch_size);
        let per_epoch = micro.div_ceil(cfg.grad_accumulation).max(1);
        let len = |s: &super::config::StageConfig| {
            s.steps.unwrap_or_else(|| s.epochs.unwrap_or(0) * per_epoch)
        };
        let stage_steps = (len(&cfg.stage1), len(&cfg.stage2));

        let lora_cfg = cfg.lora_config();
        let (lora_vars, state) = match &found {
            Some((dir, state)) => {
                if state.config != cfg_text {
                    tracing::warn!("resuming {} with a changed config", dir.display());
                }
                let vars = match &tuned {
                    Some(_) => Vec::new(),
                    None => detector.pipeline.model.load_lora(&dir.join("adapter"))?.1,
                };
                detector.head.load(&dir.join("head.safetensors"))?;
                (vars, Some(state.clone()))
            }
            None if tuned.is_some() => (Vec::new(), None),
            None => {
                let vars = detector.pipeline.model.attach_lora(&lora_cfg)?;
                // Seeded A (PEFT's Kaiming-uniform bound), so a run is reproducible from its seed.
                let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x10ba);
                for (name, var) in &vars {
                    if name.ends_with("lora_A.weight") {
                        let bound = 1.0 / (var.dims()[1] as f64).sqrt();
                        let vals: Vec<f32> = (0..var.elem_count())
                            .map(|_| rand::Rng::random_range(&mut rng, -bound..bound) as f32)
                            .collect();
                        var.set(&Tensor::from_vec(vals, var.shape(), var.device())?)?;
                    }
                }
                (vars, None)
            }
        };
        // The recipe's centre units, whatever an init_head or an older checkpoint's file said.
        if detector.head.centre != cfg.centre_units {
            tracing::info!(
                "centre units {:?} (the loaded head had {:?})",
                cfg.centre_units,
                detector.head.centre
            );
            detector.head.centre = cfg.centre_units;
        }
        let cfg_vision_trains = cfg.train_vision || detector.pipeline.model.vision_adapted();
        let mut all = lora_vars;
        if let Some((_, vars)) = &tuned {
            all.extend(vars.iter().cloned());
        }
        all.extend(detector.head.vars());
        let mut opt = AdamW::new(all, cfg.weight_decay)?;
        let (step, epoch, position) = match (&found, &state) {
            (Some((dir, _)), Some(s)) => {
                opt.load_state(&dir.join("optimizer.safetensors"), s.step)?;
                // Steps the interrupted run logged after its checkpoint are done again: drop their lines.
                let dropped = truncate_log_after(&out.join("metrics.jsonl"), s.step)?;
                tracing::info!(
                    "resuming from {} (step {}; {dropped} later log lines dropped)",
                    dir.display(),
                    s.step
                );
                (s.step, s.epoch, s.position)
            }
            _ => {
                // A fresh run starts a fresh log (a resumed one appends to its own).
                let log = out.join("metrics.jsonl");
                if log.exists() {
                    std::fs::remove_file(&log).map_err(|e| Error::io(&log, e))?;
                }
                (0, 0, 0)
            }
        };
        Ok(Self {
            cache: FeatureCache {
                budget: cfg.feature_cache_mb << 20,
                used: 0,
                epoch: 0,
                map: HashMap::new(),
            },
            embedding: BoxEmbedding::new(&device)?,
            cfg,
            cfg_text,
            out: out.to_path_buf(),
            detector,
            views,
            items,
            holdout,
            visibility,
            opt,
            step,
            epoch,
            position,
            stage_steps,
            decoder: Decoder::new(),
            vision_trains: cfg_vision_trains,
            tuned,
            progress: true,
        })
    }

    /// Training examples (view, prompt).
    pub fn items(&self) -> &[Item] {
        &self.items
    }

    /// Steps of stage 1 and stage 2.
    pub fn stage_steps(&self) -> (usize, usize) {
        self.stage_steps
    }

    /// The loaded training views (held-out categories removed).
    pub fn views(&self) -> &[Example] {
        &self.views
    }

    /// The held-out categories (prompt names).
    pub fn holdout(&self) -> &[String] {
        &self.holdout
    }

    /// The feature cache's key of view `example` now (see [`FeatureCache`]).
    fn cache_key(&self, example: usize) -> (usize, usize) {
        if self.cfg.augment.is_active() {
            (example, self.epoch)
        } else {
            (example, 0)
        }
    }

    /// Vision features of view `example` with its augmentation `aug` of the current epoch.
    /// The decoded image of view `example` with its augmentation `aug` applied.
    fn view_image(&mut self, example: usize, aug: &Augmentation) -> Result<RgbImage> {
        let img = self.decoder.take(example, &self.views[example])?;
        if aug.is_identity() {
            Ok(img)
        } else {
            apply_image(&img, aug)
        }
    }

    fn features(&mut self, example: usize, aug: &Augmentation) -> Result<(Tensor, GridThw)> {
        if self.vision_trains {
            // The tower trains (fully or through adapters): its features are part of the graph, never cached.
            let img = self.view_image(example, aug)?;
            let p = self.detector.preprocess(&[img])?;
            let f = self.detector.pipeline.model.encode_images_t(&p, true)?;
            return Ok((f, p.grids[0]));
        }
        let key = self.cache_key(example);
        if self.cfg.augment.is_active() && self.cache.epoch != self.epoch {
            // Another epoch's augmented images: never reused.
            self.cache.map.clear();
            self.cache.used = 0;
            self.cache.epoch = self.epoch;
        }
        if let Some(f) = self.cache.map.get(&key) {
            return Ok(f.clone());
        }
        let img = self.view_image(example, aug)?;
        let (mut feats, grids) = self.detector.encode_images(&[img])?;
        let f = (feats.remove(0).detach(), grids[0]);
        let bytes = f.0.elem_count() * 4;
        if self.cache.used + bytes <= self.cache.budget {
            self.cache.used += bytes;
            self.cache.map.insert(key, f.clone());
        }
        Ok(f)
    }

    /// A seeded RNG for one draw of (`what`, epoch, view, prompt): independent of the order items are visited.
    fn rng_for(
        &self,
        what: &str,
        epoch: usize,
        example: usize,
        prompt: usize,
    ) -> rand_chacha::ChaCha8Rng {
        let key = format!("{what}/{}/{epoch}/{example}/{prompt}", self.cfg.seed);
        rand_chacha::ChaCha8Rng::seed_from_u64(fnv1a64(key.as_bytes()))
    }

    /// The augmentation of view `example` in `epoch` (identity when the recipe augments nothing).
    pub fn augmentation(&self, example: usize, epoch: usize) -> Augmentation {
        if !self.cfg.augment.is_active() {
            return Augmentation::default();
        }
        let cam = &self.views[example].camera;
        self.cfg.augment.draw(
            &mut self.rng_for("augment", epoch, example, 0),
            cam.width(),
            cam.height(),
        )
    }

    /// What training item `item` feeds the model in `epoch`: its prompt (drawn from the recipe's templates,
    /// synonyms and multi-category probability), the view's augmentation and the target boxes that remain in the
    /// augmented view. This is the only way a batch gets its prompts and targets.
    pub fn assemble(&self, item: Item, epoch: usize) -> Result<TrainingExample> {
        let v = &self.views[item.example];
        let choice = choose(
            &self.cfg.prompts,
            &v.prompts,
            item.prompt,
            &mut self.rng_for("prompt", epoch, item.example, item.prompt),
        );
        let augmentation = self.augmentation(item.example, epoch);
        let boxes = if augmentation.is_geometric() {
            let picked: Vec<_> = choice.boxes.iter().map(|&b| v.boxes[b].clone()).collect();
            apply_boxes(
                &picked,
                v.frame,
                &v.cam_to_lidar,
                &v.camera,
                &augmentation,
                self.visibility,
            )?
            .into_iter()
            .flatten()
            .collect()
        } else {
            choice
                .boxes
                .iter()
                .map(|&b| v.boxes[b].clone())
                .collect::<Vec<_>>()
        };
        let camera = apply_camera(&v.camera, &augmentation)?;
        let to_cam = v.cam_to_lidar.inverse();
        let camera_centres: Vec<nalgebra::Point3<f64>> = boxes
            .iter()
            .map(|b| {
                let c = nalgebra::Point3::from(b.oriented.center);
                match v.frame {
                    Frame::Camera => c,
                    Frame::Lidar => to_cam * c,
                }
            })
            .collect();
        let image_centres = camera_centres
            .iter()
            .map(|c| {
                camera.project(c).filter(|p| camera.in_image(p)).map(|p| {
                    [
                        2.0 * p.x / f64::from(camera.width()) - 1.0,
                        2.0 * p.y / f64::from(camera.height()) - 1.0,
                    ]
                })
            })
            .collect();
        Ok(TrainingExample {
            item,
            text: choice.text,
            categories: choice.categories,
            words: choice.words,
            augmentation,
            targets: boxes.iter().map(|b| b.params(self.cfg.frame)).collect(),
            target_categories: boxes.into_iter().map(|b| b.category).collect(),
            image_centres,
            camera: ViewCamera {
                camera,
                camera_to_lidar: v.cam_to_lidar,
            },
            camera_centres: camera_centres.iter().map(|c| [c.x, c.y, c.z]).collect(),
        })
    }

    /// Every micro-batch of `epoch` as the run loop feeds it (its order, then [`Trainer::assemble`]).
    pub fn epoch_batches(&self, epoch: usize) -> Result<Vec<Vec<TrainingExample>>> {
        self.order(epoch)
            .chunks(self.cfg.batch_size)
            .map(|b| b.iter().map(|&it| self.assemble(it, epoch)).collect())
            .collect()
    }

    /// The epoch's example order (a permutation drawn from the seed and the epoch, so a resumed run sees the same).
    /// With `batch_by_view` the views are shuffled and each view's items, shuffled among themselves, follow one
    /// another.
    fn order(&self, epoch: usize) -> Vec<Item> {
        let mut items = self.items.clone();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(
            self.cfg.seed.wrapping_mul(1_000_003) ^ epoch as u64,
        );
        items.shuffle(&mut rng);
        if self.cfg.batch_by_view {
            let mut views: Vec<usize> = items.iter().map(|it| it.example).collect();
            views.sort_unstable();
            views.dedup();
            views.shuffle(&mut rng);
            let mut rank = vec![0usize; self.views.len()];
            for (r, &v) in views.iter().enumerate() {
                rank[v] = r;
            }
            // A stable sort keeps the shuffled order of a view's items.
            items.sort_by_key(|it| rank[it.example]);
        }
        items
    }

    /// Loss of one micro-batch (mean over its examples) and its parts.
    fn batch_loss(&mut self, batch: &[Item], weights: &LossWeights) -> Result<(Tensor, [f64; 5])> {
        let mut total: Option<Tensor> = None;
        let mut parts = [0.0; 5];
        // A dense head's terms are sums over object tokens, divided by their count across the batch.
        let mut objects: Option<f64> = None;
        // The micro-batch's examples go through the decoder and the head together: one pass per image size
        // (and prompt length, [`Detector::query_states_prompts`]), not one graph per example.
        let mut examples = Vec::with_capacity(batch.len());
        let mut feats = Vec::with_capacity(batch.len());
        let mut grids = Vec::with_capacity(batch.len());
        // A view's features are computed once per batch and shared by its examples (one augmentation per view and
        // epoch); when the tower trains, its gradient sums over them.
        let mut seen: HashMap<usize, (Tensor, GridThw)> = HashMap::new();
        for it in batch {
            let ex = self.assemble(*it, self.epoch)?;
            let (feat, grid) = match seen.get(&it.example) {
                Some(f) => f.clone(),
                None => {
                    let f = self.features(it.example, &ex.augmentation)?;
                    seen.insert(it.example, f.clone());
                    f
                }
            };
            examples.push(ex);
            feats.push(feat);
            grids.push(grid);
        }
        let mut outs: Vec<Option<crate::model::box_head::HeadOutput>> = vec![None; batch.len()];
        let mut by_grid: Vec<(GridThw, Vec<usize>)> = Vec::new();
        for (i, g) in grids.iter().enumerate() {
            match by_grid.iter_mut().find(|(k, _)| k == g) {
                Some((_, v)) => v.push(i),
                None => by_grid.push((*g, vec![i])),
            }
        }
        for (_, members) in &by_grid {
            let f: Vec<Tensor> = members.iter().map(|&i| feats[i].clone()).collect();
            let g: Vec<GridThw> = members.iter().map(|&i| grids[i]).collect();
            let c: Vec<ViewCamera> = members.iter().map(|&i| examples[i].camera).collect();
            let p: Vec<&str> = members.iter().map(|&i| examples[i].text.as_str()).collect();
            let states = self.detector.query_states_prompts(&f, &g, &c, &p, true)?;
            let out = self.detector.head_forward(&states)?;
            for (j, &i) in members.iter().enumerate() {
                outs[i] = Some(out.view(j)?);
            }
        }
        for ((it, ex), out) in batch.iter().zip(&examples).zip(outs) {
            let out = out.ok_or_else(|| Error::invalid("training", "an example got no output"))?;
            let v = &self.views[it.example];
            let l = if out.dense.is_some() {
                dense_loss(
                    &out,
                    &ex.targets,
                    &ex.image_centres,
                    &ex.camera_centres,
                    self.cfg.frame,
                    weights,
                    &self.embedding,
                )?
            } else {
                two_stage_loss(
                    &out,
                    &ex.targets,
                    &ex.image_centres,
                    self.cfg.frame,
                    weights,
                    &self.embedding,
                )?
            };
            let share = match l.normalizer {
                Some(n) => {
                    *objects.get_or_insert(0.0) += n;
                    1.0
                }
                None => 1.0 / batch.len() as f64,
            };
            for (k, (name, val)) in [
                ("MSE", l.mse),
                ("1 - IoU", l.iou_loss),
                ("confidence", l.confidence),
                ("localization", l.localization),
                ("presence", l.presence),
            ]
            .into_iter()
            .enumerate()
            {
                if !val.is_finite() {
                    return Err(Error::invalid(
                        "training",
                        format!(
                            "step {}: the {name} loss is {val} on sample {} / {} ({:?})",
                            self.step, v.sample_token, v.channel, ex.text
                        ),
                    ));
                }
                parts[k] += val * share;
            }
            let t = (l.total * share)?;
            total = Some(match total {
                None => t,
                Some(s) => (s + t)?,
            });
        }
        let mut total = total.ok_or_else(|| Error::invalid("training", "empty batch"))?;
        if let Some(n) = objects {
            let n = n.max(1.0);
            total = (total / n)?;
            parts.iter_mut().for_each(|p| *p /= n);
        }
        Ok((total, parts))
    }

    /// The VLM's trained part into `dir`: `adapter/` (LoRA) or the whole fine-tuned `model.safetensors`.
    fn save_vlm(&self, dir: &Path) -> Result<()> {
        match &self.tuned {
            Some((files, vars)) => Qwen2VL::save_full(files, vars, &dir.join(FULL_WEIGHTS)),
            None => self
                .detector
                .pipeline
                .model
                .save_lora(&dir.join("adapter"), &self.cfg.lora_config()),
        }
    }

    fn checkpoint(&self) -> Result<PathBuf> {
        let state = TrainState {
            step: self.step,
            epoch: self.epoch,
            position: self.position,
            config: self.cfg_text.clone(),
            files: Default::default(),
        };
        write_checkpoint(&self.out.join("checkpoints"), state, |d| {
            self.save_vlm(d)?;
            self.detector.head.save(&d.join("head.safetensors"))?;
            candle_core::safetensors::save(&self.opt.state()?, d.join("optimizer.safetensors"))?;
            write_synced(&d.join("config.yaml"), self.cfg_text.as_bytes())
        })
    }

    /// Trains to the end of stage 2, at most `max_steps` more steps when given (tests, the training node's
    /// budget). Writes `metrics.jsonl`, checkpoints, and the trained adapters and head to the output folder.
    pub fn run(&mut self, max_steps: Option<usize>) -> Result<TrainSummary> {
        self.run_with(max_steps, &mut |_| true)
    }

    /// [`Trainer::run`], calling `on_step` after every optimizer step; when it returns false (a stop request:
    /// the training node's SIGINT / SIGTERM) the run writes a checkpoint and the trained parts, and returns.
    pub fn run_with(
        &mut self,
        max_steps: Option<usize>,
        on_step: &mut dyn FnMut(&StepMetrics) -> bool,
    ) -> Result<TrainSummary> {
        let total = self.stage_steps.0 + self.stage_steps.1;
        let mp = self.out.join("metrics.jsonl");
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&mp)
            .map_err(|e| Error::io(&mp, e))?;
        let bar = crate::data::progress_bar(
            self.progress,
            total as u64,
            "{elapsed_precise} [{bar:30}] step {pos}/{len} {msg} ETA {eta}",
        );
        bar.set_position(self.step as u64);
        let mut last = None;
        let stop_at = max_steps.map_or(total, |m| (self.step + m).min(total));
        while self.step < stop_at {
            let order = self.order(self.epoch);
            let micro: Vec<&[Item]> = order.chunks(self.cfg.batch_size).collect();
            if self.position >= micro.len() {
                self.epoch += 1;
                self.position = 0;
                self.checkpoint()?;
                continue;
            }
            let started = Instant::now();
            let (stage, lr, weights) =
                schedule_at(&self.cfg, self.stage_steps.0, self.stage_steps.1, self.step);
            let mut sums: Vec<Option<Tensor>> = vec![None; self.opt.vars().len()];
            let mut parts = [0.0; 5];
            let mut loss_sum = 0.0;
            let mut n_ex = 0;
            let end = (self.position + self.cfg.grad_accumulation).min(micro.len());
            // Decode the next step's images in the background while this step computes.
            let next_end = (end + self.cfg.grad_accumulation).min(micro.len());
            for it in micro[end..next_end].iter().flat_map(|b| b.iter()) {
                if !self.cache.map.contains_key(&self.cache_key(it.example)) {
                    self.decoder.request(it.example, &self.views[it.example]);
                }
            }
            for batch in &micro[self.position..end] {
                let (loss, p) = self.batch_loss(batch, &weights)?;
                let step = self.step;
                loss_sum += check_finite(&loss, || format!("step {step}: the total loss"))?;
                let grads: GradStore = loss.backward()?;
                for (i, (_, var)) in self.opt.vars().iter().enumerate() {
                    if let Some(g) = grads.get(var.as_tensor()) {
                        let g = g.detach();
                        sums[i] = Some(match sums[i].take() {
                            None => g,
                            Some(s) => (s + g)?,
                        });
                    }
                }
                for (a, b) in parts.iter_mut().zip(p) {
                    *a += b;
                }
                n_ex += batch.len();
            }
            let n_micro = (end - self.position) as f64;
            let mut sq = 0.0;
            for (i, g) in sums.iter_mut().enumerate() {
                if let Some(t) = g.take() {
                    let t = (t / n_micro)?;
                    let s = f64::from(t.sqr()?.sum_all()?.to_scalar::<f32>()?);
                    if !s.is_finite() {
                        return Err(Error::invalid(
                            "training",
                            format!(
                                "step {}: the gradient of {} is not finite",
                                self.step,
                                self.opt.vars()[i].0
                            ),
                        ));
                    }
                    sq += s;
                    *g = Some(t);
                }
            }
            let norm = sq.sqrt();
            if self.cfg.grad_clip > 0.0 && norm > self.cfg.grad_clip {
                let f = self.cfg.grad_clip / norm;
                for g in sums.iter_mut().flatten() {
                    *g = (&*g * f)?;
                }
            }
            self.opt.step(&sums, lr)?;
            self.step += 1;
            self.position = end;
            let m = StepMetrics {
                step: self.step,
                epoch: self.epoch,
                stage,
                lr,
                loss: loss_sum / n_micro,
                mse: parts[0] / n_micro,
                iou_loss: parts[1] / n_micro,
                confidence: parts[2] / n_micro,
                localization: parts[3] / n_micro,
                presence: parts[4] / n_micro,
                grad_norm: norm,
                examples_per_s: n_ex as f64 / started.elapsed().as_secs_f64().max(1e-9),
                rss_mib: crate::proc::rss_mib(),
            };
            let line =
                serde_json::to_string(&m).map_err(|e| Error::invalid("metrics", e.to_string()))?;
            writeln!(log, "{line}").map_err(|e| Error::io(&mp, e))?;
            bar.set_position(self.step as u64);
            bar.set_message(format!(
                "epoch {} stage {} loss {:.4} (mse {:.4}, 1-iou {:.3}, conf {:.3}, loc {:.3}, presence {:.3}) {:.1} ex/s",
                m.epoch,
                m.stage,
                m.loss,
                m.mse,
                m.iou_loss,
                m.confidence,
                m.localization,
                m.presence,
                m.examples_per_s
            ));
            if self.step.is_multiple_of(self.cfg.checkpoint_every) {
                self.checkpoint()?;
            }
            let go_on = on_step(&m);
            last = Some(m);
            if !go_on {
                tracing::info!("stop requested at step {}: writing a checkpoint", self.step);
                break;
            }
        }
        bar.finish_and_clear();
        self.checkpoint()?;
        // The trained parts at the top of the output folder: `vlm3d detect --trained OUT`, `Detector::load`.
        // A stale part of another mode's earlier run there would be loaded too: removed.
        let stale = if self.tuned.is_some() {
            self.out.join("adapter")
        } else {
            self.out.join(FULL_WEIGHTS)
        };
        if stale.is_dir() {
            std::fs::remove_dir_all(&stale).map_err(|e| Error::io(&stale, e))?;
        } else if stale.exists() {
            std::fs::remove_file(&stale).map_err(|e| Error::io(&stale, e))?;
        }
        self.save_vlm(&self.out)?;
        self.detector
            .head
            .save(&self.out.join("head.safetensors"))?;
        Ok(TrainSummary {
            steps: self.step,
            examples: self.items.len(),
            last,
            trained: self.out.clone(),
        })
    }
}

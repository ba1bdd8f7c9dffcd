//! Images + prompt → boxes. Each camera view is its own sequence `[chat prefix, image, prompt, chat suffix,
//! K queries]` (the layout the per-camera training examples use); the views go through the vision tower
//! together in one pass and through the decoder as one batch (views with equal image sizes share a batch).
//! The images come before the prompt, so the image prefix's KV cache is computed once per frame
//! ([`Detector::encode_frame`]) and every prompt on that frame costs only its own tokens and the queries.
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use image::RgbImage;

use super::box_head::{
    decode_box, heat_peaks, DetectionHead, HeadInputs, HeadOutput, ImageTokens, ViewGeometry,
    DEFAULT_QUERIES, DENSE_MAX_PER_VIEW,
};
use super::qwen2vl::preprocess::ProcessedImages;
use super::qwen2vl::{
    chat_prefix, chat_suffix, check_prompt, mrope_positions, GridThw, KvCache, Pipeline, Positions,
    Qwen2VL,
};
use crate::geometry::{Frame, ViewCamera};
use crate::perception::ViewDetections;
use crate::{Error, Result};

/// Detector settings.
#[derive(Debug, Clone)]
pub struct DetectorConfig {
    /// Number of box queries.
    pub num_queries: usize,
    /// Frame of the predicted boxes.
    pub frame: Frame,
    /// Boxes below this confidence are dropped by [`Detector::detect`].
    pub score_threshold: f32,
    /// Seed of a fresh (untrained) head's queries and weights; a loaded `head.safetensors` replaces them.
    pub head_seed: u64,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        Self {
            num_queries: DEFAULT_QUERIES,
            frame: Frame::Camera,
            score_threshold: 0.5,
            head_seed: 0,
        }
    }
}

/// A group of views with equal image grids, processed as one decoder batch.
#[derive(Debug, Clone)]
struct Group {
    views: Vec<usize>,
    cache: KvCache,
    next_pos: i64,
    /// Each view's image tokens: final decoder states (the head's readout reads them), centres and rays.
    tokens: Vec<ImageTokens>,
}

/// The image prefix of one frame: its KV cache per group of views.
#[derive(Debug, Clone)]
pub struct FramePrefix {
    groups: Vec<Group>,
    n_views: usize,
}

/// A VLM with LoRA adapters (merged or not), box queries and the box head.
pub struct Detector {
    /// The checkpoint.
    pub pipeline: Pipeline,
    /// Queries and head.
    pub head: DetectionHead,
    /// Settings.
    pub config: DetectorConfig,
}

impl Detector {
    /// A detector with a fresh (untrained) head.
    pub fn new(pipeline: Pipeline, config: DetectorConfig) -> Result<Self> {
        let m = &pipeline.model;
        let head = DetectionHead::new(
            m.config.text.hidden_size,
            config.num_queries,
            m.dtype(),
            m.device(),
            config.head_seed,
        )?;
        Ok(Self {
            pipeline,
            head,
            config,
        })
    }

    /// Loads a checkpoint folder and, when present, `adapter/` (PEFT LoRA, merged at load) and `head.safetensors`
    /// from `trained` (or the checkpoint folder itself when `None`). A `model.safetensors` in `trained` (a fully
    /// fine-tuned run) replaces the checkpoint's weights; the configuration and tokenizer stay the checkpoint's.
    pub fn load(
        dir: &Path,
        trained: Option<&Path>,
        config: DetectorConfig,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        let t = trained.unwrap_or(dir);
        let tuned = t.join("model.safetensors");
        let mut pipeline = if trained.is_some() && tuned.exists() {
            let (model, _) = Qwen2VL::load_with(dir, &[tuned], device, dtype, None)?;
            Pipeline::with_model(dir, model)?
        } else {
            Pipeline::load(dir, device, dtype)?
        };
        if t.join("adapter").join("adapter_config.json").exists() {
            pipeline.model.load_lora(&t.join("adapter"))?;
            pipeline.model.merge_lora()?;
        }
        let head_file = t.join("head.safetensors");
        let mut config = config;
        let saved = if head_file.exists() {
            Some(super::qwen2vl::weights::read_file(&head_file)?)
        } else {
            None
        };
        // The head's query count is the trained one's (a dense head needs only a few).
        if let Some(q) = saved.as_ref().and_then(|s| s.get("queries")) {
            config.num_queries = q.dim(0)?;
        }
        let mut det = Self::new(pipeline, config)?;
        if let Some(saved) = &saved {
            det.head.load_tensors(saved, &head_file)?;
        } else {
            tracing::warn!(
                "no head.safetensors in {}: the box head is untrained",
                t.display()
            );
        }
        Ok(det)
    }

    fn prefix_ids(&self, grid: GridThw) -> Result<Vec<u32>> {
        let ids = self.pipeline.encode(&chat_prefix(1))?;
        self.pipeline.expand_image_pads(&ids, &[grid])
    }

    /// Where a prefix's image tokens sit (first index, count) and their centres in the image.
    fn image_tokens(&self, ids: &[u32], grid: GridThw) -> Result<(usize, usize, Tensor)> {
        let model = &self.pipeline.model;
        let m = model.config.vision.spatial_merge_size;
        let first = ids
            .iter()
            .position(|&t| t == model.config.image_token_id)
            .ok_or_else(|| Error::invalid("input ids", "no <|image_pad|> token in the prefix"))?;
        let centres = ImageTokens::raster_centres(grid.h / m, grid.w / m, model.device())?;
        Ok((first, grid.merged_tokens(m), centres))
    }

    /// The image tokens of `views` (a group's members, prefix `ids`, image grid `grid`) from the group's decoder
    /// states `h` `[views, L, hidden]`.
    fn group_tokens(
        &self,
        h: &Tensor,
        ids: &[u32],
        grid: GridThw,
        views: &[usize],
        cameras: &[ViewCamera],
    ) -> Result<Vec<ImageTokens>> {
        let m = self.pipeline.model.config.vision.spatial_merge_size;
        let (first, n, centres) = self.image_tokens(ids, grid)?;
        let image = h.narrow(1, first, n)?;
        views
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                Ok(ImageTokens {
                    states: image.get(i)?,
                    centres: centres.clone(),
                    geometry: ViewGeometry::new(
                        &cameras[v],
                        grid.h / m,
                        grid.w / m,
                        self.config.frame,
                        self.pipeline.model.device(),
                    )?,
                    grid: (grid.h / m, grid.w / m),
                })
            })
            .collect()
    }

    fn check_cameras(n: usize, cameras: &[ViewCamera]) -> Result<()> {
        if cameras.len() != n {
            return Err(Error::invalid(
                "views",
                format!("{n} views but {} cameras", cameras.len()),
            ));
        }
        Ok(())
    }

    fn suffix_ids(&self, prompt: &str) -> Result<Vec<u32>> {
        check_prompt(prompt)?;
        self.pipeline.encode(&chat_suffix(prompt))
    }

    fn groups(grids: &[GridThw]) -> Vec<Vec<usize>> {
        group_indices(grids.iter())
    }

    /// Vision features of all views in one vision-tower pass, split per view, with their grids.
    pub fn encode_images(&self, images: &[RgbImage]) -> Result<(Vec<Tensor>, Vec<GridThw>)> {
        self.encode_processed(&self.preprocess(images)?)
    }

    /// The image processor's step alone (resize, normalize, patchify) on the model's device.
    pub fn preprocess(&self, images: &[RgbImage]) -> Result<ProcessedImages> {
        self.pipeline
            .processor
            .process(images, self.pipeline.model.device())
    }

    /// The vision tower on pre-processed views: features split per view, with their grids.
    pub fn encode_processed(
        &self,
        processed: &ProcessedImages,
    ) -> Result<(Vec<Tensor>, Vec<GridThw>)> {
        let model = &self.pipeline.model;
        let feats = model.encode_images(processed)?;
        let m = model.config.vision.spatial_merge_size;
        let mut out = Vec::with_capacity(processed.grids.len());
        let mut off = 0;
        for g in &processed.grids {
            let n = g.merged_tokens(m);
            out.push(feats.narrow(0, off, n)?);
            off += n;
        }
        Ok((out, processed.grids.clone()))
    }

    fn batch_inputs(
        &self,
        views: &[usize],
        feats: &[Tensor],
        ids: &[u32],
        grid: GridThw,
    ) -> Result<(Tensor, Positions, i64)> {
        let model = &self.pipeline.model;
        let m = model.config.vision.spatial_merge_size;
        let (pos, next) = mrope_positions(ids, &[grid], model.config.image_token_id, m, 0)?;
        let embs = views
            .iter()
            .map(|&v| model.embed(ids, Some(&feats[v])))
            .collect::<Result<Vec<_>>>()?;
        let b = views.len();
        let p: Positions = [
            vec![pos[0].clone(); b],
            vec![pos[1].clone(); b],
            vec![pos[2].clone(); b],
        ];
        Ok((Tensor::stack(&embs, 0)?, p, next))
    }

    /// One suffix (prompt and queries) per view, all of one length, from position `start` on.
    fn suffix_inputs_each(&self, suffixes: &[&[u32]], start: i64) -> Result<(Tensor, Positions)> {
        let model = &self.pipeline.model;
        let first = suffixes
            .first()
            .ok_or_else(|| Error::invalid("views", "no view"))?;
        if suffixes.iter().all(|s| s == first) {
            // One prompt: embed once and repeat.
            return self.suffix_inputs(suffixes.len(), first, start);
        }
        let queries = self.head.queries.clone();
        let embs = suffixes
            .iter()
            .map(|s| {
                let e = model.embed(s, None)?;
                Ok(Tensor::cat(&[&e, &queries.to_dtype(e.dtype())?], 0)?)
            })
            .collect::<Result<Vec<_>>>()?;
        let n = embs[0].dim(0)?;
        let b = embs.len();
        let row: Vec<i64> = (0..n as i64).map(|i| start + i).collect();
        Ok((
            Tensor::stack(&embs, 0)?,
            [vec![row.clone(); b], vec![row.clone(); b], vec![row; b]],
        ))
    }

    fn suffix_inputs(&self, b: usize, suffix: &[u32], start: i64) -> Result<(Tensor, Positions)> {
        let model = &self.pipeline.model;
        let emb = model.embed(suffix, None)?;
        let emb = Tensor::cat(&[&emb, &self.head.queries.to_dtype(emb.dtype())?], 0)?;
        let n = emb.dim(0)?;
        let emb = emb.unsqueeze(0)?.repeat((b, 1, 1))?;
        let row: Vec<i64> = (0..n as i64).map(|i| start + i).collect();
        Ok((
            emb,
            [vec![row.clone(); b], vec![row.clone(); b], vec![row; b]],
        ))
    }

    /// Runs the vision tower and the image prefill once for a frame (`cameras`: one per image).
    pub fn encode_frame(&self, images: &[RgbImage], cameras: &[ViewCamera]) -> Result<FramePrefix> {
        Self::check_cameras(images.len(), cameras)?;
        let (feats, grids) = self.encode_images(images)?;
        self.prefill(&feats, &grids, cameras)
    }

    /// Image prefill from precomputed per-view vision features (e.g. cached during training), with each view's
    /// camera.
    pub fn prefill(
        &self,
        feats: &[Tensor],
        grids: &[GridThw],
        cameras: &[ViewCamera],
    ) -> Result<FramePrefix> {
        Self::check_cameras(grids.len(), cameras)?;
        let mut groups = Vec::new();
        for views in Self::groups(grids) {
            let grid = grids[views[0]];
            let ids = self.prefix_ids(grid)?;
            let (emb, pos, next) = self.batch_inputs(&views, feats, &ids, grid)?;
            let mut cache = KvCache::new();
            let h = self
                .pipeline
                .model
                .text
                .forward_embeds(&emb, &pos, &mut cache, false)?;
            let tokens = self.group_tokens(&h, &ids, grid, &views, cameras)?;
            groups.push(Group {
                views,
                cache,
                next_pos: next,
                tokens,
            });
        }
        Ok(FramePrefix {
            groups,
            n_views: grids.len(),
        })
    }

    /// The head's inputs for a prompt on a prefilled frame: states at the queries `[views, K, hidden]` and at
    /// each view's image tokens (the prefix is reused, not modified).
    pub fn query_states_cached(&self, prefix: &FramePrefix, prompt: &str) -> Result<HeadInputs> {
        let suffix = self.suffix_ids(prompt)?;
        let k = self.head.num_queries();
        let mut rows: Vec<Option<Tensor>> = vec![None; prefix.n_views];
        let mut images: Vec<Option<ImageTokens>> = vec![None; prefix.n_views];
        for g in &prefix.groups {
            let (emb, pos) = self.suffix_inputs(g.views.len(), &suffix, g.next_pos)?;
            let mut cache = g.cache.clone();
            let h = self
                .pipeline
                .model
                .text
                .forward_embeds(&emb, &pos, &mut cache, false)?;
            let q = h.narrow(1, h.dim(1)? - k, k)?;
            for (i, &v) in g.views.iter().enumerate() {
                rows[v] = Some(q.get(i)?);
                images[v] = Some(g.tokens[i].clone());
            }
        }
        head_inputs(rows, images)
    }

    /// The head's inputs (states at the queries `[views, K, hidden]` and at each view's image tokens) in one
    /// uncached pass over the whole sequences; with `diff` only gradient-capable ops are used (training).
    pub fn query_states(
        &self,
        feats: &[Tensor],
        grids: &[GridThw],
        cameras: &[ViewCamera],
        prompt: &str,
        diff: bool,
    ) -> Result<HeadInputs> {
        let prompts = vec![prompt; grids.len()];
        self.query_states_prompts(feats, grids, cameras, &prompts, diff)
    }

    /// [`Detector::query_states`] with a prompt per view (a training micro-batch: each example its own view and
    /// prompt). Views of one image size go through the decoder as one batch, their prompts in batches of one
    /// token count (no padding, so no masks: the sequences have one length and share their positions); examples
    /// of one view (the same feature tensor and camera) share one pass over its image prefix.
    pub fn query_states_prompts(
        &self,
        feats: &[Tensor],
        grids: &[GridThw],
        cameras: &[ViewCamera],
        prompts: &[&str],
        diff: bool,
    ) -> Result<HeadInputs> {
        if feats.len() != grids.len() || feats.is_empty() || prompts.len() != grids.len() {
            return Err(Error::invalid(
                "views",
                format!(
                    "{} feature sets, {} grids and {} prompts",
                    feats.len(),
                    grids.len(),
                    prompts.len()
                ),
            ));
        }
        Self::check_cameras(grids.len(), cameras)?;
        let suffixes: Vec<Vec<u32>> = prompts
            .iter()
            .map(|p| self.suffix_ids(p))
            .collect::<Result<_>>()?;
        let k = self.head.num_queries();
        let mut rows_out: Vec<Option<Tensor>> = vec![None; grids.len()];
        let mut images: Vec<Option<ImageTokens>> = vec![None; grids.len()];
        for views in Self::groups(grids) {
            let grid = grids[views[0]];
            let ids = self.prefix_ids(grid)?;
            // Examples of one view (the same feature tensor and camera: a training batch's prompts of one view)
            // share its image prefix: it runs once and each prompt continues it (the image tokens precede the
            // prompt in the causal decoder, so their states do not depend on it).
            let mut distinct: Vec<usize> = Vec::new();
            let rows: Vec<u32> = views
                .iter()
                .map(|&v| {
                    let same =
                        |&d: &usize| feats[d].id() == feats[v].id() && cameras[d] == cameras[v];
                    match distinct.iter().position(same) {
                        Some(r) => r as u32,
                        None => {
                            distinct.push(v);
                            (distinct.len() - 1) as u32
                        }
                    }
                })
                .collect();
            // Prompts of one token count continue the prefix as one batch (no padding, so no masks).
            let by_len = group_indices(views.iter().map(|&v| suffixes[v].len()));
            let text = &self.pipeline.model.text;
            if distinct.len() == views.len() {
                // Nothing to share: each prompt length's views with their prefix in one pass.
                for members in by_len {
                    let sub: Vec<usize> = members.iter().map(|&j| views[j]).collect();
                    let (emb, pos, next) = self.batch_inputs(&sub, feats, &ids, grid)?;
                    let suffix: Vec<&[u32]> = sub.iter().map(|&v| suffixes[v].as_slice()).collect();
                    let (semb, spos) = self.suffix_inputs_each(&suffix, next)?;
                    let emb = Tensor::cat(&[&emb, &semb], 1)?;
                    let pos: Positions = std::array::from_fn(|a| {
                        pos[a]
                            .iter()
                            .zip(&spos[a])
                            .map(|(p, s)| p.iter().chain(s).copied().collect())
                            .collect()
                    });
                    let h = text.forward_embeds(&emb, &pos, &mut KvCache::new(), diff)?;
                    let q = h.narrow(1, h.dim(1)? - k, k)?;
                    let tokens = self.group_tokens(&h, &ids, grid, &sub, cameras)?;
                    for ((i, &v), t) in sub.iter().enumerate().zip(tokens) {
                        rows_out[v] = Some(q.get(i)?);
                        images[v] = Some(t);
                    }
                }
                continue;
            }
            let (emb, pos, next) = self.batch_inputs(&distinct, feats, &ids, grid)?;
            let mut prefix = KvCache::new();
            let hp = text.forward_embeds(&emb, &pos, &mut prefix, diff)?;
            for members in by_len {
                let sel: Vec<u32> = members.iter().map(|&j| rows[j]).collect();
                let sel = Tensor::new(sel.as_slice(), hp.device())?;
                let mut cache = prefix.select(&sel)?;
                let suffix: Vec<&[u32]> = members
                    .iter()
                    .map(|&j| suffixes[views[j]].as_slice())
                    .collect();
                let (semb, spos) = self.suffix_inputs_each(&suffix, next)?;
                let h = text.forward_embeds(&semb, &spos, &mut cache, diff)?;
                let q = h.narrow(1, h.dim(1)? - k, k)?;
                let sub: Vec<usize> = members.iter().map(|&j| views[j]).collect();
                let tokens =
                    self.group_tokens(&hp.index_select(&sel, 0)?, &ids, grid, &sub, cameras)?;
                for ((i, &v), t) in sub.iter().enumerate().zip(tokens) {
                    rows_out[v] = Some(q.get(i)?);
                    images[v] = Some(t);
                }
            }
        }
        head_inputs(rows_out, images)
    }

    /// Applies the readout and the box head to the decoder's states.
    pub fn head_forward(&self, states: &HeadInputs) -> Result<HeadOutput> {
        self.head.forward(states)
    }

    /// Decodes head outputs `[views, K, ..]` into per-view boxes above the score threshold; a dense head's
    /// outputs only at the heat map's peaks ([`heat_peaks`], at most [`DENSE_MAX_PER_VIEW`] per view).
    pub fn decode(&self, out: &HeadOutput) -> Result<Vec<ViewDetections>> {
        let boxes = out.boxes.to_dtype(DType::F32)?.to_vec3::<f32>()?;
        let scores = out.scores()?.to_dtype(DType::F32)?.to_vec2::<f32>()?;
        Ok(boxes
            .iter()
            .zip(&scores)
            .enumerate()
            .map(|(view, (b, s))| {
                let keep: Vec<usize> = match &out.dense {
                    Some(d) => heat_peaks(s, d.grid.0, d.grid.1, DENSE_MAX_PER_VIEW),
                    None => (0..b.len()).collect(),
                };
                let mut found: Vec<crate::perception::Detection> = keep
                    .into_iter()
                    .map(|q| decode_box(q, &b[q], s[q]))
                    .filter(|d| d.score >= self.config.score_threshold)
                    .collect();
                found.sort_by(|a, b| b.score.total_cmp(&a.score));
                ViewDetections {
                    view,
                    frame: self.config.frame,
                    boxes: found,
                }
            })
            .collect())
    }

    /// Detection on a prefilled frame (cheap for each additional prompt).
    pub fn detect_cached(&self, prefix: &FramePrefix, prompt: &str) -> Result<Vec<ViewDetections>> {
        let s = self.query_states_cached(prefix, prompt)?;
        self.decode(&self.head_forward(&s)?)
    }

    /// Detection from images (with their cameras) and a prompt.
    pub fn detect(
        &self,
        images: &[RgbImage],
        cameras: &[ViewCamera],
        prompt: &str,
    ) -> Result<Vec<ViewDetections>> {
        check_prompt(prompt)?;
        let prefix = self.encode_frame(images, cameras)?;
        self.detect_cached(&prefix, prompt)
    }
}

/// The positions of equal keys, grouped in order of first appearance.
fn group_indices<K: PartialEq>(keys: impl Iterator<Item = K>) -> Vec<Vec<usize>> {
    let mut groups: Vec<(K, Vec<usize>)> = Vec::new();
    for (i, key) in keys.enumerate() {
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => v.push(i),
            None => groups.push((key, vec![i])),
        }
    }
    groups.into_iter().map(|(_, v)| v).collect()
}
fn head_inputs(rows: Vec<Option<Tensor>>, images: Vec<Option<ImageTokens>>) -> Result<HeadInputs> {
    let missing = || Error::invalid("views", "a view produced no output");
    let rows: Vec<Tensor> = rows
        .into_iter()
        .map(|r| r.ok_or_else(missing))
        .collect::<Result<_>>()?;
    Ok(HeadInputs {
        queries: Tensor::stack(&rows, 0)?,
        images: images
            .into_iter()
            .map(|r| r.ok_or_else(missing))
            .collect::<Result<_>>()?,
    })
}

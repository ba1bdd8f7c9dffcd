//! `vlm3d bench --train`: one training step (frozen vision features computed once, the decoder with LoRA on q, k,
//! v, o — or, with full fine-tuning, every decoder weight trained — box head, the stage-2 loss, backward, AdamW)
//! on random weights at the tiny fixture's or Qwen2-VL-2B's dimensions: examples per second and peak resident
//! memory.
use std::time::Instant;

use candle_core::{DType, Device};
use image::RgbImage;
use rand::{Rng, SeedableRng};

use super::forward::{bench_prompt, random_detector_with, BenchModel};
use crate::geometry::{Frame, ViewCamera};
use crate::model::lora::LoraConfig;
use crate::proc::{peak_rss_mib, reset_peak_rss};
use crate::train::loss::{two_stage_loss, BoxEmbedding, LossWeights};
use crate::train::optim::AdamW;
use crate::{Error, Result};

/// One row of the training bench.
#[derive(Debug, Clone)]
pub struct TrainBenchRow {
    /// Model size.
    pub model: &'static str,
    /// What trains: `LoRA` (r 16 on q, k, v, o) or `full` (every decoder weight).
    pub mode: &'static str,
    /// Where it ran (`cpu`, `cuda:0`).
    pub device: String,
    /// Examples (view, prompt) per step.
    pub batch: usize,
    /// Median seconds per optimizer step.
    pub step_s: f64,
    /// Examples per second.
    pub examples_per_s: f64,
    /// Peak resident memory during the row, MiB.
    pub peak_rss_mib: f64,
    /// Resident memory after each step (the untimed first one included), MiB: a leak shows as growth.
    pub rss_after_step_mib: Vec<f64>,
}

/// Times `steps` optimizer steps of `batch` examples (one `width`×`height` view each, a `prompt_tokens` prompt,
/// two target boxes) after one untimed step; LoRA, or with `full` every decoder weight (the vision tower frozen,
/// as its features are cached; `lm_head` unused).
#[allow(clippy::too_many_arguments)]
pub fn run(
    which: BenchModel,
    full: bool,
    batch: usize,
    steps: usize,
    width: usize,
    height: usize,
    prompt_tokens: usize,
    dev: &Device,
) -> Result<TrainBenchRow> {
    if batch == 0 || steps == 0 {
        return Err(Error::invalid(
            "bench --train",
            "batch and steps must be at least 1",
        ));
    }
    reset_peak_rss();
    let dev = dev.clone();
    let trainable: Option<crate::model::qwen2vl::weights::WeightFilter> = full.then(|| {
        Box::new(|name: &str| {
            !name.starts_with("lm_head.")
                && !name.starts_with("visual.")
                && !name.starts_with("model.visual.")
        }) as crate::model::qwen2vl::weights::WeightFilter
    });
    let (mut det, mut vars) =
        random_detector_with(which, width * height, &dev, DType::F32, trainable)?;
    if !full {
        vars = det.pipeline.model.attach_lora(&LoraConfig::default())?;
    }
    vars.extend(det.head.vars());
    let mut opt = AdamW::new(vars.clone(), 0.01)?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let img = RgbImage::from_fn(width as u32, height as u32, |_, _| image::Rgb(rng.random()));
    let (feats, grids) = det.encode_images(&[img])?;
    let (feat, grid) = (feats[0].detach(), grids[0]);
    let prompt = bench_prompt(prompt_tokens, "car");
    let camera = ViewCamera::nominal(width as u32, height as u32)?;
    let targets = [
        [1.0, 1.5, 12.0, 4.2, 1.8, 1.6, 0.3],
        [-3.0, 1.4, 20.0, 4.0, 1.7, 1.5, 1.2],
    ];
    let emb = BoxEmbedding::new(&dev)?;
    let w = LossWeights {
        mse: 0.2,
        iou: 0.8,
        confidence: 1.0,
        localization: 0.0,
        confidence_target: Default::default(),
        presence: 0.0,
        box_radius: 0,
    };
    let mut times = Vec::new();
    let mut rss = Vec::new();
    for i in 0..steps + 1 {
        let t0 = Instant::now();
        // The examples go through the decoder and the head as one batch, as the trainer's micro-batches do.
        let s = det.query_states(
            &vec![feat.clone(); batch],
            &vec![grid; batch],
            &vec![camera; batch],
            &prompt,
            true,
        )?;
        let out = det.head_forward(&s)?;
        let mut total = None;
        for v in 0..batch {
            let l = two_stage_loss(&out.view(v)?, &targets, &[], Frame::Camera, &w, &emb)?.total;
            total = Some(match total {
                None => l,
                Some(t) => (t + l)?,
            });
        }
        let loss = (total.expect("batch ≥ 1") / batch as f64)?;
        let grads = loss.backward()?;
        let g: Vec<_> = vars
            .iter()
            .map(|(_, v)| grads.get(v.as_tensor()).cloned())
            .collect();
        opt.step(&g, 1e-4)?;
        // A GPU queues work: the step is done when the device is.
        dev.synchronize()?;
        if i > 0 {
            times.push(t0.elapsed().as_secs_f64());
        }
        let now = crate::proc::rss_mib().unwrap_or(f64::NAN);
        rss.push(now);
        eprintln!(
            "{} step {i}/{steps}{}: {:.2} s, RSS {now:.0} MiB",
            which.name(),
            if i == 0 { " (untimed)" } else { "" },
            t0.elapsed().as_secs_f64()
        );
    }
    let step_s = super::median(times);
    Ok(TrainBenchRow {
        model: which.name(),
        mode: if full { "full" } else { "LoRA" },
        device: crate::model::device::describe(&dev),
        batch,
        step_s,
        examples_per_s: batch as f64 / step_s,
        peak_rss_mib: peak_rss_mib().unwrap_or(f64::NAN),
        rss_after_step_mib: rss,
    })
}

/// Formats rows as a markdown table.
pub fn table(rows: &[TrainBenchRow]) -> String {
    let mut s = String::from(
        "| model | trains | device | examples/step | s/step (median) | examples/s | peak RSS MiB | RSS after step 1 → last, MiB |\n|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let first = r.rss_after_step_mib.first().copied().unwrap_or(f64::NAN);
        let last = r.rss_after_step_mib.last().copied().unwrap_or(f64::NAN);
        s.push_str(&format!(
            "| {} | {} | {} | {} | {:.3} | {:.2} | {:.0} | {first:.0} → {last:.0} |\n",
            r.model, r.mode, r.device, r.batch, r.step_s, r.examples_per_s, r.peak_rss_mib
        ));
    }
    s
}

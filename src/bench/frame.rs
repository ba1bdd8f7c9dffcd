//! `vlm3d bench --frame`: the CPU side of every frame, six camera JPEGs → the vision tower's patch tensor, as
//! the perception node runs it (decode the views in parallel with the strict decoder, then
//! [`ImageProcessor::process`]), against the path it replaced (views decoded one after another, the `image`
//! crate's Catmull-Rom resize into f32, normalization and patch layout as separate passes), which
//! [`reference_pixel_values`] keeps as the yardstick for the model input's tolerance.
//!
//! The JPEGs come from `vlm3d synth` (one sample, nuScenes' 1600 × 900 by default) so the bench needs no data.
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use candle_core::Device;
use image::{imageops::FilterType, RgbImage};
use rayon::prelude::*;

use super::median;
use crate::data::synth::{generate, SynthConfig};
use crate::model::qwen2vl::{ImageProcessor, PreprocessorConfig};
use crate::perception::image::decode_compressed;
use crate::{Error, Result};

/// What to time.
#[derive(Debug, Clone)]
pub struct FrameBenchOptions {
    /// Camera image width, pixels.
    pub width: u32,
    /// Camera image height, pixels.
    pub height: u32,
    /// The model's pixel budget per view (`max_pixels` of `preprocessor_config.json`).
    pub max_pixels: usize,
    /// Timed sets; the table shows medians.
    pub repeat: usize,
    /// Idle time before each timed set (zero: back to back). On this 2-core VM a set after 900 ms idle took
    /// 2.2–3.7× as long as one in a row (README, "The node agrees with the bench"): a node fed slowly meets cold
    /// caches.
    pub idle: Duration,
    /// Where the synthetic sample is written (a fresh folder is made inside).
    pub work: PathBuf,
}

/// One row of the table.
#[derive(Debug, Clone)]
pub struct FrameBenchRow {
    /// Which path.
    pub path: &'static str,
    /// Median decode time of the set, ms.
    pub decode_ms: f64,
    /// Median pre-processing time of the set, ms.
    pub preprocess_ms: f64,
    /// Median of decode + pre-processing per set, ms.
    pub total_ms: f64,
}

/// The bench's result: both rows and how far the frame path's model input is from the reference's.
#[derive(Debug, Clone)]
pub struct FrameBench {
    /// Views per set.
    pub views: usize,
    /// Camera image size (width, height).
    pub camera: (u32, u32),
    /// Model input size per view (width, height).
    pub input: (usize, usize),
    /// Idle time before each timed set.
    pub idle: Duration,
    /// The reference path, then the frame path.
    pub rows: Vec<FrameBenchRow>,
    /// Largest |difference| of the normalized model input between the paths.
    pub max_abs_diff: f32,
    /// Mean |difference| of the normalized model input.
    pub mean_abs_diff: f32,
}

/// Writes one synthetic sample at the options' size and returns its camera JPEGs, in camera order.
pub fn synthetic_jpegs(o: &FrameBenchOptions) -> Result<Vec<Vec<u8>>> {
    let dir = o.work.join(format!("frame-{}x{}", o.width, o.height));
    let cfg = SynthConfig {
        scenes: 1,
        samples_per_scene: 1,
        width: o.width,
        height: o.height,
        ..SynthConfig::default()
    };
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    }
    generate(&dir, &cfg)?;
    let mut files = Vec::new();
    let samples = dir.join("samples");
    for cam in crate::perception::rig::Rig::nuscenes().camera_channels() {
        files.extend(jpegs_in(&samples.join(cam))?);
    }
    files
        .iter()
        .map(|f| std::fs::read(f).map_err(|e| Error::io(f, e)))
        .collect()
}

fn jpegs_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jpg"))
        .collect();
    v.sort();
    Ok(v)
}

/// The frame path's decode: every view at once (one task per view), strict as everywhere.
pub fn decode_views(jpegs: &[Vec<u8>]) -> Result<Vec<RgbImage>> {
    jpegs
        .par_iter()
        .enumerate()
        .map(|(i, j)| decode_compressed(j, "jpeg", &format!("view {i} image")))
        .collect()
}

/// The model input as the pre-processor computed it before the frame path (kept as the yardstick): the `image`
/// crate's Catmull-Rom resize with f32 accumulation, normalization into a channel-major f32 image, then the
/// patch layout, one image after another.
pub fn reference_pixel_values(proc: &ImageProcessor, images: &[RgbImage]) -> Result<Vec<f32>> {
    let c = &proc.config;
    let (p, m, tp) = (c.patch_size, c.merge_size, c.temporal_patch_size);
    let mut out = Vec::new();
    for img in images {
        let (w0, h0) = img.dimensions();
        let (h, w) = proc.target_size(h0 as usize, w0 as usize)?;
        let resized;
        let img = if (h, w) == (h0 as usize, w0 as usize) {
            img
        } else {
            resized = image::imageops::resize(img, w as u32, h as u32, FilterType::CatmullRom);
            &resized
        };
        let mut chw = vec![0f32; 3 * h * w];
        for (x, y, px) in img.enumerate_pixels() {
            for ch in 0..3 {
                let v = px.0[ch] as f32 * (1.0f32 / 255.0);
                chw[ch * h * w + y as usize * w + x as usize] =
                    (v - c.image_mean[ch]) / c.image_std[ch];
            }
        }
        let (gh, gw) = (h / p, w / p);
        for bh in 0..gh / m {
            for bw in 0..gw / m {
                for mh in 0..m {
                    for mw in 0..m {
                        let (y0, x0) = ((bh * m + mh) * p, (bw * m + mw) * p);
                        for ch in 0..3 {
                            for _ in 0..tp {
                                for py in 0..p {
                                    let row = ch * h * w + (y0 + py) * w + x0;
                                    out.extend_from_slice(&chw[row..row + p]);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(out)
}

/// Timed sets per block of one path ([`run`]).
const FRAME_BLOCK: usize = 5;

/// Runs both paths `repeat` times on the same six JPEGs.
pub fn run(o: &FrameBenchOptions) -> Result<FrameBench> {
    let jpegs = synthetic_jpegs(o)?;
    let proc = ImageProcessor::new(PreprocessorConfig {
        max_pixels: o.max_pixels,
        ..PreprocessorConfig::default()
    });
    let repeat = o.repeat.max(1);
    let (mut reference, mut fast) = (Vec::new(), Vec::new());
    let (mut ref_input, mut fast_processed) = (Vec::new(), None);
    // Each path runs sets in a row, as the node runs frame after frame, in alternating blocks so that a busy
    // spell of the machine hits both paths alike.
    let mut timed = 0;
    while timed < repeat {
        let block = FRAME_BLOCK.min(repeat - timed);
        reference.extend(time_block(block, o.idle, || {
            let t = Instant::now();
            let images = jpegs
                .iter()
                .enumerate()
                .map(|(i, j)| decode_compressed(j, "jpeg", &format!("view {i} image")))
                .collect::<Result<Vec<_>>>()?;
            let d = ms(t);
            let t = Instant::now();
            ref_input = reference_pixel_values(&proc, &images)?;
            Ok((d, ms(t)))
        })?);
        fast.extend(time_block(block, o.idle, || {
            let t = Instant::now();
            let images = decode_views(&jpegs)?;
            let d = ms(t);
            let t = Instant::now();
            fast_processed = Some(proc.process(&images, &Device::Cpu)?);
            Ok((d, ms(t)))
        })?);
        timed += block;
    }
    let fast_input = match fast_processed {
        Some(p) => p.pixel_values.flatten_all()?.to_vec1::<f32>()?,
        None => Vec::new(),
    };
    if ref_input.len() != fast_input.len() {
        return Err(Error::invalid(
            "frame bench",
            format!(
                "the paths disagree on the input size: {} against {} values",
                ref_input.len(),
                fast_input.len()
            ),
        ));
    }
    let diffs: Vec<f32> = ref_input
        .iter()
        .zip(&fast_input)
        .map(|(a, b)| (a - b).abs())
        .collect();
    let max_abs_diff = diffs.iter().copied().fold(0f32, f32::max);
    let mean_abs_diff = diffs.iter().sum::<f32>() / diffs.len().max(1) as f32;
    let row = |path, v: &[(f64, f64)]| FrameBenchRow {
        path,
        decode_ms: median(v.iter().map(|x| x.0).collect()),
        preprocess_ms: median(v.iter().map(|x| x.1).collect()),
        total_ms: median(v.iter().map(|x| x.0 + x.1).collect()),
    };
    let input = proc.target_size(o.height as usize, o.width as usize)?;
    Ok(FrameBench {
        views: jpegs.len(),
        camera: (o.width, o.height),
        input: (input.1, input.0),
        idle: o.idle,
        rows: vec![
            row("before: sequential decode, image-crate resize", &reference),
            row("frame path: parallel decode, SIMD resize, fused", &fast),
        ],
        max_abs_diff,
        mean_abs_diff,
    })
}

/// Runs `set` once untimed, then `n` times after `idle` each, returning the timed (decode, preprocess) pairs. The
/// untimed set pays for the other path's heap and cache state (up to 6 ms of decode on this machine when the
/// paths alternated set by set), which a node running one path never sees.
fn time_block(
    n: usize,
    idle: Duration,
    mut set: impl FnMut() -> Result<(f64, f64)>,
) -> Result<Vec<(f64, f64)>> {
    set()?;
    (0..n)
        .map(|_| {
            std::thread::sleep(idle);
            set()
        })
        .collect()
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// The table `vlm3d bench --frame` prints.
pub fn table(b: &FrameBench, repeat: usize) -> String {
    let pace = if b.idle.is_zero() {
        "back to back".to_string()
    } else {
        format!("each after {} ms idle", b.idle.as_millis())
    };
    let mut s = format!(
        "{} views of {}×{} JPEG → model input {}×{} per view, median of {repeat} sets ({pace}), {} threads\n\n",
        b.views,
        b.camera.0,
        b.camera.1,
        b.input.0,
        b.input.1,
        rayon::current_num_threads()
    );
    s.push_str(
        "| path | decode ms | preprocess ms | decode + preprocess ms |\n|---|---|---|---|\n",
    );
    for r in &b.rows {
        s.push_str(&format!(
            "| {} | {:.1} | {:.1} | {:.1} |\n",
            r.path, r.decode_ms, r.preprocess_ms, r.total_ms
        ));
    }
    s.push_str(&format!(
        "\nmodel input, frame path against before (normalized units): max |Δ| {:.4}, mean |Δ| {:.5}\n",
        b.max_abs_diff, b.mean_abs_diff
    ));
    s
}

//! The Qwen2-VL image processor: smart resize, rescale + normalize, 14-px patches, temporal patch 2, 2×2 merge
//! ordering, and `image_grid_thw`.
use candle_core::{Device, Tensor};
use image::{imageops::FilterType, RgbImage};

use super::config::PreprocessorConfig;
use crate::{Error, Result};

/// Largest aspect ratio the reference processor accepts.
pub const MAX_ASPECT_RATIO: f64 = 200.0;

/// The (temporal, height, width) patch grid of one image, before the spatial merge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GridThw {
    /// Temporal patches (1 for a still image).
    pub t: usize,
    /// Patch rows.
    pub h: usize,
    /// Patch columns.
    pub w: usize,
}

impl GridThw {
    /// Number of patches (vision tokens before the merge).
    pub fn patches(&self) -> usize {
        self.t * self.h * self.w
    }
    /// Number of `<|image_pad|>` tokens in the text sequence after a `merge`×`merge` merge.
    pub fn merged_tokens(&self, merge: usize) -> usize {
        self.patches() / (merge * merge)
    }
}

/// Target (height, width) of the reference's smart resize: both multiples of `factor`, pixel count within
/// [`min_pixels`, `max_pixels`], aspect ratio kept as well as possible. Python's `round` is round-half-to-even.
pub fn smart_resize(
    height: usize,
    width: usize,
    factor: usize,
    min_pixels: usize,
    max_pixels: usize,
) -> Result<(usize, usize)> {
    if height == 0 || width == 0 {
        return Err(Error::invalid(
            "image size",
            format!("{width}x{height} has no pixels"),
        ));
    }
    let (h, w, f) = (height as f64, width as f64, factor as f64);
    let ratio = h.max(w) / h.min(w);
    if ratio > MAX_ASPECT_RATIO {
        return Err(Error::invalid(
            "image size",
            format!("{width}x{height}: aspect ratio {ratio:.1} exceeds {MAX_ASPECT_RATIO}"),
        ));
    }
    let mut hb = ((h / f).round_ties_even() * f).max(f);
    let mut wb = ((w / f).round_ties_even() * f).max(f);
    if hb * wb > max_pixels as f64 {
        let beta = (h * w / max_pixels as f64).sqrt();
        hb = f.max((h / beta / f).floor() * f);
        wb = f.max((w / beta / f).floor() * f);
    } else if hb * wb < min_pixels as f64 {
        let beta = (min_pixels as f64 / (h * w)).sqrt();
        hb = (h * beta / f).ceil() * f;
        wb = (w * beta / f).ceil() * f;
    }
    Ok((hb as usize, wb as usize))
}

/// Turns RGB images into the flattened patch tensor the vision tower eats.
#[derive(Debug, Clone)]
pub struct ImageProcessor {
    /// Parameters from `preprocessor_config.json`.
    pub config: PreprocessorConfig,
}

/// Patches of one or more images, concatenated in order.
#[derive(Debug, Clone)]
pub struct ProcessedImages {
    /// `[sum of patches, C * T * P * P]`, f32.
    pub pixel_values: Tensor,
    /// One grid per image.
    pub grids: Vec<GridThw>,
}

impl ImageProcessor {
    /// A processor with the given parameters.
    pub fn new(config: PreprocessorConfig) -> Self {
        Self { config }
    }

    /// Resize target for an image of `height`×`width`.
    pub fn target_size(&self, height: usize, width: usize) -> Result<(usize, usize)> {
        let c = &self.config;
        smart_resize(
            height,
            width,
            c.patch_size * c.merge_size,
            c.min_pixels,
            c.max_pixels,
        )
    }

    /// Resizes (bicubic, only when needed) and normalizes one image into channel-major f32 values.
    pub fn resize_normalize(&self, img: &RgbImage) -> Result<(usize, usize, Vec<f32>)> {
        let (w0, h0) = img.dimensions();
        let (h, w) = self.target_size(h0 as usize, w0 as usize)?;
        let resized;
        let img = if (h, w) == (h0 as usize, w0 as usize) {
            img
        } else {
            resized = image::imageops::resize(img, w as u32, h as u32, FilterType::CatmullRom);
            &resized
        };
        let c = &self.config;
        let mut out = vec![0f32; 3 * h * w];
        for (x, y, p) in img.enumerate_pixels() {
            for ch in 0..3 {
                // Same arithmetic order as the reference: rescale in f32, then (x - mean) / std.
                let v = p.0[ch] as f32 * (1.0f32 / 255.0);
                out[ch * h * w + y as usize * w + x as usize] =
                    (v - c.image_mean[ch]) / c.image_std[ch];
            }
        }
        Ok((h, w, out))
    }

    /// Patchifies one normalized image (channel-major, `h`×`w`) and appends the rows to `out`.
    fn patchify(&self, h: usize, w: usize, chw: &[f32], out: &mut Vec<f32>) -> GridThw {
        let c = &self.config;
        let (p, m, tp) = (c.patch_size, c.merge_size, c.temporal_patch_size);
        let (gh, gw) = (h / p, w / p);
        for bh in 0..gh / m {
            for bw in 0..gw / m {
                for mh in 0..m {
                    for mw in 0..m {
                        let y0 = (bh * m + mh) * p;
                        let x0 = (bw * m + mw) * p;
                        for ch in 0..3 {
                            // A still image is repeated over the temporal patch.
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
        GridThw { t: 1, h: gh, w: gw }
    }

    /// Processes several images into one patch tensor (on `device`) plus their grids.
    pub fn process(&self, images: &[RgbImage], device: &Device) -> Result<ProcessedImages> {
        if images.is_empty() {
            return Err(Error::invalid("images", "no image given"));
        }
        let c = &self.config;
        let row = 3 * c.temporal_patch_size * c.patch_size * c.patch_size;
        let mut data = Vec::new();
        let mut grids = Vec::with_capacity(images.len());
        for img in images {
            let (h, w, chw) = self.resize_normalize(img)?;
            grids.push(self.patchify(h, w, &chw, &mut data));
        }
        let n = data.len() / row;
        let pixel_values = Tensor::from_vec(data, (n, row), device)?;
        Ok(ProcessedImages {
            pixel_values,
            grids,
        })
    }
}

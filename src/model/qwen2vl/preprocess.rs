//! The Qwen2-VL image processor: smart resize, rescale + normalize, 14-px patches, temporal patch 2, 2×2 merge
//! ordering, and `image_grid_thw`.
use std::borrow::Cow;
use std::mem::MaybeUninit;

use candle_core::{Device, Tensor};
use fast_image_resize as fir;
use image::RgbImage;
use rayon::prelude::*;

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

    /// Patchifies one RGB image already at its target size straight from its bytes into `out` (its patch
    /// rows, `patches × C·T·P·P`): rescale and normalize through a per-channel table (the reference's
    /// arithmetic: `v / 255` in f32, then `(x - mean) / std`, so the values are bit-identical), 14-px patches,
    /// the still image repeated over the temporal patch, rows in the 2×2 merge order.
    ///
    /// `out` may be uninitialized: every element is written once (the return value says how many were).
    fn patchify(&self, img: &RgbImage, out: &mut [MaybeUninit<f32>]) -> (GridThw, usize) {
        let c = &self.config;
        let (p, m, tp) = (c.patch_size, c.merge_size, c.temporal_patch_size);
        let mut lut = [[0f32; 256]; 3];
        for (ch, table) in lut.iter_mut().enumerate() {
            for (v, x) in table.iter_mut().enumerate() {
                *x = (v as f32 * (1.0f32 / 255.0) - c.image_mean[ch]) / c.image_std[ch];
            }
        }
        let (w, h) = (img.width() as usize, img.height() as usize);
        let raw = img.as_raw();
        let (gh, gw) = (h / p, w / p);
        let mut k = 0;
        for bh in 0..gh / m {
            for bw in 0..gw / m {
                for mh in 0..m {
                    for mw in 0..m {
                        let y0 = (bh * m + mh) * p;
                        let x0 = (bw * m + mw) * p;
                        for (ch, table) in lut.iter().enumerate() {
                            let first = k;
                            for py in 0..p {
                                let row = &raw[((y0 + py) * w + x0) * 3 + ch..];
                                for (px, o) in out[k..k + p].iter_mut().enumerate() {
                                    o.write(table[row[px * 3] as usize]);
                                }
                                k += p;
                            }
                            // A still image is repeated over the temporal patch.
                            for _ in 1..tp {
                                out.copy_within(first..first + p * p, k);
                                k += p * p;
                            }
                        }
                    }
                }
            }
        }
        (GridThw { t: 1, h: gh, w: gw }, k)
    }

    /// Processes several images into one patch tensor (on `device`) plus their grids. The images are resized
    /// and patchified in parallel (one task per image, each writing its own rows of the one buffer).
    pub fn process(&self, images: &[RgbImage], device: &Device) -> Result<ProcessedImages> {
        if images.is_empty() {
            return Err(Error::invalid("images", "no image given"));
        }
        let c = &self.config;
        let row = 3 * c.temporal_patch_size * c.patch_size * c.patch_size;
        let sizes = images
            .iter()
            .map(|img| self.target_size(img.height() as usize, img.width() as usize))
            .collect::<Result<Vec<_>>>()?;
        let patches: Vec<usize> = sizes
            .iter()
            .map(|&(h, w)| (h / c.patch_size) * (w / c.patch_size))
            .collect();
        let n: usize = patches.iter().sum();
        // Not zero-filled first (16 MB for six views): each image's task writes all of its rows, checked below
        // before the length is set.
        let mut data: Vec<f32> = Vec::with_capacity(n * row);
        let mut parts = Vec::with_capacity(images.len());
        let mut rest = &mut data.spare_capacity_mut()[..n * row];
        for &k in &patches {
            let (part, tail) = rest.split_at_mut(k * row);
            parts.push(part);
            rest = tail;
        }
        let grids = images
            .par_iter()
            .zip(sizes)
            .zip(parts)
            .map(|((img, (h, w)), out)| {
                let resized = resize_bicubic(img, h, w)?;
                let len = out.len();
                let (grid, written) = self.patchify(&resized, out);
                if written != len {
                    return Err(Error::invalid(
                        "image patches",
                        format!("{written} values written for {len} ({w}×{h} image)"),
                    ));
                }
                Ok(grid)
            })
            .collect::<Result<Vec<GridThw>>>()?;
        // SAFETY: the parts tile the first n · row elements and each was written in full (checked above).
        unsafe { data.set_len(n * row) };
        let pixel_values = Tensor::from_vec(data, (n, row), device)?;
        Ok(ProcessedImages {
            pixel_values,
            grids,
        })
    }
}

/// Resizes an RGB image to `height`×`width` with a bicubic (Catmull-Rom, a = −0.5) convolution whose support
/// widens with the downscale factor, as PIL's `BICUBIC` (the reference processor's `resample: 3`) does; SIMD
/// through `fast_image_resize`. The horizontal pass runs first, then the vertical one, each rounded to 8 bits,
/// in PIL's order (the other order clips overshoot at edges differently: up to 17 levels apart on an upscale).
/// An image already at that size is returned as it is.
pub fn resize_bicubic(img: &RgbImage, height: usize, width: usize) -> Result<Cow<'_, RgbImage>> {
    let (w0, h0) = img.dimensions();
    let (w, h) = (width as u32, height as u32);
    if (h0, w0) == (h, w) {
        return Ok(Cow::Borrowed(img));
    }
    let bad = |e: String| Error::invalid("image resize", format!("{w0}×{h0} → {w}×{h}: {e}"));
    let options = fir::ResizeOptions::new()
        .resize_alg(fir::ResizeAlg::Convolution(fir::FilterType::CatmullRom));
    let mut resizer = fir::Resizer::new();
    let mut pass = |src: &[u8], (sw, sh): (u32, u32), (dw, dh): (u32, u32)| {
        let src = fir::images::ImageRef::new(sw, sh, src, fir::PixelType::U8x3)
            .map_err(|e| bad(e.to_string()))?;
        let mut dst = fir::images::Image::new(dw, dh, fir::PixelType::U8x3);
        resizer
            .resize(&src, &mut dst, &options)
            .map_err(|e| bad(e.to_string()))?;
        Ok::<_, Error>(dst.into_vec())
    };
    let mut buf = if w != w0 {
        pass(img.as_raw(), (w0, h0), (w, h0))?
    } else {
        img.as_raw().clone()
    };
    if h != h0 {
        buf = pass(&buf, (w, h0), (w, h))?;
    }
    RgbImage::from_raw(w, h, buf)
        .map(Cow::Owned)
        .ok_or_else(|| bad("resized buffer has the wrong length".into()))
}

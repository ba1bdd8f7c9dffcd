//! The paper's losses for one camera view and one prompt, after the queries are matched to the ground truth:
//!
//! * stage 1 (`λ1 = 1, λ2 = 0`): MSE between 128-d embeddings of the predicted and the true boxes;
//! * stage 2 (`λ1 = 0.2, λ2 = 0.8`): adds `1 − IoU3D`, with the geometry module's exact gradient;
//! * both: a confidence loss (binary cross-entropy on the logits: matched queries 1, the others 0).
//!
//! The 128-d embedding is a **fixed** projection with orthonormal columns of the box encoding (centre / 10 m,
//! log sizes, sin and cos yaw): it cannot collapse (a learnable one can shrink to zero and zero the loss), and as
//! an isometry it keeps the MSE a faithful distance between boxes. The MSE is the mean over matched boxes of the
//! squared distance between the two embeddings (summed over the 128 dimensions, so it equals the squared
//! distance of the scaled 8-d encodings; a mean over the dimensions too would shrink the box terms 128-fold
//! against the confidence loss, and the shared weights then learn confidences and not positions).
//!
//! Not in the paper: the localization loss, a cross-entropy on where each matched query looks in the image
//! (the head's spatial readout), towards the token holding the box's projected centre. Its weight is the
//! recipe's `localization_weight` (0, the paper's recipe, turns it off).
use candle_core::{DType, Device, Tensor};

use super::matching::hungarian_match;
use crate::geometry::{iou_3d_with_grad, Box3D, Frame};
use crate::model::box_head::HeadOutput;
use crate::{Error, Result};

/// Width of the stage-1 embedding (the paper's).
pub const EMBED_DIM: usize = 128;
/// Box channels the head regresses: centre (3), log size (3), sin and cos yaw.
pub const BOX_CHANNELS: usize = 8;
/// Centre normalization inside the embedding, metres: keeps centre and shape terms of one order.
pub const CENTER_SCALE_M: f64 = 10.0;

/// The head's regression target for a box [x, y, z, l, w, h, yaw]: [x, y, z, ln l, ln w, ln h, sin yaw, cos yaw].
pub fn encode_box(p: [f64; 7]) -> [f32; BOX_CHANNELS] {
    [
        p[0] as f32,
        p[1] as f32,
        p[2] as f32,
        p[3].max(1e-3).ln() as f32,
        p[4].max(1e-3).ln() as f32,
        p[5].max(1e-3).ln() as f32,
        p[6].sin() as f32,
        p[6].cos() as f32,
    ]
}

/// The loss weights of a stage.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossWeights {
    /// λ1: the embedding MSE.
    pub mse: f64,
    /// λ2: `1 − IoU3D`.
    pub iou: f64,
    /// The confidence loss.
    pub confidence: f64,
    /// The readout's localization loss (a cross-entropy on where matched queries look; not in the paper).
    pub localization: f64,
    /// What a matched query's confidence learns.
    pub confidence_target: ConfidenceTarget,
    /// The presence map's loss (a focal loss on every image token; not in the paper; 0 = off).
    pub presence: f64,
    /// Dense head: the radius in tokens around a box's centre token within which its box terms apply
    /// ([`dense_loss`]; 0: the centre token only).
    pub box_radius: usize,
}

/// The confidence label of a matched query (unmatched queries always learn 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConfidenceTarget {
    /// 1, the paper's "matched vs. unmatched".
    #[default]
    Matched,
    /// The fraction of nuScenes' centre-distance thresholds (0.5, 1, 2, 4 m, on the ground plane) its box meets
    /// ([`distance_grade`]): the confidence then ranks boxes by how likely they count as found, which is what
    /// average precision measures. Not in the paper.
    Distance,
}

/// nuScenes detection's centre-distance thresholds, metres.
pub const CENTER_DISTANCE_THRESHOLDS_M: [f64; 4] = [0.5, 1.0, 2.0, 4.0];

/// The fraction of [`CENTER_DISTANCE_THRESHOLDS_M`] that a predicted centre `[x, y, z]` meets against a true one,
/// measuring the distance on the ground plane of `frame` (camera: x and z; LiDAR: x and y).
pub fn distance_grade(pred: [f64; 3], truth: [f64; 3], frame: Frame) -> f64 {
    let d = match frame {
        Frame::Camera => (pred[0] - truth[0]).hypot(pred[2] - truth[2]),
        Frame::Lidar => (pred[0] - truth[0]).hypot(pred[1] - truth[1]),
    };
    let met = CENTER_DISTANCE_THRESHOLDS_M
        .iter()
        .filter(|&&t| d < t)
        .count();
    met as f64 / CENTER_DISTANCE_THRESHOLDS_M.len() as f64
}

/// The fixed box embedding: `[8] → [128]`, orthonormal columns drawn from a fixed seed.
#[derive(Debug, Clone)]
pub struct BoxEmbedding {
    /// `[8, 128]`: row i is the image of channel i.
    proj: Tensor,
    /// Per-channel input scale `[8]`.
    scale: Tensor,
}

impl BoxEmbedding {
    /// The projection (the same on every run and machine).
    pub fn new(device: &Device) -> Result<Self> {
        use rand::SeedableRng;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0x0b0c_5128);
        // Gram–Schmidt on 8 random 128-d vectors: orthonormal rows, i.e. an isometric embedding.
        let mut rows: Vec<Vec<f64>> = Vec::new();
        while rows.len() < BOX_CHANNELS {
            let mut v: Vec<f64> = (0..EMBED_DIM)
                .map(|_| rand::Rng::random_range(&mut rng, -1.0..1.0))
                .collect();
            for r in &rows {
                let d: f64 = v.iter().zip(r).map(|(a, b)| a * b).sum();
                v.iter_mut().zip(r).for_each(|(a, b)| *a -= d * b);
            }
            let n = v.iter().map(|a| a * a).sum::<f64>().sqrt();
            if n > 1e-6 {
                rows.push(v.into_iter().map(|a| a / n).collect());
            }
        }
        let flat: Vec<f32> = rows.into_iter().flatten().map(|a| a as f32).collect();
        let s = (1.0 / CENTER_SCALE_M) as f32;
        Ok(Self {
            proj: Tensor::from_vec(flat, (BOX_CHANNELS, EMBED_DIM), device)?,
            scale: Tensor::new(&[s, s, s, 1.0, 1.0, 1.0, 1.0, 1.0], device)?,
        })
    }

    /// Embeds encoded boxes `[n, 8]` → `[n, 128]`.
    pub fn embed(&self, boxes: &Tensor) -> Result<Tensor> {
        let x = boxes.to_dtype(DType::F32)?.broadcast_mul(&self.scale)?;
        Ok(x.matmul(&self.proj)?)
    }
}

/// The loss of one view and prompt, with its parts for logging.
#[derive(Debug, Clone)]
pub struct ViewLoss {
    /// The weighted sum, differentiable.
    pub total: Tensor,
    /// Embedding MSE over matched queries (0 when there is no box).
    pub mse: f64,
    /// Mean `1 − IoU3D` over matched queries (0 when there is no box).
    pub iou_loss: f64,
    /// Confidence BCE over all queries.
    pub confidence: f64,
    /// The readout's localization cross-entropy over matched boxes with a centre in the image (0 when off).
    pub localization: f64,
    /// The presence map's focal loss per true box in the image (0 when off).
    pub presence: f64,
    /// Matched (query, box) pairs (for a dense head: (token, box)).
    pub matched: Vec<(usize, usize)>,
    /// `None`: `total` and the parts are means over this view's queries and boxes (the query head). `Some(n)`:
    /// they are sums over this view's `n` object tokens ([`dense_loss`]), to be divided by the batch's total
    /// count (DETR's normalization by the number of boxes across the batch).
    pub normalizer: Option<f64>,
}

/// A box of `frame` as a z-up [`Box3D`] (IoU is invariant to the rigid change of axes): the camera frame's
/// (x right, y down, z forward, yaw about −y) becomes (forward, left, up) with yaw − π/2.
fn z_up(p: [f64; 7], frame: Frame) -> Result<Box3D> {
    match frame {
        Frame::Lidar => Box3D::from_params(p),
        Frame::Camera => Box3D::from_params([
            p[2],
            -p[0],
            -p[1],
            p[3],
            p[4],
            p[5],
            p[6] - std::f64::consts::FRAC_PI_2,
        ]),
    }
}

/// ∂IoU/∂(frame params) from ∂IoU/∂(z-up params) (the inverse of [`z_up`]'s axis change).
fn grad_from_z_up(g: [f64; 7], frame: Frame) -> [f64; 7] {
    match frame {
        Frame::Lidar => g,
        Frame::Camera => [-g[1], -g[2], g[0], g[3], g[4], g[5], g[6]],
    }
}

/// Decodes raw head channels to [x, y, z, l, w, h, yaw] (as `decode_box`, in f64).
fn decode(raw: &[f32]) -> [f64; 7] {
    let s = |v: f32| f64::from(v.clamp(-10.0, 10.0)).exp();
    [
        f64::from(raw[0]),
        f64::from(raw[1]),
        f64::from(raw[2]),
        s(raw[3]),
        s(raw[4]),
        s(raw[5]),
        f64::from(raw[6]).atan2(f64::from(raw[7])),
    ]
}

/// IoU3D of a raw prediction with a target and ∂IoU/∂raw through the decoding (exp sizes, atan2 yaw).
pub fn iou_and_raw_grad(raw: &[f32], target: [f64; 7], frame: Frame) -> Result<(f64, [f64; 8])> {
    let p = decode(raw);
    let g = iou_3d_with_grad(&z_up(p, frame)?, &z_up(target, frame)?);
    let d = grad_from_z_up(g.d_a, frame);
    let (sn, cs) = (f64::from(raw[6]), f64::from(raw[7]));
    let r2 = (sn * sn + cs * cs).max(1e-12);
    let clamp = |v: f32| {
        if (-10.0..=10.0).contains(&v) {
            1.0
        } else {
            0.0
        }
    };
    Ok((
        g.iou,
        [
            d[0],
            d[1],
            d[2],
            d[3] * p[3] * clamp(raw[3]),
            d[4] * p[4] * clamp(raw[4]),
            d[5] * p[5] * clamp(raw[5]),
            d[6] * cs / r2,
            -d[6] * sn / r2,
        ],
    ))
}

/// The paper's loss for one view and prompt: `out` holds `[K, 8]` boxes, `[K]` logits (one view), `targets`
/// the true boxes of the prompted categories in `frame` (empty for an absent category). Queries are matched to
/// boxes by the Hungarian algorithm on L1 distance of the encodings plus `1 − IoU3D`, plus (when
/// `weights.localization` > 0) the weighted cross-entropy of the query's readout at the box's token, so that a
/// query is matched to the box it looks at; `image_centres[g]` is box g's projected centre scaled to [-1, 1]
/// (as [`crate::model::box_head::ImageTokens::centres`]; `None` outside the image, an empty slice when there
/// are none).
pub fn two_stage_loss(
    out: &HeadOutput,
    targets: &[[f64; 7]],
    image_centres: &[Option<[f64; 2]>],
    frame: Frame,
    weights: &LossWeights,
    embedding: &BoxEmbedding,
) -> Result<ViewLoss> {
    let boxes = out.boxes.to_dtype(DType::F32)?.contiguous()?;
    let logits = out.logits.to_dtype(DType::F32)?.contiguous()?;
    let k = boxes.dim(0)?;
    let device = boxes.device().clone();
    let raw: Vec<Vec<f32>> = boxes.to_vec2()?;
    let targets = &targets[..targets.len().min(k)];
    let enc: Vec<[f32; BOX_CHANNELS]> = targets.iter().map(|t| encode_box(*t)).collect();
    // Matching cost: normalized L1 of the encodings plus 1 − IoU.
    let mut cost = vec![vec![0.0; k]; targets.len()];
    for (g, t) in targets.iter().enumerate() {
        for (q, r) in raw.iter().enumerate() {
            let l1: f64 = (0..BOX_CHANNELS)
                .map(|c| {
                    let s = if c < 3 { 1.0 / CENTER_SCALE_M } else { 1.0 };
                    s * f64::from((r[c] - enc[g][c]).abs())
                })
                .sum();
            let iou = iou_and_raw_grad(r, *t, frame).map(|x| x.0).unwrap_or(0.0);
            cost[g][q] = l1 + (1.0 - iou);
        }
    }
    let looks = if weights.localization > 0.0 && !targets.is_empty() {
        Some(Looks::new(out, image_centres)?)
    } else {
        None
    };
    if let Some(l) = &looks {
        for (g, row) in cost.iter_mut().enumerate() {
            if let Some(ce) = l.cross_entropy(g) {
                row.iter_mut()
                    .zip(ce)
                    .for_each(|(c, e)| *c += weights.localization * e);
            }
        }
    }
    let assign = hungarian_match(&cost)?;
    let matched: Vec<(usize, usize)> = assign.iter().enumerate().map(|(g, &q)| (q, g)).collect();

    // Confidence: BCE with logits, softplus(x) − y·x, over all queries.
    let mut labels = vec![0f32; k];
    for &(q, g) in &matched {
        labels[q] = match weights.confidence_target {
            ConfidenceTarget::Matched => 1.0,
            ConfidenceTarget::Distance => {
                let p = decode(&raw[q]);
                distance_grade(
                    [p[0], p[1], p[2]],
                    [targets[g][0], targets[g][1], targets[g][2]],
                    frame,
                ) as f32
            }
        };
    }
    let y = Tensor::from_vec(labels, k, &device)?;
    let bce = (softplus(&logits)? - (&y * &logits)?)?.mean_all()?;
    let mut total = (bce.clone() * weights.confidence)?;
    let confidence = f64::from(bce.to_scalar::<f32>()?);

    let (mut mse_v, mut iou_v) = (0.0, 0.0);
    if !matched.is_empty() {
        let qidx: Vec<u32> = matched.iter().map(|&(q, _)| q as u32).collect();
        let pred = boxes.index_select(&Tensor::new(qidx.as_slice(), &device)?, 0)?;
        let truth: Vec<f32> = matched.iter().flat_map(|&(_, g)| enc[g]).collect();
        let truth = Tensor::from_vec(truth, (matched.len(), BOX_CHANNELS), &device)?;
        if weights.mse > 0.0 {
            let d = (embedding.embed(&pred)? - embedding.embed(&truth)?)?;
            let mse = (d.sqr()?.sum_all()? / matched.len() as f64)?;
            mse_v = f64::from(mse.to_scalar::<f32>()?);
            total = (total + (mse * weights.mse)?)?;
        }
        // 1 − IoU with the exact gradient: value from the geometry, gradient injected as the constant ∂/∂raw
        // (s − s.detach() is 0 in value and carries the gradient).
        let mut grads = Vec::with_capacity(matched.len() * BOX_CHANNELS);
        let mut sum = 0.0;
        for &(q, g) in &matched {
            let (iou, d) = iou_and_raw_grad(&raw[q], targets[g], frame)?;
            if !iou.is_finite() || d.iter().any(|v| !v.is_finite()) {
                return Err(Error::invalid(
                    "IoU loss",
                    format!("non-finite IoU or gradient for query {q}"),
                ));
            }
            sum += 1.0 - iou;
            grads.extend(d.iter().map(|v| (-v / matched.len() as f64) as f32));
        }
        iou_v = sum / matched.len() as f64;
        if weights.iou > 0.0 {
            let g = Tensor::from_vec(grads, (matched.len(), BOX_CHANNELS), &device)?;
            let s = (&pred * &g)?.sum_all()?;
            let surrogate = ((&s - s.detach())? + iou_v)?;
            total = (total + (surrogate * weights.iou)?)?;
        }
    }
    let mut localization = 0.0;
    if let Some(l) = &looks {
        if let Some((ce, v)) = l.loss(&matched)? {
            localization = v;
            total = (total + (ce * weights.localization)?)?;
        }
    }
    let mut presence = 0.0;
    if weights.presence > 0.0 {
        let (term, v) = presence_loss(out, image_centres)?;
        presence = v;
        total = (total + (term * weights.presence)?)?;
    }
    Ok(ViewLoss {
        total,
        mse: mse_v,
        iou_loss: iou_v,
        confidence,
        localization,
        presence,
        matched,
        normalizer: None,
    })
}

/// Gaussian spread (token units) of a dense target's heat-map peak: a sixth of the object's apparent size (a
/// CenterNet-like radius of a third), at least half a token.
fn heat_sigma(apparent_tokens: f64) -> f64 {
    (apparent_tokens / 6.0).max(0.5)
}

/// The dense head's loss ([`crate::model::box_head::HeadKind::Dense`]) on one view and prompt. `out` holds one
/// view's per-token outputs; `targets` the true boxes of the prompted categories in `frame`, `image_centres` their
/// projected centres in [-1, 1] (`None` outside the image) and `camera_centres` their centres in the camera frame.
///
/// As CenterNet: each box with its centre in the image is assigned to the token holding that centre (the
/// nearer box when two share a token); the heat map learns a focal loss (α = 2, β = 4) towards 1 at assigned
/// tokens and a Gaussian of the distance to each centre elsewhere (spread: [`heat_sigma`] of the box's apparent
/// size). At each assigned token: the paper's stage-1 MSE on the 128-d embeddings, the stage-2 `1 − IoU3D`,
/// and (`weights.localization`) an L1 on the centre channels in their own units (the view's
/// [`CentreUnits`]): the ray offset towards the centre's ray and the log depth. The yaw target is the true heading or its opposite,
/// whichever is nearer the prediction (the synthetic objects, like many real ones, look alike from front and
/// back; IoU and nuScenes' AP do not see the difference). With `weights.box_radius` > 0 the box terms also
/// apply at the free tokens within that many tokens of the centre token where the box's heat target is ≥ 0.5
/// (FCOS's centre sampling: a heat-map peak one token off still answers with a trained box), the box's tokens
/// sharing its weight of 1 in proportion to their targets. Values are sums over the boxes (`normalizer`).
pub fn dense_loss(
    out: &HeadOutput,
    targets: &[[f64; 7]],
    image_centres: &[Option<[f64; 2]>],
    camera_centres: &[[f64; 3]],
    frame: Frame,
    weights: &LossWeights,
    embedding: &BoxEmbedding,
) -> Result<ViewLoss> {
    let Some(dense) = &out.dense else {
        return Err(Error::invalid(
            "dense loss",
            "the head output is not a dense head's",
        ));
    };
    if image_centres.len() != targets.len() || camera_centres.len() != targets.len() {
        return Err(Error::invalid(
            "dense loss",
            format!(
                "{} targets but {} image centres and {} camera centres",
                targets.len(),
                image_centres.len(),
                camera_centres.len()
            ),
        ));
    }
    let (rows, cols) = dense.grid;
    let n = rows * cols;
    let boxes = out.boxes.to_dtype(DType::F32)?.contiguous()?;
    let logits = out.logits.to_dtype(DType::F32)?.contiguous()?;
    if boxes.dim(0)? != n || logits.dim(0)? != n {
        return Err(Error::invalid(
            "dense loss",
            format!("{} outputs for a {rows} × {cols} raster", boxes.dim(0)?),
        ));
    }
    let device = boxes.device().clone();
    let raw: Vec<Vec<f32>> = boxes.to_vec2()?;
    let rays: Vec<Vec<f32>> = dense.rays.to_dtype(DType::F32)?.to_vec2()?;
    let [units] = dense.units[..] else {
        return Err(Error::invalid(
            "dense loss",
            format!("one view's outputs expected, got {}", dense.units.len()),
        ));
    };
    // Rays per token column: the apparent size in tokens of an object is its size / depth over this.
    let ray_step = if cols > 1 {
        f64::from((rays[1][0] - rays[0][0]).abs()).max(1e-6)
    } else {
        1.0
    };
    // Heat-map targets and the assignment of boxes to tokens.
    let mut heat = vec![0f32; n];
    let mut owner: Vec<Option<usize>> = vec![None; n];
    // Per box: its centre in token units and its heat spread.
    let mut spot: Vec<Option<(f64, f64, f64)>> = vec![None; targets.len()];
    let gauss = |i: usize, (fx, fy, sigma): (f64, f64, f64)| {
        let (r, k) = ((i / cols) as f64 + 0.5, (i % cols) as f64 + 0.5);
        (-((k - fx).powi(2) + (r - fy).powi(2)) / (2.0 * sigma * sigma)).exp()
    };
    for (g, (c, cam)) in image_centres.iter().zip(camera_centres).enumerate() {
        let (Some(c), true) = (c, cam[2] > 1e-3) else {
            continue;
        };
        let (fx, fy) = (
            (c[0] + 1.0) / 2.0 * cols as f64,
            (c[1] + 1.0) / 2.0 * rows as f64,
        );
        let t = (fy.floor().clamp(0.0, rows as f64 - 1.0) as usize) * cols
            + fx.floor().clamp(0.0, cols as f64 - 1.0) as usize;
        let size = targets[g][3].max(targets[g][4]) / cam[2] / ray_step;
        let at = (fx, fy, heat_sigma(size));
        spot[g] = Some(at);
        for (i, h) in heat.iter_mut().enumerate() {
            *h = h.max(gauss(i, at) as f32);
        }
        if owner[t].is_none_or(|o| camera_centres[o][2] > cam[2]) {
            owner[t] = Some(g);
        }
    }
    let matched: Vec<(usize, usize)> = owner
        .iter()
        .enumerate()
        .filter_map(|(t, o)| o.map(|g| (t, g)))
        .collect();
    for &(t, _) in &matched {
        heat[t] = 1.0;
    }
    // The tokens whose box terms count, with their weights: each box's centre token and, within
    // `box_radius`, the free tokens where its heat target is ≥ 0.5 (a token near two boxes goes to the one
    // whose target is higher there). A box's tokens share its weight of 1 in proportion to their targets (the
    // centre token's is 1), so the loss per box, and its normalization by the number of boxes, are unchanged.
    let mut regress: Vec<(usize, usize, f64)> = matched.iter().map(|&(t, g)| (t, g, 1.0)).collect();
    if weights.box_radius > 0 {
        let r = weights.box_radius;
        let mut claim: Vec<Option<(usize, f64)>> = vec![None; n];
        for &(t, g) in &matched {
            let Some(at) = spot[g] else { continue };
            let (tr, tc) = (t / cols, t % cols);
            for row in tr.saturating_sub(r)..=(tr + r).min(rows - 1) {
                for col in tc.saturating_sub(r)..=(tc + r).min(cols - 1) {
                    let i = row * cols + col;
                    let y = gauss(i, at);
                    if owner[i].is_none() && y >= 0.5 && claim[i].is_none_or(|(_, h)| y > h) {
                        claim[i] = Some((g, y));
                    }
                }
            }
        }
        regress.extend(
            claim
                .iter()
                .enumerate()
                .filter_map(|(i, c)| c.map(|(g, y)| (i, g, y))),
        );
        let mut share = vec![0.0; targets.len()];
        for &(_, g, y) in &regress {
            share[g] += y;
        }
        for e in &mut regress {
            e.2 /= share[e.1];
        }
    }
    let weighted = regress.len() > matched.len();
    let is_pos: Vec<f32> = heat.iter().map(|&y| f32::from(y >= 1.0)).collect();
    let x = logits;
    let pos_mask = Tensor::from_vec(is_pos.clone(), n, &device)?;
    let neg_weight = Tensor::from_vec(
        heat.iter()
            .zip(&is_pos)
            .map(|(&h, &p)| (1.0 - p) * (1.0 - h).powi(4))
            .collect::<Vec<f32>>(),
        n,
        &device,
    )?;
    let p = candle_nn::ops::sigmoid(&x)?;
    let pos = ((p.affine(-1.0, 1.0)?.sqr()? * softplus(&x.neg()?)?)? * &pos_mask)?;
    let neg = ((p.sqr()? * softplus(&x)?)? * &neg_weight)?;
    let focal = (pos + neg)?.sum_all()?;
    let confidence = f64::from(focal.to_scalar::<f32>()?);
    let mut total = (focal * weights.confidence)?;

    let (mut mse_v, mut iou_v, mut centre_v) = (0.0, 0.0, 0.0);
    if !regress.is_empty() {
        let m = regress.len();
        let idx: Vec<u32> = regress.iter().map(|&(t, _, _)| t as u32).collect();
        let idx = Tensor::new(idx.as_slice(), &device)?;
        let pred = boxes.index_select(&idx, 0)?;
        // Σ over tokens of each row's sum, weighted when tokens share a box.
        let w = Tensor::from_vec(
            regress.iter().map(|e| e.2 as f32).collect::<Vec<f32>>(),
            (m, 1),
            &device,
        )?;
        let total_of = |rows: Tensor| -> Result<Tensor> {
            Ok(if weighted {
                rows.sum_keepdim(1)?.broadcast_mul(&w)?.sum_all()?
            } else {
                rows.sum_all()?
            })
        };
        // The heading or its opposite, whichever the prediction is nearer.
        let flipped: Vec<[f64; 7]> = regress
            .iter()
            .map(|&(t, g, _)| {
                let mut b = targets[g];
                let (s, c) = (f64::from(raw[t][6]), f64::from(raw[t][7]));
                if s * b[6].sin() + c * b[6].cos() < 0.0 {
                    b[6] += std::f64::consts::PI;
                }
                b
            })
            .collect();
        let truth: Vec<f32> = flipped.iter().flat_map(|b| encode_box(*b)).collect();
        let truth = Tensor::from_vec(truth, (m, BOX_CHANNELS), &device)?;
        if weights.mse > 0.0 {
            let d = (embedding.embed(&pred)? - embedding.embed(&truth)?)?;
            let mse = total_of(d.sqr()?)?;
            mse_v = f64::from(mse.to_scalar::<f32>()?);
            total = (total + (mse * weights.mse)?)?;
        }
        // The centre channels in their own units: ray offset and log depth.
        let want: Vec<f32> = regress
            .iter()
            .flat_map(|&(t, g, _)| {
                let ray = [f64::from(rays[t][0]), f64::from(rays[t][1])];
                units.encode(ray, camera_centres[g])
            })
            .collect();
        let want = Tensor::from_vec(want, (m, 3), &device)?;
        let got = dense
            .raw_centre
            .to_dtype(DType::F32)?
            .index_select(&idx, 0)?;
        let l1 = total_of((got - want)?.abs()?)?;
        centre_v = f64::from(l1.to_scalar::<f32>()?);
        if weights.localization > 0.0 {
            total = (total + (l1 * weights.localization)?)?;
        }
        let mut grads = Vec::with_capacity(m * BOX_CHANNELS);
        for (&(t, _, wt), b) in regress.iter().zip(&flipped) {
            let (iou, d) = iou_and_raw_grad(&raw[t], *b, frame)?;
            if !iou.is_finite() || d.iter().any(|v| !v.is_finite()) {
                return Err(Error::invalid(
                    "IoU loss",
                    format!("non-finite IoU or gradient at token {t}"),
                ));
            }
            iou_v += wt * (1.0 - iou);
            grads.extend(d.iter().map(|v| -(*v * wt) as f32));
        }
        if weights.iou > 0.0 {
            let g = Tensor::from_vec(grads, (m, BOX_CHANNELS), &device)?;
            let s = (&pred * &g)?.sum_all()?;
            let surrogate = ((&s - s.detach())? + iou_v)?;
            total = (total + (surrogate * weights.iou)?)?;
        }
    }
    Ok(ViewLoss {
        total,
        mse: mse_v,
        iou_loss: iou_v,
        confidence,
        localization: centre_v,
        presence: 0.0,
        normalizer: Some(matched.len() as f64),
        matched,
    })
}

/// `ln(1 + eˣ)`, stable for large |x|.
fn softplus(x: &Tensor) -> Result<Tensor> {
    Ok((x.relu()? + (x.abs()?.neg()?.exp()? + 1.0)?.log()?)?)
}

/// The index of the token whose centre is nearest to `c` (both in [-1, 1] image coordinates).
fn nearest_token(grid: &[Vec<f32>], c: [f64; 2]) -> Option<usize> {
    grid.iter()
        .enumerate()
        .map(|(i, t)| {
            (
                i,
                (f64::from(t[0]) - c[0]).powi(2) + (f64::from(t[1]) - c[1]).powi(2),
            )
        })
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(i, _)| i)
}

/// The presence map's loss on one view: every token is labelled 1 when a true box of the prompted categories
/// has its projected centre there (`centres`, as in [`two_stage_loss`]) and 0 otherwise; a focal binary
/// cross-entropy (γ = 2, CenterNet's: the many easy background tokens do not drown the few object tokens),
/// summed over tokens and divided by the number of object tokens (at least 1).
fn presence_loss(out: &HeadOutput, centres: &[Option<[f64; 2]>]) -> Result<(Tensor, f64)> {
    let Some((heat, readout)) = out
        .readout
        .first()
        .and_then(|r| r.heat.as_ref().map(|h| (h, r)))
    else {
        return Err(Error::invalid(
            "presence loss",
            "presence_weight > 0 but the head has no presence map",
        ));
    };
    let grid: Vec<Vec<f32>> = readout.centres.to_dtype(DType::F32)?.to_vec2()?;
    let mut labels = vec![0f32; grid.len()];
    for c in centres.iter().flatten() {
        if let Some(t) = nearest_token(&grid, *c) {
            labels[t] = 1.0;
        }
    }
    let positives = labels.iter().filter(|&&y| y > 0.0).count().max(1);
    let x = heat.to_dtype(DType::F32)?;
    let y = Tensor::from_vec(labels, grid.len(), x.device())?;
    let p = candle_nn::ops::sigmoid(&x)?;
    // −log p = softplus(−x), −log(1 − p) = softplus(x).
    let pos = ((p.affine(-1.0, 1.0)?.sqr()? * softplus(&x.neg()?)?)? * &y)?;
    let neg = ((p.sqr()? * softplus(&x)?)? * y.affine(-1.0, 1.0)?)?;
    let loss = ((pos + neg)?.sum_all()? / positives as f64)?;
    let v = f64::from(loss.to_scalar::<f32>()?);
    Ok((loss, v))
}

/// Where the queries of one view look (the head's readout, `out.readout[0]`) and which image token holds each
/// target's projected centre: `centres[g]` is box g's centre scaled to [-1, 1] (as
/// [`crate::model::box_head::ImageTokens::centres`]), `None` outside the image.
struct Looks {
    /// `[K, N]` log-softmax of the readout scores (differentiable, for the loss).
    log_probs: Tensor,
    /// The same values on the host, read once for the matching cost.
    host: Vec<Vec<f32>>,
    /// The token nearest to each target's centre.
    tokens: Vec<Option<usize>>,
}

impl Looks {
    fn new(out: &HeadOutput, centres: &[Option<[f64; 2]>]) -> Result<Self> {
        let Some(readout) = out.readout.first() else {
            return Err(Error::invalid(
                "localization loss",
                "the head output has no readout attention",
            ));
        };
        let grid: Vec<Vec<f32>> = readout.centres.to_dtype(DType::F32)?.to_vec2()?;
        let tokens = centres
            .iter()
            .map(|c| nearest_token(&grid, (*c)?))
            .collect();
        // log-softmax by hand (the fused softmax has no backward): score − logsumexp.
        let s = readout.scores.to_dtype(DType::F32)?;
        let max = s.max_keepdim(1)?.detach();
        let lse = (s.broadcast_sub(&max)?.exp()?.sum_keepdim(1)?.log()? + &max)?;
        let log_probs = s.broadcast_sub(&lse)?;
        Ok(Self {
            host: log_probs.to_vec2()?,
            log_probs,
            tokens,
        })
    }

    /// Every query's cross-entropy at target `g`'s token (`None` when its centre is outside the image).
    fn cross_entropy(&self, g: usize) -> Option<Vec<f64>> {
        let t = (*self.tokens.get(g)?)?;
        Some(self.host.iter().map(|row| -f64::from(row[t])).collect())
    }

    /// Mean cross-entropy of the matched (query, target) pairs whose target is in the image, and its value.
    fn loss(&self, matched: &[(usize, usize)]) -> Result<Option<(Tensor, f64)>> {
        let pairs: Vec<(u32, u32)> = matched
            .iter()
            .filter_map(|&(q, g)| Some((q as u32, (*self.tokens.get(g)?)? as u32)))
            .collect();
        if pairs.is_empty() {
            return Ok(None);
        }
        let device = self.log_probs.device();
        let q: Vec<u32> = pairs.iter().map(|p| p.0).collect();
        let t: Vec<u32> = pairs.iter().map(|p| p.1).collect();
        let rows = self
            .log_probs
            .index_select(&Tensor::new(q.as_slice(), device)?, 0)?;
        let at = rows.gather(&Tensor::new(t.as_slice(), device)?.unsqueeze(1)?, 1)?;
        let ce = at.neg()?.mean_all()?;
        let v = f64::from(ce.to_scalar::<f32>()?);
        Ok(Some((ce, v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::box_head::{CentreCoding, DEPTH_SCALE, RAY_OFFSET_SCALE};

    #[test]
    fn embedding_is_an_isometry_of_the_scaled_encoding() {
        let e = BoxEmbedding::new(&Device::Cpu).unwrap();
        let a = Tensor::new(
            &[[10.0f32, -2.0, 30.0, 1.0, 0.5, 0.4, 0.6, 0.8]],
            &Device::Cpu,
        )
        .unwrap();
        let b = Tensor::new(
            &[[12.0f32, -1.0, 25.0, 0.9, 0.7, 0.4, 0.0, 1.0]],
            &Device::Cpu,
        )
        .unwrap();
        let d = (e.embed(&a).unwrap() - e.embed(&b).unwrap()).unwrap();
        let got: f32 = d.sqr().unwrap().sum_all().unwrap().to_scalar().unwrap();
        let s = 1.0 / CENTER_SCALE_M as f32;
        let want: f32 = [2.0 * s, 1.0 * s, -5.0 * s, -0.1, 0.2, 0.0, -0.6, 0.2]
            .iter()
            .map(|v| v * v)
            .sum();
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
    }

    #[test]
    fn raw_iou_gradient_matches_finite_differences() {
        for frame in [Frame::Camera, Frame::Lidar] {
            let target = [0.4, 0.3, 12.0, 4.0, 1.8, 1.5, 0.3];
            let raw = [0.9f32, 0.1, 11.2, 1.2, 0.7, 0.35, 0.5, 0.8];
            let (iou, g) = iou_and_raw_grad(&raw, target, frame).unwrap();
            assert!(iou > 0.05 && iou < 1.0, "{iou}");
            for c in 0..8 {
                let h = 1e-3f32;
                let mut up = raw;
                up[c] += h;
                let mut dn = raw;
                dn[c] -= h;
                let fd = (iou_and_raw_grad(&up, target, frame).unwrap().0
                    - iou_and_raw_grad(&dn, target, frame).unwrap().0)
                    / (2.0 * f64::from(h));
                assert!(
                    (fd - g[c]).abs() < 2e-3,
                    "{frame:?} channel {c}: {fd} vs {}",
                    g[c]
                );
            }
        }
    }

    #[test]
    fn a_perfect_prediction_has_no_box_loss() {
        let e = BoxEmbedding::new(&Device::Cpu).unwrap();
        let target = [1.0, 0.5, 15.0, 4.0, 1.8, 1.5, 1.1];
        let mut rows = [[0f32, 0.0, 40.0, 0.0, 0.0, 0.0, 0.0, 1.0]; 4];
        rows[2] = encode_box(target);
        let flat: Vec<f32> = rows.iter().flatten().copied().collect();
        let boxes = Tensor::from_vec(flat, (4, 8), &Device::Cpu).unwrap();
        let logits = Tensor::new(&[-9f32, -9.0, 9.0, -9.0], &Device::Cpu).unwrap();
        let out = HeadOutput {
            embedding: Tensor::zeros((4, 128), DType::F32, &Device::Cpu).unwrap(),
            boxes,
            logits,
            readout: Vec::new(),
            presence: None,
            dense: None,
        };
        let w = LossWeights {
            mse: 0.2,
            iou: 0.8,
            confidence: 1.0,
            localization: 0.0,
            confidence_target: ConfidenceTarget::Matched,
            presence: 0.0,
            box_radius: 0,
        };
        let l = two_stage_loss(&out, &[target], &[], Frame::Camera, &w, &e).unwrap();
        assert_eq!(l.matched, [(2, 0)]);
        assert!(l.mse < 1e-10 && l.iou_loss < 1e-5, "{l:?}");
        assert!(l.confidence < 1e-3);
        // An absent category: every query learns "no object", no box terms.
        let none = two_stage_loss(&out, &[], &[], Frame::Camera, &w, &e).unwrap();
        assert!(none.matched.is_empty() && none.mse == 0.0 && none.iou_loss == 0.0);
        assert!(none.confidence > 1.0);
    }

    /// Distance grades in closed form: 0.7 m meets 1, 2 and 4 m (3/4); the camera frame measures on x and z
    /// (its y is height), the LiDAR frame on x and y; exactly on a threshold does not meet it (strict `<`).
    #[test]
    fn distance_grade_counts_the_thresholds_met() {
        let t = [10.0, 1.0, 20.0];
        assert_eq!(distance_grade(t, t, Frame::Camera), 1.0);
        assert_eq!(distance_grade([10.7, 1.0, 20.0], t, Frame::Camera), 0.75);
        assert_eq!(distance_grade([10.5, 1.0, 20.0], t, Frame::Camera), 0.75);
        assert_eq!(distance_grade([10.0, 9.0, 20.0], t, Frame::Camera), 1.0);
        assert_eq!(distance_grade([10.0, 1.0, 23.0], t, Frame::Camera), 0.25);
        assert_eq!(distance_grade([10.0, 1.0, 23.0], t, Frame::Lidar), 1.0);
        assert_eq!(distance_grade([10.0, 2.5, 20.0], t, Frame::Lidar), 0.5);
        assert_eq!(distance_grade([14.0, 1.0, 20.0], t, Frame::Lidar), 0.0);
    }

    /// With the distance target a matched query 0.7 m off learns 0.75: its BCE term is softplus(x) − 0.75·x,
    /// by hand, averaged with the unmatched queries' softplus(x).
    #[test]
    fn distance_target_grades_the_matched_label() {
        let e = BoxEmbedding::new(&Device::Cpu).unwrap();
        let target = [1.0, 0.5, 15.0, 4.0, 1.8, 1.5, 1.1];
        let mut rows = [[0f32, 0.0, 40.0, 0.0, 0.0, 0.0, 0.0, 1.0]; 2];
        rows[1] = encode_box([1.7, 0.5, 15.0, 4.0, 1.8, 1.5, 1.1]);
        let flat: Vec<f32> = rows.iter().flatten().copied().collect();
        let logits = [-1.5f32, 0.8];
        let out = HeadOutput {
            embedding: Tensor::zeros((2, 128), DType::F32, &Device::Cpu).unwrap(),
            boxes: Tensor::from_vec(flat, (2, 8), &Device::Cpu).unwrap(),
            logits: Tensor::new(&logits, &Device::Cpu).unwrap(),
            readout: Vec::new(),
            presence: None,
            dense: None,
        };
        let w = LossWeights {
            mse: 1.0,
            iou: 0.0,
            confidence: 1.0,
            localization: 0.0,
            confidence_target: ConfidenceTarget::Distance,
            presence: 0.0,
            box_radius: 0,
        };
        let l = two_stage_loss(&out, &[target], &[], Frame::Camera, &w, &e).unwrap();
        assert_eq!(l.matched, [(1, 0)]);
        let sp = |x: f64| (1.0 + x.exp()).ln();
        let want = (sp(-1.5) + sp(0.8) - 0.75 * 0.8) / 2.0;
        assert!(
            (l.confidence - want).abs() < 1e-5,
            "{} vs {want}",
            l.confidence
        );
        let matched = two_stage_loss(
            &out,
            &[target],
            &[],
            Frame::Camera,
            &LossWeights {
                confidence_target: ConfidenceTarget::Matched,
                ..w
            },
            &e,
        )
        .unwrap();
        let want = (sp(-1.5) + sp(0.8) - 0.8) / 2.0;
        assert!((matched.confidence - want).abs() < 1e-5);
    }

    /// The localization loss by hand: a 1 × 4 token raster (u = −0.75, −0.25, 0.25, 0.75); the box's centre at
    /// u = 0.3 is nearest token 2. Both queries predict the same box, so only where they look tells them apart:
    /// the query whose scores peak on token 2 is matched, and its loss is log Σ exp(s) − s₂. A box outside the
    /// image, or the weight 0, adds nothing.
    #[test]
    fn localization_matches_the_query_that_looks_at_the_box() {
        use crate::model::box_head::{ImageTokens, Readout};
        let dev = Device::Cpu;
        let e = BoxEmbedding::new(&dev).unwrap();
        let target = [1.0, 0.5, 15.0, 4.0, 1.8, 1.5, 1.1];
        let s = [[0.3f32, -1.0, 4.0, 0.5], [1.0, 0.0, -0.5, 2.5]];
        let rows: Vec<f32> = [encode_box(target), encode_box(target)].concat();
        let out = HeadOutput {
            embedding: Tensor::zeros((2, 128), DType::F32, &dev).unwrap(),
            boxes: Tensor::from_vec(rows, (2, 8), &dev).unwrap(),
            logits: Tensor::zeros(2, DType::F32, &dev).unwrap(),
            readout: vec![Readout {
                scores: Tensor::new(&s, &dev).unwrap(),
                centres: ImageTokens::raster_centres(1, 4, &dev).unwrap(),
                heat: None,
            }],
            presence: None,
            dense: None,
        };
        let w = LossWeights {
            mse: 1.0,
            iou: 0.0,
            confidence: 1.0,
            localization: 1.0,
            confidence_target: ConfidenceTarget::Matched,
            presence: 0.0,
            box_radius: 0,
        };
        for (looking, other) in [(0usize, 1usize), (1, 0)] {
            // Swap the queries' scores: the match follows the look.
            let sc = if looking == 0 { s } else { [s[1], s[0]] };
            let out = HeadOutput {
                readout: vec![Readout {
                    scores: Tensor::new(&sc, &dev).unwrap(),
                    centres: ImageTokens::raster_centres(1, 4, &dev).unwrap(),
                    heat: None,
                }],
                ..out.clone()
            };
            let l = two_stage_loss(&out, &[target], &[Some([0.3, 0.1])], Frame::Camera, &w, &e)
                .unwrap();
            assert_eq!(l.matched, [(looking, 0)], "query {other} looks elsewhere");
            let lse = s[0].iter().map(|&x| (x as f64).exp()).sum::<f64>().ln();
            assert!(
                (l.localization - (lse - s[0][2] as f64)).abs() < 1e-5,
                "{l:?}"
            );
        }
        // Outside the image: no localization term, and the weight 0 turns it off.
        let l = two_stage_loss(&out, &[target], &[None], Frame::Camera, &w, &e).unwrap();
        assert_eq!(l.localization, 0.0);
        let off = LossWeights {
            localization: 0.0,
            ..w
        };
        let l = two_stage_loss(
            &out,
            &[target],
            &[Some([0.3, 0.1])],
            Frame::Camera,
            &off,
            &e,
        )
        .unwrap();
        assert_eq!(l.localization, 0.0);
    }

    /// The presence loss by hand: a 1 × 4 token raster (u = −0.75, −0.25, 0.25, 0.75); two boxes with centres in
    /// token 2 (u = 0.3 and 0.1) and one outside the image label token 2 alone. Focal terms: the object token
    /// (1 − p)²·softplus(−x), each background token p²·softplus(x), summed and divided by the one object token; an
    /// absent category (no centres) labels every token background, divided by 1.
    #[test]
    fn presence_loss_is_the_focal_loss_over_tokens() {
        use crate::model::box_head::{ImageTokens, Readout};
        let dev = Device::Cpu;
        let e = BoxEmbedding::new(&dev).unwrap();
        let heat = [-2.0f32, 0.5, 1.5, -0.3];
        let out = HeadOutput {
            embedding: Tensor::zeros((1, 128), DType::F32, &dev).unwrap(),
            boxes: Tensor::from_vec(
                encode_box([0.0, 0.0, 10.0, 4.0, 2.0, 1.5, 0.0]).to_vec(),
                (1, 8),
                &dev,
            )
            .unwrap(),
            logits: Tensor::zeros(1, DType::F32, &dev).unwrap(),
            readout: vec![Readout {
                scores: Tensor::zeros((1, 4), DType::F32, &dev).unwrap(),
                centres: ImageTokens::raster_centres(1, 4, &dev).unwrap(),
                heat: Some(Tensor::new(&heat, &dev).unwrap()),
            }],
            presence: None,
            dense: None,
        };
        let w = LossWeights {
            mse: 0.0,
            iou: 0.0,
            confidence: 0.0,
            localization: 0.0,
            confidence_target: ConfidenceTarget::Matched,
            presence: 1.0,
            box_radius: 0,
        };
        let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
        let sp = |x: f64| (1.0 + x.exp()).ln();
        let bg = |x: f64| sig(x).powi(2) * sp(x);
        let obj = |x: f64| (1.0 - sig(x)).powi(2) * sp(-x);
        let h: Vec<f64> = heat.iter().map(|&x| f64::from(x)).collect();
        let target = [0.0, 0.0, 10.0, 4.0, 2.0, 1.5, 0.0];
        let centres = [Some([0.3, 0.0]), Some([0.1, -0.5]), None];
        let l = two_stage_loss(&out, &[target; 3], &centres, Frame::Camera, &w, &e).unwrap();
        let want = bg(h[0]) + bg(h[1]) + obj(h[2]) + bg(h[3]);
        assert!((l.presence - want).abs() < 1e-5, "{} vs {want}", l.presence);
        let total = f64::from(l.total.to_scalar::<f32>().unwrap());
        assert!(
            (total - want).abs() < 1e-5,
            "only the presence term is weighted"
        );
        let absent = two_stage_loss(&out, &[], &[], Frame::Camera, &w, &e).unwrap();
        let want: f64 = h.iter().map(|&x| bg(x)).sum();
        assert!((absent.presence - want).abs() < 1e-5);
        // A head without a presence map cannot train one.
        let bare = HeadOutput {
            readout: vec![Readout {
                heat: None,
                ..out.readout[0].clone()
            }],
            ..out.clone()
        };
        assert!(two_stage_loss(&bare, &[], &[], Frame::Camera, &w, &e).is_err());
    }

    /// Every dense term at weight 1 (no presence map), box terms within `box_radius` tokens.
    fn dense_weights(box_radius: usize) -> LossWeights {
        LossWeights {
            mse: 1.0,
            iou: 1.0,
            confidence: 1.0,
            localization: 1.0,
            confidence_target: ConfidenceTarget::Matched,
            presence: 0.0,
            box_radius,
        }
    }

    /// A dense output on a 2 × 3 raster whose token rays are 0.1 apart in x/z (columns) and y/z (rows).
    fn dense_out(boxes: Vec<[f32; 8]>, logits: Vec<f32>, raw_centre: Vec<[f32; 3]>) -> HeadOutput {
        dense_out_in(boxes, logits, raw_centre, CentreCoding::Fixed)
    }

    /// [`dense_out`] with the centre channels in `coding`'s units.
    fn dense_out_in(
        boxes: Vec<[f32; 8]>,
        logits: Vec<f32>,
        raw_centre: Vec<[f32; 3]>,
        coding: CentreCoding,
    ) -> HeadOutput {
        use crate::model::box_head::DenseGrid;
        let dev = Device::Cpu;
        let rays: Vec<f32> = (0..6)
            .flat_map(|i| [0.1 * ((i % 3) as f32 - 1.0), 0.1 * ((i / 3) as f32 - 0.5)])
            .collect();
        let flat: Vec<f32> = boxes.into_iter().flatten().collect();
        HeadOutput {
            embedding: Tensor::zeros((6, 128), DType::F32, &dev).unwrap(),
            boxes: Tensor::from_vec(flat, (6, 8), &dev).unwrap(),
            logits: Tensor::from_vec(logits, 6, &dev).unwrap(),
            readout: Vec::new(),
            presence: None,
            dense: Some(DenseGrid {
                grid: (2, 3),
                raw_centre: Tensor::from_vec(
                    raw_centre.into_iter().flatten().collect::<Vec<f32>>(),
                    (6, 3),
                    &dev,
                )
                .unwrap(),
                rays: Tensor::from_vec(rays, (6, 2), &dev).unwrap(),
                units: vec![coding.units([0.1, 0.1])],
            }),
        }
    }

    /// The dense loss by hand: the box's centre falls in token 4 (row 1, column 1); the heat targets are a
    /// Gaussian (σ = ½ token for a box a third of a token wide) with 1 at token 4; the focal terms are CenterNet's;
    /// a prediction equal to the target at token 4 (or with the opposite heading) has no box loss; the nearer of
    /// two boxes in one token is the one regressed.
    #[test]
    fn dense_loss_is_centernet_focal_plus_the_paper_terms_at_the_centre_token() {
        let e = BoxEmbedding::new(&Device::Cpu).unwrap();
        // Camera frame: centre (0.02·10, 0.07·10, 10), 1 m wide → 0.1 ray units, one token: σ = ½.
        let target = [0.2, 0.7, 10.0, 1.0, 0.8, 1.5, 0.3];
        let cam = [target[0], target[1], target[2]];
        // Token 4's ray is (0, 0.05): the centre's ray (0.02, 0.07) is 0.2 columns right, 0.2 rows down of it.
        let uv = [2.0 * 1.7 / 3.0 - 1.0, 2.0 * 1.7 / 2.0 - 1.0];
        let enc = encode_box(target);
        let mut boxes = vec![[0f32; 8]; 6];
        boxes[4] = enc;
        let mut raw_centre = vec![[0f32; 3]; 6];
        raw_centre[4] = [
            ((0.02 - 0.0) / RAY_OFFSET_SCALE) as f32,
            ((0.07 - 0.05) / RAY_OFFSET_SCALE) as f32,
            (10.0 / DEPTH_SCALE).ln() as f32,
        ];
        let logits = vec![-2.0f32, 0.5, -1.0, 0.0, 3.0, -4.0];
        let w = dense_weights(0);
        let out = dense_out(boxes.clone(), logits.clone(), raw_centre.clone());
        let l = dense_loss(&out, &[target], &[Some(uv)], &[cam], Frame::Camera, &w, &e).unwrap();
        assert_eq!(l.matched, [(4, 0)]);
        assert_eq!(l.normalizer, Some(1.0));
        assert!(
            l.mse < 1e-8 && l.iou_loss < 1e-5 && l.localization < 1e-5,
            "{l:?}"
        );
        // In a view's units (tokens 0.1 wide against the reference's 0.079): offsets in units of
        // 0.1 · 0.1 / 0.079, depth in units of 20 m · 0.079 / 0.1 = 15.8 m.
        let mut view_centre = raw_centre.clone();
        view_centre[4] = [
            (0.02 / (0.01 / 0.079)) as f32,
            (0.02 / (0.01 / 0.079)) as f32,
            (10.0f64 / 15.8).ln() as f32,
        ];
        // The view units' localization term for centre channels `raw`.
        let view_l1 = |raw: Vec<[f32; 3]>| {
            let out = dense_out_in(boxes.clone(), logits.clone(), raw, CentreCoding::View);
            dense_loss(&out, &[target], &[Some(uv)], &[cam], Frame::Camera, &w, &e)
                .unwrap()
                .localization
        };
        let lv = view_l1(view_centre);
        assert!(lv < 1e-5, "{lv}");
        // The fixed units' channels are off by the unit ratios in the view's: |0.2 − 0.158| · 2 + |ln 1.266|.
        let lx = view_l1(raw_centre.clone());
        let want_l1 = 2.0 * (0.2 - 0.2 * 0.79) + (20.0f64 / 15.8).ln();
        assert!((lx - want_l1).abs() < 1e-4, "{lx} vs {want_l1}");
        // Focal loss in f64: y = exp(−d²/(2σ²)) from the centre (1.7, 1.7) in token units, 1 at token 4.
        let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
        let mut want = 0.0;
        for (i, &x) in logits.iter().enumerate() {
            let (r, c) = ((i / 3) as f64 + 0.5, (i % 3) as f64 + 0.5);
            let p = sig(f64::from(x));
            if i == 4 {
                want += -(1.0 - p).powi(2) * p.ln();
            } else {
                let y = (-((c - 1.7).powi(2) + (r - 1.7).powi(2)) / (2.0 * 0.25)).exp();
                want += -(1.0 - y).powi(4) * p.powi(2) * (1.0 - p).ln();
            }
        }
        assert!(
            (l.confidence - want).abs() < 1e-4,
            "{} vs {want}",
            l.confidence
        );
        // The opposite heading costs nothing.
        let mut flipped = boxes.clone();
        flipped[4][6] = -enc[6];
        flipped[4][7] = -enc[7];
        let out = dense_out(flipped, logits.clone(), raw_centre.clone());
        let l = dense_loss(&out, &[target], &[Some(uv)], &[cam], Frame::Camera, &w, &e).unwrap();
        assert!(l.mse < 1e-8 && l.iou_loss < 1e-5, "{l:?}");
        // A second, farther box in the same token is not regressed; a box outside the image only has no token.
        let far = [0.4, 1.4, 20.0, 4.0, 2.0, 1.5, 0.0];
        let out = dense_out(boxes, logits, raw_centre);
        let l = dense_loss(
            &out,
            &[far, target, far],
            &[Some(uv), Some(uv), None],
            &[[0.4, 1.4, 20.0], cam, [0.4, 1.4, 20.0]],
            Frame::Camera,
            &w,
            &e,
        )
        .unwrap();
        assert_eq!(l.matched, [(4, 1)]);
        assert!(l.mse < 1e-8, "{l:?}");
        // Mismatched inputs are refused.
        assert!(dense_loss(&out, &[target], &[], &[cam], Frame::Camera, &w, &e).is_err());
    }

    /// `box_radius` by hand: a near box (4 m long at 5 m: 8 tokens, σ = 4/3 token) centred in token 4 of the
    /// 2 × 3 raster shares its box terms with the five other tokens (all within one token) in proportion to
    /// their heat targets exp(−d²/2σ²): 0.7548 at distance 1, 0.5698 on the diagonal, 1 at the centre.
    #[test]
    fn box_radius_spreads_a_boxs_terms_over_its_neighbourhood_by_heat() {
        let e = BoxEmbedding::new(&Device::Cpu).unwrap();
        let target = [0.0, 0.25, 5.0, 4.0, 2.0, 1.5, 0.0];
        let cam = [0.0, 0.25, 5.0];
        let uv = [0.0, 0.5];
        let enc = encode_box(target);
        let units = CentreCoding::Fixed.units([0.1, 0.1]);
        let exact: Vec<[f32; 3]> = (0..6)
            .map(|i| {
                let ray = [0.1 * ((i % 3) as f64 - 1.0), 0.1 * ((i / 3) as f64 - 0.5)];
                units.encode(ray, cam)
            })
            .collect();
        let w = dense_weights(1);
        let run = |boxes: Vec<[f32; 8]>, centre: Vec<[f32; 3]>, radius: usize| {
            let out = dense_out(boxes, vec![0.0; 6], centre);
            dense_loss(
                &out,
                &[target],
                &[Some(uv)],
                &[cam],
                Frame::Camera,
                &dense_weights(radius),
                &e,
            )
            .unwrap()
        };
        let l = run(vec![enc; 6], exact.clone(), 1);
        assert_eq!(l.matched, [(4, 0)]);
        assert_eq!(l.normalizer, Some(1.0));
        assert!(
            l.mse < 1e-8 && l.iou_loss < 1e-5 && l.localization < 1e-5,
            "{l:?}"
        );
        // Token 0 (diagonal) off by 0.5 in log depth and with a box 1 m to the side.
        let share = 1.0
            + 3.0 * (-1.0f64 / (2.0 * 16.0 / 9.0)).exp()
            + 2.0 * (-2.0f64 / (2.0 * 16.0 / 9.0)).exp();
        let w0 = (-2.0f64 / (2.0 * 16.0 / 9.0)).exp() / share;
        assert!((w0 - 0.5698 / 4.4040).abs() < 1e-4, "{w0}");
        let mut centre = exact.clone();
        centre[0][2] += 0.5;
        let mut boxes = vec![enc; 6];
        let mut moved = target;
        moved[0] += 1.0;
        boxes[0] = encode_box(moved);
        let l = run(boxes.clone(), centre.clone(), 1);
        assert!(
            (l.localization - 0.5 * w0).abs() < 1e-5,
            "{} vs {}",
            l.localization,
            0.5 * w0
        );
        let (iou, _) = iou_and_raw_grad(&boxes[0], target, Frame::Camera).unwrap();
        assert!((l.iou_loss - w0 * (1.0 - iou)).abs() < 1e-5, "{l:?}");
        let d = (e
            .embed(&Tensor::new(&[boxes[0]], &Device::Cpu).unwrap())
            .unwrap()
            - e.embed(&Tensor::new(&[enc], &Device::Cpu).unwrap())
                .unwrap())
        .unwrap();
        let mse0 = f64::from(
            d.sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
        );
        assert!(
            (l.mse - w0 * mse0).abs() < 1e-5 * mse0.max(1.0),
            "{} vs {}",
            l.mse,
            w0 * mse0
        );
        // Radius 0: token 0 does not count.
        let l = run(boxes, centre, 0);
        assert!(
            l.mse < 1e-8 && l.localization < 1e-5 && l.iou_loss < 1e-5,
            "{l:?}"
        );
        // A far box (σ = ½ token): its neighbours' targets are below ½, so only its centre token counts.
        let far = [0.0, 0.5, 10.0, 0.5, 0.4, 1.5, 0.0];
        let mut centre = exact;
        centre[0][2] += 0.5;
        let out = dense_out(vec![encode_box(far); 6], vec![0.0; 6], centre);
        let l = dense_loss(
            &out,
            &[far],
            &[Some(uv)],
            &[[0.0, 0.5, 10.0]],
            Frame::Camera,
            &w,
            &e,
        )
        .unwrap();
        assert!((l.localization - (0.5f64).ln().abs()).abs() < 1e-4, "{l:?}");
    }
}

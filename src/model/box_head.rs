//! Box queries and the paper's box head: K learned query embeddings appended after the prompt, and an MLP
//! (512 → 256 → 128, ReLU) from the fused features at each query to a box and a confidence.
//!
//! The fused features are the decoder's hidden state at the query plus a [`SpatialReadout`]: one attention
//! from the query to the view's image tokens (their final decoder states), which returns the attended
//! features and the attention-weighted token centre in the image. The decoder's values carry no position
//! (rotary embeddings only turn queries and keys), so without the readout a model has to infer where an object
//! is from attention patterns alone; a pretrained Qwen2-VL has learned that, a small model trained from scratch
//! stays on the mean box of each query (measured: README, "The demo model").
//!
//! The centre is placed on the camera's viewing ray through the attended position ([`ray_centre`]): the MLP
//! gives a log depth and a small offset of the ray, and the view's intrinsics (`ImageTokens::rays`) turn image
//! positions into rays, so one head serves cameras with different focal lengths and crops, and a lateral error
//! is an angle, not metres the MLP has to multiply out. Boxes are then moved into the detector's frame.
//!
//! The yaw channels are a heading in the LiDAR frame, as the paper regresses it, whatever the detector's frame:
//! there vehicles mostly run along the ego's road (yaw near 0 or π), a prior one head can learn for all six
//! cameras; in the camera frame the same heading reads differently in each camera, which the head cannot tell
//! apart. The view's extrinsics turn it into the detector's frame (`ViewGeometry::yaw`).
//!
//! Head output per query (`BOX_OUTPUTS` = 9 channels): centre x, y, z (metres, in the detector's frame), log
//! length, log width, log height, sin yaw, cos yaw, and a confidence logit. [`decode_box`] turns them into
//! `[x, y, z, l, w, h, yaw]`; a [`PresenceMap`] (optional, not in the paper) scales the confidences.
use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{Linear, VarBuilder, VarMap};

use crate::model::cpu::linear_2d;

use crate::geometry::{Frame, ViewCamera};
use crate::perception::Detection;
use crate::{Error, Result};

/// Widths of the paper's MLP hidden layers.
pub const HIDDEN_LAYERS: [usize; 3] = [512, 256, 128];
/// Channels of the final layer: 3 centre, 3 log-size, sin/cos yaw, confidence logit.
pub const BOX_OUTPUTS: usize = 9;
/// Default number of box queries.
pub const DEFAULT_QUERIES: usize = 16;
/// Width of the readout's query and key projections.
pub const READOUT_DIM: usize = 64;
/// Octaves of the sin/cos features of the attended image position.
const POSITION_OCTAVES: usize = 4;
/// Features of the attended position fed to the MLP: u, v and their sin/cos at each octave.
pub const POSITION_FEATURES: usize = 2 + 4 * POSITION_OCTAVES;
/// Depth (metres) of a query whose depth channel is 0: the middle of the synthetic and nuScenes ranges.
pub const DEPTH_SCALE: f64 = 20.0;
/// Ray offset (x/z, y/z) per unit of the offset channels: about one merged token of a 448-pixel-wide view
/// of a 64° camera.
pub const RAY_OFFSET_SCALE: f64 = 0.1;
/// Range of the log-depth channel (before [`DEPTH_SCALE`]): 0.4 m to 150 m.
const LOG_DEPTH_RANGE: (f64, f64) = (-4.0, 2.0);
/// The reference view of [`CentreCoding::View`]: how wide (in x/z) one token of the nuScenes front camera
/// looks at the default pixel budget (100 of its 1600 pixels across 16 token columns, fx 1266.4 px). In such
/// a view the centre channels have the units [`RAY_OFFSET_SCALE`] and [`DEPTH_SCALE`].
pub const TOKEN_ANGLE_REF: f64 = 0.079;
/// Name of the scalar in `head.safetensors` that marks [`CentreCoding::View`] and holds its reference.
const CENTRE_REF_TENSOR: &str = "centre.token_angle_ref";

/// How the head's three centre channels (two ray offsets, a log depth) are scaled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CentreCoding {
    /// One scale for every view: ray offset × [`RAY_OFFSET_SCALE`], depth [`DEPTH_SCALE`] · exp(channel)
    /// (the default, and every committed model's; their files carry no `centre.token_angle_ref`).
    #[default]
    Fixed,
    /// Scaled by how wide a token of the view looks (`token_angle` = token width in pixels / focal length):
    /// the offsets are fractions of a token, and the depth is what an object's apparent size in tokens says
    /// (an object looks the same in a view whose tokens are twice as wide when it is half as far). A head
    /// sees pixels, not focal lengths, so with one fixed scale the same appearance must mean different depths
    /// in nuScenes' CAM_BACK (fx 809) and its other cameras (fx ≈ 1260), or after a crop or a zoom; this is
    /// Cube R-CNN's "virtual depth" in token units. Units of the reference view: `reference` =
    /// [`TOKEN_ANGLE_REF`]. Measured (README, "The demo model"): a trained fixed-unit model compensates for
    /// CAM_BACK by itself, and switching it to these units cost more than 583 steps of fine-tuning recovered.
    View,
}

impl CentreCoding {
    /// The units of the centre channels in a view whose token looks `token_angle` (x/z, y/z) wide.
    pub fn units(self, token_angle: [f64; 2]) -> CentreUnits {
        match self {
            Self::Fixed => CentreUnits {
                offset: [RAY_OFFSET_SCALE; 2],
                depth: DEPTH_SCALE,
            },
            Self::View => CentreUnits {
                offset: token_angle.map(|a| RAY_OFFSET_SCALE * a / TOKEN_ANGLE_REF),
                depth: DEPTH_SCALE * TOKEN_ANGLE_REF / token_angle[1],
            },
        }
    }
}

/// What one unit of each centre channel means in one view (see [`CentreCoding`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CentreUnits {
    /// Ray offset (x/z, y/z) per unit of the two offset channels.
    pub offset: [f64; 2],
    /// Depth (metres) where the log-depth channel is 0.
    pub depth: f64,
}

impl CentreUnits {
    /// The centre channels that place a camera-frame point `centre` (z > 0) from a token whose ray is `ray`:
    /// the inverse of [`ray_centre`] (within its depth clamp).
    pub fn encode(&self, ray: [f64; 2], centre: [f64; 3]) -> [f32; 3] {
        [
            ((centre[0] / centre[2] - ray[0]) / self.offset[0]) as f32,
            ((centre[1] / centre[2] - ray[1]) / self.offset[1]) as f32,
            (centre[2] / self.depth).ln() as f32,
        ]
    }
}

/// The decoder's states the head reads for a batch of views.
#[derive(Debug, Clone)]
pub struct HeadInputs {
    /// States at the K queries `[views, K, hidden]`.
    pub queries: Tensor,
    /// Each view's image tokens.
    pub images: Vec<ImageTokens>,
}

/// One view's image tokens: their final decoder states, where they sit in the image and where they look.
#[derive(Debug, Clone)]
pub struct ImageTokens {
    /// `[N, hidden]` states, in the tokens' raster order.
    pub states: Tensor,
    /// `[N, 2]` token centres (u right, v down), scaled to [-1, 1] across the image.
    pub centres: Tensor,
    /// The view's geometry (the same for every prompt on the view).
    pub geometry: ViewGeometry,
    /// Rows and columns of the token raster (`rows · cols = N`).
    pub grid: (usize, usize),
}

/// What turns a view's attended image position into a 3D centre in the detector's frame.
#[derive(Debug, Clone)]
pub struct ViewGeometry {
    /// `[N, 2]` viewing ray (x/z, y/z) in the camera frame through each token's centre.
    pub rays: Tensor,
    /// `[3, 3]` rotation camera → detector frame (identity for camera-frame boxes).
    pub rotation: Tensor,
    /// `[1, 3]` translation camera → detector frame.
    pub translation: Tensor,
    /// `[2, 2]` the head's yaw channels (sin, cos of a yaw about the LiDAR frame's +z) → the detector frame's
    /// (identity for LiDAR-frame boxes).
    pub yaw: Tensor,
    /// How wide one token looks (x/z across a column, y/z down a row): its size in pixels over the focal
    /// lengths, the same at any image resolution.
    pub token_angle: [f64; 2],
}

impl ViewGeometry {
    /// The geometry of a `rows` × `cols` token raster of `view`'s image for boxes in `frame`.
    pub fn new(
        view: &ViewCamera,
        rows: usize,
        cols: usize,
        frame: Frame,
        device: &Device,
    ) -> Result<Self> {
        let cam = &view.camera;
        let (w, h) = (f64::from(cam.width()), f64::from(cam.height()));
        let token_angle = [
            w / cols.max(1) as f64 / cam.k()[(0, 0)],
            h / rows.max(1) as f64 / cam.k()[(1, 1)],
        ];
        let mut rays = Vec::with_capacity(rows * cols * 2);
        for r in 0..rows {
            for k in 0..cols {
                let px = nalgebra::Point2::new(
                    (k as f64 + 0.5) / cols as f64 * w,
                    (r as f64 + 0.5) / rows as f64 * h,
                );
                let ray = cam.ray(&px);
                rays.extend([ray.x as f32, ray.y as f32]);
            }
        }
        let to_lidar = view
            .camera_to_lidar
            .rotation
            .to_rotation_matrix()
            .into_inner();
        let (rot, t, yaw) = match frame {
            Frame::Camera => {
                // A heading (c, s, 0) in the LiDAR frame is Rᵀ(c, s, 0) in the camera's, whose yaw channels
                // are its z (sin) and x (cos) components (heading = (cos yaw, 0, sin yaw)); rows: s, c.
                let r = to_lidar;
                (
                    nalgebra::Matrix3::identity(),
                    nalgebra::Vector3::zeros(),
                    [r[(1, 2)], r[(1, 0)], r[(0, 2)], r[(0, 0)]],
                )
            }
            Frame::Lidar => (
                to_lidar,
                view.camera_to_lidar.translation.vector,
                [1.0, 0.0, 0.0, 1.0],
            ),
        };
        let rot: Vec<f32> = (0..9).map(|i| rot[(i / 3, i % 3)] as f32).collect();
        Ok(Self {
            rays: Tensor::from_vec(rays, (rows * cols, 2), device)?,
            rotation: Tensor::from_vec(rot, (3, 3), device)?,
            translation: Tensor::from_vec(
                vec![t.x as f32, t.y as f32, t.z as f32],
                (1, 3),
                device,
            )?,
            yaw: Tensor::from_vec(yaw.map(|v| v as f32).to_vec(), (2, 2), device)?,
            token_angle,
        })
    }
}

/// The box centre of each query on its viewing ray: `ray` `[K, 2]` (x/z, y/z) where the query looks, `raw`
/// `[K, 3]` its two ray-offset channels and its log-depth channel, in the view's `units` → `[K, 3]`
/// camera-frame centres `z · (ray + units.offset · offset, 1)` with `z = units.depth · exp(log depth)` (log
/// depth clamped to e⁻⁴–e² units: 0.4–150 m for 20 m).
pub fn ray_centre(ray: &Tensor, raw: &Tensor, units: &CentreUnits) -> Result<Tensor> {
    let scale = Tensor::from_vec(
        units.offset.map(|v| v as f32).to_vec(),
        (1, 2),
        raw.device(),
    )?
    .to_dtype(raw.dtype())?;
    let offset = raw.narrow(1, 0, 2)?.broadcast_mul(&scale)?;
    let z = (raw
        .narrow(1, 2, 1)?
        .clamp(LOG_DEPTH_RANGE.0, LOG_DEPTH_RANGE.1)?
        .exp()?
        * units.depth)?;
    let xy = (ray + offset)?.broadcast_mul(&z)?;
    Ok(Tensor::cat(&[xy, z], 1)?)
}

impl ImageTokens {
    /// Centres of a `rows` × `cols` token raster, row-major (the order of the merged vision tokens and of
    /// M-RoPE's positions), scaled to [-1, 1].
    pub fn raster_centres(rows: usize, cols: usize, device: &Device) -> Result<Tensor> {
        let mut c = Vec::with_capacity(rows * cols * 2);
        for r in 0..rows {
            for k in 0..cols {
                c.push(2.0 * (k as f32 + 0.5) / cols as f32 - 1.0);
                c.push(2.0 * (r as f32 + 0.5) / rows as f32 - 1.0);
            }
        }
        Ok(Tensor::from_vec(c, (rows * cols, 2), device)?)
    }
}

/// Single-head attention from each query state to the image tokens: returns the attended token states and
/// the attention-weighted token centre (a soft arg-max of where the query looks).
#[derive(Debug, Clone)]
pub struct SpatialReadout {
    q: Linear,
    k: Linear,
}

impl SpatialReadout {
    /// Projections `readout.q`, `readout.k` (`hidden` → [`READOUT_DIM`]).
    pub fn new(hidden: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            q: candle_nn::linear(hidden, READOUT_DIM, vb.pp("q"))?,
            k: candle_nn::linear(hidden, READOUT_DIM, vb.pp("k"))?,
        })
    }

    /// `queries` `[K, hidden]`, one view's tokens → what each query attends to.
    pub fn forward(&self, queries: &Tensor, image: &ImageTokens) -> Result<Attended> {
        let dtype = queries.dtype();
        let q = linear_2d(&self.q, queries)?;
        let k = linear_2d(&self.k, &image.states.to_dtype(dtype)?)?;
        let scores = (q.matmul(&k.t()?)? / (READOUT_DIM as f64).sqrt())?;
        // `softmax` (not the fused `softmax_last_dim`): the fused kernel has no backward.
        let attn = candle_nn::ops::softmax(&scores, candle_core::D::Minus1)?;
        Ok(Attended {
            pooled: attn.matmul(&image.states.to_dtype(dtype)?)?,
            centre: attn.matmul(&image.centres.to_dtype(dtype)?)?,
            ray: attn.matmul(&image.geometry.rays.to_dtype(dtype)?)?,
            scores,
            attn,
        })
    }
}

/// Where the prompted object is in one view (not in the paper): a logit per image token from a summary of the
/// prompt (the mean of the query states, which all attend to the prompt) against each token's state, trained on
/// every token of the view (1 where a true box of the prompted categories has its projected centre, 0 elsewhere,
/// all 0 for an absent category; `presence_weight`). The queries' confidence learns from one matched query per
/// box, a few labels per view; this map learns from every token, and tells a view that holds the prompted
/// object from one that does not. A query's presence is the map's probability where it looks.
#[derive(Debug, Clone)]
pub struct PresenceMap {
    q: Linear,
    k: Linear,
    offset: Tensor,
}

impl PresenceMap {
    /// Projections `presence.q`, `presence.k` (`hidden` → [`READOUT_DIM`]) and the scalar `presence.offset`.
    pub fn new(hidden: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            q: candle_nn::linear(hidden, READOUT_DIM, vb.pp("q"))?,
            k: candle_nn::linear(hidden, READOUT_DIM, vb.pp("k"))?,
            offset: vb.get_with_hints(1, "offset", candle_nn::Init::Const(0.0))?,
        })
    }

    /// `queries` `[K, hidden]`, one view's tokens → `[N]` presence logits, one per image token.
    pub fn forward(&self, queries: &Tensor, image: &ImageTokens) -> Result<Tensor> {
        let dtype = queries.dtype();
        let prompt = linear_2d(&self.q, &queries.mean_keepdim(0)?)?;
        let k = linear_2d(&self.k, &image.states.to_dtype(dtype)?)?;
        let heat = (prompt.matmul(&k.t()?)? / (READOUT_DIM as f64).sqrt())?.squeeze(0)?;
        Ok(heat.broadcast_add(&self.offset.to_dtype(dtype)?)?)
    }
}

/// What the readout returns for one view's queries.
#[derive(Debug, Clone)]
pub struct Attended {
    /// `[K, hidden]` attention-weighted token states.
    pub pooled: Tensor,
    /// `[K, 2]` attention-weighted token centre ([-1, 1] image coordinates).
    pub centre: Tensor,
    /// `[K, 2]` attention-weighted viewing ray (x/z, y/z).
    pub ray: Tensor,
    /// `[K, N]` attention scores before the softmax.
    pub scores: Tensor,
    /// `[K, N]` their softmax (the attention weights).
    pub attn: Tensor,
}

/// `[K, 2]` positions → `[K, POSITION_FEATURES]`: the coordinates and sin/cos of π·2^o times each.
fn position_features(uv: &Tensor) -> Result<Tensor> {
    let mut parts = vec![uv.clone()];
    for o in 0..POSITION_OCTAVES {
        let a = (uv * (std::f64::consts::PI * (1u32 << o) as f64))?;
        parts.push(a.sin()?);
        parts.push(a.cos()?);
    }
    Ok(Tensor::cat(&parts, uv.rank() - 1)?)
}

/// Output of the head for a batch of query states.
#[derive(Debug, Clone)]
pub struct HeadOutput {
    /// 128-d embedding of the last hidden layer (`[.., 128]`), the space of the stage-1 loss.
    pub embedding: Tensor,
    /// The eight box channels `[.., 8]` (centre, log size, sin/cos yaw).
    pub boxes: Tensor,
    /// Confidence logits `[..]`.
    pub logits: Tensor,
    /// Per view, where the queries looked (empty when the head ran on bare states).
    pub readout: Vec<Readout>,
    /// `[..]` the presence map's probability where each query looks (`None` without a [`PresenceMap`]).
    pub presence: Option<Tensor>,
    /// For a dense head ([`HeadKind::Dense`]): the outputs are per image token, on this raster.
    pub dense: Option<DenseGrid>,
}

/// What a dense head's outputs carry besides the boxes: the token raster and the raw centre channels.
#[derive(Debug, Clone)]
pub struct DenseGrid {
    /// Rows and columns of the token raster (the outputs' second axis is row-major over it).
    pub grid: (usize, usize),
    /// `[.., N, 3]` the head's centre channels before placement: ray offset (2) and log depth.
    pub raw_centre: Tensor,
    /// `[.., N, 2]` each token's viewing ray (x/z, y/z) in the camera frame.
    pub rays: Tensor,
    /// Per view, the units of the centre channels.
    pub units: Vec<CentreUnits>,
}

/// One view's readout attention.
#[derive(Debug, Clone)]
pub struct Readout {
    /// `[K, N]` attention scores (before the softmax) of each query over the image tokens.
    pub scores: Tensor,
    /// `[N, 2]` the tokens' centres (as [`ImageTokens::centres`]).
    pub centres: Tensor,
    /// `[N]` presence logits of the tokens (`None` without a [`PresenceMap`]).
    pub heat: Option<Tensor>,
}

impl HeadOutput {
    /// One view's outputs (`[K, ..]`) from a `[views, K, ..]` batch.
    pub fn view(&self, v: usize) -> Result<Self> {
        Ok(Self {
            embedding: self.embedding.get(v)?,
            boxes: self.boxes.get(v)?,
            logits: self.logits.get(v)?,
            readout: self.readout.get(v).cloned().into_iter().collect(),
            presence: self.presence.as_ref().map(|p| p.get(v)).transpose()?,
            dense: self
                .dense
                .as_ref()
                .map(|d| -> Result<DenseGrid> {
                    Ok(DenseGrid {
                        grid: d.grid,
                        raw_centre: d.raw_centre.get(v)?,
                        rays: d.rays.get(v)?,
                        units: d.units.get(v).copied().into_iter().collect(),
                    })
                })
                .transpose()?,
        })
    }

    /// Each query's score: the sigmoid of its confidence logit or, when the head has a [`PresenceMap`], the
    /// geometric mean of that and its presence (a probability again, on the confidences' scale; it ranks boxes
    /// as the product does).
    pub fn scores(&self) -> Result<Tensor> {
        let conf = candle_nn::ops::sigmoid(&self.logits)?;
        Ok(match &self.presence {
            Some(p) => (conf * p)?.sqrt()?,
            None => conf,
        })
    }
}

/// The MLP: three ReLU layers and a linear output layer.
#[derive(Debug, Clone)]
pub struct BoxHead {
    layers: Vec<Linear>,
    out: Linear,
}

impl BoxHead {
    /// Builds (or, when `vb` is backed by a [`VarMap`], creates as trainable variables) a head for `input`-wide
    /// fused features; tensor names `box_head.fc{1,2,3}` and `box_head.out`.
    pub fn new(input: usize, vb: VarBuilder) -> Result<Self> {
        let mut layers = Vec::new();
        let mut din = input;
        for (i, &d) in HIDDEN_LAYERS.iter().enumerate() {
            layers.push(candle_nn::linear(din, d, vb.pp(format!("fc{}", i + 1)))?);
            din = d;
        }
        let out = candle_nn::linear(din, BOX_OUTPUTS, vb.pp("out"))?;
        Ok(Self { layers, out })
    }

    /// Applies the head to `[.., input]` fused features.
    pub fn forward(&self, x: &Tensor) -> Result<HeadOutput> {
        let mut h = x.clone();
        for l in &self.layers {
            h = linear_2d(l, &h)?.relu()?;
        }
        let o = linear_2d(&self.out, &h)?;
        let last = o.rank() - 1;
        Ok(HeadOutput {
            embedding: h,
            boxes: o.narrow(last, 0, 8)?,
            logits: o.narrow(last, 8, 1)?.squeeze(last)?,
            readout: Vec::new(),
            presence: None,
            dense: None,
        })
    }
}

/// Which outputs the box head reads: the paper's K box queries, or every image token (CenterNet-style).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeadKind {
    /// The paper's head: one box per query, read through the [`SpatialReadout`]; boxes matched by the
    /// Hungarian algorithm in training.
    #[default]
    Queries,
    /// The same MLP on every image token, conditioned on the prompt (the mean of the query states, which
    /// attend to the prompt) by a learned gating of the token's state ([`DetectionHead::film`]): a box and a
    /// heat-map logit per token, the centre on the token's own ray. A box is decoded where the heat map
    /// peaks. Where an object is no longer depends on where a query chose to look: each token answers for
    /// its own place (measured: README, "The demo model").
    Dense,
}

/// Most boxes a dense head decodes per view (the highest-scoring heat-map peaks).
pub const DENSE_MAX_PER_VIEW: usize = 32;

/// The tokens of a `rows` × `cols` score raster that are local maxima of their 3 × 3 neighbourhood (CenterNet's
/// max-pool suppression: one peak per object), best first, at most `max`.
pub fn heat_peaks(scores: &[f32], rows: usize, cols: usize, max: usize) -> Vec<usize> {
    let mut peaks: Vec<usize> = (0..scores.len().min(rows * cols))
        .filter(|&i| {
            let (r, c) = (i / cols, i % cols);
            let s = scores[i];
            (r.saturating_sub(1)..(r + 2).min(rows)).all(|rr| {
                (c.saturating_sub(1)..(c + 2).min(cols)).all(|cc| {
                    let j = rr * cols + cc;
                    // Ties go to the first token in raster order, so a flat plateau yields one peak.
                    j == i || scores[j] < s || (scores[j] == s && j > i)
                })
            })
        })
        .collect();
    peaks.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    peaks.truncate(max);
    peaks
}

/// The learned part added to the VLM: query embeddings, the spatial readout and the box head, all trainable
/// variables of one [`VarMap`] (tensor names `queries`, `readout.*`, `box_head.*`, and `film.*` for a dense
/// head).
pub struct DetectionHead {
    /// Variables (for the optimizer and for saving).
    pub varmap: VarMap,
    /// `[K, hidden]` query embeddings.
    pub queries: Tensor,
    /// Where each query looks in the image.
    pub readout: SpatialReadout,
    /// The MLP.
    pub head: BoxHead,
    /// Where the prompted object is (`None`: the paper's head, scores are the confidences alone).
    pub presence: Option<PresenceMap>,
    /// The dense head's prompt gating (`hidden` → `hidden`; `None`: the query head). A token's fused
    /// features are [state, state ⊙ film(prompt), position features].
    pub film: Option<Linear>,
    /// The units of the centre channels (a fresh head: [`CentreCoding::Fixed`]; a loaded one: its file's).
    pub centre: CentreCoding,
}

impl DetectionHead {
    /// Fresh queries, readout and head, drawn from `seed` (the same seed gives the same head on every machine,
    /// so an untrained detector's boxes and a training run's start are reproducible): queries normal with std
    /// 0.02 × √hidden (the scale of token embeddings); the MLP's weights Kaiming-normal for ReLU (std
    /// √(2 / fan_in)), the readout's std √(1 / fan_in) (unit-variance attention scores: the attention starts
    /// broad), biases uniform in ±1/√fan_in, the distributions `candle_nn::linear` draws from.
    pub fn new(
        hidden: usize,
        num_queries: usize,
        dtype: DType,
        device: &Device,
        seed: u64,
    ) -> Result<Self> {
        if num_queries == 0 {
            return Err(Error::invalid("num_queries", "must be at least 1"));
        }
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, dtype, device);
        let queries = vb.get_with_hints(
            (num_queries, hidden),
            "queries",
            candle_nn::Init::Randn {
                mean: 0.0,
                stdev: 0.02 * (hidden as f64).sqrt(),
            },
        )?;
        let readout = SpatialReadout::new(hidden, vb.pp("readout"))?;
        let head = BoxHead::new(2 * hidden + POSITION_FEATURES, vb.pp("box_head"))?;
        let this = Self {
            varmap,
            queries,
            readout,
            head,
            presence: None,
            film: None,
            centre: CentreCoding::Fixed,
        };
        this.reinitialize(seed)?;
        Ok(this)
    }

    /// Adds a [`PresenceMap`] (variables `presence.*`), drawn from `seed` like the rest (its offset starts at
    /// 0); the other variables keep their values. Nothing happens when the head has one.
    pub fn enable_presence(&mut self, seed: u64) -> Result<()> {
        if self.presence.is_some() {
            return Ok(());
        }
        let (dtype, device) = (self.queries.dtype(), self.queries.device().clone());
        let vb = VarBuilder::from_varmap(&self.varmap, dtype, &device);
        let map = PresenceMap::new(self.queries.dim(1)?, vb.pp("presence"))?;
        self.reinitialize_only(seed, "presence.")?;
        self.presence = Some(map);
        Ok(())
    }

    /// Turns the head into a dense one ([`HeadKind::Dense`]): adds the prompt gating `film.*`, drawn from
    /// `seed` like the rest (std √(1 / hidden)); the other variables keep their values.
    pub fn enable_dense(&mut self, seed: u64) -> Result<()> {
        if self.film.is_some() {
            return Ok(());
        }
        let (dtype, device) = (self.queries.dtype(), self.queries.device().clone());
        let vb = VarBuilder::from_varmap(&self.varmap, dtype, &device);
        let hidden = self.queries.dim(1)?;
        let film = candle_nn::linear(hidden, hidden, vb.pp("film"))?;
        self.reinitialize_only(seed, "film.")?;
        self.film = Some(film);
        Ok(())
    }

    /// The head's kind.
    pub fn kind(&self) -> HeadKind {
        if self.film.is_some() {
            HeadKind::Dense
        } else {
            HeadKind::Queries
        }
    }

    /// Redraws every variable from `seed`, in name order (see [`DetectionHead::new`]).
    fn reinitialize(&self, seed: u64) -> Result<()> {
        self.reinitialize_only(seed, "")
    }

    /// Draws every variable's values from `seed` as [`DetectionHead::reinitialize`] does (so a variable gets the
    /// same values whatever else is set) but sets only those whose name starts with `prefix`; the presence map's
    /// offset starts at 0.
    fn reinitialize_only(&self, seed: u64, prefix: &str) -> Result<()> {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let vars = self.vars();
        let fan_in = |name: &str| -> usize {
            let weight = name.replace(".bias", ".weight");
            vars.iter()
                .find(|(n, _)| *n == weight)
                .map(|(_, w)| w.dims().last().copied().unwrap_or(1))
                .unwrap_or(1)
        };
        for (name, var) in &vars {
            let n = var.elem_count();
            let values: Vec<f32> = if name == "queries" {
                let std = 0.02 * (var.dims()[1] as f64).sqrt();
                (0..n).map(|_| (std * normal(&mut rng)) as f32).collect()
            } else if name.ends_with(".weight") {
                let gain = if name.starts_with("readout.")
                    || name.starts_with("presence.")
                    || name.starts_with("film.")
                {
                    1.0
                } else {
                    2.0
                };
                let std = (gain / fan_in(name) as f64).sqrt();
                (0..n).map(|_| (std * normal(&mut rng)) as f32).collect()
            } else {
                let bound = 1.0 / (fan_in(name) as f64).sqrt();
                (0..n)
                    .map(|_| rng.random_range(-bound..bound) as f32)
                    .collect()
            };
            if !name.starts_with(prefix) {
                continue;
            }
            let t = Tensor::from_vec(values, var.dims(), &Device::Cpu)?
                .to_dtype(var.dtype())?
                .to_device(var.device())?;
            var.set(&if name == "presence.offset" {
                t.zeros_like()?
            } else {
                t
            })?;
        }
        Ok(())
    }

    /// Fused features (query state, attended image states, attended position) → boxes, for every view; a dense
    /// head answers per image token instead ([`DetectionHead::forward_dense`]).
    pub fn forward(&self, inputs: &HeadInputs) -> Result<HeadOutput> {
        let views = inputs.queries.dim(0)?;
        if inputs.images.len() != views {
            return Err(Error::invalid(
                "head inputs",
                format!("{} image token sets for {views} views", inputs.images.len()),
            ));
        }
        if let Some(film) = &self.film {
            return self.forward_dense(film, inputs);
        }
        let mut fused = Vec::with_capacity(views);
        let mut readout = Vec::with_capacity(views);
        let mut rays = Vec::with_capacity(views);
        let mut presence = Vec::with_capacity(views);
        for (v, img) in inputs.images.iter().enumerate() {
            let q = inputs.queries.get(v)?;
            let a = self.readout.forward(&q, img)?;
            let heat = match &self.presence {
                Some(map) => {
                    let heat = map.forward(&q, img)?;
                    // Where the query looks, weighted by its attention.
                    let p = candle_nn::ops::sigmoid(&heat)?;
                    presence.push(a.attn.matmul(&p.unsqueeze(1)?)?.squeeze(1)?);
                    Some(heat)
                }
                None => None,
            };
            fused.push(Tensor::cat(
                &[q, a.pooled, position_features(&a.centre)?],
                1,
            )?);
            rays.push(a.ray);
            readout.push(Readout {
                scores: a.scores,
                centres: img.centres.clone(),
                heat,
            });
        }
        let out = self.head.forward(&Tensor::stack(&fused, 0)?)?;
        // The centre channels become a point on the attended ray, moved into the detector's frame.
        let mut boxes = Vec::with_capacity(views);
        for (v, (img, ray)) in inputs.images.iter().zip(&rays).enumerate() {
            boxes.push(place(&out.boxes.get(v)?, ray, &img.geometry, self.centre)?);
        }
        Ok(HeadOutput {
            readout,
            boxes: Tensor::stack(&boxes, 0)?,
            presence: if presence.is_empty() {
                None
            } else {
                Some(Tensor::stack(&presence, 0)?)
            },
            ..out
        })
    }

    /// The dense head: per view, the prompt (mean query state) gates every image token's state, and the MLP maps
    /// [state, gated state, position features] to a box on the token's own ray and a heat-map logit. Every view
    /// of one call must have the same token count (the views of a rig do).
    fn forward_dense(&self, film: &Linear, inputs: &HeadInputs) -> Result<HeadOutput> {
        let n = inputs.images[0].states.dim(0)?;
        let grid = inputs.images[0].grid;
        let mut fused = Vec::with_capacity(inputs.images.len());
        for (v, img) in inputs.images.iter().enumerate() {
            if img.states.dim(0)? != n || img.grid != grid {
                return Err(Error::invalid(
                    "head inputs",
                    format!(
                        "a dense head needs one token raster for all views: view {v} has {:?}, view 0 {grid:?}",
                        img.grid
                    ),
                ));
            }
            let q = inputs.queries.get(v)?;
            let dtype = q.dtype();
            let gate = linear_2d(film, &q.mean_keepdim(0)?)?;
            let s = img.states.to_dtype(dtype)?;
            let gated = s.broadcast_mul(&gate)?;
            fused.push(Tensor::cat(
                &[s, gated, position_features(&img.centres.to_dtype(dtype)?)?],
                1,
            )?);
        }
        let out = self.head.forward(&Tensor::stack(&fused, 0)?)?;
        let mut boxes = Vec::with_capacity(fused.len());
        let mut rays = Vec::with_capacity(fused.len());
        for (v, img) in inputs.images.iter().enumerate() {
            let ray = img.geometry.rays.to_dtype(out.boxes.dtype())?;
            boxes.push(place(&out.boxes.get(v)?, &ray, &img.geometry, self.centre)?);
            rays.push(ray);
        }
        Ok(HeadOutput {
            dense: Some(DenseGrid {
                grid,
                raw_centre: out.boxes.narrow(2, 0, 3)?,
                rays: Tensor::stack(&rays, 0)?,
                units: inputs
                    .images
                    .iter()
                    .map(|img| self.centre.units(img.geometry.token_angle))
                    .collect(),
            }),
            boxes: Tensor::stack(&boxes, 0)?,
            ..out
        })
    }

    /// Number of queries.
    pub fn num_queries(&self) -> usize {
        self.queries.dim(0).unwrap_or(0)
    }

    /// All trainable variables by name.
    pub fn vars(&self) -> Vec<(String, Var)> {
        let data = self
            .varmap
            .data()
            .lock()
            .map(|d| d.clone())
            .unwrap_or_default();
        let mut v: Vec<(String, Var)> = data.into_iter().collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Saves queries and head to a safetensors file (with a scalar `centre.token_angle_ref` that marks
    /// [`CentreCoding::View`]).
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut t: HashMap<String, Tensor> = self
            .vars()
            .into_iter()
            .map(|(k, v)| (k, v.as_tensor().clone()))
            .collect();
        if self.centre == CentreCoding::View {
            t.insert(
                CENTRE_REF_TENSOR.into(),
                Tensor::new(&[TOKEN_ANGLE_REF as f32], &Device::Cpu)?,
            );
        }
        candle_core::safetensors::save(&t, path)?;
        Ok(())
    }

    /// Loads values saved by [`DetectionHead::save`] into a head of matching shape (a file with a presence map
    /// adds one to the head).
    pub fn load(&mut self, path: &Path) -> Result<()> {
        self.load_tensors(&super::qwen2vl::weights::read_file(path)?, path)
    }

    /// [`BoxHead::load`] from tensors already read from `path` (named in errors).
    pub fn load_tensors(
        &mut self,
        t: &std::collections::HashMap<String, Tensor>,
        path: &Path,
    ) -> Result<()> {
        if t.contains_key("presence.offset") {
            self.enable_presence(0)?;
        }
        if t.contains_key("film.weight") {
            self.enable_dense(0)?;
        }
        self.centre = match t.get(CENTRE_REF_TENSOR) {
            None => CentreCoding::Fixed,
            Some(r) => {
                let r = r.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
                // f32 storage of the constant.
                if r.len() != 1 || (r[0] - TOKEN_ANGLE_REF).abs() > 1e-6 {
                    return Err(Error::invalid(
                        path.display().to_string(),
                        format!(
                            "{CENTRE_REF_TENSOR} is {r:?}; this build's heads use [{TOKEN_ANGLE_REF}]"
                        ),
                    ));
                }
                CentreCoding::View
            }
        };
        for (name, var) in self.vars() {
            let src = super::qwen2vl::weights::get_shaped(t, path, &name, var.dims())?;
            var.set(&src.to_dtype(var.dtype())?.to_device(var.device())?)?;
        }
        Ok(())
    }
}

/// Raw head channels `[K, 8]` of one view → boxes in the detector's frame: the centre channels become a point on
/// `ray` `[K, 2]` ([`ray_centre`]) moved by the view's extrinsics, the yaw channels turn into the frame.
fn place(raw: &Tensor, ray: &Tensor, g: &ViewGeometry, coding: CentreCoding) -> Result<Tensor> {
    let dtype = raw.dtype();
    let centre = ray_centre(ray, &raw.narrow(1, 0, 3)?, &coding.units(g.token_angle))?
        .matmul(&g.rotation.to_dtype(dtype)?.t()?)?
        .broadcast_add(&g.translation.to_dtype(dtype)?)?;
    let yaw = raw.narrow(1, 6, 2)?.matmul(&g.yaw.to_dtype(dtype)?)?;
    Ok(Tensor::cat(&[centre, raw.narrow(1, 3, 3)?, yaw], 1)?)
}

/// A standard normal draw (Box–Muller).
fn normal(rng: &mut impl rand::Rng) -> f64 {
    let u1: f64 = 1.0 - rng.random::<f64>(); // (0, 1]: ln is finite
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// Decodes the eight box channels of query number `query` and its score (see [`HeadOutput::scores`]) into a
/// [`Detection`]: `[x, y, z, exp(log l), exp(log w), exp(log h), atan2(sin, cos)]` (computed in f32, as the head
/// runs).
pub fn decode_box(query: usize, raw: &[f32], score: f32) -> Detection {
    let size = |v: f32| v.clamp(-10.0, 10.0).exp();
    let bbox = [
        raw[0],
        raw[1],
        raw[2],
        size(raw[3]),
        size(raw[4]),
        size(raw[5]),
        raw[6].atan2(raw[7]),
    ];
    Detection {
        query: Some(query),
        ..Detection::new(bbox.map(f64::from), score)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Module;

    fn values(h: &DetectionHead) -> Vec<(String, Vec<f32>)> {
        h.vars()
            .into_iter()
            .map(|(n, v)| (n, v.as_tensor().flatten_all().unwrap().to_vec1().unwrap()))
            .collect()
    }

    fn max_of(t: &Tensor) -> f32 {
        t.abs().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    fn std_of(v: &[f32]) -> f64 {
        let m = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
        (v.iter().map(|&x| (x as f64 - m).powi(2)).sum::<f64>() / v.len() as f64).sqrt()
    }

    /// A seed fixes every value; other seeds differ; the draws have the documented spreads (closed forms:
    /// normal std, and a uniform's std of bound/√3).
    #[test]
    fn seeded_heads_are_reproducible_with_the_documented_spreads() {
        let dev = Device::Cpu;
        let a = values(&DetectionHead::new(256, 64, DType::F32, &dev, 7).unwrap());
        let b = values(&DetectionHead::new(256, 64, DType::F32, &dev, 7).unwrap());
        let c = values(&DetectionHead::new(256, 64, DType::F32, &dev, 8).unwrap());
        assert_eq!(a, b);
        assert!(a.iter().zip(&c).all(|(x, y)| x.1 != y.1));
        let get = |n: &str| &a.iter().find(|(k, _)| k == n).unwrap().1;
        let within = |got: f64, want: f64| (got / want - 1.0).abs() < 0.1;
        assert!(within(std_of(get("queries")), 0.02 * 16.0));
        // fc1 reads the query state, the attended state and the position features.
        assert!(within(
            std_of(get("box_head.fc1.weight")),
            (2.0 / (512.0 + POSITION_FEATURES as f64)).sqrt()
        ));
        assert!(within(
            std_of(get("readout.q.weight")),
            (1.0f64 / 256.0).sqrt()
        ));
        assert!(within(
            std_of(get("box_head.fc2.weight")),
            (2.0f64 / 512.0).sqrt()
        ));
        let bias = get("box_head.fc1.bias");
        let bound = 1.0 / (512.0 + POSITION_FEATURES as f64).sqrt();
        assert!(bias.iter().all(|&x| (x as f64).abs() <= bound));
        assert!(within(std_of(bias), bound / 3f64.sqrt()));
        let bias = get("readout.k.bias");
        assert!(bias.iter().all(|&x| x.abs() <= 1.0 / 16.0));
        // The tensors the forward pass uses are the variables themselves.
        let h = DetectionHead::new(256, 64, DType::F32, &dev, 7).unwrap();
        let q: Vec<f32> = h.queries.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(&q, get("queries"));
    }

    /// An 800 × 600 camera with unequal focal lengths and an off-centre principal point, mounted 1.5 m up and
    /// turned 90° (camera z along LiDAR −y).
    fn view() -> ViewCamera {
        let k = nalgebra::Matrix3::new(700.0, 0.0, 420.0, 0.0, 650.0, 280.0, 0.0, 0.0, 1.0);
        let rot = nalgebra::Rotation3::from_matrix_unchecked(nalgebra::Matrix3::new(
            -1.0, 0.0, 0.0, 0.0, 0.0, -1.0, 0.0, -1.0, 0.0,
        ));
        ViewCamera {
            camera: crate::geometry::PinholeCamera::new(k, 800, 600).unwrap(),
            camera_to_lidar: nalgebra::Isometry3::from_parts(
                nalgebra::Translation3::new(0.5, -0.2, 1.5),
                nalgebra::UnitQuaternion::from_rotation_matrix(&rot),
            ),
        }
    }

    /// A centre with zero offsets projects back onto the ray's pixel at depth DEPTH_SCALE · exp(log depth); an
    /// offset of 1 moves x/z by exactly RAY_OFFSET_SCALE; the log depth is clamped to its range.
    #[test]
    fn ray_centre_lies_on_the_attended_ray() {
        let dev = Device::Cpu;
        let cam = view().camera;
        let px = nalgebra::Point2::new(123.0, 456.0);
        let r = cam.ray(&px);
        let ray = Tensor::new(&[[r.x as f32, r.y as f32], [r.x as f32, r.y as f32]], &dev).unwrap();
        let raw = Tensor::new(
            &[[0.0f32, 0.0, (7.5f32 / 20.0).ln()], [1.0, -2.0, 9.0]],
            &dev,
        )
        .unwrap();
        let units = CentreCoding::Fixed.units([0.3, 0.4]);
        let c: Vec<Vec<f32>> = ray_centre(&ray, &raw, &units).unwrap().to_vec2().unwrap();
        let p = nalgebra::Point3::new(c[0][0] as f64, c[0][1] as f64, c[0][2] as f64);
        assert!((p.z - 7.5).abs() < 1e-4, "{p}");
        let back = cam.project(&p).unwrap();
        assert!((back - px).norm() < 1e-2, "{back} vs {px}");
        let z = DEPTH_SCALE * LOG_DEPTH_RANGE.1.exp();
        assert!((c[1][2] as f64 / z - 1.0).abs() < 1e-5, "{c:?}");
        assert!((c[1][0] as f64 / c[1][2] as f64 - (r.x + RAY_OFFSET_SCALE)).abs() < 1e-5);
        assert!((c[1][1] as f64 / c[1][2] as f64 - (r.y - 2.0 * RAY_OFFSET_SCALE)).abs() < 1e-5);
    }

    /// The view coding by closed forms: a view's token angle is its token's pixels over the focal length; in
    /// the reference view the units are the fixed ones; an object of one apparent size in tokens gets one depth
    /// channel in views of different focal lengths (twice the token angle: half the depth), and its offsets are
    /// fractions of a token; `encode` inverts `ray_centre`.
    #[test]
    fn view_coding_reads_depth_from_apparent_size_in_tokens() {
        let dev = Device::Cpu;
        // 800 × 600 with fx 700, fy 650 on a 20 × 15 raster: tokens 40 px wide and high.
        let g = ViewGeometry::new(&view(), 15, 20, Frame::Camera, &dev).unwrap();
        assert!((g.token_angle[0] - 40.0 / 700.0).abs() < 1e-12);
        assert!((g.token_angle[1] - 40.0 / 650.0).abs() < 1e-12);
        let reference = CentreCoding::View.units([TOKEN_ANGLE_REF; 2]);
        assert_eq!(reference, CentreCoding::Fixed.units([0.5, 0.5]));
        // A 2 m tall object 30 m away in a view with tokens 0.05 wide spans 2 / 30 / 0.05 = 1.33 tokens; at
        // 15 m in a view with tokens 0.1 wide it spans the same.
        let (a, b) = (
            CentreCoding::View.units([0.05; 2]),
            CentreCoding::View.units([0.1; 2]),
        );
        let ea = a.encode([0.0, 0.0], [0.0, 0.0, 30.0]);
        let eb = b.encode([0.0, 0.0], [0.0, 0.0, 15.0]);
        assert!((ea[2] - eb[2]).abs() < 1e-6, "{ea:?} {eb:?}");
        assert!((ea[2] as f64 - (30.0 * 0.05 / (DEPTH_SCALE * TOKEN_ANGLE_REF)).ln()).abs() < 1e-6);
        // Half a token right, a quarter down, in either view.
        let oa = a.encode(
            [0.1, 0.2],
            [(0.1 + 0.025) * 30.0, (0.2 + 0.0125) * 30.0, 30.0],
        );
        let ob = b.encode(
            [0.1, 0.2],
            [(0.1 + 0.05) * 15.0, (0.2 + 0.025) * 15.0, 15.0],
        );
        let half = 0.5 * TOKEN_ANGLE_REF / RAY_OFFSET_SCALE;
        for o in [oa, ob] {
            assert!(
                (o[0] as f64 - half).abs() < 1e-5 && (o[1] as f64 - half / 2.0).abs() < 1e-5,
                "{o:?}"
            );
        }
        // ray_centre of the encoded channels gives the point back.
        let ray = Tensor::new(&[[0.1f32, 0.2]], &dev).unwrap();
        let raw = Tensor::new(&[ob], &dev).unwrap();
        let c: Vec<f32> = ray_centre(&ray, &raw, &b)
            .unwrap()
            .get(0)
            .unwrap()
            .to_vec1()
            .unwrap();
        for (got, want) in c.iter().zip([0.15 * 15.0, 0.225 * 15.0, 15.0]) {
            assert!((f64::from(*got) - want).abs() < 1e-4, "{c:?}");
        }
    }

    /// The same head and states with LiDAR-frame geometry give the camera-frame centres moved by the view's
    /// extrinsics (R·c + t) and the other channels unchanged.
    #[test]
    fn lidar_frame_boxes_are_the_camera_boxes_moved_by_the_extrinsics() {
        let dev = Device::Cpu;
        let hidden = 16;
        let h = DetectionHead::new(hidden, 3, DType::F32, &dev, 5).unwrap();
        let queries = Tensor::randn(0f32, 1.0, (1, 3, hidden), &dev).unwrap();
        let states = Tensor::randn(0f32, 1.0, (6, hidden), &dev).unwrap();
        let centres = ImageTokens::raster_centres(2, 3, &dev).unwrap();
        // A mount turned about the LiDAR's z and tilted (an asymmetric rotation: a transposed one fails).
        let mut turned = view();
        turned.camera_to_lidar.rotation =
            nalgebra::UnitQuaternion::from_euler_angles(0.05, -0.03, 0.7)
                * turned.camera_to_lidar.rotation;
        let run = |frame| {
            let images = vec![ImageTokens {
                states: states.clone(),
                centres: centres.clone(),
                geometry: ViewGeometry::new(&turned, 2, 3, frame, &dev).unwrap(),
                grid: (2, 3),
            }];
            let out = h
                .forward(&HeadInputs {
                    queries: queries.clone(),
                    images,
                })
                .unwrap();
            out.boxes.get(0).unwrap().to_vec2::<f32>().unwrap()
        };
        let cam = run(Frame::Camera);
        let lidar = run(Frame::Lidar);
        let iso = turned.camera_to_lidar;
        for (c, l) in cam.iter().zip(&lidar) {
            let p = iso * nalgebra::Point3::new(c[0] as f64, c[1] as f64, c[2] as f64);
            for (a, b) in [p.x, p.y, p.z].iter().zip(&l[..3]) {
                assert!(
                    (a - *b as f64).abs() < 1e-4 * (1.0 + a.abs()),
                    "{p} vs {l:?}"
                );
            }
            assert_eq!(&c[3..6], &l[3..6]);
            // The same box: the LiDAR-frame box moved into the camera frame by the geometry module has the
            // camera-frame yaw (the head's yaw channels are a LiDAR-frame heading in both frames).
            let d = |v: &[f32]| decode_box(0, v, 1.0).bbox;
            let (bc, bl) = (d(c), d(l));
            let moved = crate::geometry::OrientedBox3D::new(
                nalgebra::Point3::new(bl[0], bl[1], bl[2]),
                [bl[3], bl[4], bl[5]],
                nalgebra::UnitQuaternion::from_axis_angle(&nalgebra::Vector3::z_axis(), bl[6]),
            )
            .unwrap()
            .transform(&iso.inverse())
            .camera_params();
            let diff = (moved[6] - bc[6] + std::f64::consts::PI).rem_euclid(std::f64::consts::TAU)
                - std::f64::consts::PI;
            assert!(diff.abs() < 1e-4, "camera yaw {} vs {}", bc[6], moved[6]);
        }
    }

    /// Raster centres in closed form: a 2 × 4 raster has u at ±0.25, ±0.75 and v at ±0.5, row-major.
    #[test]
    fn raster_centres_are_row_major_and_symmetric() {
        let c: Vec<Vec<f32>> = ImageTokens::raster_centres(2, 4, &Device::Cpu)
            .unwrap()
            .to_vec2()
            .unwrap();
        let us = [-0.75, -0.25, 0.25, 0.75];
        for (i, p) in c.iter().enumerate() {
            assert_eq!(p, &vec![us[i % 4], if i < 4 { -0.5 } else { 0.5 }]);
        }
    }

    /// The readout is a soft arg-max: tokens that all look alike get equal weights (the centre is the raster's
    /// mean, 0), and a token built to match the query takes the attention, so the centre and the attended
    /// state become that token's.
    #[test]
    fn readout_finds_the_token_that_matches_the_query() {
        let dev = Device::Cpu;
        let hidden = 32;
        let h = DetectionHead::new(hidden, 2, DType::F32, &dev, 3).unwrap();
        let q = Tensor::randn(0f32, 1.0, (2, hidden), &dev).unwrap();
        let centres = ImageTokens::raster_centres(3, 5, &dev).unwrap();
        let geometry = ViewGeometry::new(&view(), 3, 5, Frame::Camera, &dev).unwrap();
        let same = ImageTokens {
            states: Tensor::ones((15, hidden), DType::F32, &dev).unwrap(),
            centres: centres.clone(),
            geometry: geometry.clone(),
            grid: (3, 5),
        };
        let uv = h.readout.forward(&q, &same).unwrap().centre;
        let uv: Vec<Vec<f32>> = uv.to_vec2().unwrap();
        assert!(uv.iter().flatten().all(|x| x.abs() < 1e-6), "{uv:?}");

        // Token 13 (row 2, column 3; centre (0.4, 2/3)) = t · Wkᵀ(W_q q₀ + b_q) scores t·|Wkᵀ(W_q q₀ + b_q)|² / 8
        // above the zero tokens: 50 with this t.
        let wq = h.readout.q.weight();
        let bq = h.readout.q.bias().unwrap();
        let qp = (q
            .get(0)
            .unwrap()
            .unsqueeze(0)
            .unwrap()
            .matmul(&wq.t().unwrap())
            .unwrap()
            + bq.unsqueeze(0).unwrap())
        .unwrap();
        let key = qp.matmul(h.readout.k.weight()).unwrap().squeeze(0).unwrap();
        let key = (&key
            * (400.0
                / key
                    .sqr()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap() as f64))
            .unwrap();
        let mut rows = vec![Tensor::zeros(hidden, DType::F32, &dev).unwrap(); 15];
        rows[13] = key.clone();
        let one = ImageTokens {
            states: Tensor::stack(&rows, 0).unwrap(),
            centres,
            geometry,
            grid: (3, 5),
        };
        let a = h.readout.forward(&q, &one).unwrap();
        let (pooled, uv) = (a.pooled, a.centre);
        let uv: Vec<Vec<f32>> = uv.to_vec2().unwrap();
        // The attended ray is token 13's: pixel (3.5 / 5 · 800, 2.5 / 3 · 600) through K⁻¹.
        let ray: Vec<Vec<f32>> = a.ray.to_vec2().unwrap();
        let want = view().camera.ray(&nalgebra::Point2::new(560.0, 500.0));
        assert!(
            (ray[0][0] as f64 - want.x).abs() < 1e-4 && (ray[0][1] as f64 - want.y).abs() < 1e-4,
            "{ray:?} vs {want:?}"
        );
        assert!(
            (uv[0][0] - 0.4).abs() < 1e-4 && (uv[0][1] - 2.0 / 3.0).abs() < 1e-4,
            "{uv:?}"
        );
        let d = (pooled.get(0).unwrap() - &key)
            .unwrap()
            .abs()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d < 1e-4 * (1.0 + max_of(&key)), "{d}");
    }

    /// The presence map by hand (f64 loops over the variables): heat_t = (W_q·mean(q) + b_q)·(W_k·s_t + b_k)/8 +
    /// offset; a query's presence is Σ_t softmax(readout scores)_t·σ(heat_t) and its score √(σ(logit)·presence).
    /// Adding the map leaves the other variables as they were, and a head file with a map gives a bare head one.
    #[test]
    fn presence_is_the_map_probability_where_each_query_looks() {
        let dev = Device::Cpu;
        let (hidden, k, n) = (16, 3, 6);
        let mut h = DetectionHead::new(hidden, k, DType::F32, &dev, 4).unwrap();
        let before = values(&h);
        h.enable_presence(9).unwrap();
        let after = values(&h);
        for (name, v) in &before {
            assert_eq!(
                after.iter().find(|(n, _)| n == name).unwrap().1,
                *v,
                "{name}"
            );
        }
        let get = |name: &str| -> Vec<f64> {
            after
                .iter()
                .find(|(n, _)| n == name)
                .unwrap()
                .1
                .iter()
                .map(|&x| f64::from(x))
                .collect()
        };
        assert_eq!(get("presence.offset"), [0.0]);
        // A non-zero offset so that the test sees it.
        let off = h
            .vars()
            .into_iter()
            .find(|(n, _)| n == "presence.offset")
            .unwrap()
            .1;
        off.set(&Tensor::new(&[0.7f32], &dev).unwrap()).unwrap();

        let q = Tensor::randn(0f32, 1.0, (1, k, hidden), &dev).unwrap();
        let states = Tensor::randn(0f32, 1.0, (n, hidden), &dev).unwrap();
        let out = h
            .forward(&HeadInputs {
                queries: q.clone(),
                images: vec![ImageTokens {
                    states: states.clone(),
                    centres: ImageTokens::raster_centres(2, 3, &dev).unwrap(),
                    geometry: ViewGeometry::new(&view(), 2, 3, Frame::Camera, &dev).unwrap(),
                    grid: (2, 3),
                }],
            })
            .unwrap();
        let qv: Vec<Vec<f32>> = q.get(0).unwrap().to_vec2().unwrap();
        let sv: Vec<Vec<f32>> = states.to_vec2().unwrap();
        let (wq, bq, wk, bk) = (
            get("presence.q.weight"),
            get("presence.q.bias"),
            get("presence.k.weight"),
            get("presence.k.bias"),
        );
        let d = READOUT_DIM;
        let mean: Vec<f64> = (0..hidden)
            .map(|i| qv.iter().map(|r| f64::from(r[i])).sum::<f64>() / k as f64)
            .collect();
        let proj = |w: &[f64], b: &[f64], x: &[f64]| -> Vec<f64> {
            (0..d)
                .map(|o| b[o] + (0..hidden).map(|i| w[o * hidden + i] * x[i]).sum::<f64>())
                .collect()
        };
        let pq = proj(&wq, &bq, &mean);
        let heat: Vec<f64> = sv
            .iter()
            .map(|s| {
                let x: Vec<f64> = s.iter().map(|&v| f64::from(v)).collect();
                let pk = proj(&wk, &bk, &x);
                pq.iter().zip(&pk).map(|(a, b)| a * b).sum::<f64>() / (d as f64).sqrt() + 0.7
            })
            .collect();
        let got: Vec<f32> = out.readout[0].heat.as_ref().unwrap().to_vec1().unwrap();
        for (g, w) in got.iter().zip(&heat) {
            assert!((f64::from(*g) - w).abs() < 1e-4, "{got:?} vs {heat:?}");
        }
        let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
        let scores: Vec<Vec<f32>> = out.readout[0].scores.to_vec2().unwrap();
        let presence: Vec<f32> = out
            .presence
            .as_ref()
            .unwrap()
            .get(0)
            .unwrap()
            .to_vec1()
            .unwrap();
        let logits: Vec<f32> = out.logits.get(0).unwrap().to_vec1().unwrap();
        let final_scores: Vec<f32> = out.scores().unwrap().get(0).unwrap().to_vec1().unwrap();
        for qi in 0..k {
            let m = scores[qi]
                .iter()
                .fold(f64::MIN, |a, &b| a.max(f64::from(b)));
            let z: f64 = scores[qi].iter().map(|&s| (f64::from(s) - m).exp()).sum();
            let want: f64 = scores[qi]
                .iter()
                .zip(&heat)
                .map(|(&s, &x)| (f64::from(s) - m).exp() / z * sig(x))
                .sum();
            assert!((f64::from(presence[qi]) - want).abs() < 1e-5);
            let score = (sig(f64::from(logits[qi])) * want).sqrt();
            assert!((f64::from(final_scores[qi]) - score).abs() < 1e-5);
        }

        // Saved and loaded into a head without a map: it gets one, with these values.
        let path =
            std::env::temp_dir().join(format!("vlm3d-presence-{}.safetensors", std::process::id()));
        h.save(&path).unwrap();
        let mut bare = DetectionHead::new(hidden, k, DType::F32, &dev, 4).unwrap();
        assert!(bare.presence.is_none());
        bare.load(&path).unwrap();
        assert!(bare.presence.is_some());
        std::fs::remove_file(&path).unwrap();
        assert_eq!(values(&bare), values(&h));
    }

    /// Peaks in closed form: a 3 × 4 raster with two separated maxima and a plateau of equal scores, which
    /// yields one peak (the first in raster order); the order is by score and `max` truncates.
    #[test]
    fn heat_peaks_are_the_local_maxima_best_first() {
        #[rustfmt::skip]
        let s = [
            0.1, 0.9, 0.2, 0.1,
            0.3, 0.4, 0.2, 0.6,
            0.5, 0.5, 0.1, 0.2,
        ];
        // The bottom-left plateau (two 0.5s) gives one peak, its first token.
        assert_eq!(heat_peaks(&s, 3, 4, 10), vec![1, 7, 8]);
        assert_eq!(heat_peaks(&s, 3, 4, 1), vec![1]);
        let flat = [0.5f32; 6];
        assert_eq!(heat_peaks(&flat, 2, 3, 10), vec![0]);
        // A corner that beats all three of its neighbours.
        let corner = [0.0, 0.0, 0.0, 1.0];
        assert_eq!(heat_peaks(&corner, 2, 2, 10), vec![3]);
    }

    /// The dense head by hand: per token, the MLP of [s, s ⊙ film(mean query), position features], the centre on
    /// the token's own ray, one output per token; a file with `film.*` loads as a dense head; views with other
    /// rasters are refused.
    #[test]
    fn dense_head_answers_per_token_on_its_ray() {
        let dev = Device::Cpu;
        let (hidden, k) = (16, 3);
        let mut h = DetectionHead::new(hidden, k, DType::F32, &dev, 2).unwrap();
        h.enable_dense(5).unwrap();
        assert_eq!(h.kind(), HeadKind::Dense);
        let q = Tensor::randn(0f32, 1.0, (1, k, hidden), &dev).unwrap();
        let states = Tensor::randn(0f32, 1.0, (6, hidden), &dev).unwrap();
        let centres = ImageTokens::raster_centres(2, 3, &dev).unwrap();
        let geometry = ViewGeometry::new(&view(), 2, 3, Frame::Camera, &dev).unwrap();
        let image = ImageTokens {
            states: states.clone(),
            centres: centres.clone(),
            geometry: geometry.clone(),
            grid: (2, 3),
        };
        let out = h
            .forward(&HeadInputs {
                queries: q.clone(),
                images: vec![image.clone()],
            })
            .unwrap();
        assert_eq!(out.boxes.dims(), &[1, 6, 8]);
        assert_eq!(out.dense.as_ref().unwrap().grid, (2, 3));
        // By hand.
        let film = h.film.as_ref().unwrap();
        let gate = film
            .forward(&q.get(0).unwrap().mean_keepdim(0).unwrap())
            .unwrap();
        let fused = Tensor::cat(
            &[
                states.clone(),
                states.broadcast_mul(&gate).unwrap(),
                position_features(&centres).unwrap(),
            ],
            1,
        )
        .unwrap();
        let want = h.head.forward(&fused).unwrap();
        let d = max_of(&(want.logits - out.logits.get(0).unwrap()).unwrap());
        assert!(d < 1e-5, "{d}");
        // Each token's centre projects back onto its own token's centre pixel when its offset channels are 0:
        // here they are not, so compare with ray_centre of the raw channels on the token rays.
        let units = h.centre.units(geometry.token_angle);
        let placed =
            ray_centre(&geometry.rays, &want.boxes.narrow(1, 0, 3).unwrap(), &units).unwrap();
        let got = out.boxes.get(0).unwrap().narrow(1, 0, 3).unwrap();
        let d = max_of(&(placed - got).unwrap().flatten_all().unwrap());
        assert!(d < 1e-4, "{d}");
        // Saved and loaded into a query head: it becomes dense with the same values.
        let path =
            std::env::temp_dir().join(format!("vlm3d-dense-{}.safetensors", std::process::id()));
        // A view-unit head records its coding.
        h.centre = CentreCoding::View;
        h.save(&path).unwrap();
        let mut bare = DetectionHead::new(hidden, k, DType::F32, &dev, 4).unwrap();
        bare.centre = CentreCoding::Fixed;
        bare.load(&path).unwrap();
        assert_eq!(bare.kind(), HeadKind::Dense);
        assert_eq!(values(&bare), values(&h));
        assert_eq!(bare.centre, CentreCoding::View);
        // A file without the coding's marker is a head of the fixed units (trained before the marker).
        let mut t = crate::model::qwen2vl::weights::read_file(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        t.remove(CENTRE_REF_TENSOR);
        bare.load_tensors(&t, &path).unwrap();
        assert_eq!(bare.centre, CentreCoding::Fixed);
        t.insert(
            CENTRE_REF_TENSOR.into(),
            Tensor::new(&[0.5f32], &dev).unwrap(),
        );
        let err = bare.load_tensors(&t, &path).unwrap_err().to_string();
        assert!(err.contains(CENTRE_REF_TENSOR), "{err}");
        // Two views with different rasters.
        let other = ImageTokens {
            states: Tensor::randn(0f32, 1.0, (4, hidden), &dev).unwrap(),
            centres: ImageTokens::raster_centres(2, 2, &dev).unwrap(),
            geometry: ViewGeometry::new(&view(), 2, 2, Frame::Camera, &dev).unwrap(),
            grid: (2, 2),
        };
        let err = h
            .forward(&HeadInputs {
                queries: Tensor::randn(0f32, 1.0, (2, k, hidden), &dev).unwrap(),
                images: vec![image, other],
            })
            .unwrap_err()
            .to_string();
        assert!(err.contains("one token raster"), "{err}");
    }
}

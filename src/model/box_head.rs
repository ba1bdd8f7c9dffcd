//! Box queries and the paper's box head: K learned query embeddings appended after the prompt, and an MLP
//! (512 → 256 → 128, ReLU) from the decoder's hidden state at each query to a box and a confidence.
//!
//! Raw head output per query (`BOX_OUTPUTS` = 9 channels): centre x, y, z (metres), log length, log width, log
//! height, sin yaw, cos yaw, and a confidence logit. [`decode_box`] turns them into `[x, y, z, l, w, h, yaw]`.
use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Module, Tensor, Var};
use candle_nn::{Linear, VarBuilder, VarMap};

use crate::perception::Detection;
use crate::{Error, Result};

/// Widths of the paper's MLP hidden layers.
pub const HIDDEN_LAYERS: [usize; 3] = [512, 256, 128];
/// Channels of the final layer: 3 centre, 3 log-size, sin/cos yaw, confidence logit.
pub const BOX_OUTPUTS: usize = 9;
/// Default number of box queries.
pub const DEFAULT_QUERIES: usize = 16;

/// Output of the head for a batch of query states.
#[derive(Debug, Clone)]
pub struct HeadOutput {
    /// 128-d embedding of the last hidden layer (`[.., 128]`), the space of the stage-1 loss.
    pub embedding: Tensor,
    /// The eight box channels `[.., 8]` (centre, log size, sin/cos yaw).
    pub boxes: Tensor,
    /// Confidence logits `[..]`.
    pub logits: Tensor,
}

/// The MLP: three ReLU layers and a linear output layer.
#[derive(Debug, Clone)]
pub struct BoxHead {
    layers: Vec<Linear>,
    out: Linear,
}

impl BoxHead {
    /// Builds (or, when `vb` is backed by a [`VarMap`], creates as trainable variables) a head for `hidden`-wide
    /// states; tensor names `box_head.fc{1,2,3}` and `box_head.out`.
    pub fn new(hidden: usize, vb: VarBuilder) -> Result<Self> {
        let mut layers = Vec::new();
        let mut din = hidden;
        for (i, &d) in HIDDEN_LAYERS.iter().enumerate() {
            layers.push(candle_nn::linear(din, d, vb.pp(format!("fc{}", i + 1)))?);
            din = d;
        }
        let out = candle_nn::linear(din, BOX_OUTPUTS, vb.pp("out"))?;
        Ok(Self { layers, out })
    }

    /// Applies the head to `[.., hidden]` states.
    pub fn forward(&self, x: &Tensor) -> Result<HeadOutput> {
        let mut h = x.clone();
        for l in &self.layers {
            h = l.forward(&h)?.relu()?;
        }
        let o = self.out.forward(&h)?;
        let last = o.rank() - 1;
        Ok(HeadOutput {
            embedding: h,
            boxes: o.narrow(last, 0, 8)?,
            logits: o.narrow(last, 8, 1)?.squeeze(last)?,
        })
    }
}

/// The learned part added to the VLM: query embeddings and the box head, all trainable variables of one
/// [`VarMap`] (tensor names `queries`, `box_head.*`).
pub struct DetectionHead {
    /// Variables (for the optimizer and for saving).
    pub varmap: VarMap,
    /// `[K, hidden]` query embeddings.
    pub queries: Tensor,
    /// The MLP.
    pub head: BoxHead,
}

impl DetectionHead {
    /// Fresh queries and head, drawn from `seed` (the same seed gives the same head on every machine, so an
    /// untrained detector's boxes and a training run's start are reproducible): queries normal with std
    /// 0.02 × √hidden (the scale of token embeddings); layer weights Kaiming-normal for ReLU (std √(2 / fan_in))
    /// and biases uniform in ±1/√fan_in, the distributions `candle_nn::linear` draws from.
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
        let head = BoxHead::new(hidden, vb.pp("box_head"))?;
        let this = Self {
            varmap,
            queries,
            head,
        };
        this.reinitialize(seed)?;
        Ok(this)
    }

    /// Redraws every variable from `seed`, in name order (see [`DetectionHead::new`]).
    fn reinitialize(&self, seed: u64) -> Result<()> {
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
                let std = (2.0 / fan_in(name) as f64).sqrt();
                (0..n).map(|_| (std * normal(&mut rng)) as f32).collect()
            } else {
                let bound = 1.0 / (fan_in(name) as f64).sqrt();
                (0..n)
                    .map(|_| rng.random_range(-bound..bound) as f32)
                    .collect()
            };
            let t = Tensor::from_vec(values, var.dims(), &Device::Cpu)?
                .to_dtype(var.dtype())?
                .to_device(var.device())?;
            var.set(&t)?;
        }
        Ok(())
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

    /// Saves queries and head to a safetensors file.
    pub fn save(&self, path: &Path) -> Result<()> {
        let t: HashMap<String, Tensor> = self
            .vars()
            .into_iter()
            .map(|(k, v)| (k, v.as_tensor().clone()))
            .collect();
        candle_core::safetensors::save(&t, path)?;
        Ok(())
    }

    /// Loads values saved by [`DetectionHead::save`] into a head of matching shape.
    pub fn load(&mut self, path: &Path) -> Result<()> {
        let t = super::qwen2vl::weights::read_file(path)?;
        for (name, var) in self.vars() {
            let src = super::qwen2vl::weights::get_shaped(&t, path, &name, var.dims())?;
            var.set(&src.to_dtype(var.dtype())?.to_device(var.device())?)?;
        }
        Ok(())
    }
}

/// A standard normal draw (Box–Muller).
fn normal(rng: &mut impl rand::Rng) -> f64 {
    let u1: f64 = 1.0 - rng.random::<f64>(); // (0, 1]: ln is finite
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// Decodes the eight box channels and the logit of query number `query` into a [`Detection`]:
/// `[x, y, z, exp(log l), exp(log w), exp(log h), atan2(sin, cos)]` (computed in f32, as the head runs) and the
/// sigmoid of the logit.
pub fn decode_box(query: usize, raw: &[f32], logit: f32) -> Detection {
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
        ..Detection::new(bbox.map(f64::from), 1.0 / (1.0 + (-logit).exp()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(h: &DetectionHead) -> Vec<(String, Vec<f32>)> {
        h.vars()
            .into_iter()
            .map(|(n, v)| (n, v.as_tensor().flatten_all().unwrap().to_vec1().unwrap()))
            .collect()
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
        assert!(within(
            std_of(get("box_head.fc1.weight")),
            (2.0f64 / 256.0).sqrt()
        ));
        assert!(within(
            std_of(get("box_head.fc2.weight")),
            (2.0f64 / 512.0).sqrt()
        ));
        let bias = get("box_head.fc1.bias");
        assert!(bias.iter().all(|&x| x.abs() <= 1.0 / 16.0));
        assert!(within(std_of(bias), 1.0 / 16.0 / 3f64.sqrt()));
        // The tensors the forward pass uses are the variables themselves.
        let h = DetectionHead::new(256, 64, DType::F32, &dev, 7).unwrap();
        let q: Vec<f32> = h.queries.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(&q, get("queries"));
    }
}

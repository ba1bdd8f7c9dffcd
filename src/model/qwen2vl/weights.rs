//! Checkpoint reading: the list of safetensors files of a folder (single file or sharded with an index) and
//! tensor getters that turn a missing tensor or a wrong shape into an [`Error::Format`] naming the tensor.
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::{LayerNorm, Linear, VarBuilder};

use crate::{Error, Result};

/// The safetensors files of a checkpoint folder: the shards named by `model.safetensors.index.json`, else
/// `model.safetensors`, else every `*.safetensors` in the folder.
pub fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::format(&index, None, format!("not JSON: {e}")))?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| Error::format(&index, Some("weight_map".into()), "missing"))?;
        let mut files: Vec<PathBuf> = map
            .values()
            .filter_map(|f| f.as_str())
            .map(|f| dir.join(f))
            .collect();
        files.sort();
        files.dedup();
        for f in &files {
            if !f.exists() {
                return Err(Error::format(
                    &index,
                    None,
                    format!("shard {} is missing", f.display()),
                ));
            }
        }
        return Ok(files);
    }
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(Error::format(
            dir,
            None,
            "no *.safetensors weights in the checkpoint folder",
        ));
    }
    Ok(files)
}

/// Memory-maps the files into a [`VarBuilder`]; a file that is not valid safetensors is a [`Error::Format`].
pub fn var_builder(
    files: &[PathBuf],
    dtype: DType,
    device: &Device,
) -> Result<VarBuilder<'static>> {
    for f in files {
        // Validate the header first so a corrupt file yields an error naming it.
        let file = std::fs::File::open(f).map_err(|e| Error::io(f, e))?;
        // SAFETY: the file is only read; the checkpoint is not expected to change while we run.
        let mm = unsafe { memmap_read(&file) }.map_err(|e| Error::io(f, e))?;
        safetensors::SafeTensors::deserialize(&mm)
            .map_err(|e| Error::format(f, None, format!("not a valid safetensors file: {e}")))?;
    }
    // SAFETY: as above, the mapped files are read-only inputs.
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(files, dtype, device) }.map_err(|e| {
        Error::format(
            files.first().cloned().unwrap_or_default(),
            None,
            e.to_string(),
        )
    })?;
    Ok(vb)
}

unsafe fn memmap_read(file: &std::fs::File) -> std::io::Result<memmap2::Mmap> {
    memmap2::MmapOptions::new().map(file)
}

fn name(vb: &VarBuilder, n: &str) -> String {
    let p = vb.prefix();
    if p.is_empty() {
        n.to_string()
    } else {
        format!("{p}.{n}")
    }
}

/// A tensor of a known shape; missing or mis-shaped tensors are reported with their full name.
pub fn tensor<S: Into<Shape>>(vb: &VarBuilder, shape: S, n: &str, src: &Path) -> Result<Tensor> {
    let shape: Shape = shape.into();
    let full = name(vb, n);
    if !vb.contains_tensor(n) {
        return Err(Error::format(
            src,
            Some(full),
            "tensor missing from the checkpoint",
        ));
    }
    vb.get(shape.clone(), n).map_err(|e| {
        Error::format(
            src,
            Some(full),
            format!("expected shape {shape:?} (config): {e}"),
        )
    })
}

/// A linear layer `[out, in]` with optional bias.
pub fn linear(vb: &VarBuilder, din: usize, dout: usize, bias: bool, src: &Path) -> Result<Linear> {
    let w = tensor(vb, (dout, din), "weight", src)?;
    let b = if bias {
        Some(tensor(vb, dout, "bias", src)?)
    } else {
        None
    };
    Ok(Linear::new(w, b))
}

/// A LayerNorm with weight and bias.
pub fn layer_norm(vb: &VarBuilder, dim: usize, eps: f64, src: &Path) -> Result<LayerNorm> {
    let w = tensor(vb, dim, "weight", src)?;
    let b = tensor(vb, dim, "bias", src)?;
    Ok(LayerNorm::new(w, b, eps))
}

/// Every tensor of one safetensors file (on the CPU); the error names the file.
pub fn read_file(path: &Path) -> Result<std::collections::HashMap<String, Tensor>> {
    let data = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    candle_core::safetensors::load_buffer(&data, &Device::Cpu)
        .map_err(|e| Error::format(path, None, format!("not a valid safetensors file: {e}")))
}

/// Tensor `key` of a map read from `path`, required to have `dims`; the error names the file and the tensor.
pub fn get_shaped<'a>(
    map: &'a std::collections::HashMap<String, Tensor>,
    path: &Path,
    key: &str,
    dims: &[usize],
) -> Result<&'a Tensor> {
    let t = map
        .get(key)
        .ok_or_else(|| Error::format(path, Some(key.into()), "missing"))?;
    if t.dims() != dims {
        return Err(Error::format(
            path,
            Some(key.into()),
            format!("shape {:?}, expected {dims:?}", t.dims()),
        ));
    }
    Ok(t)
}

/// Which weights (by full checkpoint name) a fully fine-tuned model trains.
pub type WeightFilter = Box<dyn Fn(&str) -> bool + Send + Sync>;

/// Trainable weights by checkpoint name.
pub type NamedVars = Vec<(String, candle_core::Var)>;

/// A [`VarBuilder`] backend for full fine-tuning: it reads tensors from an inner builder (the checkpoint) and
/// turns those whose full name `trainable` accepts into [`candle_core::Var`]s, which it records, so the model's
/// ordinary loading code builds a network whose chosen weights carry gradients.
pub struct TrainableBackend {
    inner: VarBuilder<'static>,
    trainable: WeightFilter,
    vars: std::sync::Arc<std::sync::Mutex<NamedVars>>,
}

impl TrainableBackend {
    /// Wraps `inner`; the returned list fills as the model loads.
    pub fn new(
        inner: VarBuilder<'static>,
        trainable: WeightFilter,
    ) -> (Self, std::sync::Arc<std::sync::Mutex<NamedVars>>) {
        let vars = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        (
            Self {
                inner,
                trainable,
                vars: vars.clone(),
            },
            vars,
        )
    }

    fn wrap(&self, name: &str, t: Tensor) -> candle_core::Result<Tensor> {
        if !(self.trainable)(name) {
            return Ok(t);
        }
        let mut vars = self
            .vars
            .lock()
            .map_err(|_| candle_core::Error::Msg("trainable weights: lock poisoned".into()))?;
        // A tensor read twice (tied weights) stays one variable.
        if let Some((_, v)) = vars.iter().find(|(n, _)| n == name) {
            return Ok(v.as_tensor().clone());
        }
        let v = candle_core::Var::from_tensor(&t)?;
        vars.push((name.to_string(), v.clone()));
        Ok(v.as_tensor().clone())
    }
}

impl candle_nn::var_builder::SimpleBackend for TrainableBackend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let t = self
            .inner
            .get_unchecked_dtype(name, dtype)?
            .to_device(dev)?;
        if t.shape() != &s {
            candle_core::bail!(
                "shape mismatch for {name}, got {:?}, expected {s:?}",
                t.shape()
            );
        }
        self.wrap(name, t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let t = self
            .inner
            .get_unchecked_dtype(name, dtype)?
            .to_device(dev)?;
        self.wrap(name, t)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.inner.contains_tensor(name)
    }
}

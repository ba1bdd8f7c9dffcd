//! `vlm3d export`: a trained run as one plain Hugging Face Qwen2-VL folder, for runtimes that take merged
//! weights. The LoRA update `(alpha / r) · B A` of every adapted projection is folded into its base weight (in
//! f32, then stored in the output dtype), a fully fine-tuned `model.safetensors` replaces the base's weights, and
//! the base's configuration, tokenizer and processor files come along; `head.safetensors` is copied beside them.
//! transformers loads the result as a plain `Qwen2VLForConditionalGeneration` (`tests/model_peft.rs`).
//!
//! Works on the tensor files directly (no model is built), so exporting a 2B model needs its weights once in
//! memory, not twice.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use super::qwen2vl::adapters::{adapter_config, current_peft_name};
use super::qwen2vl::weights::{read_file, safetensors_files};
use crate::{Error, Result};

/// What an export wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportReport {
    /// Tensors in the merged `model.safetensors`.
    pub tensors: usize,
    /// Weights that received a LoRA update.
    pub merged: usize,
    /// Weights replaced by a fully fine-tuned `model.safetensors`.
    pub fine_tuned: usize,
    /// The dtype of the floating-point tensors written.
    pub dtype: DType,
    /// Files written or copied, in order.
    pub files: Vec<PathBuf>,
}

/// The checkpoint weight a PEFT module name adapts: `base_model.model.<module>` → `<module>.weight`, in whichever
/// layout the checkpoint uses (transformers 5's `model.language_model.` / `model.visual.`, or 4.x's `model.` /
/// `visual.`).
fn weight_name(module: &str, weights: &HashMap<String, Tensor>) -> Option<String> {
    let m = module.strip_prefix("base_model.model.")?;
    let mut candidates = vec![format!("{m}.weight")];
    if let Some(rest) = m.strip_prefix("model.language_model.") {
        candidates.push(format!("model.{rest}.weight"));
    }
    if let Some(rest) = m.strip_prefix("model.visual.") {
        candidates.push(format!("visual.{rest}.weight"));
    }
    candidates.into_iter().find(|c| weights.contains_key(c))
}

/// Merges `trained` (a run folder: `adapter/` and/or `model.safetensors`, and `head.safetensors`) into the base
/// checkpoint `model` and writes the folder `out` (created; an existing non-empty folder is refused). `dtype`:
/// the floating-point precision of the written weights (default: the base's).
///
/// Errors: a missing base or run file, an adapter whose tensors fit no weight of the base or have the wrong
/// shape (named), an unsupported adapter option, an `out` that is not empty.
pub fn export_merged(
    model: &Path,
    trained: &Path,
    out: &Path,
    dtype: Option<DType>,
) -> Result<ExportReport> {
    if out.exists()
        && std::fs::read_dir(out)
            .map_err(|e| Error::io(out, e))?
            .next()
            .is_some()
    {
        return Err(Error::invalid(
            "export",
            format!("{} exists and is not empty", out.display()),
        ));
    }
    let adapter = trained.join("adapter");
    let tuned = trained.join("model.safetensors");
    let head = trained.join("head.safetensors");
    let has_adapter = adapter.join("adapter_config.json").is_file();
    let has_tuned = tuned.is_file() && trained != model;
    if !has_adapter && !has_tuned {
        return Err(Error::invalid(
            "export",
            format!(
                "{} holds neither adapter/adapter_config.json nor a fine-tuned model.safetensors",
                trained.display()
            ),
        ));
    }
    let mut weights = HashMap::new();
    for f in safetensors_files(model)? {
        weights.extend(read_file(&f)?);
    }
    let base_dtype = weights
        .values()
        .map(|t| t.dtype())
        .find(|d| d.is_float())
        .unwrap_or(DType::F32);
    let dtype = dtype.unwrap_or(base_dtype);

    let mut fine_tuned = 0;
    if has_tuned {
        for (name, t) in read_file(&tuned)? {
            if !weights.contains_key(&name) {
                return Err(Error::format(
                    &tuned,
                    Some(name),
                    "not a weight of the base checkpoint",
                ));
            }
            weights.insert(name, t);
            fine_tuned += 1;
        }
    }

    let mut merged = 0;
    if has_adapter {
        let cpath = adapter.join("adapter_config.json");
        let text = std::fs::read_to_string(&cpath).map_err(|e| Error::io(&cpath, e))?;
        let cfg = adapter_config(&text, &cpath)?;
        let apath = adapter.join("adapter_model.safetensors");
        let raw: HashMap<String, Tensor> = read_file(&apath)?
            .into_iter()
            .map(|(k, v)| (current_peft_name(&k), v))
            .collect();
        let mut modules: Vec<&str> = raw
            .keys()
            .map(|k| {
                k.strip_suffix(".lora_A.weight")
                    .or_else(|| k.strip_suffix(".lora_B.weight"))
                    .ok_or_else(|| {
                        Error::format(&apath, Some(k.clone()), "not a LoRA A or B weight")
                    })
            })
            .collect::<Result<_>>()?;
        modules.sort();
        modules.dedup();
        for module in modules {
            let key = |ab: &str| format!("{module}.lora_{ab}.weight");
            let get = |ab: &str| {
                raw.get(&key(ab))
                    .ok_or_else(|| Error::format(&apath, Some(key(ab)), "missing"))
            };
            let (a, b) = (get("A")?, get("B")?);
            let wname = weight_name(module, &weights).ok_or_else(|| {
                Error::format(
                    &apath,
                    Some(key("A")),
                    format!("fits no weight of the base checkpoint {}", model.display()),
                )
            })?;
            let w = &weights[&wname];
            let (dout, din) = w.dims2()?;
            if a.dims() != [cfg.r, din] || b.dims() != [dout, cfg.r] {
                return Err(Error::format(
                    &apath,
                    Some(key("A")),
                    format!(
                        "A {:?} and B {:?} do not fit {wname} {:?} at rank {}",
                        a.dims(),
                        b.dims(),
                        w.dims(),
                        cfg.r
                    ),
                ));
            }
            let delta = (b.to_dtype(DType::F32)?.matmul(&a.to_dtype(DType::F32)?)? * cfg.scale())?;
            let new = (w.to_dtype(DType::F32)? + delta)?;
            weights.insert(wname, new);
            merged += 1;
        }
    }

    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let mut files = Vec::new();
    let weights: HashMap<String, Tensor> = weights
        .into_iter()
        .map(|(k, t)| {
            let t = if t.dtype().is_float() {
                t.to_dtype(dtype)?
            } else {
                t
            };
            Ok((k, t.to_device(&Device::Cpu)?))
        })
        .collect::<Result<_>>()?;
    let tensors = weights.len();
    let wpath = out.join("model.safetensors");
    candle_core::safetensors::save(&weights, &wpath)?;
    files.push(wpath);
    drop(weights);
    // Everything of the base folder but its weights: configuration, tokenizer, processor, chat template.
    for entry in std::fs::read_dir(model).map_err(|e| Error::io(model, e))? {
        let p = entry.map_err(|e| Error::io(model, e))?.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if !p.is_file()
            || name.ends_with(".safetensors")
            || name == "model.safetensors.index.json"
            || name == "head.safetensors"
        {
            continue;
        }
        let dst = out.join(name);
        if name == "config.json" {
            write_config(&p, &dst, dtype)?;
        } else {
            std::fs::copy(&p, &dst).map_err(|e| Error::io(&dst, e))?;
        }
        files.push(dst);
    }
    if head.is_file() {
        let dst = out.join("head.safetensors");
        std::fs::copy(&head, &dst).map_err(|e| Error::io(&dst, e))?;
        files.push(dst);
    }
    Ok(ExportReport {
        tensors,
        merged,
        fine_tuned,
        dtype,
        files,
    })
}

/// Copies `config.json` with its dtype fields (transformers 4's `torch_dtype`, 5's `dtype`) set to the export's.
fn write_config(src: &Path, dst: &Path, dtype: DType) -> Result<()> {
    let text = std::fs::read_to_string(src).map_err(|e| Error::io(src, e))?;
    let mut v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::format(src, None, format!("not JSON: {e}")))?;
    let name = match dtype {
        DType::BF16 => "bfloat16",
        DType::F16 => "float16",
        _ => "float32",
    };
    if let Some(o) = v.as_object_mut() {
        for key in ["torch_dtype", "dtype"] {
            if o.contains_key(key) {
                o.insert(key.into(), serde_json::Value::from(name));
            }
        }
        if !o.contains_key("torch_dtype") && !o.contains_key("dtype") {
            o.insert("torch_dtype".into(), serde_json::Value::from(name));
        }
    }
    let body = serde_json::to_string_pretty(&v)
        .map_err(|e| Error::invalid("config.json", e.to_string()))?;
    std::fs::write(dst, body).map_err(|e| Error::io(dst, e))
}

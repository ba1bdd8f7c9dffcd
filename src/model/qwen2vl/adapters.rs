//! PEFT LoRA adapters on the decoder's attention projections (and, optionally, the vision tower's `qkv` / `proj`):
//! attach fresh ones for training, list, save and load them as PEFT's `adapter_model.safetensors` +
//! `adapter_config.json`, and merge them into the base weights.
use std::collections::HashMap;
use std::path::Path;

use candle_core::{Tensor, Var};

use super::Qwen2VL;
use crate::model::lora::{LoraAdapter, LoraConfig, LoraLinear};
use crate::{Error, Result};

impl Qwen2VL {
    /// Attaches fresh adapters (A uniform in ±1/√in as PEFT's Kaiming init, B zero) to the targeted attention
    /// projections of every decoder layer; the new variables are returned with their PEFT names.
    pub fn attach_lora(&mut self, cfg: &LoraConfig) -> Result<Vec<(String, Var)>> {
        let mut vars = Vec::new();
        let (dev, dt) = (self.device.clone(), self.dtype);
        for (base, proj) in self.lora_targets(&cfg.target_modules)? {
            let (din, dout) = proj.dims()?;
            let bound = 1.0 / (din as f64).sqrt();
            let a =
                Var::from_tensor(&Tensor::rand(-bound, bound, (cfg.r, din), &dev)?.to_dtype(dt)?)?;
            let b = Var::from_tensor(&Tensor::zeros((dout, cfg.r), dt, &dev)?)?;
            vars.push((format!("{base}.lora_A.weight"), a.clone()));
            vars.push((format!("{base}.lora_B.weight"), b.clone()));
            proj.adapter = Some(LoraAdapter {
                a,
                b,
                scale: cfg.scale(),
                dropout: cfg.lora_dropout,
            });
        }
        Ok(vars)
    }

    /// Every projection LoRA can adapt: (PEFT module name, target name, layer).
    fn adaptable(&mut self) -> Vec<(String, &'static str, &mut LoraLinear)> {
        let mut out = Vec::new();
        for (i, l) in self.text.layers.iter_mut().enumerate() {
            let a = &mut l.self_attn;
            for (name, proj) in [
                ("q_proj", &mut a.q_proj),
                ("k_proj", &mut a.k_proj),
                ("v_proj", &mut a.v_proj),
                ("o_proj", &mut a.o_proj),
            ] {
                out.push((peft_module_name(i, name), name, proj));
            }
        }
        for (i, b) in self.vision.blocks.iter_mut().enumerate() {
            for (name, proj) in [("qkv", &mut b.qkv), ("proj", &mut b.proj)] {
                out.push((peft_vision_module_name(i, name), name, proj));
            }
        }
        out
    }

    fn lora_targets(&mut self, targets: &[String]) -> Result<Vec<(String, &mut LoraLinear)>> {
        for t in targets {
            if !crate::model::lora::is_lora_target(t) {
                return Err(Error::invalid(
                    "LoRA target",
                    format!("{t} (supported: q_proj, k_proj, v_proj, o_proj; vision: qkv, proj)"),
                ));
            }
        }
        Ok(self
            .adaptable()
            .into_iter()
            .filter(|(_, name, _)| targets.iter().any(|t| t == name))
            .map(|(base, _, proj)| (base, proj))
            .collect())
    }

    /// Whether an attached adapter sits in the vision tower (its features then change as training goes).
    pub fn vision_adapted(&self) -> bool {
        self.vision
            .blocks
            .iter()
            .any(|b| b.qkv.adapter.is_some() || b.proj.adapter.is_some())
    }

    /// The attached (unmerged) adapter tensors under their PEFT names.
    pub fn lora_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        let text = self.text.layers.iter().enumerate().flat_map(|(i, l)| {
            let a = &l.self_attn;
            [
                (peft_module_name(i, "q_proj"), &a.q_proj),
                (peft_module_name(i, "k_proj"), &a.k_proj),
                (peft_module_name(i, "v_proj"), &a.v_proj),
                (peft_module_name(i, "o_proj"), &a.o_proj),
            ]
        });
        let vision = self.vision.blocks.iter().enumerate().flat_map(|(i, b)| {
            [
                (peft_vision_module_name(i, "qkv"), &b.qkv),
                (peft_vision_module_name(i, "proj"), &b.proj),
            ]
        });
        for (base, proj) in text.chain(vision) {
            if let Some(ad) = &proj.adapter {
                out.push((format!("{base}.lora_A.weight"), ad.a.as_tensor().clone()));
                out.push((format!("{base}.lora_B.weight"), ad.b.as_tensor().clone()));
            }
        }
        out
    }

    /// Writes `adapter_model.safetensors` and `adapter_config.json` (PEFT layout) into `dir`.
    pub fn save_lora(&self, dir: &Path, cfg: &LoraConfig) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let tensors: HashMap<String, Tensor> = self.lora_tensors().into_iter().collect();
        if tensors.is_empty() {
            return Err(Error::invalid("LoRA", "no adapters attached"));
        }
        let path = dir.join("adapter_model.safetensors");
        candle_core::safetensors::save(&tensors, &path)?;
        let targets: Vec<&str> = cfg
            .target_modules
            .iter()
            .map(|t| crate::model::lora::target_to_peft(t))
            .collect();
        let json = serde_json::json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "r": cfg.r,
            "lora_alpha": cfg.lora_alpha,
            "lora_dropout": cfg.lora_dropout,
            "target_modules": targets,
            "bias": "none",
            "fan_in_fan_out": false,
            "use_rslora": false,
            "use_dora": false,
        });
        let cpath = dir.join("adapter_config.json");
        std::fs::write(
            &cpath,
            serde_json::to_string_pretty(&json).unwrap_or_default(),
        )
        .map_err(|e| Error::io(&cpath, e))?;
        Ok(())
    }

    /// Loads PEFT adapters from `dir` (today's names and those of transformers 4.x, see [`current_peft_name`]),
    /// attaches them as trainable variables and
    /// returns their config and variables.
    pub fn load_lora(&mut self, dir: &Path) -> Result<(LoraConfig, Vec<(String, Var)>)> {
        let cpath = dir.join("adapter_config.json");
        let text = std::fs::read_to_string(&cpath).map_err(|e| Error::io(&cpath, e))?;
        let cfg = adapter_config(&text, &cpath)?;
        let path = dir.join("adapter_model.safetensors");
        let data = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let raw = candle_core::safetensors::load_buffer(&data, &self.device).map_err(|e| {
            Error::format(&path, None, format!("not a valid safetensors file: {e}"))
        })?;
        let raw: HashMap<String, Tensor> = raw
            .into_iter()
            .map(|(k, v)| (current_peft_name(&k), v))
            .collect();
        let dt = self.dtype;
        let mut vars = Vec::new();
        let (layers, blocks) = (self.text.layers.len(), self.vision.blocks.len());
        let targets = self.lora_targets(&cfg.target_modules)?;
        // Every tensor of the file must land on a module of this base: one that names a layer, block or
        // projection the base does not have (another architecture, a deeper model) is refused, not skipped.
        let expected: std::collections::HashSet<String> = targets
            .iter()
            .flat_map(|(base, _)| {
                [
                    format!("{base}.lora_A.weight"),
                    format!("{base}.lora_B.weight"),
                ]
            })
            .collect();
        let mut unknown: Vec<&String> = raw.keys().filter(|k| !expected.contains(*k)).collect();
        unknown.sort();
        if let Some(first) = unknown.first() {
            return Err(Error::format(
                &path,
                Some((*first).clone()),
                format!(
                    "{} tensor(s) fit no module of this base for the target_modules {:?} of {} (a \
                     Qwen2-VL with {} decoder layers and {} vision blocks)",
                    unknown.len(),
                    cfg.target_modules,
                    cpath.display(),
                    layers,
                    blocks
                ),
            ));
        }
        for (base, proj) in targets {
            let (din, dout) = proj.dims()?;
            let get = |suffix: &str, shape: (usize, usize)| -> Result<Tensor> {
                let key = format!("{base}.{suffix}");
                let t = raw
                    .get(&key)
                    .ok_or_else(|| Error::format(&path, Some(key.clone()), "missing"))?;
                if t.dims() != [shape.0, shape.1] {
                    return Err(Error::format(
                        &path,
                        Some(key),
                        format!("shape {:?}, expected {shape:?}", t.dims()),
                    ));
                }
                Ok(t.to_dtype(dt)?)
            };
            let a = Var::from_tensor(&get("lora_A.weight", (cfg.r, din))?)?;
            let b = Var::from_tensor(&get("lora_B.weight", (dout, cfg.r))?)?;
            vars.push((format!("{base}.lora_A.weight"), a.clone()));
            vars.push((format!("{base}.lora_B.weight"), b.clone()));
            proj.adapter = Some(LoraAdapter {
                a,
                b,
                scale: cfg.scale(),
                dropout: cfg.lora_dropout,
            });
        }
        Ok((cfg, vars))
    }

    /// Folds every attached adapter into its base weight (inference).
    pub fn merge_lora(&mut self) -> Result<()> {
        for (_, _, p) in self.adaptable() {
            p.merge()?;
        }
        Ok(())
    }
}

/// Reads an `adapter_config.json`: the LoRA fields we apply, with PEFT's target spellings normalized
/// ([`crate::model::lora::target_from_peft`]), and a refusal of every PEFT option that would change the
/// adapter's output in a way we do not compute (so it is never silently applied differently).
pub(crate) fn adapter_config(text: &str, cpath: &Path) -> Result<LoraConfig> {
    let bad = |key: &str, why: String| Error::format(cpath, Some(key.into()), why);
    let v: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| Error::format(cpath, None, format!("not JSON: {e}")))?;
    if let Some(t) = v.get("peft_type").and_then(|t| t.as_str()) {
        if t != "LORA" {
            return Err(bad("peft_type", format!("{t:?}: only LORA adapters apply")));
        }
    }
    for flag in ["use_dora", "use_rslora", "fan_in_fan_out", "use_qalora"] {
        if v.get(flag).and_then(|f| f.as_bool()) == Some(true) {
            return Err(bad(
                flag,
                "is true; that LoRA variant is not supported".into(),
            ));
        }
    }
    for map in ["rank_pattern", "alpha_pattern"] {
        if v.get(map)
            .and_then(|m| m.as_object())
            .is_some_and(|m| !m.is_empty())
        {
            return Err(bad(
                map,
                "per-module ranks or alphas are not supported".into(),
            ));
        }
    }
    for list in [
        "modules_to_save",
        "layers_to_transform",
        "target_parameters",
    ] {
        if v.get(list).is_some_and(|x| !x.is_null()) {
            return Err(bad(
                list,
                "is set; not supported (only target_modules adapters apply)".into(),
            ));
        }
    }
    if let Some(b) = v.get("bias").and_then(|b| b.as_str()) {
        if b != "none" {
            return Err(bad(
                "bias",
                format!("{b:?}: trained biases are not supported"),
            ));
        }
    }
    if v.get("target_modules").is_some_and(|t| t.is_string()) {
        return Err(bad(
            "target_modules",
            "a regular expression; a list of module names is needed (q_proj, k_proj, v_proj, o_proj, qkv, \
             attn.proj)"
                .into(),
        ));
    }
    let mut cfg: LoraConfig = serde_json::from_value(v)
        .map_err(|e| Error::format(cpath, None, format!("bad adapter config: {e}")))?;
    if cfg.r == 0 {
        return Err(bad("r", "rank must be positive".into()));
    }
    for t in cfg.target_modules.iter_mut() {
        *t = crate::model::lora::target_from_peft(t).to_string();
    }
    Ok(cfg)
}

/// PEFT's module name of a decoder attention projection, as today's peft names it on today's transformers'
/// `Qwen2VLForConditionalGeneration` (the decoder nested under `model.language_model`; found by making an
/// adapter with peft 0.21 on transformers 5.25, `scripts/peft_check.py`).
pub fn peft_module_name(layer: usize, proj: &str) -> String {
    format!("base_model.model.model.language_model.layers.{layer}.self_attn.{proj}")
}

/// PEFT's module name of a vision-tower attention projection (`qkv` or `proj`), today's layout (the tower under
/// `model.visual`).
pub fn peft_vision_module_name(block: usize, proj: &str) -> String {
    format!("base_model.model.model.visual.blocks.{block}.attn.{proj}")
}

/// A PEFT tensor name in today's layout: adapters made on transformers 4.x name the decoder
/// `base_model.model.model.layers.…` and the vision tower `base_model.model.visual.…`; both load.
pub fn current_peft_name(name: &str) -> String {
    const OLD_TEXT: &str = "base_model.model.model.layers.";
    const OLD_VISION: &str = "base_model.model.visual.";
    if let Some(rest) = name.strip_prefix(OLD_TEXT) {
        format!("base_model.model.model.language_model.layers.{rest}")
    } else if let Some(rest) = name.strip_prefix(OLD_VISION) {
        format!("base_model.model.model.visual.{rest}")
    } else {
        name.to_string()
    }
}

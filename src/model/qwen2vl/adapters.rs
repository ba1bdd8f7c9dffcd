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
        let json = serde_json::json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "r": cfg.r,
            "lora_alpha": cfg.lora_alpha,
            "lora_dropout": cfg.lora_dropout,
            "target_modules": cfg.target_modules,
            "bias": "none",
            "fan_in_fan_out": false,
        });
        let cpath = dir.join("adapter_config.json");
        std::fs::write(
            &cpath,
            serde_json::to_string_pretty(&json).unwrap_or_default(),
        )
        .map_err(|e| Error::io(&cpath, e))?;
        Ok(())
    }

    /// Loads PEFT adapters from `dir` (also accepting 5.x module paths), attaches them as trainable variables and
    /// returns their config and variables.
    pub fn load_lora(&mut self, dir: &Path) -> Result<(LoraConfig, Vec<(String, Var)>)> {
        let cpath = dir.join("adapter_config.json");
        let text = std::fs::read_to_string(&cpath).map_err(|e| Error::io(&cpath, e))?;
        let cfg: LoraConfig = serde_json::from_str(&text)
            .map_err(|e| Error::format(&cpath, None, format!("bad adapter config: {e}")))?;
        if cfg.r == 0 {
            return Err(Error::format(
                &cpath,
                Some("r".into()),
                "rank must be positive",
            ));
        }
        let path = dir.join("adapter_model.safetensors");
        let data = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let raw = candle_core::safetensors::load_buffer(&data, &self.device).map_err(|e| {
            Error::format(&path, None, format!("not a valid safetensors file: {e}"))
        })?;
        let raw: HashMap<String, Tensor> = raw
            .into_iter()
            .map(|(k, v)| {
                let k = k
                    .replace("model.language_model.", "model.")
                    .replace("base_model.model.model.visual.", "base_model.model.visual.");
                (k, v)
            })
            .collect();
        let dt = self.dtype;
        let mut vars = Vec::new();
        let targets = self.lora_targets(&cfg.target_modules)?;
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

/// PEFT's module name of a decoder attention projection.
pub fn peft_module_name(layer: usize, proj: &str) -> String {
    format!("base_model.model.model.layers.{layer}.self_attn.{proj}")
}

/// PEFT's module name of a vision-tower attention projection (`qkv` or `proj`), transformers 4.x layout (5.x
/// names, `model.visual.`, are accepted when loading).
pub fn peft_vision_module_name(block: usize, proj: &str) -> String {
    format!("base_model.model.visual.blocks.{block}.attn.{proj}")
}

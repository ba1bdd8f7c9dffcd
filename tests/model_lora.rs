//! LoRA: zero-initialized adapters change nothing, merging is exact to 1e-5, PEFT names round-trip, and only
//! adapter, query and head parameters receive gradients; the fused inference path equals the differentiable one.
mod common;

use candle_core::{DType, Device, Tensor, Var};
use common::*;
use vlm3d::model::detector::Detector;
use vlm3d::model::lora::LoraConfig;
use vlm3d::model::qwen2vl::{Pipeline, Qwen2VL};

fn model() -> Qwen2VL {
    Qwen2VL::load(&fixture(), &Device::Cpu, DType::F32).unwrap()
}

fn ids() -> Vec<u32> {
    (7..60).collect()
}

/// Gives every B matrix random values so the adapters actually change the output.
fn randomize(vars: &[(String, Var)]) {
    for (n, v) in vars {
        if n.contains("lora_B") {
            v.set(&(Tensor::randn(0f32, 1.0, v.shape(), &Device::Cpu).unwrap() * 0.1).unwrap())
                .unwrap();
        }
    }
}

#[test]
fn zero_init_adapters_leave_outputs_unchanged() {
    let base = model().forward(&ids(), None).unwrap().0;
    let mut m = model();
    let vars = m.attach_lora(&LoraConfig::default()).unwrap();
    assert_eq!(vars.len(), 2 * 4 * 2, "A and B for q,k,v,o in both layers");
    let d = max_abs_diff(&m.forward(&ids(), None).unwrap().0, &base);
    println!("zero-init LoRA: max|Δ| = {d:.3e}");
    assert!(d <= 1e-7, "{d}");
    randomize(&vars);
    let d = max_abs_diff(&m.forward(&ids(), None).unwrap().0, &base);
    assert!(d > 1e-3, "non-zero adapters must change the output ({d})");
}

#[test]
fn merged_equals_unmerged() {
    let mut m = model();
    let vars = m.attach_lora(&LoraConfig::default()).unwrap();
    randomize(&vars);
    let unmerged = m.forward(&ids(), None).unwrap().0;
    m.merge_lora().unwrap();
    assert!(m.lora_tensors().is_empty());
    let merged = m.forward(&ids(), None).unwrap().0;
    let d = max_abs_diff(&merged, &unmerged);
    println!("merged vs unmerged: max|Δ| = {d:.3e}");
    assert!(d <= 1e-5, "{d}");
}

#[test]
fn peft_names_round_trip() {
    let cfg = LoraConfig {
        target_modules: vec!["q_proj".into(), "v_proj".into()],
        ..Default::default()
    };
    let mut m = model();
    let vars = m.attach_lora(&cfg).unwrap();
    randomize(&vars);
    let want = m.forward(&ids(), None).unwrap().0;
    let dir = scratch("peft");
    m.save_lora(&dir, &cfg).unwrap();
    let saved = candle_core::safetensors::load(dir.join("adapter_model.safetensors"), &Device::Cpu)
        .unwrap();
    // Today's peft names (transformers 5 nests the decoder under `model.language_model`).
    let name = |l: usize, p: &str| {
        format!("base_model.model.model.language_model.layers.{l}.self_attn.{p}")
    };
    assert!(saved.contains_key(&name(0, "q_proj.lora_A.weight")));
    assert!(saved.contains_key(&name(1, "v_proj.lora_B.weight")));
    assert_eq!(saved.len(), 8);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(json["r"], 16);
    assert_eq!(json["lora_alpha"], 32.0);
    assert_eq!(json["peft_type"], "LORA");
    let mut m2 = model();
    let (c2, _) = m2.load_lora(&dir).unwrap();
    assert_eq!(c2, cfg);
    assert_eq!(
        max_abs_diff(&m2.forward(&ids(), None).unwrap().0, &want),
        0.0
    );
    // The same tensors under transformers 4.x's names (as older peft wrote them) load to the same model.
    let old: std::collections::HashMap<String, candle_core::Tensor> = saved
        .iter()
        .map(|(k, v)| {
            (
                k.replace("model.language_model.layers.", "model.layers."),
                v.clone(),
            )
        })
        .collect();
    assert!(old
        .keys()
        .all(|k| k.starts_with("base_model.model.model.layers.")));
    candle_core::safetensors::save(&old, dir.join("adapter_model.safetensors")).unwrap();
    let mut m3 = model();
    m3.load_lora(&dir).unwrap();
    assert_eq!(
        max_abs_diff(&m3.forward(&ids(), None).unwrap().0, &want),
        0.0
    );
    // A wrong rank in the file is a clear error.
    let bad = cfg.clone();
    let text = serde_json::to_string(&LoraConfig { r: 8, ..bad }).unwrap();
    std::fs::write(dir.join("adapter_config.json"), text).unwrap();
    let e = model().load_lora(&dir).unwrap_err();
    assert!(e.to_string().contains("expected"), "{e}");
}

fn detector_with_lora() -> (Detector, Vec<(String, Var)>) {
    let mut pipe = Pipeline::load(&fixture(), &Device::Cpu, DType::F32).unwrap();
    let lora = pipe.model.attach_lora(&LoraConfig::default()).unwrap();
    randomize(&lora);
    (Detector::new(pipe, Default::default()).unwrap(), lora)
}

#[test]
fn only_adapters_queries_and_head_get_gradients() {
    let (det, lora) = detector_with_lora();
    let (feats, grids) = det.encode_images(&[image("wide"), image("tall")]).unwrap();
    let states = det
        .query_states(&feats, &grids, &cameras(2), "Find the car.", true)
        .unwrap();
    let out = det.head_forward(&states).unwrap();
    let loss = (out.boxes.sqr().unwrap().sum_all().unwrap()
        + out.logits.sqr().unwrap().sum_all().unwrap())
    .unwrap();
    let grads = loss.backward().unwrap();
    let mut trainable: Vec<(String, Var)> = lora;
    trainable.extend(det.head.vars());
    assert!(trainable.len() > 16 + 2);
    for (name, v) in &trainable {
        let g = grads
            .get(v.as_tensor())
            .unwrap_or_else(|| panic!("{name} got no gradient"));
        let n = g
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(n > 0.0 && n.is_finite(), "{name}: gradient norm² {n}");
    }
    // Frozen weights are constants: no gradient is even tracked for them.
    let m = &det.pipeline.model;
    assert!(grads.get(m.text.embed.embeddings()).is_none());
    assert!(grads
        .get(m.text.layers[0].self_attn.q_proj.base().weight())
        .is_none());
}

#[test]
fn fused_path_equals_differentiable_path() {
    let (det, _) = detector_with_lora();
    let (feats, grids) = det.encode_images(&[image("wide"), image("tall")]).unwrap();
    let fast = det
        .query_states(&feats, &grids, &cameras(2), "Find the car.", false)
        .unwrap();
    let diff = det
        .query_states(&feats, &grids, &cameras(2), "Find the car.", true)
        .unwrap();
    let d = max_abs_diff_inputs(&fast, &diff);
    println!("fused vs differentiable: max|Δ| = {d:.3e}");
    assert!(d <= 1e-5, "{d}");
}

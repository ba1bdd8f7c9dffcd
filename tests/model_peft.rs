//! PEFT both ways, against the registry's transformers + peft (the `transformers` peer venv,
//! `tests/peers/peft_peer.py`), on the tiny Qwen2-VL fixture:
//! - an adapter `vlm3d` writes is loaded whole by `PeftModel.from_pretrained`, and both give the same greedy
//!   tokens (`vlm3d generate --adapter`), for a text-only and an image prompt;
//! - an adapter made by peft itself (non-zero B, decoder and vision tower) gives the same greedy tokens through
//!   `vlm3d generate --adapter`;
//! - `vlm3d export`'s merged folder, loaded by transformers as a plain model, gives PeftModel's logits.
//!
//! The bad-input cases (an adapter that does not fit the base) need no Python and run everywhere.
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{DType, Device, Tensor};
use common::{fixture, run, scratch, PeerVenv};
use vlm3d::model::lora::LoraConfig;
use vlm3d::model::qwen2vl::Qwen2VL;

/// Versions the registry served when this test was written (pinned, so a new release cannot change the
/// reference under a passing build unnoticed).
const TRANSFORMERS: PeerVenv = PeerVenv {
    name: "transformers",
    packages: &[
        "torch==2.15.0",
        "transformers==5.25.0",
        "peft==0.21.2",
        "pillow",
        "numpy",
        "safetensors",
    ],
    check: "import torch, transformers, peft, PIL",
    no_deps_fallback: None,
};

const PROMPT_TEXT: &str = "Where is the cyclist? Describe the scene in front of the ego vehicle.";
const PROMPT_IMAGE: &str = "Find the car parked on the left side of the road.";
const MAX_NEW: &str = "12";

fn peer_script() -> PathBuf {
    common::repo().join("tests/peers/peft_peer.py")
}

/// PEFT's greedy answer with the adapter: (tensors taken over exactly, names not taken over, text).
fn peft_answer(
    python: &Path,
    model: &Path,
    adapter: &Path,
    prompt: &str,
    images: &[PathBuf],
) -> (u64, Vec<String>, String) {
    let out = run(Command::new(python)
        .arg(peer_script())
        .arg("run")
        .arg(model)
        .arg(adapter)
        .arg(MAX_NEW)
        .arg(prompt)
        .args(images))
    .unwrap();
    let line = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(line.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("peer output {line:?}: {e}"));
    let not_loaded = v["not_loaded"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect();
    (
        v["loaded"].as_u64().unwrap(),
        not_loaded,
        v["text"].as_str().unwrap().to_string(),
    )
}

/// `vlm3d generate --adapter`'s answer (stdout's text, without the trailing newline).
fn our_answer(model: &Path, adapter: &Path, prompt: &str, images: &[PathBuf]) -> String {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vlm3d"));
    c.arg("generate")
        .arg("--model")
        .arg(model)
        .arg("--adapter")
        .arg(adapter)
        .args([
            "--prompt",
            prompt,
            "--max-new-tokens",
            MAX_NEW,
            "--device",
            "cpu",
        ]);
    for i in images {
        c.arg("--image").arg(i);
    }
    let out = run(&mut c).unwrap();
    let s = String::from_utf8_lossy(&out.stdout).to_string();
    s.strip_suffix('\n').unwrap_or(&s).to_string()
}

/// An adapter written by `vlm3d` (the trainer's writer) with random non-zero A and B on the decoder's q, k, v,
/// o and the vision tower's qkv and proj.
fn our_adapter(dir: &Path) -> usize {
    let mut m = Qwen2VL::load(&fixture(), &Device::Cpu, DType::F32).unwrap();
    let cfg = LoraConfig {
        r: 4,
        lora_alpha: 8.0,
        lora_dropout: 0.0,
        target_modules: ["q_proj", "k_proj", "v_proj", "o_proj", "qkv", "proj"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
    };
    let vars = m.attach_lora(&cfg).unwrap();
    for (i, (_, v)) in vars.iter().enumerate() {
        let t = v.as_tensor();
        // A fixed pattern per tensor (no RNG needed for reproducibility).
        let n = t.elem_count();
        let vals: Vec<f32> = (0..n)
            .map(|k| (((k * 7919 + i * 104_729) % 1000) as f32 / 1000.0 - 0.5) * 0.6)
            .collect();
        v.set(&Tensor::from_vec(vals, t.dims(), &Device::Cpu).unwrap())
            .unwrap();
    }
    m.save_lora(dir, &cfg).unwrap();
    vars.len()
}

fn images() -> Vec<PathBuf> {
    vec![fixture().join("images/view0.png")]
}

#[test]
fn peft_loads_our_adapter_whole_and_answers_alike() {
    let Some(python) =
        TRANSFORMERS.python_or_skip("peft_loads_our_adapter_whole_and_answers_alike")
    else {
        return;
    };
    let dir = scratch("peft-ours");
    let n = our_adapter(&dir);
    for (prompt, imgs) in [(PROMPT_TEXT, vec![]), (PROMPT_IMAGE, images())] {
        let (loaded, not_loaded, theirs) = peft_answer(&python, &fixture(), &dir, prompt, &imgs);
        assert!(
            not_loaded.is_empty(),
            "peft did not take over {not_loaded:?}"
        );
        assert_eq!(loaded as usize, n, "every tensor of the adapter file");
        let ours = our_answer(&fixture(), &dir, prompt, &imgs);
        println!("{} image(s): peft {theirs:?}, vlm3d {ours:?}", imgs.len());
        assert!(!ours.is_empty());
        assert_eq!(ours, theirs, "greedy answer with {} image(s)", imgs.len());
    }
    // The adapter does change the answer (so the comparison above is not of two base models).
    let base = {
        let mut c = Command::new(env!("CARGO_BIN_EXE_vlm3d"));
        c.arg("generate").arg("--model").arg(fixture()).args([
            "--prompt",
            PROMPT_TEXT,
            "--max-new-tokens",
            MAX_NEW,
        ]);
        String::from_utf8_lossy(&run(&mut c).unwrap().stdout).to_string()
    };
    assert_ne!(
        base.trim_end(),
        our_answer(&fixture(), &dir, PROMPT_TEXT, &[])
    );
}

#[test]
fn an_adapter_made_by_peft_answers_alike() {
    let Some(python) = TRANSFORMERS.python_or_skip("an_adapter_made_by_peft_answers_alike") else {
        return;
    };
    let dir = scratch("peft-theirs");
    run(Command::new(&python)
        .arg(peer_script())
        .arg("make")
        .arg(fixture())
        .arg(&dir)
        .arg("3"))
    .unwrap();
    for (prompt, imgs) in [(PROMPT_TEXT, vec![]), (PROMPT_IMAGE, images())] {
        let (_, not_loaded, theirs) = peft_answer(&python, &fixture(), &dir, prompt, &imgs);
        assert!(not_loaded.is_empty(), "{not_loaded:?}");
        let ours = our_answer(&fixture(), &dir, prompt, &imgs);
        println!("{} image(s): peft {theirs:?}, vlm3d {ours:?}", imgs.len());
        assert_eq!(ours, theirs, "greedy answer with {} image(s)", imgs.len());
    }
}

/// The committed demo model's adapter (written by `vlm3d train`) is taken over whole by PeftModel on the demo's
/// base, which transformers loads as a Hugging Face Qwen2-VL folder, and both answer alike.
#[test]
fn peft_loads_the_demo_adapter_whole() {
    let Some(python) = TRANSFORMERS.python_or_skip("peft_loads_the_demo_adapter_whole") else {
        return;
    };
    let demo = vlm3d::demo::default_model_dir();
    let adapter = demo.join("adapter");
    let img = common::repo().join("tests/fixtures/qwen2vl_tiny/images/view1.png");
    let (loaded, not_loaded, theirs) = peft_answer(
        &python,
        &demo,
        &adapter,
        PROMPT_IMAGE,
        std::slice::from_ref(&img),
    );
    assert!(not_loaded.is_empty(), "{not_loaded:?}");
    let file =
        candle_core::safetensors::load(adapter.join("adapter_model.safetensors"), &Device::Cpu)
            .unwrap();
    assert_eq!(loaded as usize, file.len());
    let ours = our_answer(&demo, &adapter, PROMPT_IMAGE, &[img]);
    assert_eq!(ours, theirs);
}

/// `vlm3d export` of the run folder `trained` (on the fixture base) into `out`.
fn export_command(trained: &Path, out: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vlm3d"));
    c.arg("export")
        .arg("--model")
        .arg(fixture())
        .arg("--trained")
        .arg(trained)
        .arg("--out")
        .arg(out);
    c
}

/// A run folder (`adapter/` from [`our_adapter`], a head file) exported with `vlm3d export`.
fn exported(name: &str, dtype: Option<&str>) -> (PathBuf, PathBuf) {
    let run_dir = scratch(name);
    our_adapter(&run_dir.join("adapter"));
    std::fs::write(run_dir.join("head.safetensors"), b"head bytes").unwrap();
    let out = run_dir.join("export");
    let mut c = export_command(&run_dir, &out);
    if let Some(d) = dtype {
        c.args(["--dtype", d]);
    }
    run(&mut c).unwrap();
    (run_dir, out)
}

#[test]
fn merged_export_gives_peft_logits() {
    let Some(python) = TRANSFORMERS.python_or_skip("merged_export_gives_peft_logits") else {
        return;
    };
    let (run_dir, out) = exported("peft-export", None);
    for (prompt, imgs) in [(PROMPT_TEXT, vec![]), (PROMPT_IMAGE, images())] {
        let o = run(Command::new(&python)
            .arg(peer_script())
            .arg("compare")
            .arg(fixture())
            .arg(run_dir.join("adapter"))
            .arg(&out)
            .arg(prompt)
            .args(&imgs))
        .unwrap();
        let line = String::from_utf8_lossy(&o.stdout);
        let v: serde_json::Value = serde_json::from_str(line.lines().last().unwrap()).unwrap();
        let d = v["max_abs_diff"].as_f64().unwrap();
        println!(
            "{} image(s), {} tokens: merged export vs PeftModel logits max|Δ| {d:.2e} (scale {:.2})",
            imgs.len(),
            v["tokens"],
            v["scale"].as_f64().unwrap()
        );
        assert!(d <= 1e-4, "{d}");
    }
}

#[test]
fn export_is_a_plain_checkpoint_with_the_adapter_folded_in() {
    let (run_dir, out) = exported("export-plain", None);
    // Loaded as a plain checkpoint, it answers as the base with the adapter merged at load.
    // Plain tokens (the special tokens, image pads among them, come first in the fixture vocabulary).
    let ids: Vec<u32> = (10..50).collect();
    let plain = Qwen2VL::load(&out, &Device::Cpu, DType::F32).unwrap();
    let mut merged = Qwen2VL::load(&fixture(), &Device::Cpu, DType::F32).unwrap();
    merged.load_lora(&run_dir.join("adapter")).unwrap();
    merged.merge_lora().unwrap();
    let base = Qwen2VL::load(&fixture(), &Device::Cpu, DType::F32).unwrap();
    let (a, _) = plain.forward(&ids, None).unwrap();
    let (b, _) = merged.forward(&ids, None).unwrap();
    let (c, _) = base.forward(&ids, None).unwrap();
    let d = common::max_abs_diff(&a, &b);
    assert!(d <= 1e-5, "export vs merge at load: {d}");
    assert!(
        common::max_abs_diff(&a, &c) > 1e-3,
        "the adapter changed nothing"
    );
    // The tokenizer, processor and head come along; the config says the dtype.
    for f in ["tokenizer.json", "preprocessor_config.json", "config.json"] {
        assert!(out.join(f).is_file(), "{f}");
    }
    assert_eq!(
        std::fs::read(out.join("head.safetensors")).unwrap(),
        b"head bytes"
    );
    // bf16: every floating tensor in bf16, and the config says so.
    let (_, out16) = exported("export-bf16", Some("bf16"));
    let t = candle_core::safetensors::load(out16.join("model.safetensors"), &Device::Cpu).unwrap();
    assert!(t.values().all(|t| t.dtype() == DType::BF16));
    let cfg = std::fs::read_to_string(out16.join("config.json")).unwrap();
    assert!(cfg.contains("bfloat16"), "{cfg}");
    // Refusals: a non-empty output folder, a run folder without adapter or weights.
    let e = export_command(&run_dir, &out).output().unwrap();
    assert!(!e.status.success());
    assert!(String::from_utf8_lossy(&e.stderr).contains("not empty"));
    let empty = scratch("export-empty");
    let e = vlm3d::model::export::export_merged(&fixture(), &empty, &empty.join("o"), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("adapter_config.json"), "{e}");
}

/// Writes `tensors` and `config` as an adapter folder.
fn write_adapter(dir: &Path, config: &serde_json::Value, tensors: &[(&str, (usize, usize))]) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("adapter_config.json"), config.to_string()).unwrap();
    let map: std::collections::HashMap<String, Tensor> = tensors
        .iter()
        .map(|(k, s)| {
            (
                k.to_string(),
                Tensor::full(0.01f32, *s, &Device::Cpu).unwrap(),
            )
        })
        .collect();
    candle_core::safetensors::save(&map, dir.join("adapter_model.safetensors")).unwrap();
}

#[test]
fn adapters_that_do_not_fit_are_refused_by_name() {
    let base = scratch("peft-bad");
    let cfg = |targets: &[&str]| serde_json::json!({"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": targets});
    let load = |dir: &Path| {
        let mut m = Qwen2VL::load(&fixture(), &Device::Cpu, DType::F32).unwrap();
        m.load_lora(dir).err().map(|e| e.to_string())
    };
    let dims = {
        let mut m = Qwen2VL::load(&fixture(), &Device::Cpu, DType::F32).unwrap();
        let t = m
            .attach_lora(&LoraConfig {
                r: 2,
                target_modules: vec!["q_proj".into()],
                ..Default::default()
            })
            .unwrap();
        (
            t.len() / 2,
            t[0].1.as_tensor().dims()[1],
            t[1].1.as_tensor().dims()[0],
        )
    };
    let (layers, din, dout) = dims;
    let q = |l: usize, ab: &str| {
        format!(
            "base_model.model.model.language_model.layers.{l}.self_attn.q_proj.lora_{ab}.weight"
        )
    };
    let mut good: Vec<(String, (usize, usize))> = Vec::new();
    for l in 0..layers {
        good.push((q(l, "A"), (2, din)));
        good.push((q(l, "B"), (dout, 2)));
    }
    let write = |name: &str, tensors: &[(String, (usize, usize))], config: serde_json::Value| {
        let dir = base.join(name);
        let t: Vec<(&str, (usize, usize))> =
            tensors.iter().map(|(k, s)| (k.as_str(), *s)).collect();
        write_adapter(&dir, &config, &t);
        dir
    };
    // The well-formed adapter loads (so each refusal below is about its one change).
    assert_eq!(load(&write("good", &good, cfg(&["q_proj"]))), None);

    // A rank that does not fit: the tensor is named with both shapes.
    let mut wrong_rank = good.clone();
    wrong_rank[0].1 = (3, din);
    let e = load(&write("rank", &wrong_rank, cfg(&["q_proj"]))).unwrap();
    assert!(e.contains(&q(0, "A")) && e.contains("expected"), "{e}");

    // A deeper model's adapter (another architecture): the first tensor with no module here is named.
    let mut deeper = good.clone();
    deeper.push((q(layers + 3, "A"), (2, din)));
    let e = load(&write("deeper", &deeper, cfg(&["q_proj"]))).unwrap();
    assert!(
        e.contains(&format!("layers.{}", layers + 3)) && e.contains("fit no module"),
        "{e}"
    );

    // LoRA on the patch embedding (peft's bare `proj` target catches it): refused by name, not skipped.
    let mut patch = good.clone();
    patch.push((
        "base_model.model.model.visual.patch_embed.proj.lora_A.weight".into(),
        (2, 3 * 2 * 14 * 14),
    ));
    let e = load(&write("patch", &patch, cfg(&["q_proj", "proj"]))).unwrap();
    assert!(e.contains("patch_embed.proj"), "{e}");

    // A missing tensor of a targeted module.
    let e = load(&write("missing", &good[1..], cfg(&["q_proj"]))).unwrap();
    assert!(e.contains(&q(0, "A")) && e.contains("missing"), "{e}");

    // PEFT options that change the output in a way we do not compute.
    for (key, value) in [
        ("use_dora", serde_json::json!(true)),
        ("use_rslora", serde_json::json!(true)),
        ("rank_pattern", serde_json::json!({"q_proj": 8})),
        ("modules_to_save", serde_json::json!(["lm_head"])),
        ("peft_type", serde_json::json!("IA3")),
    ] {
        let mut c = cfg(&["q_proj"]);
        c[key] = value;
        let e = load(&write(key, &good, c)).unwrap();
        assert!(e.contains(key), "{key}: {e}");
    }

    // `vlm3d generate --adapter` on a folder without adapter_config.json.
    let empty = base.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vlm3d"))
        .arg("generate")
        .arg("--model")
        .arg(fixture())
        .arg("--adapter")
        .arg(&empty)
        .args(["--prompt", "hello"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("adapter_config.json"), "{err}");
}

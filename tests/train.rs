//! The trainer on the tiny fixture and a small synthetic bag: the loss falls, LoRA training leaves the base
//! weights bit-identical, the stage switch changes λ and the learning rate exactly at the boundary, a run killed
//! with SIGKILL resumes to the same result as an uninterrupted one, and bad recipes or bags are refused by name.
mod common;

use std::path::Path;
use std::process::Command;

use common::{cameras, fixture, scratch, small_bag as bag};
use vlm3d::train::trainer::schedule_at;
use vlm3d::train::{TrainConfig, Trainer};

/// Bits of every decoder layer's base q_proj weight.
fn q_proj_bits(m: &vlm3d::model::qwen2vl::Qwen2VL) -> Vec<Vec<u32>> {
    m.text
        .layers
        .iter()
        .map(|l| {
            let w: Vec<f32> = l
                .self_attn
                .q_proj
                .base()
                .weight()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            w.iter().map(|x| x.to_bits()).collect()
        })
        .collect()
}

fn recipe(bag: &Path, stage1: usize, stage2: usize) -> TrainConfig {
    common::tiny_recipe(bag, stage1, stage2)
}

#[test]
fn loss_falls_and_the_base_weights_stay_bit_identical() {
    let dir = scratch("train-falls");
    let bag = bag(&dir);
    // Three epochs of 20 steps: each epoch's mean loss is over the same examples, so the comparison is not at the
    // mercy of which examples five single steps drew (a 5-step window of batches of 4 varies by 2× on its own).
    let cfg = recipe(&bag, 60, 0);
    let mut t = Trainer::new(cfg, &dir.join("run"), false).unwrap();
    t.progress = false;
    let base_before = q_proj_bits(&t.detector.pipeline.model);
    let s = t.run(None).unwrap();
    assert_eq!(s.steps, 60);
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(dir.join("run/metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 60);
    let epochs: Vec<f64> = (0..3)
        .map(|e| {
            let r: Vec<f64> = lines
                .iter()
                .filter(|v| v["epoch"].as_u64() == Some(e))
                .map(|v| v["loss"].as_f64().unwrap())
                .collect();
            assert_eq!(r.len(), 20, "epoch {e} has 20 steps");
            r.iter().sum::<f64>() / r.len() as f64
        })
        .collect();
    println!("mean loss per epoch: {epochs:.4?}");
    // Falling after the first epoch, and by 30 % over the run. The second and third epochs are not ordered: at
    // this learning rate they sit within noise of each other (measured [7.28, 4.22, 4.58] on 2026-12-06, once the
    // resize of the 224 × 126 views to 224 × 112 moved pixels by one 8-bit level; the earlier inputs happened to
    // give a falling third epoch).
    assert!(
        epochs[1] < epochs[0] && epochs[2] < 0.7 * epochs[0],
        "loss did not fall: {epochs:?}"
    );
    // The base weights are the loaded ones, bit for bit, and equal the checkpoint file's.
    let fresh = vlm3d::model::qwen2vl::Pipeline::load(
        &fixture(),
        &candle_core::Device::Cpu,
        candle_core::DType::F32,
    )
    .unwrap();
    let now = q_proj_bits(&t.detector.pipeline.model);
    assert_eq!(now, base_before, "q_proj changed during LoRA training");
    assert_eq!(
        now,
        q_proj_bits(&fresh.model),
        "q_proj differs from the checkpoint"
    );
    // What the trainer writes is what the detector loads.
    let det = vlm3d::model::detector::Detector::load(
        &fixture(),
        Some(&dir.join("run")),
        Default::default(),
        &candle_core::Device::Cpu,
        candle_core::DType::F32,
    )
    .unwrap();
    assert_eq!(det.head.num_queries(), 16);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_stage_switch_is_exactly_at_the_boundary() {
    let text = std::fs::read_to_string(common::repo().join("config/train.yaml")).unwrap();
    let cfg: TrainConfig = serde_yaml::from_str(&text).unwrap();
    let (s1, s2) = (40, 20);
    let (stage, lr, w) = schedule_at(&cfg, s1, s2, s1 - 1);
    assert_eq!((stage, w.mse, w.iou), (1, 1.0, 0.0));
    assert!(lr <= cfg.stage1.lr && lr > 0.0);
    let (stage, lr, w) = schedule_at(&cfg, s1, s2, s1);
    assert_eq!((stage, w.mse, w.iou), (2, 0.2, 0.8));
    // Stage 2 starts its own warm-up from its own rate.
    let warm = cfg.warmup_steps as f64;
    assert!((lr - cfg.stage2.lr / warm).abs() < 1e-15, "{lr}");
    // Cosine: the rate at the middle of a stage (past warm-up) is half its peak.
    let (_, mid, _) = schedule_at(&cfg, s1, s2, s1 / 2);
    assert!((mid - cfg.stage1.lr * 0.5).abs() < 1e-12, "{mid}");
}

fn vlm3d() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vlm3d"));
    c.env("RUST_BACKTRACE", "0");
    c
}

#[test]
fn a_killed_run_resumes_to_the_uninterrupted_result() {
    let dir = scratch("train-resume");
    let bag = bag(&dir);
    let cfg = recipe(&bag, 8, 4);
    let yaml = dir.join("train.yaml");
    std::fs::write(&yaml, serde_yaml::to_string(&cfg).unwrap()).unwrap();
    let train = |out: &Path, resume: bool| {
        let mut c = vlm3d();
        c.args(["train", "--no-progress", "--config"])
            .arg(&yaml)
            .arg("--out")
            .arg(out);
        if resume {
            c.arg("--resume");
        }
        c
    };
    // Uninterrupted.
    let st = train(&dir.join("whole"), false).output().unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    // Killed once the first checkpoint (step 4) exists, mid-run.
    let mut child = train(&dir.join("killed"), false).spawn().unwrap();
    let first = dir.join("killed/checkpoints/step-00000004/state.json");
    let t0 = std::time::Instant::now();
    while !first.exists() {
        assert!(t0.elapsed().as_secs() < 300, "no checkpoint appeared");
        if let Ok(Some(s)) = child.try_wait() {
            panic!("finished before it could be killed: {s}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // A crash can also cut the log's last line short.
    let log = dir.join("killed/metrics.jsonl");
    let mut torn = std::fs::read_to_string(&log).unwrap_or_default();
    torn.push_str("{\"step\":99,\"epo");
    std::fs::write(&log, torn).unwrap();
    let st = train(&dir.join("killed"), true).output().unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let a = std::fs::read(dir.join("whole/head.safetensors")).unwrap();
    let b = std::fs::read(dir.join("killed/head.safetensors")).unwrap();
    assert!(a == b, "resumed head differs from the uninterrupted run's");
    let a = std::fs::read(dir.join("whole/adapter/adapter_model.safetensors")).unwrap();
    let b = std::fs::read(dir.join("killed/adapter/adapter_model.safetensors")).unwrap();
    assert!(
        a == b,
        "resumed adapters differ from the uninterrupted run's"
    );
    // The resumed log holds each step once (the killed run's lines after its checkpoint and the torn line
    // dropped), with the uninterrupted run's losses.
    let steps = |run: &str| -> Vec<(u64, f64)> {
        std::fs::read_to_string(dir.join(run).join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap())
            })
            .collect()
    };
    let (whole, killed) = (steps("whole"), steps("killed"));
    assert_eq!(
        whole.iter().map(|s| s.0).collect::<Vec<_>>(),
        (1..=12).collect::<Vec<_>>()
    );
    assert_eq!(
        killed, whole,
        "the resumed log differs from the uninterrupted one"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_recipes_and_bags_are_refused_by_name() {
    let dir = scratch("train-bad");
    let yaml = dir.join("t.yaml");
    let text = std::fs::read_to_string(common::repo().join("config/train.yaml")).unwrap();
    // `vlm3d train` on `recipe` with `extra` arguments must fail; its stderr.
    let refused = |recipe: &str, extra: &[&str]| {
        std::fs::write(&yaml, recipe).unwrap();
        let out = vlm3d()
            .arg("train")
            .args(extra)
            .arg("--out")
            .arg(dir.join("o"))
            .arg("--config")
            .arg(&yaml)
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let err = refused(&text.replace("seed: 0", "seed: 0\nlearning_rate: 3"), &[]);
    assert!(
        err.contains("learning_rate") && err.contains("t.yaml"),
        "{err}"
    );
    let err = refused(&text.replace("lr: 1.0e-4", "lr: -1.0e-4"), &[]);
    assert!(err.contains("stage1.lr"), "{err}");
    // A precision the trainer does not compute in is refused, not silently trained in f32.
    let err = refused(&text, &["--dtype", "bf16"]);
    assert!(err.contains("f32 only"), "{err}");
    // A folder that is not a bag.
    let mut cfg: TrainConfig = serde_yaml::from_str(&text).unwrap();
    cfg.model = fixture();
    cfg.train_bags = vec![dir.join("no-such-bag")];
    let e = Trainer::new(cfg, &dir.join("o"), false)
        .err()
        .expect("refused")
        .to_string();
    assert!(e.contains("no-such-bag"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every tensor of a safetensors file, as raw bytes by name.
fn tensors(path: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let data = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&data).unwrap();
    st.tensors()
        .into_iter()
        .map(|(n, v)| (n, v.data().to_vec()))
        .collect()
}

/// `Detector::load` on the fixture and the run folder `run` gives the trainer's boxes on one image (to 1e-4,
/// relative above 1 m: the centre is an exponential of the depth channel): what a run wrote loads back as the
/// trainer held it (the base folder's config and tokenizer).
fn assert_loads_back(run: &std::path::Path, trained: &vlm3d::model::detector::Detector) {
    let loaded = vlm3d::model::detector::Detector::load(
        &fixture(),
        Some(run),
        trained.config.clone(),
        &candle_core::Device::Cpu,
        candle_core::DType::F32,
    )
    .unwrap();
    let img = image::RgbImage::from_fn(224, 126, |x, y| image::Rgb([x as u8, y as u8, 90]));
    let a = loaded
        .detect(std::slice::from_ref(&img), &cameras(1), "car")
        .unwrap();
    let b = trained.detect(&[img], &cameras(1), "car").unwrap();
    assert_eq!(a.len(), b.len());
    assert!(a.iter().all(|v| !v.boxes.is_empty()));
    for (va, vb) in a.iter().zip(&b) {
        assert_eq!(va.boxes.len(), vb.boxes.len());
        for (da, db) in va.boxes.iter().zip(&vb.boxes) {
            for (x, y) in da.bbox.iter().zip(&db.bbox) {
                assert!(
                    (x - y).abs() < 1e-4 * x.abs().max(1.0),
                    "{:?} vs {:?}",
                    da.bbox,
                    db.bbox
                );
            }
        }
    }
}

#[test]
fn full_finetuning_trains_every_weight_resumes_and_loads() {
    let dir = scratch("train-full");
    let bag = bag(&dir);
    let mut cfg = recipe(&bag, 4, 2);
    cfg.finetune = vlm3d::train::config::Finetune::Full;
    cfg.train_vision = true;
    let run = |out: &str, resume: bool, max: Option<usize>| {
        let mut t = Trainer::new(cfg.clone(), &dir.join(out), resume).unwrap();
        t.progress = false;
        t.run(max).unwrap();
        t
    };
    let whole = run("whole", false, None);
    // Stopped after 3 steps (a checkpoint is written), then resumed in a new trainer.
    run("split", false, Some(3));
    run("split", true, None);
    let base = tensors(&fixture().join("model.safetensors"));
    let trained = tensors(&dir.join("whole/model.safetensors"));
    assert_eq!(
        base.keys().collect::<Vec<_>>(),
        trained.keys().collect::<Vec<_>>(),
        "the fine-tuned file is a whole checkpoint"
    );
    for (name, bytes) in &base {
        // The vision tower's and the decoder's weights all train (every one gets a gradient).
        assert_ne!(&trained[name], bytes, "{name} did not change");
    }
    assert!(
        !dir.join("whole/adapter").exists(),
        "no adapters in full mode"
    );
    assert_eq!(
        trained,
        tensors(&dir.join("split/model.safetensors")),
        "resumed weights differ from the uninterrupted run's"
    );
    assert_eq!(
        std::fs::read(dir.join("whole/head.safetensors")).unwrap(),
        std::fs::read(dir.join("split/head.safetensors")).unwrap()
    );
    // What the trainer holds is what `Detector::load` reads back.
    assert_loads_back(&dir.join("whole"), &whole.detector);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn batch_by_view_keeps_a_views_prompts_together_and_its_shared_tower_trains() {
    let dir = scratch("train-by-view");
    let bag = bag(&dir);
    let mut cfg = recipe(&bag, 4, 0);
    cfg.finetune = vlm3d::train::config::Finetune::Full;
    cfg.train_vision = true;
    cfg.max_negatives = Some(2);
    cfg.batch_by_view = true;
    let mut t = Trainer::new(cfg, &dir.join("run"), false).unwrap();
    t.progress = false;
    let key = |e: &vlm3d::train::trainer::TrainingExample| (e.item.example, e.item.prompt);
    let mut all: Vec<_> = t.items().iter().map(|it| (it.example, it.prompt)).collect();
    all.sort_unstable();
    let mut orders = Vec::new();
    for epoch in 0..2 {
        let order: Vec<_> = t
            .epoch_batches(epoch)
            .unwrap()
            .into_iter()
            .flatten()
            .map(|e| key(&e))
            .collect();
        // Every item once per epoch, and a view's items one after another (a view never comes back).
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, all);
        let mut views: Vec<usize> = order.iter().map(|k| k.0).collect();
        views.dedup();
        let mut distinct = views.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(
            views.len(),
            distinct.len(),
            "a view's prompts are split in epoch {epoch}"
        );
        orders.push(order);
    }
    assert!(
        all.len() > distinct_views(&all),
        "the set needs views with several prompts"
    );
    assert_ne!(orders[0], orders[1], "each epoch draws its own order");
    // The tower's features, shared by a view's examples in a batch, still get every gradient.
    let before = tensors(&fixture().join("model.safetensors"));
    t.run(None).unwrap();
    let after = tensors(&dir.join("run/model.safetensors"));
    for (name, bytes) in &before {
        assert_ne!(&after[name], bytes, "{name} did not change");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn distinct_views(items: &[(usize, usize)]) -> usize {
    items
        .iter()
        .map(|k| k.0)
        .collect::<std::collections::BTreeSet<_>>()
        .len()
}

#[test]
fn the_vision_tower_trains_only_with_full_finetuning() {
    let text = std::fs::read_to_string(common::repo().join("config/train.yaml")).unwrap();
    let mut cfg: TrainConfig = serde_yaml::from_str(&text).unwrap();
    cfg.train_vision = true;
    let e = cfg.validate().unwrap_err().to_string();
    assert!(e.contains("train_vision"), "{e}");
    cfg.train_vision = false;
    cfg.device = Some("gpu".into());
    let e = cfg.validate().unwrap_err().to_string();
    assert!(e.contains("`device`") && e.contains("gpu"), "{e}");
}

#[test]
fn lora_on_the_vision_tower_trains_its_adapters_and_loads_back() {
    let dir = scratch("train-vision-lora");
    let bag = bag(&dir);
    let mut cfg = recipe(&bag, 4, 1);
    cfg.lora.targets = ["q_proj", "v_proj", "qkv", "proj"]
        .map(String::from)
        .to_vec();
    let mut t = Trainer::new(cfg, &dir.join("run"), false).unwrap();
    t.progress = false;
    t.run(None).unwrap();
    let adapters = tensors(&dir.join("run/adapter/adapter_model.safetensors"));
    let vision: Vec<_> = adapters
        .keys()
        .filter(|k| k.contains(".visual.blocks."))
        .collect();
    // Two blocks × (qkv, proj) × (A, B).
    assert_eq!(vision.len(), 8, "{vision:?}");
    let zeros = |b: &Vec<u8>| b.iter().all(|&x| x == 0);
    for k in adapters.keys().filter(|k| k.contains("lora_B")) {
        assert!(
            !zeros(&adapters[k]),
            "{k} is still zero: no gradient reached it"
        );
    }
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("run/adapter/adapter_config.json")).unwrap(),
    )
    .unwrap();
    // PEFT's spelling: `attn.proj`, since a bare `proj` would also adapt the patch embedding in PEFT.
    assert_eq!(
        config["target_modules"],
        serde_json::json!(["q_proj", "v_proj", "qkv", "attn.proj"])
    );
    // Merged at load: the detector that reads the run gives the trainer's (unmerged) boxes.
    assert_loads_back(&dir.join("run"), &t.detector);
    let _ = std::fs::remove_dir_all(&dir);
}

//! Training keeps nothing from step to step: the trainer's resident memory (`rss_mib` in `metrics.jsonl`, read
//! from `/proc` after each step) is flat from step 5 to step 20, for the paper's LoRA recipe and for full
//! fine-tuning with the vision tower (the demo's pre-training recipe). A graph, gradient or cache that survived a
//! step would add at least its activations every step. Each run is its own `vlm3d train` process, so the
//! readings are the trainer's alone.
mod common;

use std::path::Path;
use std::process::Command;

use common::{run, scratch, small_bag, tiny_recipe};
use vlm3d::train::config::Finetune;

/// Growth allowed from step 5 to step 20, MiB (allocator noise: measured +1.3 and −0.7 MiB). A loss kept alive
/// after each step (its whole graph retained; tried once on purpose) grew the LoRA run by 519 MiB, ≈ 35 MiB a
/// step.
const BOUND_MIB: f64 = 8.0;

fn rss_growth(dir: &Path, full: bool) -> (f64, f64) {
    let bag = small_bag(dir);
    let mut cfg = tiny_recipe(&bag, 20, 0);
    // Bounded caches fill on purpose; they are not what this test is about.
    cfg.feature_cache_mb = 0;
    cfg.checkpoint_every = 100;
    if full {
        cfg.finetune = Finetune::Full;
        cfg.train_vision = true;
    }
    let yaml = dir.join("train.yaml");
    std::fs::write(&yaml, serde_yaml::to_string(&cfg).unwrap()).unwrap();
    run(Command::new(env!("CARGO_BIN_EXE_vlm3d"))
        .args(["train", "--no-progress", "--device", "cpu", "--config"])
        .arg(&yaml)
        .arg("--out")
        .arg(dir.join("run")))
    .unwrap();
    let rss: Vec<f64> = std::fs::read_to_string(dir.join("run/metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["rss_mib"]
                .as_f64()
                .expect("rss_mib in every metrics line")
        })
        .collect();
    assert_eq!(rss.len(), 20);
    (rss[4], rss[19])
}

#[test]
fn resident_memory_is_flat_from_step_5_to_step_20() {
    if !Path::new("/proc/self/status").exists() {
        eprintln!("SKIPPED: no /proc on this system");
        return;
    }
    for (name, full) in [("LoRA", false), ("full fine-tuning + vision tower", true)] {
        let (at5, at20) = rss_growth(&scratch(&format!("train-memory-{full}")), full);
        println!("{name}: RSS {at5:.1} MiB after step 5, {at20:.1} MiB after step 20");
        assert!(
            at20 - at5 <= BOUND_MIB,
            "{name}: RSS grew {:.1} MiB from step 5 to step 20 ({at5:.1} → {at20:.1})",
            at20 - at5
        );
    }
}

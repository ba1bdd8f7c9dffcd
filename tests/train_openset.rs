//! The open-set protocol in the trainer: over whole epochs of a synthetic set, no held-out category reaches a
//! training batch — not as a positive prompt, a negative prompt, part of a multi-category prompt, a synonym, or a
//! target box — while the same recipe without the hold-out does reach each of them (so the checks can fail);
//! augmented training runs and is reproducible from its seed; and `vlm3d eval --trained` reads the hold-out back and
//! reports seen and unseen categories apart.
mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use common::scratch;
use vlm3d::data::augment::AugmentConfig;
use vlm3d::data::dataset::prompt_name;
use vlm3d::train::prompts::{mentions, PromptConfig};
use vlm3d::train::{TrainConfig, Trainer};

const HOLDOUT: [&str; 4] = ["construction vehicle", "trailer", "barrier", "bicycle"];

/// A synthetic bag with every held-out category in view (seed checked by the control run below).
fn bag(dir: &Path) -> PathBuf {
    common::synth_bag(
        dir,
        vlm3d::data::synth::SynthConfig {
            scenes: 2,
            samples_per_scene: 2,
            objects_per_scene: 40,
            seed: 2,
            width: 224,
            height: 126,
            distinct_looks: true,
            ..Default::default()
        },
    )
}

fn recipe(bag: &Path) -> TrainConfig {
    let mut c = common::tiny_recipe(bag, 4, 2);
    // Every absent category as a negative: the hold-out must keep them out of the vocabulary too.
    c.max_negatives = None;
    c.prompts = PromptConfig {
        templates: vec![
            "Find every {category} in the picture and give its 3D box.".into(),
            "Where is the {category}? Output center, size and yaw.".into(),
        ],
        synonyms: [
            ("car".to_string(), vec!["automobile".to_string()]),
            ("truck".to_string(), vec!["lorry".to_string()]),
        ]
        .into(),
        multi_category: 0.5,
        max_categories: 3,
    };
    c.augment = AugmentConfig {
        flip: 0.5,
        crop_scale: [0.8, 1.0],
        color_jitter: 0.2,
    };
    c
}

/// Where each held-out name shows up in the training batches of `epochs`: (where, name) pairs.
fn reached(t: &Trainer, epochs: usize) -> BTreeSet<(&'static str, String)> {
    let holdout: Vec<String> = HOLDOUT.iter().map(|s| s.to_string()).collect();
    let mut found = BTreeSet::new();
    for epoch in 0..epochs {
        for batch in t.epoch_batches(epoch).unwrap() {
            for ex in batch {
                for h in &holdout {
                    let named = ex.categories.iter().any(|c| mentions(c, h))
                        || ex.words.iter().any(|w| mentions(w, h));
                    if mentions(&ex.text, h) || named {
                        let kind = if ex.categories.len() > 1 {
                            "multi-category prompt"
                        } else if ex.targets.is_empty() {
                            "negative prompt"
                        } else {
                            "positive prompt"
                        };
                        found.insert((kind, h.clone()));
                    }
                    if ex.target_categories.iter().any(|c| &prompt_name(c) == h) {
                        found.insert(("target box", h.clone()));
                    }
                }
            }
        }
    }
    found
}

#[test]
fn no_held_out_category_reaches_any_training_batch() {
    let dir = scratch("openset-leak");
    let bag = bag(&dir);

    // Control: without the hold-out the same checks find every held-out category, in every role.
    let control = Trainer::new(recipe(&bag), &dir.join("control"), false).unwrap();
    let found = reached(&control, 2);
    for h in HOLDOUT {
        for kind in ["positive prompt", "negative prompt", "target box"] {
            assert!(
                found.contains(&(kind, h.to_string())),
                "control: {h} never a {kind} — the bag or the check is too weak: {found:?}"
            );
        }
    }
    assert!(
        found.iter().any(|(k, _)| *k == "multi-category prompt"),
        "{found:?}"
    );

    // The hold-out.
    let mut cfg = recipe(&bag);
    cfg.holdout_categories = HOLDOUT.iter().map(|s| s.to_string()).collect();
    let out = dir.join("holdout");
    // Negatives are drawn from a vocabulary without the held-out names, so a view keeps its full count of them.
    let mut few = cfg.clone();
    few.max_negatives = Some(2);
    let t = Trainer::new(few, &dir.join("few"), false).unwrap();
    for v in t.views() {
        let negatives = v.prompts.iter().filter(|p| p.boxes.is_empty()).count();
        assert_eq!(
            negatives, 2,
            "{} / {}: {:?}",
            v.sample_token, v.channel, v.prompts
        );
    }
    let t = Trainer::new(cfg, &out, false).unwrap();
    let leaks = reached(&t, 3);
    assert!(
        leaks.is_empty(),
        "held-out categories reached training: {leaks:?}"
    );
    // Not even in the loaded views (boxes or prompts).
    for v in t.views() {
        for b in &v.boxes {
            assert!(
                !HOLDOUT.contains(&prompt_name(&b.category).as_str()),
                "{b:?}"
            );
        }
        for p in &v.prompts {
            assert!(!HOLDOUT.iter().any(|h| mentions(&p.text, h)), "{p:?}");
        }
    }
    // A view whose only boxes were held out still trains, on negatives.
    let only_held: Vec<usize> = control
        .views()
        .iter()
        .enumerate()
        .filter(|(_, v)| {
            !v.boxes.is_empty()
                && v.boxes
                    .iter()
                    .all(|b| HOLDOUT.contains(&prompt_name(&b.category).as_str()))
        })
        .map(|(i, _)| i)
        .collect();
    for &i in &only_held {
        let v = &t.views()[i];
        assert_eq!(v.sample_token, control.views()[i].sample_token);
        assert!(v.boxes.is_empty() && !v.prompts.is_empty());
        assert!(v.prompts.iter().all(|p| p.boxes.is_empty()));
        assert!(t.items().iter().any(|it| it.example == i));
    }
    println!("{} views whose only boxes are held out", only_held.len());
    // What was trained is varied: synonyms, paraphrases, multi-category prompts, augmentations.
    let all: Vec<_> = (0..2)
        .flat_map(|e| t.epoch_batches(e).unwrap().into_iter().flatten())
        .collect();
    assert!(all
        .iter()
        .any(|e| e.words.iter().any(|w| w == "automobile")));
    assert!(all.iter().any(|e| e.text.starts_with("Where is the ")));
    assert!(all.iter().any(|e| e.text.starts_with("Please detect the ")));
    assert!(all
        .iter()
        .any(|e| e.categories.len() > 1 && !e.targets.is_empty()));
    assert!(all.iter().any(|e| e.augmentation.flip));
    assert!(all.iter().any(|e| e.augmentation.crop.is_some()));
    // The trained folder names its hold-out for `vlm3d eval`.
    assert_eq!(
        vlm3d::train::config::holdout_of(&out).unwrap(),
        HOLDOUT.map(String::from)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn augmented_training_runs_reproducibly_and_eval_reports_the_open_set() {
    let dir = scratch("openset-augment");
    let bag = bag(&dir);
    let mut cfg = recipe(&bag);
    cfg.max_negatives = Some(1);
    cfg.holdout_categories = vec!["trailer".into(), "vehicle.construction".into()];
    let run = |name: &str| {
        let mut t = Trainer::new(cfg.clone(), &dir.join(name), false).unwrap();
        t.progress = false;
        let s = t.run(Some(3)).unwrap();
        assert_eq!(s.steps, 3);
        std::fs::read(dir.join(name).join("head.safetensors")).unwrap()
    };
    let (a, b) = (run("a"), run("b"));
    assert!(a == b, "the same seed trained different heads");

    // `vlm3d eval --trained` reads the hold-out from the run's train_config.yaml and reports both sides.
    let out = dir.join("eval");
    let st = std::process::Command::new(env!("CARGO_BIN_EXE_vlm3d"))
        .args([
            "eval",
            "--score-threshold",
            "0",
            "--baseline",
            "mean-box",
            "--bag",
        ])
        .arg(&bag)
        .arg("--out")
        .arg(&out)
        .arg("--model")
        .arg(common::fixture())
        .arg("--trained")
        .arg(dir.join("a"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&st.stdout);
    assert!(
        st.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&st.stderr)
    );
    assert!(
        stdout.contains(r#"held-out (unseen) categories ["trailer", "construction vehicle"]"#),
        "{stdout}"
    );
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    for side in [
        "seen categories (trained on)",
        "unseen categories (held out)",
    ] {
        assert_eq!(
            report.matches(side).count(),
            2,
            "{side} per predictor:\n{report}"
        );
    }
    let unseen_table = report
        .split("unseen categories (held out)")
        .nth(1)
        .unwrap()
        .split("\n## ")
        .next()
        .unwrap();
    assert!(
        unseen_table.contains("| trailer |") && unseen_table.contains("| construction vehicle |"),
        "{unseen_table}"
    );
    assert!(!unseen_table.contains("| car |"), "{unseen_table}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
    for r in json.as_array().unwrap() {
        let o = &r["open_set"];
        assert_eq!(
            o["holdout"],
            serde_json::json!(["trailer", "construction vehicle"])
        );
        assert!(
            o["unseen"]["categories"]["trailer"]["truth"]
                .as_u64()
                .unwrap()
                > 0,
            "{o}"
        );
        assert!(o["seen"]["categories"]["car"].is_object(), "{o}");
        assert!(o["seen"]["categories"].get("trailer").is_none(), "{o}");
        for k in ["miou", "nusc_map", "acc_25"] {
            assert!(o["unseen"][k].is_number() && o["seen"][k].is_number());
        }
    }
    // The closed-set baseline knows no held-out category: it predicts none.
    assert_eq!(
        json[1]["open_set"]["unseen"]["categories"]["trailer"]["predicted"],
        0
    );
    let png = image::open(out.join("open_set.png")).unwrap();
    assert!(png.width() >= 800 && png.height() >= 600);
    let _ = std::fs::remove_dir_all(&dir);
}

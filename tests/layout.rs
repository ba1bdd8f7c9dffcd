//! The house rules of the source tree, checked on the files themselves: the library's modules depend on each
//! other in one direction only, no two files import each other (directly or through others), the CLI stays with
//! its binary, and facts with one home (the camera order) are not spelled out twice.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir`, sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The module path of a library file: `src/data/bag/rosbag.rs` → [data, bag, rosbag]; `mod.rs` names its folder;
/// `src/lib.rs` is the root.
fn module_path(file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src()).unwrap();
    let mut parts: Vec<String> = rel
        .iter()
        .map(|s| s.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap();
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" {
        parts.push(stem.to_string());
    }
    parts
}

/// The file that defines the longest prefix of `path` (a module path), if any.
fn resolve(path: &[String]) -> Option<PathBuf> {
    (1..=path.len()).rev().find_map(|n| {
        let p = path[..n].join("/");
        [src().join(format!("{p}.rs")), src().join(&p).join("mod.rs")]
            .into_iter()
            .find(|f| f.is_file())
    })
}

/// The code a file depends on: comments, re-exports (`pub use`), module declarations and inline test modules
/// removed, since a parent re-exporting its child or a test using its file are not dependencies.
fn dependency_text(text: &str) -> String {
    let body = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    let mut out = String::new();
    let mut in_reexport = false;
    for line in body.lines() {
        let code = line.split("//").next().unwrap_or("");
        let t = code.trim_start();
        if t.starts_with("pub use") || t.starts_with("pub(crate) use") {
            in_reexport = !t.contains(';');
            continue;
        }
        if in_reexport {
            in_reexport = !t.contains(';');
            continue;
        }
        if t.starts_with("mod ") || t.starts_with("pub mod ") {
            continue;
        }
        out.push_str(code);
        out.push('\n');
    }
    out
}

/// File → files it refers to through `crate::…`, `super::…` or `self::…` paths.
fn file_graph() -> BTreeMap<PathBuf, BTreeSet<PathBuf>> {
    let mut graph = BTreeMap::new();
    for f in rust_files(&src()) {
        if f.starts_with(src().join("bin")) {
            continue;
        }
        let text = dependency_text(&std::fs::read_to_string(&f).unwrap());
        let here = module_path(&f);
        let mut deps = BTreeSet::new();
        let bytes = text.as_bytes();
        for start in ["crate::", "super::", "self::"] {
            for (i, _) in text.match_indices(start) {
                if i > 0 && (bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_') {
                    continue;
                }
                let path_text: String = text[i..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                    .collect();
                let segs: Vec<String> = path_text
                    .split("::")
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect();
                let mut base: Vec<String> = match segs[0].as_str() {
                    "crate" => Vec::new(),
                    // `super` is the parent module, for `mod.rs` files (whose path names their folder) and others alike.
                    "super" => here[..here.len().saturating_sub(1)].to_vec(),
                    _ => here.clone(),
                };
                base.extend(segs[1..].iter().cloned());
                if let Some(target) = resolve(&base) {
                    if target != f {
                        deps.insert(target);
                    }
                }
            }
        }
        graph.insert(f, deps);
    }
    graph
}

fn top_module(f: &Path) -> String {
    module_path(f).first().cloned().unwrap_or_else(|| "lib".into())
}

#[test]
fn library_modules_depend_downwards_only() {
    // Rank by layer: a module may use modules of lower rank only (same rank: not each other).
    let rank: BTreeMap<&str, u32> = [
        ("error", 0),
        ("geometry", 1),
        ("perception", 2),
        ("model", 3),
        ("data", 3),
        ("bench", 4),
        ("demo", 4),
        ("ros", 5),
    ]
    .into_iter()
    .collect();
    let graph = file_graph();
    let mut bad = Vec::new();
    for (f, deps) in &graph {
        let m = top_module(f);
        if m == "lib" {
            continue;
        }
        let r = *rank
            .get(m.as_str())
            .unwrap_or_else(|| panic!("{}: module {m} has no layer in this test", f.display()));
        for d in deps {
            let dm = top_module(d);
            if dm == m || dm == "lib" {
                continue;
            }
            let dr = rank[dm.as_str()];
            if dr >= r {
                bad.push(format!("{} ({m}) uses {} ({dm})", f.display(), d.display()));
            }
        }
    }
    assert!(bad.is_empty(), "upward or sideways imports:\n{}", bad.join("\n"));
    // The graph is not empty by accident: known edges are found.
    let dep = |a: &str, b: &str| graph[&src().join(a)].contains(&src().join(b));
    assert!(dep("model/detector.rs", "model/box_head.rs"));
    assert!(dep("demo.rs", "perception/merge.rs"));
    assert!(dep("data/bag/rosbag.rs", "data/bag/msgs.rs"));
    assert!(dep("model/qwen2vl/adapters.rs", "model/qwen2vl/mod.rs"));
}

#[test]
fn no_import_cycles_between_files() {
    let graph = file_graph();
    // Depth-first search with colours; a grey target is a back edge, i.e. a cycle.
    fn visit(
        f: &PathBuf,
        graph: &BTreeMap<PathBuf, BTreeSet<PathBuf>>,
        colour: &mut BTreeMap<PathBuf, u8>,
        stack: &mut Vec<PathBuf>,
    ) -> Option<Vec<PathBuf>> {
        colour.insert(f.clone(), 1);
        stack.push(f.clone());
        for d in graph.get(f).into_iter().flatten() {
            match colour.get(d).copied().unwrap_or(0) {
                1 => {
                    let i = stack.iter().position(|s| s == d).unwrap();
                    let mut cycle = stack[i..].to_vec();
                    cycle.push(d.clone());
                    return Some(cycle);
                }
                0 => {
                    if let Some(c) = visit(d, graph, colour, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        colour.insert(f.clone(), 2);
        None
    }
    let mut colour = BTreeMap::new();
    for f in graph.keys() {
        if colour.get(f).copied().unwrap_or(0) == 0 {
            if let Some(c) = visit(f, &graph, &mut colour, &mut Vec::new()) {
                let names: Vec<String> = c
                    .iter()
                    .map(|p| p.strip_prefix(src()).unwrap().display().to_string())
                    .collect();
                panic!("import cycle: {}", names.join(" -> "));
            }
        }
    }
}

#[test]
fn the_cli_belongs_to_its_binary() {
    assert!(!src().join("cli.rs").exists(), "src/cli.rs is library code");
    for f in rust_files(&src()) {
        if f.starts_with(src().join("bin")) {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        for needle in ["crate::cli", "mod cli", "anyhow::", "clap::"] {
            assert!(
                !text.contains(needle),
                "{} mentions {needle}: the CLI and anyhow stay in src/bin/",
                f.display()
            );
        }
    }
}

#[test]
fn data_keeps_a_short_top_level() {
    let n = std::fs::read_dir(src().join("data")).unwrap().count();
    assert!(n <= 8, "src/data/ has {n} entries at its top level");
}

#[test]
fn the_camera_order_is_written_once() {
    // The order lives in config/nuscenes_rig.yaml (embedded by perception::rig); no source file lists the
    // channels again.
    let holders: Vec<String> = rust_files(&src())
        .into_iter()
        .filter(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .contains("CAM_FRONT_LEFT")
        })
        .map(|f| f.display().to_string())
        .collect();
    assert!(holders.len() <= 1, "camera order spelled out in {holders:?}");
    let yaml = std::fs::read_to_string(src().join("../config/nuscenes_rig.yaml")).unwrap();
    assert_eq!(yaml.matches("channel: CAM_").count(), 6);
}

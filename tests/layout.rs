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

/// Comments and inline test modules removed: a test using its own file is not a dependency.
fn code_of(text: &str) -> String {
    let body = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    body.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Expands a use tree (`a::{b, c::{d, e}}`, whitespace removed) into full paths.
fn expand(tree: &str) -> Vec<String> {
    let Some(open) = tree.find('{') else {
        return vec![tree.trim_end_matches("::").to_string()];
    };
    let prefix = &tree[..open];
    let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
    let mut parts = Vec::new();
    let (mut depth, mut last) = (0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[last..i]);
                last = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[last..]);
    parts
        .into_iter()
        .filter(|p| !p.is_empty())
        .flat_map(|p| {
            let p = p.split(" as ").next().unwrap_or(p);
            if p == "self" {
                vec![prefix.trim_end_matches("::").to_string()]
            } else {
                expand(&format!("{prefix}{p}"))
            }
        })
        .collect()
}

/// `use` statements (re-exports with `reexports`, others without) and inline paths of a file's code, as full
/// `crate::`/`super::`/`self::` paths.
fn paths_in(code: &str, reexports: bool) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code.to_string();
    // `use` statements, possibly over several lines.
    for kw in ["pub(crate) use ", "pub use ", "use "] {
        let mut kept = String::new();
        let mut s = rest.as_str();
        while let Some(i) = s.find(kw) {
            let boundary = i == 0
                || !s.as_bytes()[i - 1].is_ascii_alphanumeric() && s.as_bytes()[i - 1] != b'(';
            let end = s[i..].find(';').map(|e| i + e).unwrap_or(s.len());
            kept.push_str(&s[..i]);
            if boundary {
                let is_reexport = kw != "use ";
                let tree: String = s[i + kw.len()..end]
                    .chars()
                    .filter(|c| !c.is_whitespace())
                    .collect();
                if is_reexport == reexports {
                    out.extend(expand(&tree));
                }
            } else {
                kept.push_str(&s[i..end]);
            }
            s = &s[end..];
        }
        kept.push_str(s);
        rest = kept;
    }
    if !reexports {
        let bytes = rest.as_bytes();
        for start in ["crate::", "super::", "self::"] {
            for (i, _) in rest.match_indices(start) {
                if i > 0
                    && (bytes[i - 1].is_ascii_alphanumeric()
                        || bytes[i - 1] == b'_'
                        || bytes[i - 1] == b':')
                {
                    continue;
                }
                out.push(
                    rest[i..]
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                        .collect::<String>()
                        .trim_end_matches(':')
                        .to_string(),
                );
            }
        }
    }
    out.retain(|p| p.starts_with("crate::") || p.starts_with("super::") || p.starts_with("self::"));
    out
}

/// A `crate::`/`super::`/`self::` path seen from the module `here`, as a module path from the crate root.
fn absolute(path: &str, here: &[String]) -> Vec<String> {
    let segs: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
    let mut base: Vec<String> = match segs[0] {
        "crate" => Vec::new(),
        // `super` is the parent module, for `mod.rs` files (whose path names their folder) and others alike.
        "super" => here[..here.len().saturating_sub(1)].to_vec(),
        _ => here.to_vec(),
    };
    base.extend(segs[1..].iter().map(|s| s.to_string()));
    base
}

/// The file behind a path, following a module's re-exports (`pub use sub::Item`) to the file that defines the
/// item, so that importing through a `mod.rs` counts as importing the file that holds the code.
fn resolve_item(
    path: &[String],
    reexports: &BTreeMap<PathBuf, BTreeMap<String, Vec<String>>>,
    depth: usize,
) -> Option<PathBuf> {
    let file = resolve(path)?;
    if depth < 8 {
        let n = module_path(&file).len();
        if let (Some(item), Some(map)) = (path.get(n), reexports.get(&file)) {
            if let Some(target) = map.get(item) {
                let mut t = target.clone();
                t.extend(path[n + 1..].iter().cloned());
                return resolve_item(&t, reexports, depth + 1).or(Some(file));
            }
        }
    }
    Some(file)
}

/// File → files it refers to through `crate::…`, `super::…` or `self::…` paths (re-exports followed, not counted
/// as dependencies of the re-exporting module).
fn file_graph() -> BTreeMap<PathBuf, BTreeSet<PathBuf>> {
    let files: Vec<PathBuf> = rust_files(&src())
        .into_iter()
        .filter(|f| !f.starts_with(src().join("bin")))
        .collect();
    let codes: BTreeMap<PathBuf, String> = files
        .iter()
        .map(|f| (f.clone(), code_of(&std::fs::read_to_string(f).unwrap())))
        .collect();
    let mut reexports: BTreeMap<PathBuf, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    for (f, code) in &codes {
        let here = module_path(f);
        for p in paths_in(code, true) {
            let abs = absolute(&p, &here);
            if let Some(name) = abs.last() {
                reexports
                    .entry(f.clone())
                    .or_default()
                    .insert(name.clone(), abs.clone());
            }
        }
        // `pub use sub::Item` without crate/super/self names a child module.
        for line in code.lines() {
            let t = line.trim_start();
            if let Some(tree) = t
                .strip_prefix("pub use ")
                .or_else(|| t.strip_prefix("pub(crate) use "))
            {
                let tree: String = tree
                    .chars()
                    .filter(|c| !c.is_whitespace() && *c != ';')
                    .collect();
                if tree.starts_with("crate::")
                    || tree.starts_with("super::")
                    || tree.starts_with("self::")
                {
                    continue;
                }
                for p in expand(&tree) {
                    let mut abs = here.clone();
                    abs.extend(p.split("::").map(String::from));
                    if let Some(name) = abs.last() {
                        reexports
                            .entry(f.clone())
                            .or_default()
                            .insert(name.clone(), abs.clone());
                    }
                }
            }
        }
    }
    let mut graph = BTreeMap::new();
    for (f, code) in &codes {
        let here = module_path(f);
        let deps: BTreeSet<PathBuf> = paths_in(code, false)
            .iter()
            .filter_map(|p| resolve_item(&absolute(p, &here), &reexports, 0))
            .filter(|t| t != f)
            .collect();
        graph.insert(f.clone(), deps);
    }
    graph
}

fn top_module(f: &Path) -> String {
    module_path(f)
        .first()
        .cloned()
        .unwrap_or_else(|| "lib".into())
}

#[test]
fn library_modules_depend_downwards_only() {
    // Rank by layer: a module may use modules of lower rank only (same rank: not each other).
    let rank: BTreeMap<&str, u32> = [
        ("error", 0),
        ("proc", 0),
        ("geometry", 1),
        ("perception", 2),
        ("model", 3),
        ("data", 3),
        ("train", 4),
        ("runtime", 4),
        ("eval", 5),
        ("bench", 6),
        ("demo", 6),
        ("ros", 7),
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
            let dr = *rank.get(dm.as_str()).unwrap_or_else(|| {
                panic!(
                    "{} uses module {dm}, which has no layer in this test",
                    f.display()
                )
            });
            if dr >= r {
                bad.push(format!("{} ({m}) uses {} ({dm})", f.display(), d.display()));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "upward or sideways imports:\n{}",
        bad.join("\n")
    );
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
    assert!(
        holders.len() <= 1,
        "camera order spelled out in {holders:?}"
    );
    let yaml = std::fs::read_to_string(src().join("../config/nuscenes_rig.yaml")).unwrap();
    assert_eq!(yaml.matches("channel: CAM_").count(), 6);
}

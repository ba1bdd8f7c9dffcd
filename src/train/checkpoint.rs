//! Checkpoints that survive a crash: each is a folder `step-NNNNNNNN/` written as `step-NNNNNNNN.partial/`, every
//! file fsynced, then renamed into place (and the parent fsynced), so a kill at any moment leaves either the whole
//! checkpoint or none. `state.json` records each file's length and CRC-32; a checkpoint whose files do not match
//! is refused with a message naming the file, and resume falls back to the previous complete one.
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Where the run stood when the checkpoint was taken.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimizer steps done.
    pub step: usize,
    /// Epoch in progress.
    pub epoch: usize,
    /// Micro-batches of that epoch done.
    pub position: usize,
    /// The recipe (YAML text), so a resumed run can check it trains the same thing.
    pub config: String,
    /// File name → (bytes, CRC-32), for every file of the checkpoint but this one.
    pub files: BTreeMap<String, (u64, u32)>,
}

fn fsync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(dir, e))
}

/// Writes `path` and fsyncs it.
pub fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    f.write_all(bytes).map_err(|e| Error::io(path, e))?;
    f.sync_all().map_err(|e| Error::io(path, e))
}

/// The folder name of the checkpoint after `step` steps.
pub fn checkpoint_name(step: usize) -> String {
    format!("step-{step:08}")
}

/// Makes a checkpoint under `root`: `fill` writes the files into the partial folder; then `state.json` with the
/// files' checksums, fsyncs and the rename. Returns the final folder.
pub fn write_checkpoint(
    root: &Path,
    mut state: TrainState,
    fill: impl FnOnce(&Path) -> Result<()>,
) -> Result<PathBuf> {
    std::fs::create_dir_all(root).map_err(|e| Error::io(root, e))?;
    let name = checkpoint_name(state.step);
    let partial = root.join(format!("{name}.partial"));
    let done = root.join(&name);
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(&partial).map_err(|e| Error::io(&partial, e))?;
    fill(&partial)?;
    state.files = checksums(&partial)?;
    let json = serde_json::to_vec_pretty(&state)
        .map_err(|e| Error::invalid("checkpoint state", e.to_string()))?;
    write_synced(&partial.join("state.json"), &json)?;
    for rel in state.files.keys() {
        let p = partial.join(rel);
        std::fs::File::open(&p)
            .and_then(|f| f.sync_all())
            .map_err(|e| Error::io(&p, e))?;
    }
    for d in walk_dirs(&partial)? {
        fsync_dir(&d)?;
    }
    if done.exists() {
        std::fs::remove_dir_all(&done).map_err(|e| Error::io(&done, e))?;
    }
    std::fs::rename(&partial, &done).map_err(|e| Error::io(&done, e))?;
    fsync_dir(root)?;
    Ok(done)
}

fn walk_dirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = vec![dir.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        let d = out[i].clone();
        for e in std::fs::read_dir(&d).map_err(|e| Error::io(&d, e))? {
            let p = e.map_err(|e| Error::io(&d, e))?.path();
            if p.is_dir() {
                out.push(p);
            }
        }
        i += 1;
    }
    Ok(out)
}

/// Length and CRC-32 of every file under `dir` except `state.json`, by relative path.
fn checksums(dir: &Path) -> Result<BTreeMap<String, (u64, u32)>> {
    let mut out = BTreeMap::new();
    for d in walk_dirs(dir)? {
        for e in std::fs::read_dir(&d).map_err(|e| Error::io(&d, e))? {
            let p = e.map_err(|e| Error::io(&d, e))?.path();
            if p.is_file() {
                let rel = p
                    .strip_prefix(dir)
                    .unwrap_or(&p)
                    .to_string_lossy()
                    .into_owned();
                if rel == "state.json" {
                    continue;
                }
                let bytes = std::fs::read(&p).map_err(|e| Error::io(&p, e))?;
                out.insert(rel, (bytes.len() as u64, crc32fast::hash(&bytes)));
            }
        }
    }
    Ok(out)
}

/// Reads a checkpoint's state after checking every file it lists; the error names the damaged file.
pub fn verify_checkpoint(dir: &Path) -> Result<TrainState> {
    let sp = dir.join("state.json");
    let text = std::fs::read(&sp).map_err(|e| Error::io(&sp, e))?;
    let state: TrainState = serde_json::from_slice(&text)
        .map_err(|e| Error::format(&sp, None, format!("not a checkpoint state: {e}")))?;
    let found = checksums(dir)?;
    for (rel, want) in &state.files {
        match found.get(rel) {
            None => return Err(Error::format(dir.join(rel), None, "missing from the checkpoint")),
            Some(got) if got != want => {
                return Err(Error::format(
                    dir.join(rel),
                    None,
                    format!(
                        "damaged: {} bytes with CRC-32 {:08x}, the checkpoint recorded {} bytes with {:08x}",
                        got.0, got.1, want.0, want.1
                    ),
                ))
            }
            _ => {}
        }
    }
    Ok(state)
}

/// The newest complete, undamaged checkpoint under `root` (damaged ones are reported and skipped).
pub fn latest_checkpoint(root: &Path) -> Result<Option<(PathBuf, TrainState)>> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Ok(None);
    };
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_dir()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("step-") && !n.ends_with(".partial"))
        })
        .collect();
    dirs.sort();
    for d in dirs.into_iter().rev() {
        match verify_checkpoint(&d) {
            Ok(s) => return Ok(Some((d, s))),
            Err(e) => tracing::warn!("skipping checkpoint {}: {e}", d.display()),
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(step: usize) -> TrainState {
        TrainState {
            step,
            epoch: 0,
            position: step,
            config: String::new(),
            files: BTreeMap::new(),
        }
    }

    #[test]
    fn damaged_checkpoints_are_named_and_skipped() {
        let root = std::env::temp_dir().join(format!("vlm3d-ckpt-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for step in [10, 20] {
            write_checkpoint(&root, state(step), |d| {
                std::fs::create_dir_all(d.join("adapter")).unwrap();
                write_synced(&d.join("head.safetensors"), &[step as u8; 64])?;
                write_synced(&d.join("adapter/a.bin"), b"adapter")
            })
            .unwrap();
        }
        assert_eq!(latest_checkpoint(&root).unwrap().unwrap().1.step, 20);
        // Truncate a file of the newest: it is refused by name, and the previous one is used.
        let head = root.join("step-00000020/head.safetensors");
        std::fs::write(&head, [20u8; 10]).unwrap();
        let e = verify_checkpoint(&root.join("step-00000020"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("head.safetensors") && e.contains("damaged"),
            "{e}"
        );
        assert_eq!(latest_checkpoint(&root).unwrap().unwrap().1.step, 10);
        // A flipped byte of the same length, and a half-written folder, likewise.
        std::fs::write(root.join("step-00000010/adapter/a.bin"), b"adaptex").unwrap();
        assert!(latest_checkpoint(&root).unwrap().is_none());
        std::fs::create_dir_all(root.join("step-00000030.partial")).unwrap();
        assert!(latest_checkpoint(&root).unwrap().is_none());
        let _ = std::fs::remove_dir_all(&root);
    }
}

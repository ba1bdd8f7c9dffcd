//! `vlm3d bench-convert`: conversion throughput and peak memory of `vlm3d convert-nuscenes` against the
//! `rosbags` Python library writing the same messages (`scripts/bench_rosbags_write.py`), on synthetic
//! nuScenes-format sets of several sizes (to show peak memory independent of the number of samples).
//!
//! Both converters run as child processes, each reporting its own wall time (tables loaded, bag finished)
//! and peak resident memory (VmHWM / ru_maxrss). Before every run the source files are read once so that
//! both start from a warm page cache; each runs `--repeat` times and the fastest run is reported.
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::data::synth::{generate, SynthConfig};
use crate::{Error, Result};

/// What `vlm3d bench-convert` runs.
#[derive(Debug, Clone)]
pub struct ConvertBenchOptions {
    /// Sample counts to benchmark; each gets its own synthetic set.
    pub samples: Vec<usize>,
    /// Working folder for the synthetic sets (and the bags, unless `bag_dir`).
    pub work: PathBuf,
    /// Where the bags are written (e.g. a tmpfs, to time the converters rather than the disk); default `work`.
    pub bag_dir: Option<PathBuf>,
    /// Runs per converter and size; the fastest is reported (peak memory: the largest).
    pub repeat: usize,
    /// Image width of the synthetic sets.
    pub width: u32,
    /// Image height of the synthetic sets.
    pub height: u32,
    /// Python with `rosbags` installed, for the side-by-side run (skipped when absent).
    pub python: PathBuf,
    /// The rosbags writer script.
    pub script: PathBuf,
}

/// Key frames per synthetic scene in the benchmark sets.
const SAMPLES_PER_SCENE: usize = 20;

struct Row {
    samples: usize,
    tool: &'static str,
    seconds: f64,
    cpu_seconds: f64,
    bag_bytes: u64,
    peak_kb: u64,
}

/// Reads every file under `dir` (warms the page cache).
fn warm(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                warm(&p);
            } else {
                let _ = std::fs::read(&p);
            }
        }
    }
}

/// Runs `make()` `repeat` times after warming `set`; the fastest run's report, with the largest peak memory.
/// The bag a run writes (`bag`) is removed before each run starts (outside the timed region, for every writer
/// alike) and after the last.
fn best_of(
    repeat: usize,
    set: &Path,
    bag: &Path,
    report: &Path,
    make: &dyn Fn() -> Command,
) -> Result<Value> {
    let mut best: Option<Value> = None;
    let mut peak = 0;
    for _ in 0..repeat.max(1) {
        warm(set);
        let _ = std::fs::remove_dir_all(bag);
        let v = run_json(make(), report)?;
        peak = peak.max(v["peak_rss_kb"].as_u64().unwrap_or(0));
        let faster = best
            .as_ref()
            .is_none_or(|b| v["seconds"].as_f64() < b["seconds"].as_f64());
        if faster {
            best = Some(v);
        }
    }
    let _ = std::fs::remove_dir_all(bag);
    let mut v = best.expect("at least one run");
    v["peak_rss_kb"] = peak.into();
    Ok(v)
}

fn run_json(mut cmd: Command, report: &Path) -> Result<Value> {
    let _ = std::fs::remove_file(report);
    let status = cmd
        .status()
        .map_err(|e| Error::invalid("benchmark", format!("cannot run {cmd:?}: {e}")))?;
    if !status.success() {
        return Err(Error::invalid(
            "benchmark",
            format!("{cmd:?} failed: {status}"),
        ));
    }
    let text = std::fs::read_to_string(report).map_err(|e| Error::io(report, e))?;
    serde_json::from_str(&text).map_err(|e| Error::format(report, None, e.to_string()))
}

fn row(samples: usize, tool: &'static str, v: &Value) -> Row {
    Row {
        samples,
        tool,
        seconds: v["seconds"].as_f64().unwrap_or(f64::NAN),
        cpu_seconds: v["cpu_seconds"].as_f64().unwrap_or(f64::NAN),
        bag_bytes: v["bag_bytes"].as_u64().unwrap_or(0),
        peak_kb: v["peak_rss_kb"].as_u64().unwrap_or(0),
    }
}

/// Runs the benchmark described by `args` and prints a markdown table.
pub fn run(args: &ConvertBenchOptions) -> Result<()> {
    std::fs::create_dir_all(&args.work).map_err(|e| Error::io(&args.work, e))?;
    let exe = std::env::current_exe().map_err(|e| Error::io("current_exe", e))?;
    let have_python = args.python.exists() && args.script.exists();
    if !have_python {
        eprintln!(
            "note: {} or {} missing: the rosbags column is skipped (scripts/bench_convert.sh sets them up)",
            args.python.display(),
            args.script.display()
        );
    }
    let mut rows = Vec::new();
    for &n in &args.samples {
        let scenes = n.div_ceil(SAMPLES_PER_SCENE).max(1);
        let set: PathBuf = args
            .work
            .join(format!("synth-{n}-{}x{}", args.width, args.height));
        let version = "v1.0-mini";
        if !set.join(version).join("scene.json").exists() {
            eprintln!(
                "generating {} ({scenes} scenes × {SAMPLES_PER_SCENE} samples)…",
                set.display()
            );
            let cfg = SynthConfig {
                scenes,
                seed: 7,
                width: args.width,
                height: args.height,
                samples_per_scene: SAMPLES_PER_SCENE,
                version: version.into(),
                progress: true,
                ..Default::default()
            };
            let _ = std::fs::remove_dir_all(&set);
            generate(&set, &cfg)?;
        }
        let samples = scenes * SAMPLES_PER_SCENE;

        let bags = args.bag_dir.clone().unwrap_or_else(|| args.work.clone());
        std::fs::create_dir_all(&bags).map_err(|e| Error::io(&bags, e))?;
        let bag = bags.join(format!("bag-vlm3d-{n}"));
        let report = args.work.join(format!("vlm3d-{n}.json"));
        let make = || {
            let mut cmd = Command::new(&exe);
            cmd.arg("convert-nuscenes")
                .arg("--dataroot")
                .arg(&set)
                .arg("--version")
                .arg(version)
                .arg("--out")
                .arg(&bag)
                .arg("--no-progress")
                .arg("--report-json")
                .arg(&report);
            cmd
        };
        let v = best_of(args.repeat, &set, &bag, &report, &make)?;
        rows.push(row(samples, "vlm3d (Rust)", &v));

        if have_python {
            let bag = bags.join(format!("bag-rosbags-{n}"));
            let report = args.work.join(format!("rosbags-{n}.json"));
            let make = || {
                let mut cmd = Command::new(&args.python);
                cmd.arg(&args.script)
                    .arg("--dataroot")
                    .arg(&set)
                    .arg("--version")
                    .arg(version)
                    .arg("--out")
                    .arg(&bag)
                    .arg("--report-json")
                    .arg(&report)
                    .stdout(std::process::Stdio::null());
                cmd
            };
            let v = best_of(args.repeat, &set, &bag, &report, &make)?;
            rows.push(row(samples, "rosbags (Python)", &v));
        }
    }
    println!(
        "\n| samples | writer | wall s | samples/s | MB/s (bag) | CPU s | bag MB | peak RSS MB |\n|---:|---|---:|---:|---:|---:|---:|---:|"
    );
    for r in &rows {
        println!(
            "| {} | {} | {:.2} | {:.1} | {:.1} | {:.2} | {:.1} | {:.1} |",
            r.samples,
            r.tool,
            r.seconds,
            r.samples as f64 / r.seconds,
            r.bag_bytes as f64 / 1e6 / r.seconds,
            r.cpu_seconds,
            r.bag_bytes as f64 / 1e6,
            r.peak_kb as f64 / 1024.0
        );
    }
    for pair in rows.chunks(2) {
        if let [a, b] = pair {
            println!(
                "\n{} samples: vlm3d is {:.1}× rosbags' throughput (wall), {:.1}× less CPU time",
                a.samples,
                b.seconds / a.seconds,
                b.cpu_seconds / a.cpu_seconds
            );
        }
    }
    Ok(())
}

//! Helpers shared by the integration tests: the committed tiny checkpoint and its images, scratch folders,
//! tensor comparisons, running commands, and the Python peers' virtual environments.
#![allow(dead_code)]
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::{Device, Tensor};

/// The committed tiny Qwen2-VL checkpoint.
pub fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qwen2vl_tiny")
}

/// A fresh scratch folder under the system temp dir.
pub fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vlm3d-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Copies the fixture checkpoint files (not the reference dumps) into `dst`.
pub fn copy_checkpoint(dst: &Path) {
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "preprocessor_config.json",
    ] {
        std::fs::copy(fixture().join(f), dst.join(f)).unwrap();
    }
}

/// Largest absolute value of a tensor.
pub fn max_abs(a: &Tensor) -> f32 {
    a.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// max |a - b| over all elements.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    max_abs(&(a - b).unwrap())
}

/// Largest difference between two sets of head inputs: the query states and every view's image-token states
/// (and their centres, which must be equal).
#[allow(dead_code)]
pub fn max_abs_diff_inputs(
    a: &vlm3d::model::box_head::HeadInputs,
    b: &vlm3d::model::box_head::HeadInputs,
) -> f32 {
    assert_eq!(a.images.len(), b.images.len(), "view counts differ");
    let mut d = max_abs_diff(&a.queries, &b.queries);
    for (x, y) in a.images.iter().zip(&b.images) {
        assert_eq!(
            max_abs_diff(&x.centres, &y.centres),
            0.0,
            "token centres differ"
        );
        assert_eq!(
            max_abs_diff(&x.geometry.rays, &y.geometry.rays),
            0.0,
            "token rays differ"
        );
        d = d.max(max_abs_diff(&x.states, &y.states));
    }
    d
}

/// Random head inputs: `views` × `k` query states and a `rows` × `cols` token raster per view, `hidden` wide.
#[allow(dead_code)]
pub fn random_head_inputs(
    views: usize,
    k: usize,
    hidden: usize,
    rows: usize,
    cols: usize,
) -> vlm3d::model::box_head::HeadInputs {
    use vlm3d::model::box_head::{HeadInputs, ImageTokens, ViewGeometry};
    let dev = Device::Cpu;
    HeadInputs {
        queries: Tensor::randn(0f32, 1.0, (views, k, hidden), &dev).unwrap(),
        images: (0..views)
            .map(|_| ImageTokens {
                states: Tensor::randn(0f32, 1.0, (rows * cols, hidden), &dev).unwrap(),
                centres: ImageTokens::raster_centres(rows, cols, &dev).unwrap(),
                geometry: ViewGeometry::new(
                    &cameras(1)[0],
                    rows,
                    cols,
                    vlm3d::geometry::Frame::Camera,
                    &dev,
                )
                .unwrap(),
                grid: (rows, cols),
            })
            .collect(),
    }
}

/// A fixture image by name.
pub fn image(name: &str) -> image::RgbImage {
    image::open(fixture().join("images").join(format!("{name}.png")))
        .unwrap()
        .to_rgb8()
}

/// `n` nominal cameras (1600 × 900, fx 1264) at the LiDAR origin: the detector's per-view geometry for
/// fixture images, which have no calibration of their own.
#[allow(dead_code)]
pub fn cameras(n: usize) -> Vec<vlm3d::geometry::ViewCamera> {
    vec![vlm3d::geometry::ViewCamera::nominal(1600, 900).unwrap(); n]
}

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs a command; on failure the error holds the command, its status and the last 15 lines of its stderr.
pub fn run(cmd: &mut Command) -> Result<Output, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = err.lines().collect();
        let tail = lines[lines.len().saturating_sub(15)..].join("\n");
        return Err(format!("{cmd:?} failed ({}):\n{tail}", out.status));
    }
    Ok(out)
}

/// A Python virtual environment for a peer test: what to install and how to tell it works.
pub struct PeerVenv<'a> {
    /// Folder name under `.venv-peers/` (or `$VLM3D_PEER_VENVS`).
    pub name: &'a str,
    /// `pip install` arguments.
    pub packages: &'a [&'a str],
    /// Python code that must run for the venv to count as ready (e.g. an import).
    pub check: &'a str,
    /// When the full install fails: install `packages` with `--no-deps`, then these (a package whose declared
    /// pins have no wheel for this Python, installed with the dependencies it really needs).
    pub no_deps_fallback: Option<&'a [&'a str]>,
}

/// Where the peers' venvs live: `$VLM3D_PEER_VENVS`, else `.venv-peers/` in the repository.
pub fn peer_venvs_dir() -> PathBuf {
    std::env::var_os("VLM3D_PEER_VENVS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".venv-peers"))
}

impl PeerVenv<'_> {
    /// The venv's folder.
    pub fn dir(&self) -> PathBuf {
        peer_venvs_dir().join(self.name)
    }

    /// Creates the venv once (under a file lock, so parallel tests and runs share it) and returns its Python.
    /// A venv whose check fails is rebuilt: a marker file alone is not trusted.
    pub fn python(&self) -> Result<PathBuf, String> {
        let dir = self.dir();
        let parent = dir.parent().ok_or("venv path has no parent")?;
        std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        let lock_path = dir.with_extension("lock");
        let lock = File::create(&lock_path).map_err(|e| format!("{}: {e}", lock_path.display()))?;
        lock.lock()
            .map_err(|e| format!("cannot lock {}: {e}", lock_path.display()))?;
        let python = dir.join("bin/python");
        let works = || run(Command::new(&python).args(["-c", self.check])).is_ok();
        if python.is_file() && works() {
            return Ok(python);
        }
        let _ = std::fs::remove_dir_all(&dir);
        let base = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
        run(Command::new(&base).args(["-m", "venv"]).arg(&dir))?;
        let pip = |args: &[&str]| {
            run(Command::new(&python)
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                ])
                .args(args))
        };
        if let Err(full) = pip(self.packages) {
            let Some(deps) = self.no_deps_fallback else {
                return Err(full);
            };
            eprintln!(
                "full install of {:?} failed, retrying with --no-deps:\n{full}",
                self.packages
            );
            let mut args = vec!["--no-deps"];
            args.extend(self.packages);
            pip(&args)?;
            pip(deps)?;
        }
        run(Command::new(&python).args(["-c", self.check]))?;
        Ok(python)
    }

    /// [`PeerVenv::python`], or `None` with a printed SKIP line when it cannot be set up and
    /// `VLM3D_SKIP_PEERS` is set (machines without PyPI); without that variable a failure panics with the reason.
    pub fn python_or_skip(&self, test: &str) -> Option<PathBuf> {
        match self.python() {
            Ok(p) => Some(p),
            Err(why) if std::env::var_os("VLM3D_SKIP_PEERS").is_some() => {
                eprintln!("SKIP {test} (VLM3D_SKIP_PEERS is set): cannot set up the {} venv: {why}", self.name);
                None
            }
            Err(why) => panic!(
                "cannot set up the {} venv at {}: {why}\n(set VLM3D_SKIP_PEERS=1 to skip peer tests where PyPI is \
                 unreachable)",
                self.name,
                self.dir().display()
            ),
        }
    }
}

/// A small annotated synthetic bag (2 scenes × 2 samples, 224×126 views, no LiDAR) in `dir/bag`.
pub fn small_bag(dir: &Path) -> PathBuf {
    synth_bag(
        dir,
        vlm3d::data::synth::SynthConfig {
            scenes: 2,
            samples_per_scene: 2,
            seed: 11,
            width: 224,
            height: 126,
            ..Default::default()
        },
    )
}

/// The synthetic nuScenes set of `cfg` in `dir/nuscenes`, converted without LiDAR to the bag `dir/bag`.
pub fn synth_bag(dir: &Path, cfg: vlm3d::data::synth::SynthConfig) -> PathBuf {
    use vlm3d::data::convert::{convert_nuscenes, ConvertOptions};
    let data = dir.join("nuscenes");
    let cfg = vlm3d::data::synth::SynthConfig {
        progress: false,
        ..cfg
    };
    vlm3d::data::synth::generate(&data, &cfg).unwrap();
    let bag = dir.join("bag");
    let mut o = ConvertOptions::new(&bag);
    o.lidar = false;
    o.progress = false;
    convert_nuscenes(&data, "v1.0-mini", &o).unwrap();
    bag
}

/// The shipped recipe on the tiny fixture and `bag`, with short stages and fast rates (tests).
pub fn tiny_recipe(bag: &Path, stage1: usize, stage2: usize) -> vlm3d::train::TrainConfig {
    let text = std::fs::read_to_string(repo().join("config/train.yaml")).unwrap();
    let mut c: vlm3d::train::TrainConfig = serde_yaml::from_str(&text).unwrap();
    c.model = fixture();
    c.train_bags = vec![bag.to_path_buf()];
    c.stage1.epochs = None;
    c.stage1.steps = Some(stage1);
    c.stage1.lr = 2e-3;
    c.stage2.epochs = None;
    c.stage2.steps = Some(stage2);
    c.stage2.lr = 5e-4;
    c.warmup_steps = 2;
    c.batch_size = 4;
    c.max_negatives = Some(1);
    c.checkpoint_every = 4;
    c.max_pixels = 224 * 126;
    c
}

/// The nuscenes-devkit peer's venv. Its declared pins have no wheels for every Python, hence the `--no-deps`
/// fallback with the packages it imports.
pub const DEVKIT: PeerVenv = PeerVenv {
    name: "devkit",
    packages: &["nuscenes-devkit"],
    check: "from nuscenes.nuscenes import NuScenes",
    no_deps_fallback: Some(&[
        "numpy",
        "pyquaternion",
        "Pillow",
        "matplotlib",
        // matplotlib's own dependencies (a --no-deps install of it leaves them out; the evaluation imports it).
        "packaging",
        "python-dateutil",
        "pyparsing",
        "cycler",
        "kiwisolver",
        "fonttools",
        "contourpy",
        "shapely",
        "scipy",
        "tqdm",
        "cachetools",
        "scikit-learn",
        "opencv-python-headless",
        "descartes",
        "fire",
        "pycocotools",
        "parameterized",
    ]),
};

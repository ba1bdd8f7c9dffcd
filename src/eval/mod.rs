//! Evaluation on a rosbag2 bag with annotations: every sample's six views through the same detect → camera to
//! LiDAR → BEV NMS path the node uses (or a per-category mean-box baseline through the same merge), for the
//! categories present in the sample plus absent ones, scored by [`metrics`]; `metrics.json` and `report.md`.
pub mod metrics;
pub mod nuscenes;
pub mod openset;
pub mod plots;
pub mod recorded;

pub use recorded::{evaluate_recording, RecordedRun};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use image::RgbImage;
use serde::Serialize;

use crate::data::dataset::{Dataset, DatasetConfig, Example};
use crate::geometry::{Frame, OrientedBox3D};
use crate::model::detector::Detector;
use crate::perception::{merge_views, Detection, ViewDetections, ViewInput};
use crate::runtime::{detect_prompt, StageTimes};
use crate::{Error, Result};
use metrics::{evaluate, Metrics, Query};

/// What produces the boxes.
pub enum Predictor {
    /// The detector (its configured frame and threshold).
    Model(Box<Detector>),
    /// Each category's mean camera-frame box, predicted once in every view (score 0.5).
    MeanBox(BTreeMap<String, [f64; 7]>),
}

/// Settings of [`evaluate_bag`].
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// The bag to score.
    pub bag: PathBuf,
    /// BEV NMS threshold of the merge.
    pub nms_iou: f64,
    /// Prompts for absent categories per sample.
    pub absent_prompts: usize,
    /// Query every sample with exactly these categories (prompt names such as `car`, as
    /// [`crate::data::dataset::prompt_name`] gives them), present or not, with the paper's prompt text, instead of
    /// the categories present plus `absent_prompts` absent ones. The way to score what a perception node with
    /// these standing prompts publishes ([`evaluate_recording`]).
    pub categories: Option<Vec<String>>,
}

impl EvalOptions {
    /// The defaults of `vlm3d eval` (NMS 0.3, two absent categories per sample) on `bag`.
    pub fn new(bag: impl Into<PathBuf>) -> Self {
        Self {
            bag: bag.into(),
            nms_iou: 0.3,
            absent_prompts: 2,
            categories: None,
        }
    }
}

/// One sample's views.
struct SampleViews {
    token: String,
    views: Vec<Example>,
}

fn samples(bag: &Path) -> Result<Vec<SampleViews>> {
    let cfg = DatasetConfig {
        target_frame: Frame::Lidar,
        keep_empty: true,
        ..Default::default()
    };
    let out = Dataset::new([bag.to_path_buf()], cfg)
        .by_sample()
        .map(|views| {
            views.map(|views| SampleViews {
                token: views[0].sample_token.clone(),
                views,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    if out.is_empty() {
        return Err(Error::invalid(
            "evaluation bag",
            format!("{} holds no camera examples", bag.display()),
        ));
    }
    Ok(out)
}

/// Per-category mean camera-frame box [x, y, z, l, w, h, yaw] over every view's visible boxes of `bag` (yaw: the
/// circular mean), the baseline's prediction.
pub fn mean_boxes(bag: &Path) -> Result<BTreeMap<String, [f64; 7]>> {
    let mut acc: BTreeMap<String, ([f64; 8], usize)> = BTreeMap::new();
    for s in samples(bag)? {
        for v in &s.views {
            let to_cam = v.cam_to_lidar.inverse();
            for b in &v.boxes {
                let p = b.oriented.transform(&to_cam).camera_params();
                let e = acc
                    .entry(crate::data::dataset::prompt_name(&b.category))
                    .or_insert(([0.0; 8], 0));
                for (sum, v) in e.0.iter_mut().zip(&p[..6]) {
                    *sum += v;
                }
                e.0[6] += p[6].sin();
                e.0[7] += p[6].cos();
                e.1 += 1;
            }
        }
    }
    Ok(acc
        .into_iter()
        .map(|(k, (s, n))| {
            let n = n as f64;
            (
                k,
                [
                    s[0] / n,
                    s[1] / n,
                    s[2] / n,
                    s[3] / n,
                    s[4] / n,
                    s[5] / n,
                    s[6].atan2(s[7]),
                ],
            )
        })
        .collect())
}

/// nuScenes' detection class of a nuScenes category (the devkit's class map), `None` for categories the
/// detection benchmark does not score.
pub fn detection_name(category: &str) -> Option<&'static str> {
    Some(match category {
        "movable_object.barrier" => "barrier",
        "vehicle.bicycle" => "bicycle",
        "vehicle.bus.bendy" | "vehicle.bus.rigid" => "bus",
        "vehicle.car" => "car",
        "vehicle.construction" => "construction_vehicle",
        "vehicle.motorcycle" => "motorcycle",
        "human.pedestrian.adult"
        | "human.pedestrian.child"
        | "human.pedestrian.construction_worker"
        | "human.pedestrian.police_officer" => "pedestrian",
        "movable_object.trafficcone" => "traffic_cone",
        "vehicle.trailer" => "trailer",
        "vehicle.truck" => "truck",
        _ => return None,
    })
}

/// One evaluation: the metrics, the per-(sample, category) queries they came from, each sample's LiDAR → global
/// pose, and the nuScenes class of each prompted category.
#[derive(Debug, Clone)]
pub struct EvalRun {
    /// The scores.
    pub metrics: Metrics,
    /// What was scored.
    pub queries: Vec<Query>,
    /// Every sample of the bag in order, with its LiDAR → global pose.
    pub samples: Vec<(String, nalgebra::Isometry3<f64>)>,
    /// Prompt name → nuScenes detection class.
    pub classes: BTreeMap<String, Option<&'static str>>,
}

/// Prompt name → nuScenes detection class, over every category with ground truth in some view of `all`.
fn classes_of(all: &[SampleViews]) -> BTreeMap<String, Option<&'static str>> {
    let mut classes = BTreeMap::new();
    for s in all {
        for v in &s.views {
            for p in &v.prompts {
                if let Some(&b) = p.boxes.first() {
                    classes.insert(p.category.clone(), detection_name(&v.boxes[b].category));
                }
            }
        }
    }
    classes
}

/// One sample's ground truth per category and the categories it is queried with.
struct SampleTruth {
    /// Prompt text of each category a view's prompts name.
    texts: BTreeMap<String, String>,
    /// Category → instance → box (LiDAR frame): every instance any view sees, once.
    truth: BTreeMap<String, BTreeMap<String, OrientedBox3D>>,
    /// Categories the views prompt as absent (and no view sees), sorted, without repeats.
    absent: Vec<String>,
}

impl SampleTruth {
    fn new(s: &SampleViews) -> Self {
        let mut texts: BTreeMap<String, String> = BTreeMap::new();
        let mut truth: BTreeMap<String, BTreeMap<String, OrientedBox3D>> = BTreeMap::new();
        let mut absent: Vec<String> = Vec::new();
        for v in &s.views {
            for p in &v.prompts {
                texts
                    .entry(p.category.clone())
                    .or_insert_with(|| p.text.clone());
                if p.boxes.is_empty() {
                    absent.push(p.category.clone());
                }
                for &b in &p.boxes {
                    let lb = &v.boxes[b];
                    truth
                        .entry(p.category.clone())
                        .or_default()
                        .insert(lb.instance_id.clone(), lb.oriented);
                }
            }
        }
        absent.retain(|c| !truth.contains_key(c));
        absent.sort();
        absent.dedup();
        Self {
            texts,
            truth,
            absent,
        }
    }

    /// The (category, prompt text) pairs the sample is queried with: `opts.categories` with the paper's prompt
    /// when set, else the categories present and then the first `opts.absent_prompts` absent ones.
    fn queried(&self, opts: &EvalOptions) -> Vec<(String, String)> {
        match &opts.categories {
            Some(cats) => cats
                .iter()
                .map(|c| (c.clone(), crate::perception::prompt::paper_prompt(c)))
                .collect(),
            None => self
                .truth
                .keys()
                .chain(self.absent.iter().take(opts.absent_prompts))
                .map(|c| (c.clone(), self.texts[c].clone()))
                .collect(),
        }
    }

    /// The ground-truth boxes of `category` (empty when the sample has none).
    fn boxes(&self, category: &str) -> Result<Vec<crate::geometry::Box3D>> {
        self.truth
            .get(category)
            .map(|m| m.values().map(|b| b.to_box3d()).collect::<Result<Vec<_>>>())
            .transpose()
            .map(Option::unwrap_or_default)
    }
}

/// Every sample's token with its LiDAR → global pose, in bag order.
fn poses_of(all: &[SampleViews]) -> Vec<(String, nalgebra::Isometry3<f64>)> {
    all.iter()
        .map(|s| (s.token.clone(), s.views[0].lidar_to_global))
        .collect()
}

/// Scores `predictor` on every sample of the bag.
pub fn evaluate_bag(predictor: &Predictor, opts: &EvalOptions) -> Result<EvalRun> {
    recorded::check_categories(opts)?;
    let all = samples(&opts.bag)?;
    let classes = classes_of(&all);
    let bar = crate::data::progress_bar(
        true,
        all.len() as u64,
        "eval [{bar:30}] {pos}/{len} samples ETA {eta}",
    );
    let mut queries = Vec::new();
    for s in &all {
        let truth = SampleTruth::new(s);
        let prefix = match predictor {
            Predictor::Model(det) => {
                let images = s
                    .views
                    .iter()
                    .map(Example::decode_image)
                    .collect::<Result<Vec<RgbImage>>>()?;
                let cameras: Vec<_> = s.views.iter().map(Example::view_camera).collect();
                Some(det.encode_frame(&images, &cameras)?)
            }
            Predictor::MeanBox(_) => None,
        };
        let views: Vec<(&str, &nalgebra::Isometry3<f64>)> = s
            .views
            .iter()
            .map(|v| (v.channel.as_str(), &v.cam_to_lidar))
            .collect();
        for (cat, text) in truth.queried(opts) {
            let merged = match (predictor, &prefix) {
                (Predictor::Model(det), Some(prefix)) => detect_prompt(
                    det,
                    prefix,
                    &text,
                    &views,
                    opts.nms_iou,
                    usize::MAX,
                    &mut StageTimes::default(),
                )?,
                (Predictor::MeanBox(means), _) => {
                    let per_view: Vec<ViewDetections> = (0..s.views.len())
                        .map(|view| ViewDetections {
                            view,
                            frame: Frame::Camera,
                            boxes: means
                                .get(&cat)
                                .map(|m| vec![Detection::new(*m, 0.5)])
                                .unwrap_or_default(),
                        })
                        .collect();
                    let inputs: Vec<ViewInput> = per_view
                        .iter()
                        .map(|vd| ViewInput {
                            detections: vd,
                            camera_to_lidar: views[vd.view].1,
                            camera: views[vd.view].0,
                        })
                        .collect();
                    merge_views(&inputs, opts.nms_iou, usize::MAX)?
                }
                _ => unreachable!("the model path always has a prefix"),
            };
            queries.push(Query {
                sample: s.token.clone(),
                truth: truth.boxes(&cat)?,
                predicted: merged
                    .boxes
                    .into_iter()
                    .map(|d| Detection {
                        label: cat.clone(),
                        ..d
                    })
                    .collect(),
                category: cat,
            });
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(EvalRun {
        metrics: evaluate(&queries)?,
        queries,
        samples: poses_of(&all),
        classes,
    })
}

/// Writes the run's boxes in the nuScenes detection submission format ([`nuscenes::predictions`]: every sample
/// of the bag, empty lists included; boxes in the global frame; `detection_name` from the class map, categories
/// it does not score left out; size w-l-h; rotation w-x-y-z; zero velocity; at most 500 per sample), so the
/// devkit's evaluation reads it unchanged.
pub fn write_nuscenes_results(path: &Path, run: &EvalRun) -> Result<()> {
    nuscenes::write_results(path, &nuscenes::predictions(run)?)
}

#[derive(Serialize)]
struct Report<'a> {
    name: &'a str,
    bag: &'a Path,
    samples: usize,
    queries: usize,
    metrics: &'a Metrics,
    /// Seen and held-out categories apart (with a hold-out).
    #[serde(skip_serializing_if = "Option::is_none")]
    open_set: Option<&'a openset::OpenSetSplit>,
    /// The nuScenes detection protocol's results (with `--protocol nuscenes`).
    #[serde(skip_serializing_if = "Option::is_none")]
    nuscenes: Option<&'a nuscenes::NuscMetrics>,
}

/// Writes `metrics.json` and `report.md` for one or more named results into `out`.
pub fn write_report(
    out: &Path,
    bag: &Path,
    results: &[(&str, &Metrics, &[Query])],
) -> Result<Vec<PathBuf>> {
    write_report_open_set(out, bag, results, &[])
}

/// [`write_report`] for a model trained with `holdout` categories (prompt names) held out: when it is not empty,
/// each result also gets its seen and unseen categories scored apart ([`openset`]): an `open_set` entry in
/// `metrics.json`, two tables in `report.md`, and `open_set.png` (grouped bars seen vs unseen).
pub fn write_report_open_set(
    out: &Path,
    bag: &Path,
    results: &[(&str, &Metrics, &[Query])],
    holdout: &[String],
) -> Result<Vec<PathBuf>> {
    write_report_protocols(out, bag, results, holdout, &[])
}

/// [`write_report_open_set`] with, per result (same order; missing entries: none), the nuScenes detection
/// protocol's results ([`nuscenes`]): a `nuscenes` entry in `metrics.json` and a section in `report.md`.
pub fn write_report_protocols(
    out: &Path,
    bag: &Path,
    results: &[(&str, &Metrics, &[Query])],
    holdout: &[String],
    nusc: &[Option<&nuscenes::NuscMetrics>],
) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let splits: Vec<Option<openset::OpenSetSplit>> = results
        .iter()
        .map(|(_, _, q)| {
            (!holdout.is_empty())
                .then(|| openset::split(q, holdout))
                .transpose()
        })
        .collect::<Result<_>>()?;
    let json: Vec<Report> = results
        .iter()
        .zip(&splits)
        .enumerate()
        .map(|(i, ((name, m, q), split))| Report {
            name,
            bag,
            samples: q
                .iter()
                .map(|q| &q.sample)
                .collect::<std::collections::BTreeSet<_>>()
                .len(),
            queries: q.len(),
            metrics: m,
            open_set: split.as_ref(),
            nuscenes: nusc.get(i).copied().flatten(),
        })
        .collect();
    let jp = out.join("metrics.json");
    std::fs::write(
        &jp,
        serde_json::to_string_pretty(&json)
            .map_err(|e| Error::invalid("metrics", e.to_string()))?,
    )
    .map_err(|e| Error::io(&jp, e))?;
    let mut md = format!("# vlm3d eval: {}\n\nProtocol **prompts** (`vlm3d eval --protocol prompts`, the paper's metrics and nuScenes AP on \
         the camera-visible boxes of the prompted categories, per (sample, prompt); rules below):\n\n", bag.display());
    md.push_str("| predictor | nuScenes mAP | Acc@0.25 | Acc@0.5 | mIoU | Accuracy | Recall | F1 |\n|---|---|---|---|---|---|---|---|\n");
    for (name, m, _) in results {
        md.push_str(&format!(
            "| {name} | {:.4} | {:.4} | {:.4} | {:.4} | {:.4} | {:.4} | {:.4} |\n",
            m.nusc_map, m.acc_25, m.acc_50, m.miou, m.accuracy, m.recall, m.f1
        ));
    }
    for (name, m, _) in results {
        md.push_str(&format!(
            "\n## {name}: per category\n\n| category | truth | predicted | IoU | Acc@0.25 | AP@0.5 m | AP@1 m | AP@2 m | AP@4 m |\n|---|---|---|---|---|---|---|---|---|\n"
        ));
        for (c, v) in &m.categories {
            md.push_str(&format!(
                "| {c} | {} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} |\n",
                v.truth, v.predicted, v.iou, v.acc_25, v.ap[0], v.ap[1], v.ap[2], v.ap[3]
            ));
        }
    }
    let named: Vec<(&str, &openset::OpenSetSplit)> = results
        .iter()
        .zip(&splits)
        .filter_map(|((name, _, _), s)| Some((*name, s.as_ref()?)))
        .collect();
    for (name, s) in &named {
        md.push_str(&openset::markdown(name, s));
    }
    for ((name, _, _), n) in results.iter().zip(nusc) {
        if let Some(n) = n {
            md.push_str(&nuscenes::markdown(name, n));
        }
    }
    if nusc.iter().any(Option::is_some) {
        md.push_str("\nProtocol **nuscenes** (`vlm3d eval --protocol nuscenes`): the official devkit's `DetectionEval` (detection_cvpr_2019) on every annotation of its 10 classes with LiDAR or radar points within the class range, the predictions of every sample's prompts for those classes (`src/eval/nuscenes.rs`).\n");
    }
    md.push_str("\nRules: see `src/eval/metrics.rs` (Hungarian matching at 3D IoU ≥ 0.25 per sample and prompt; nuScenes centre-distance AP as the devkit computes it).\n");
    let mp = out.join("report.md");
    std::fs::write(&mp, md).map_err(|e| Error::io(&mp, e))?;
    let mut written = vec![jp, mp];
    if !named.is_empty() {
        let pp = out.join("open_set.png");
        plots::open_set_bars(&pp, &named)?;
        written.push(pp);
    }
    Ok(written)
}

//! The nuScenes detection protocol (`vlm3d eval --protocol nuscenes`): the official devkit's `DetectionEval`
//! with its `detection_cvpr_2019` configuration, computed on a converted bag's ground truth.
//!
//! What it scores, as the devkit does (and unlike the prompt protocol of [`super::metrics`], which scores the
//! camera-visible boxes of the prompted categories):
//! * every annotation of the sample whose category maps to one of the 10 detection classes
//!   ([`super::detection_name`]), camera-visible or not;
//! * kept when its centre lies within the class range of the ego vehicle (xy distance from the ego pose of the
//!   LiDAR key frame: 50 m for vehicles, 40 m for pedestrians and two-wheelers, 30 m for cones and barriers),
//!   holds at least one LiDAR or radar point, and, for bicycles and motorcycles, does not stand in a bicycle
//!   rack; predictions are filtered by range and rack the same way;
//! * per class and centre-distance threshold (0.5 / 1 / 2 / 4 m): greedy matching by descending score (ties: the
//!   later box in the results file first) to the nearest unmatched centre, precision and confidence interpolated
//!   at 101 recall points (numpy's `interp`), AP over recall > 0.1 with precision above 0.1; a class without
//!   ground truth scores AP 0 and counts in the mean;
//! * the true-positive errors at 2 m: translation (ATE, xy metres), scale (ASE, 1 − IoU of the aligned boxes),
//!   orientation (AOE, radians; period π for barriers), velocity (AVE, m/s) and attribute (AAE, 1 − accuracy),
//!   each as the running mean over matches interpolated at the recall points and averaged over recall ≥ 0.1 up
//!   to the highest recall reached (1 when none beyond 0.1); cones have no orientation, velocity or attribute
//!   error, barriers no velocity or attribute error;
//! * mAP (mean over classes and thresholds), the mean TP errors over classes (NaN-aware), and
//!   NDS = (5 · mAP + Σ max(0, 1 − error)) / 10.
//!
//! Predictions carry no velocity (0 m/s) and no attribute (`""`): AVE is the ground truth's speed and AAE 1
//! wherever the ground truth has an attribute, as the devkit reports such a submission.
//!
//! The facts a box message does not carry (point counts, attributes, the devkit's velocity estimate) come from
//! the bag's `/vlm3d/annotation_info` ([`AnnotationInfo`]), written by `vlm3d convert-nuscenes`.
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use nalgebra::{Isometry3, Point3, UnitQuaternion, Vector3};
use serde::Serialize;

use super::EvalRun;
use crate::data::bag::bagschema::{AnnotationInfo, BagLayout, SampleIndex, ANNOTATION_INFO_TOPIC};
use crate::data::bag::msgs::{BoundingBox3DArrayMsg, StringMsg, TFMessage};
use crate::data::bag::rosbag::BagReader;
use crate::geometry::OrientedBox3D;
use crate::{Error, Result};

/// The devkit's 10 detection classes, in its configuration's order.
pub const CLASSES: [&str; 10] = [
    "car",
    "truck",
    "bus",
    "trailer",
    "construction_vehicle",
    "pedestrian",
    "motorcycle",
    "bicycle",
    "traffic_cone",
    "barrier",
];

/// Centre-distance thresholds of the AP, metres.
pub const DIST_THS: [f64; 4] = [0.5, 1.0, 2.0, 4.0];
/// The threshold at which the true-positive errors are measured, metres.
pub const DIST_TH_TP: f64 = 2.0;
const MIN_RECALL: f64 = 0.1;
const MIN_PRECISION: f64 = 0.1;
/// The devkit refuses a results file with more boxes in one sample.
pub const MAX_BOXES_PER_SAMPLE: usize = 500;
const MEAN_AP_WEIGHT: f64 = 5.0;
/// Recall points of the interpolated curves.
const NELEM: usize = 101;
/// The true-positive error names, in the devkit's order (`trans_err`, …) with their usual abbreviations.
pub const TP_METRICS: [(&str, &str); 5] = [
    ("trans_err", "ATE"),
    ("scale_err", "ASE"),
    ("orient_err", "AOE"),
    ("vel_err", "AVE"),
    ("attr_err", "AAE"),
];

/// The devkit's evaluation range of a class, metres from the ego vehicle.
pub fn class_range(class: &str) -> Option<f64> {
    Some(match class {
        "car" | "truck" | "bus" | "trailer" | "construction_vehicle" => 50.0,
        "pedestrian" | "motorcycle" | "bicycle" => 40.0,
        "traffic_cone" | "barrier" => 30.0,
        _ => return None,
    })
}

/// The prompt names that query the 10 classes (`car`, …, `pedestrian`, `child`, `construction worker`,
/// `police officer`, …): every nuScenes category the devkit scores, by its prompt name, without repeats.
pub fn class_prompts() -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    for c in crate::data::dataset::NUSCENES_CATEGORIES {
        if super::detection_name(c).is_some() {
            let n = crate::data::dataset::prompt_name(c);
            if !v.contains(&n) {
                v.push(n);
            }
        }
    }
    v
}

/// A box as the devkit's `DetectionBox` holds it (global frame).
#[derive(Debug, Clone, PartialEq)]
pub struct NuscBox {
    /// Sample token.
    pub sample_token: String,
    /// Centre, metres.
    pub translation: [f64; 3],
    /// Size in nuScenes' (w, l, h) order, metres.
    pub size: [f64; 3],
    /// Rotation (w, x, y, z).
    pub rotation: [f64; 4],
    /// Velocity (x, y), m/s; NaN where unknown.
    pub velocity: [f64; 2],
    /// Detection class (`car`).
    pub detection_name: String,
    /// Score (ground truth: −1).
    pub score: f64,
    /// Attribute name, `""` for none.
    pub attribute_name: String,
    /// LiDAR + radar points in the box (predictions: −1, never filtered).
    pub num_pts: i64,
}

impl NuscBox {
    /// Heading: the angle of the box's x axis in the xy plane (the devkit's `quaternion_yaw`).
    fn yaw(&self) -> f64 {
        let [w, i, j, k] = self.rotation;
        let q = UnitQuaternion::from_quaternion(nalgebra::Quaternion::new(w, i, j, k));
        let v = q * Vector3::x();
        v.y.atan2(v.x)
    }

    /// The devkit's `ego_dist`: xy distance of the centre from `ego`.
    fn ego_dist(&self, ego: &[f64; 3]) -> f64 {
        let (dx, dy) = (self.translation[0] - ego[0], self.translation[1] - ego[1]);
        (dx * dx + dy * dy).sqrt()
    }
}

/// One sample's ground truth: every annotation of the 10 classes, the bicycle racks, the ego position.
#[derive(Debug, Clone)]
pub struct SampleTruth {
    /// Sample token.
    pub token: String,
    /// Ego position at the LiDAR key frame (global), metres.
    pub ego_translation: [f64; 3],
    /// Annotations of the detection classes, in the sample's annotation order.
    pub boxes: Vec<NuscBox>,
    /// Bicycle racks (global frame).
    pub bike_racks: Vec<OrientedBox3D>,
}

/// A sample being assembled from the bag's messages.
struct Partial {
    index: SampleIndex,
    lidar_extrinsic: Option<Isometry3<f64>>,
    ego: Option<Isometry3<f64>>,
    boxes: Option<BoundingBox3DArrayMsg>,
    info: Option<AnnotationInfo>,
}

/// Every sample's ground truth from a bag written by `vlm3d convert-nuscenes`, in bag order.
pub fn ground_truth(bag: &Path) -> Result<Vec<SampleTruth>> {
    let reader = BagReader::open(bag)?;
    let mut statics: HashMap<String, Isometry3<f64>> = HashMap::new();
    let mut partial: Vec<Partial> = Vec::new();
    let mut done: Vec<SampleTruth> = Vec::new();
    // The topics `vlm3d eval` reads bags with (the converter's defaults, as the dataset reader's).
    let layout = BagLayout::default();
    let (sample_topic, static_topic) = (layout.sample(), layout.tf_static_topic.clone());
    for m in reader.messages() {
        let m = m?;
        match &*m.type_name {
            "std_msgs/msg/String" => {
                let s: StringMsg = m.decode()?;
                let bad = |what: &str, e: serde_json::Error| {
                    Error::format(
                        &*m.file,
                        Some(format!("message #{} on {}", m.index, m.topic)),
                        format!("bad {what}: {e}"),
                    )
                };
                // The index names the annotation info topic; older bags name none (and have none).
                let info_topic = partial
                    .iter()
                    .find(|p| !p.index.annotation_info_topic.is_empty())
                    .map(|p| p.index.annotation_info_topic.as_str())
                    .unwrap_or(ANNOTATION_INFO_TOPIC);
                if *m.topic == *info_topic {
                    let info: AnnotationInfo =
                        serde_json::from_str(&s.data).map_err(|e| bad("annotation info", e))?;
                    if let Some(p) = partial
                        .iter_mut()
                        .find(|p| p.index.sample_token == info.sample_token)
                    {
                        p.info = Some(info);
                    }
                } else if *m.topic == *sample_topic {
                    let index: SampleIndex =
                        serde_json::from_str(&s.data).map_err(|e| bad("sample index", e))?;
                    let lidar_extrinsic = statics.get(&index.lidar.frame).copied();
                    partial.push(Partial {
                        index,
                        lidar_extrinsic,
                        ego: None,
                        boxes: None,
                        info: None,
                    });
                }
            }
            "tf2_msgs/msg/TFMessage" => {
                let tf: TFMessage = m.decode()?;
                let is_static = *m.topic == *static_topic;
                for t in tf.transforms {
                    let iso = crate::data::dataset::iso_from_transform(&t.transform).ok_or_else(
                        || {
                            Error::format(
                                &*m.file,
                                Some(format!("message #{} on {}", m.index, m.topic)),
                                format!("zero quaternion ({})", t.child_frame_id),
                            )
                        },
                    )?;
                    if is_static {
                        statics.insert(t.child_frame_id.clone(), iso);
                    } else {
                        let stamp = t.header.stamp.to_nanos();
                        for p in partial.iter_mut() {
                            if p.index.lidar.ego_stamp_ns == stamp && *m.topic == *p.index.tf_topic
                            {
                                p.ego = Some(iso);
                            }
                        }
                    }
                }
            }
            "vlm3d/msg/BoundingBox3DArray" => {
                if let Some(p) = partial.iter_mut().find(|p| {
                    *m.topic == *p.index.annotations_topic && p.index.lidar.stamp_ns == m.log_time
                }) {
                    p.boxes = Some(m.decode()?);
                }
            }
            _ => {}
        }
        // Samples complete with their info message (logged last) are finished in order.
        while partial
            .first()
            .is_some_and(|p| p.info.is_some() && p.boxes.is_some() && p.ego.is_some())
        {
            done.push(finish(bag, partial.remove(0))?);
        }
    }
    if let Some(p) = partial.first() {
        let what = if p.boxes.is_none() {
            "its annotations"
        } else if p.info.is_none() {
            "its annotation info (a bag converted before `vlm3d convert-nuscenes` wrote /vlm3d/annotation_info: \
             convert it again)"
        } else {
            "the ego pose of its LiDAR key frame"
        };
        return Err(Error::format(
            bag,
            Some(format!("sample {}", p.index.sample_token)),
            format!("the nuScenes protocol needs {what}, which the bag lacks"),
        ));
    }
    if done.is_empty() {
        return Err(Error::format(
            bag,
            None,
            "no annotated samples (not a bag written by `vlm3d convert-nuscenes`?)",
        ));
    }
    Ok(done)
}

fn finish(bag: &Path, p: Partial) -> Result<SampleTruth> {
    let Partial {
        index,
        lidar_extrinsic,
        ego,
        boxes,
        info,
    } = p;
    let (ego, boxes, info) = (
        ego.expect("checked"),
        boxes.expect("checked"),
        info.expect("checked"),
    );
    let at = |what: String| Some(format!("sample {}, {what}", index.sample_token));
    let lidar_extrinsic = lidar_extrinsic.ok_or_else(|| {
        Error::format(
            bag,
            at("/tf_static".into()),
            format!("no extrinsics of the LiDAR frame {:?}", index.lidar.frame),
        )
    })?;
    if info.boxes.len() != boxes.boxes.len() {
        return Err(Error::format(
            bag,
            at("annotation info".into()),
            format!(
                "{} entries for {} annotation boxes",
                info.boxes.len(),
                boxes.boxes.len()
            ),
        ));
    }
    let lidar_to_global = ego * lidar_extrinsic;
    let e = ego.translation.vector;
    let mut out = SampleTruth {
        token: index.sample_token.clone(),
        ego_translation: [e.x, e.y, e.z],
        boxes: Vec::new(),
        bike_racks: Vec::new(),
    };
    for (i, (b, facts)) in boxes.boxes.iter().zip(&info.boxes).enumerate() {
        if b.instance_id != facts.instance_id {
            return Err(Error::format(
                bag,
                at(format!("annotation {i}")),
                format!(
                    "annotation info is for instance {:?}, the box is {:?}",
                    facts.instance_id, b.instance_id
                ),
            ));
        }
        let o = &b.center.orientation;
        let q = nalgebra::Quaternion::new(o.w, o.x, o.y, o.z);
        if q.norm().is_nan() || q.norm() <= 1e-9 {
            return Err(Error::format(
                bag,
                at(format!("annotation {i}")),
                "zero quaternion",
            ));
        }
        let g = OrientedBox3D::new(
            Point3::new(
                b.center.position.x,
                b.center.position.y,
                b.center.position.z,
            ),
            [b.size.x, b.size.y, b.size.z],
            UnitQuaternion::from_quaternion(q),
        )
        .map_err(|e| Error::format(bag, at(format!("annotation {i}")), e.to_string()))?
        .transform(&lidar_to_global);
        if b.label == "static_object.bicycle_rack" {
            out.bike_racks.push(g);
        }
        let Some(class) = super::detection_name(&b.label) else {
            continue;
        };
        let attribute_name = match facts.attributes.as_slice() {
            [] => String::new(),
            [a] => a.clone(),
            more => {
                return Err(Error::format(
                    bag,
                    at(format!("annotation {i}")),
                    format!("{} attributes; the devkit allows at most one", more.len()),
                ))
            }
        };
        out.boxes.push(nusc_box(
            &index.sample_token,
            &g,
            facts.velocity.unwrap_or([f64::NAN; 2]),
            class,
            -1.0,
            attribute_name,
            facts.num_lidar_pts + facts.num_radar_pts,
        ));
    }
    Ok(out)
}

fn nusc_box(
    sample: &str,
    g: &OrientedBox3D,
    velocity: [f64; 2],
    class: &str,
    score: f64,
    attribute_name: String,
    num_pts: i64,
) -> NuscBox {
    let r = g.rotation.quaternion();
    let [l, w, h] = g.size;
    NuscBox {
        sample_token: sample.to_string(),
        translation: [g.center.x, g.center.y, g.center.z],
        size: [w, l, h],
        rotation: [r.w, r.i, r.j, r.k],
        velocity,
        detection_name: class.to_string(),
        score,
        attribute_name,
        num_pts,
    }
}

/// The run's predictions as the devkit reads them from `results_nusc.json`: every sample of the run (sorted by
/// token, the order of the file), its boxes in the global frame with the detection class of their category
/// (categories the devkit does not score left out), zero velocity, no attribute; at most
/// [`MAX_BOXES_PER_SAMPLE`] per sample (the best scores; the devkit refuses more).
pub fn predictions(run: &EvalRun) -> Result<BTreeMap<String, Vec<NuscBox>>> {
    let poses: BTreeMap<&str, &Isometry3<f64>> =
        run.samples.iter().map(|(t, p)| (t.as_str(), p)).collect();
    let mut out: BTreeMap<String, Vec<NuscBox>> = run
        .samples
        .iter()
        .map(|(t, _)| (t.clone(), Vec::new()))
        .collect();
    for q in &run.queries {
        let Some(Some(name)) = run.classes.get(&q.category) else {
            continue;
        };
        let pose = poses.get(q.sample.as_str()).ok_or_else(|| {
            Error::invalid("results", format!("sample {} not in the bag", q.sample))
        })?;
        let list = out.get_mut(&q.sample).expect("every sample has a list");
        for d in &q.predicted {
            let g = d.to_box3d()?.to_oriented().transform(pose);
            // The score as the file holds it: f32's shortest decimal, read back as f64 (as Python reads it).
            let score: f64 = d.score.to_string().parse().map_err(|_| {
                Error::invalid("results", format!("score {} is not a number", d.score))
            })?;
            list.push(nusc_box(
                &q.sample,
                &g,
                [0.0, 0.0],
                name,
                score,
                String::new(),
                -1,
            ));
        }
    }
    let mut dropped = 0;
    for list in out.values_mut() {
        if list.len() > MAX_BOXES_PER_SAMPLE {
            list.sort_by(|a, b| b.score.total_cmp(&a.score));
            dropped += list.len() - MAX_BOXES_PER_SAMPLE;
            list.truncate(MAX_BOXES_PER_SAMPLE);
        }
    }
    if dropped > 0 {
        tracing::warn!(
            dropped,
            "kept the {MAX_BOXES_PER_SAMPLE} best boxes per sample (the devkit refuses more)"
        );
    }
    Ok(out)
}

/// Writes predictions as a nuScenes detection results file (`results_nusc.json`: `meta` and `results`, sample
/// tokens in `preds`' order), which the devkit reads unchanged.
pub fn write_results(path: &Path, preds: &BTreeMap<String, Vec<NuscBox>>) -> Result<()> {
    let results: serde_json::Map<String, serde_json::Value> = preds
        .iter()
        .map(|(token, list)| {
            let boxes = list
                .iter()
                .map(|b| {
                    serde_json::json!({
                        "sample_token": b.sample_token,
                        "translation": b.translation,
                        "size": b.size,
                        "rotation": b.rotation,
                        "velocity": b.velocity,
                        "detection_name": b.detection_name,
                        "detection_score": b.score,
                        "attribute_name": b.attribute_name,
                    })
                })
                .collect();
            (token.clone(), serde_json::Value::Array(boxes))
        })
        .collect();
    let doc = serde_json::json!({
        "meta": {"use_camera": true, "use_lidar": false, "use_radar": false, "use_map": false, "use_external": false},
        "results": results,
    });
    let text = serde_json::to_string(&doc).map_err(|e| Error::invalid("results", e.to_string()))?;
    std::fs::write(path, text).map_err(|e| Error::io(path, e))
}

/// Per-class results of the protocol.
#[derive(Debug, Clone, Serialize)]
pub struct ClassMetrics {
    /// Ground-truth boxes after the filters.
    pub truth: usize,
    /// Predictions after the filters.
    pub predicted: usize,
    /// AP at 0.5 / 1 / 2 / 4 m.
    pub ap: [f64; 4],
    /// ATE, ASE, AOE, AVE, AAE ([`TP_METRICS`] order); NaN where the class has no such error.
    pub tp_errors: [f64; 5],
}

/// The protocol's results.
#[derive(Debug, Clone, Serialize)]
pub struct NuscMetrics {
    /// Mean AP over the 10 classes and 4 thresholds.
    pub mean_ap: f64,
    /// nuScenes detection score.
    pub nd_score: f64,
    /// Mean TP errors over the classes: ATE, ASE, AOE, AVE, AAE.
    pub tp_errors: [f64; 5],
    /// Per class, in [`CLASSES`] order.
    pub classes: BTreeMap<String, ClassMetrics>,
    /// Centre errors along and across the line of sight by distance (not the devkit's: a diagnostic).
    pub by_range: Vec<RangeErrors>,
}

/// Distance bins of [`RangeErrors`], metres from the ego position (the devkit's class ranges end at 50 m).
pub const RANGE_BINS: [[f64; 2]; 4] = [[0.0, 10.0], [10.0, 20.0], [20.0, 30.0], [30.0, 50.0]];

/// The centre errors of one distance bin: every class's boxes matched at the loosest threshold (4 m, greedy by
/// score as the devkit's `accumulate`), split into the component along the ego → truth direction in the xy
/// plane (radial: depth, for a camera near the ego origin) and across it (lateral). Separates a depth problem
/// from a bearing problem, which the devkit's ATE (their Euclidean sum) does not.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RangeErrors {
    /// `[from, to)` metres from the ego position, by the truth's centre.
    pub range_m: [f64; 2],
    /// Kept ground truth boxes in the bin.
    pub truth: usize,
    /// Of those, matched within 4 m.
    pub matched: usize,
    /// Median |radial error|, metres (NaN without matches).
    pub radial_median_m: f64,
    /// Median |lateral error|, metres.
    pub lateral_median_m: f64,
    /// Mean signed radial error (> 0: predicted beyond the truth), metres.
    pub radial_bias_m: f64,
}

/// numpy's `interp(x, xp, fp, left, right)` for a non-decreasing `xp`: the segment from the last point whose
/// `xp` is ≤ `x` (so among repeated `xp`, the last), exactly as numpy resolves repeats and end points.
pub fn np_interp(x: f64, xp: &[f64], fp: &[f64], left: f64, right: f64) -> f64 {
    let n = xp.len();
    if n == 1 {
        return if x < xp[0] {
            left
        } else if x > xp[0] {
            right
        } else {
            fp[0]
        };
    }
    if x > xp[n - 1] {
        return right;
    }
    if x < xp[0] {
        return left;
    }
    let j = xp.partition_point(|&v| v <= x) - 1;
    if j == n - 1 || xp[j] == x {
        return fp[j];
    }
    let slope = (fp[j + 1] - fp[j]) / (xp[j + 1] - xp[j]);
    let y = slope * (x - xp[j]) + fp[j];
    if y.is_nan() {
        let y = slope * (x - xp[j + 1]) + fp[j + 1];
        if y.is_nan() && fp[j] == fp[j + 1] {
            return fp[j];
        }
        return y;
    }
    y
}

/// The devkit's 101 recall points, `np.linspace(0, 1, 101)`: k × 0.01 and exactly 1 at the end, which is not
/// k / 100 everywhere (0.35, 0.7, … differ in the last bit, and a recall of exactly 0.7 then lies below the
/// point, not on it).
pub fn recall_points() -> Vec<f64> {
    let step = 1.0 / (NELEM - 1) as f64;
    (0..NELEM)
        .map(|k| if k == NELEM - 1 { 1.0 } else { k as f64 * step })
        .collect()
}

/// The devkit's `cummean`: the running mean ignoring NaNs (0 before the first number); all NaN → ones.
fn cummean(x: &[f64]) -> Vec<f64> {
    if x.iter().all(|v| v.is_nan()) {
        return vec![1.0; x.len()];
    }
    let (mut sum, mut count) = (0.0, 0usize);
    x.iter()
        .map(|&v| {
            if !v.is_nan() {
                sum += v;
                count += 1;
            }
            if count == 0 {
                0.0
            } else {
                sum / count as f64
            }
        })
        .collect()
}

/// The devkit's `angle_diff`: the signed smallest difference from `y` to `x` for angles of period `period`.
fn angle_diff(x: f64, y: f64, period: f64) -> f64 {
    let mut d = (x - y + period / 2.0).rem_euclid(period) - period / 2.0;
    if d > std::f64::consts::PI {
        d -= 2.0 * std::f64::consts::PI;
    }
    d
}

/// 1 − the IoU of two boxes of (w, l, h) sizes aligned at one centre and heading.
fn scale_err(a: &[f64; 3], b: &[f64; 3]) -> f64 {
    let inter = a[0].min(b[0]) * a[1].min(b[1]) * a[2].min(b[2]);
    let union = a[0] * a[1] * a[2] + b[0] * b[1] * b[2] - inter;
    1.0 - inter / union
}

fn center_distance(gt: &NuscBox, pred: &NuscBox) -> f64 {
    let (dx, dy) = (
        pred.translation[0] - gt.translation[0],
        pred.translation[1] - gt.translation[1],
    );
    (dx * dx + dy * dy).sqrt()
}

/// One class and threshold: the devkit's `DetectionMetricData`.
struct MetricData {
    precision: Vec<f64>,
    confidence: Vec<f64>,
    /// ATE, ASE, AOE, AVE, AAE at the recall points.
    errors: [Vec<f64>; 5],
    /// (sample, truth centre, predicted centre) of every match.
    matched: Vec<(String, [f64; 3], [f64; 3])>,
}

impl MetricData {
    fn no_predictions() -> Self {
        Self {
            precision: vec![0.0; NELEM],
            confidence: vec![0.0; NELEM],
            errors: std::array::from_fn(|_| vec![1.0; NELEM]),
            matched: Vec::new(),
        }
    }

    fn max_recall_ind(&self) -> usize {
        self.confidence.iter().rposition(|&c| c != 0.0).unwrap_or(0)
    }

    fn ap(&self) -> f64 {
        let first = (100.0 * MIN_RECALL).round() as usize + 1;
        let p = &self.precision[first..];
        p.iter().map(|v| (v - MIN_PRECISION).max(0.0)).sum::<f64>()
            / p.len() as f64
            / (1.0 - MIN_PRECISION)
    }

    fn tp(&self, metric: usize) -> f64 {
        let first = (100.0 * MIN_RECALL).round() as usize + 1;
        let last = self.max_recall_ind();
        if last < first {
            return 1.0;
        }
        let v = &self.errors[metric][first..=last];
        v.iter().sum::<f64>() / v.len() as f64
    }
}

/// The devkit's `accumulate` for one class and threshold. `preds` in the results file's order.
fn accumulate(
    gt: &BTreeMap<&str, Vec<&NuscBox>>,
    preds: &[&NuscBox],
    class: &str,
    dist_th: f64,
) -> MetricData {
    let npos = gt
        .values()
        .flatten()
        .filter(|b| b.detection_name == class)
        .count();
    if npos == 0 {
        return MetricData::no_predictions();
    }
    let list: Vec<&NuscBox> = preds
        .iter()
        .copied()
        .filter(|b| b.detection_name == class)
        .collect();
    // Python's sorted((score, index))[::-1]: descending score, ties by descending index.
    let mut order: Vec<usize> = (0..list.len()).collect();
    order.sort_by(|&a, &b| {
        list[b]
            .score
            .total_cmp(&list[a].score)
            .then_with(|| b.cmp(&a))
    });
    let (mut tp, mut fp) = (Vec::new(), Vec::new());
    let mut conf = Vec::new();
    let mut errs: [Vec<f64>; 5] = Default::default();
    let mut match_conf = Vec::new();
    let mut matched = Vec::new();
    let mut taken: std::collections::HashSet<(&str, usize)> = std::collections::HashSet::new();
    let period = if class == "barrier" {
        std::f64::consts::PI
    } else {
        2.0 * std::f64::consts::PI
    };
    for &i in &order {
        let p = list[i];
        let mut min_dist = f64::INFINITY;
        let mut best = None;
        for (g, b) in gt
            .get(p.sample_token.as_str())
            .into_iter()
            .flatten()
            .enumerate()
        {
            if b.detection_name == class && !taken.contains(&(p.sample_token.as_str(), g)) {
                let d = center_distance(b, p);
                if d < min_dist {
                    min_dist = d;
                    best = Some(g);
                }
            }
        }
        match best.filter(|_| min_dist < dist_th) {
            Some(g) => {
                taken.insert((p.sample_token.as_str(), g));
                tp.push(1.0);
                fp.push(0.0);
                conf.push(p.score);
                let m = gt[p.sample_token.as_str()][g];
                errs[0].push(center_distance(m, p));
                errs[1].push(scale_err(&m.size, &p.size));
                errs[2].push(angle_diff(m.yaw(), p.yaw(), period).abs());
                let (dx, dy) = (p.velocity[0] - m.velocity[0], p.velocity[1] - m.velocity[1]);
                errs[3].push((dx * dx + dy * dy).sqrt());
                errs[4].push(if m.attribute_name.is_empty() {
                    f64::NAN
                } else {
                    1.0 - f64::from(u8::from(m.attribute_name == p.attribute_name))
                });
                match_conf.push(p.score);
                matched.push((p.sample_token.clone(), m.translation, p.translation));
            }
            None => {
                tp.push(0.0);
                fp.push(1.0);
                conf.push(p.score);
            }
        }
    }
    if match_conf.is_empty() {
        return MetricData::no_predictions();
    }
    let (mut ctp, mut cfp) = (0.0, 0.0);
    let mut prec = Vec::with_capacity(tp.len());
    let mut rec = Vec::with_capacity(tp.len());
    for (t, f) in tp.iter().zip(&fp) {
        ctp += t;
        cfp += f;
        prec.push(ctp / (cfp + ctp));
        rec.push(ctp / npos as f64);
    }
    let rec_interp = recall_points();
    let precision: Vec<f64> = rec_interp
        .iter()
        .map(|&r| np_interp(r, &rec, &prec, prec[0], 0.0))
        .collect();
    let confidence: Vec<f64> = rec_interp
        .iter()
        .map(|&r| np_interp(r, &rec, &conf, conf[0], 0.0))
        .collect();
    // Each error's running mean, read at the interpolated confidences (numpy needs increasing x: reversed).
    let xp: Vec<f64> = match_conf.iter().rev().copied().collect();
    let errors = errs.map(|e| {
        let fp: Vec<f64> = cummean(&e).into_iter().rev().collect();
        let mut v: Vec<f64> = confidence
            .iter()
            .rev()
            .map(|&c| np_interp(c, &xp, &fp, fp[0], fp[fp.len() - 1]))
            .collect();
        v.reverse();
        v
    });
    MetricData {
        precision,
        confidence,
        errors,
        matched,
    }
}

/// [`RangeErrors`] per [`RANGE_BINS`] bin from the kept truth and the matches (sample, truth, prediction).
fn range_errors(
    gt: &BTreeMap<&str, Vec<&NuscBox>>,
    ego: &BTreeMap<&str, [f64; 3]>,
    matched: &[(String, [f64; 3], [f64; 3])],
) -> Vec<RangeErrors> {
    let dist = |e: &[f64; 3], c: &[f64; 3]| (c[0] - e[0]).hypot(c[1] - e[1]);
    let median = |mut v: Vec<f64>| {
        if v.is_empty() {
            return f64::NAN;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        }
    };
    RANGE_BINS
        .iter()
        .map(|&[lo, hi]| {
            let inside = |d: f64| d >= lo && d < hi;
            let truth = gt
                .iter()
                .flat_map(|(s, list)| list.iter().map(move |b| (s, b)))
                .filter(|(s, b)| inside(dist(&ego[**s], &b.translation)))
                .count();
            let (mut radial, mut lateral) = (Vec::new(), Vec::new());
            for (s, t, p) in matched {
                let e = ego[s.as_str()];
                let d = dist(&e, t);
                if !inside(d) {
                    continue;
                }
                // Unit line of sight; a truth on the ego origin has none, its error counts as radial.
                let (ux, uy) = if d > 0.0 {
                    ((t[0] - e[0]) / d, (t[1] - e[1]) / d)
                } else {
                    (1.0, 0.0)
                };
                let (dx, dy) = (p[0] - t[0], p[1] - t[1]);
                radial.push(dx * ux + dy * uy);
                lateral.push((dy * ux - dx * uy).abs());
            }
            let matched = radial.len();
            let bias = if matched == 0 {
                f64::NAN
            } else {
                radial.iter().sum::<f64>() / matched as f64
            };
            RangeErrors {
                range_m: [lo, hi],
                truth,
                matched,
                radial_median_m: median(radial.iter().map(|r| r.abs()).collect()),
                lateral_median_m: median(lateral),
                radial_bias_m: bias,
            }
        })
        .collect()
}

/// The devkit's filters: class range, points (ground truth), bicycle racks.
fn keep(b: &NuscBox, ego: &[f64; 3], racks: &[OrientedBox3D]) -> bool {
    let Some(range) = class_range(&b.detection_name) else {
        return false;
    };
    // A NaN distance is out of range, as `ego_dist < range` is false for it in the devkit.
    let in_range = b.ego_dist(ego) < range;
    if !in_range || b.num_pts == 0 {
        return false;
    }
    if matches!(b.detection_name.as_str(), "bicycle" | "motorcycle") {
        let c = Point3::from(b.translation);
        // The devkit's `points_in_box`: inside or on the faces.
        let in_rack = racks.iter().any(|r| {
            let local = r.rotation.inverse() * (c - r.center);
            (0..3).all(|k| local[k].abs() <= r.size[k] / 2.0)
        });
        if in_rack {
            return false;
        }
    }
    true
}

/// Scores `preds` (per sample, in the results file's order) against `truth` as the devkit's `DetectionEval`
/// does. The two must cover the same samples.
pub fn evaluate(
    truth: &[SampleTruth],
    preds: &BTreeMap<String, Vec<NuscBox>>,
) -> Result<NuscMetrics> {
    let by_token: BTreeMap<&str, &SampleTruth> =
        truth.iter().map(|s| (s.token.as_str(), s)).collect();
    if by_token.len() != preds.len() || preds.keys().any(|k| !by_token.contains_key(k.as_str())) {
        let missing: Vec<&&str> = by_token
            .keys()
            .filter(|k| !preds.contains_key(**k))
            .take(3)
            .collect();
        return Err(Error::invalid(
            "nuScenes protocol",
            format!(
                "the predictions cover {} samples, the ground truth {} (the devkit requires the same samples; \
                 missing e.g. {missing:?})",
                preds.len(),
                by_token.len()
            ),
        ));
    }
    let gt: BTreeMap<&str, Vec<&NuscBox>> = truth
        .iter()
        .map(|s| {
            (
                s.token.as_str(),
                s.boxes
                    .iter()
                    .filter(|b| keep(b, &s.ego_translation, &s.bike_racks))
                    .collect(),
            )
        })
        .collect();
    let all_preds: Vec<&NuscBox> = preds
        .iter()
        .flat_map(|(token, list)| {
            let s = by_token[token.as_str()];
            list.iter()
                .filter(move |b| keep(b, &s.ego_translation, &s.bike_racks))
        })
        .collect();
    let mut classes = BTreeMap::new();
    let mut aps = Vec::new();
    let mut tp_rows: Vec<[f64; 5]> = Vec::new();
    let mut matched_loose = Vec::new();
    for class in CLASSES {
        let mut ap = [0.0; 4];
        let mut at_tp = None;
        for (k, &th) in DIST_THS.iter().enumerate() {
            let md = accumulate(&gt, &all_preds, class, th);
            ap[k] = md.ap();
            if k == DIST_THS.len() - 1 {
                matched_loose.extend(md.matched.iter().cloned());
            }
            if th == DIST_TH_TP {
                at_tp = Some(md);
            }
        }
        let md = at_tp.expect("DIST_TH_TP is one of DIST_THS");
        let tp_errors: [f64; 5] = std::array::from_fn(|m| {
            let name = TP_METRICS[m].0;
            let none = match class {
                "traffic_cone" => matches!(name, "attr_err" | "vel_err" | "orient_err"),
                "barrier" => matches!(name, "attr_err" | "vel_err"),
                _ => false,
            };
            if none {
                f64::NAN
            } else {
                md.tp(m)
            }
        });
        aps.push(ap.iter().sum::<f64>() / ap.len() as f64);
        tp_rows.push(tp_errors);
        classes.insert(
            class.to_string(),
            ClassMetrics {
                truth: gt
                    .values()
                    .flatten()
                    .filter(|b| b.detection_name == class)
                    .count(),
                predicted: all_preds
                    .iter()
                    .filter(|b| b.detection_name == class)
                    .count(),
                ap,
                tp_errors,
            },
        );
    }
    let mean_ap = aps.iter().sum::<f64>() / aps.len() as f64;
    let tp_errors: [f64; 5] = std::array::from_fn(|m| {
        let v: Vec<f64> = tp_rows
            .iter()
            .map(|r| r[m])
            .filter(|x| !x.is_nan())
            .collect();
        v.iter().sum::<f64>() / v.len() as f64
    });
    let tp_scores: f64 = tp_errors.iter().map(|e| (1.0 - e).max(0.0)).sum();
    let nd_score =
        (MEAN_AP_WEIGHT * mean_ap + tp_scores) / (MEAN_AP_WEIGHT + TP_METRICS.len() as f64);
    let ego: BTreeMap<&str, [f64; 3]> = truth
        .iter()
        .map(|s| (s.token.as_str(), s.ego_translation))
        .collect();
    Ok(NuscMetrics {
        mean_ap,
        nd_score,
        tp_errors,
        classes,
        by_range: range_errors(&gt, &ego, &matched_loose),
    })
}

/// Scores a run by the protocol against its bag's ground truth.
pub fn evaluate_run(run: &EvalRun, bag: &Path) -> Result<NuscMetrics> {
    evaluate(&ground_truth(bag)?, &predictions(run)?)
}

/// The protocol's section of `report.md` for one predictor.
pub fn markdown(name: &str, m: &NuscMetrics) -> String {
    let mut md = format!(
        "\n## {name}: protocol nuscenes (the devkit's detection evaluation, detection_cvpr_2019)\n\n\
         | mAP | NDS | mATE (m) | mASE | mAOE (rad) | mAVE (m/s) | mAAE |\n|---|---|---|---|---|---|---|\n\
         | {:.4} | {:.4} | {:.4} | {:.4} | {:.4} | {:.4} | {:.4} |\n\n\
         | class | truth | predicted | AP@0.5 m | AP@1 m | AP@2 m | AP@4 m | ATE | ASE | AOE | AVE | AAE |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|\n",
        m.mean_ap,
        m.nd_score,
        m.tp_errors[0],
        m.tp_errors[1],
        m.tp_errors[2],
        m.tp_errors[3],
        m.tp_errors[4]
    );
    for class in CLASSES {
        let c = &m.classes[class];
        let f = |v: f64| {
            if v.is_nan() {
                "–".to_string()
            } else {
                format!("{v:.3}")
            }
        };
        md.push_str(&format!(
            "| {class} | {} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {} | {} | {} | {} | {} |\n",
            c.truth,
            c.predicted,
            c.ap[0],
            c.ap[1],
            c.ap[2],
            c.ap[3],
            f(c.tp_errors[0]),
            f(c.tp_errors[1]),
            f(c.tp_errors[2]),
            f(c.tp_errors[3]),
            f(c.tp_errors[4]),
        ));
    }
    md.push_str(
        "\nCentre errors by distance (not the devkit's; every class's boxes matched within 4 m, split along the \
         line of sight from the ego position and across it):\n\n\
         | distance (m) | truth | matched | median radial error (m) | median lateral error (m) | mean radial bias (m) |\n\
         |---|---|---|---|---|---|\n",
    );
    for r in &m.by_range {
        md.push_str(&format!(
            "| {:.0}–{:.0} | {} | {} | {:.2} | {:.2} | {:+.2} |\n",
            r.range_m[0],
            r.range_m[1],
            r.truth,
            r.matched,
            r.radial_median_m,
            r.lateral_median_m,
            r.radial_bias_m
        ));
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interp_resolves_repeats_and_ends_as_numpy() {
        // np.interp([0, 0.5, 1, 1.5, 2, 3], [0.5, 1, 1, 2], [10, 20, 30, 40], left=-1, right=-2)
        // → [-1, 10, 30, 35, 40, -2]
        let xp = [0.5, 1.0, 1.0, 2.0];
        let fp = [10.0, 20.0, 30.0, 40.0];
        let got: Vec<f64> = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0]
            .iter()
            .map(|&x| np_interp(x, &xp, &fp, -1.0, -2.0))
            .collect();
        assert_eq!(got, vec![-1.0, 10.0, 30.0, 35.0, 40.0, -2.0]);
        assert_eq!(np_interp(1.0, &[1.0], &[5.0], 0.0, 9.0), 5.0);
        // np.linspace(0, 1, 101)[70] == 0.7000000000000001, [35] == 0.35000000000000003, [29] == 0.29
        let r = recall_points();
        assert_eq!(
            (r[70], r[35], r[29], r[100]),
            (0.7000000000000001, 0.35000000000000003, 0.29, 1.0)
        );
        assert_eq!(np_interp(2.0, &[1.0], &[5.0], 0.0, 9.0), 9.0);
    }

    #[test]
    fn cummean_skips_nan_as_the_devkit_does() {
        let v = cummean(&[f64::NAN, 1.0, f64::NAN, 3.0]);
        assert_eq!(v, vec![0.0, 1.0, 1.0, 2.0]);
        assert_eq!(cummean(&[f64::NAN, f64::NAN]), vec![1.0, 1.0]);
    }

    #[test]
    fn angle_diff_folds_the_period() {
        let pi = std::f64::consts::PI;
        assert!((angle_diff(0.1, 2.0 * pi - 0.1, 2.0 * pi) - 0.2).abs() < 1e-12);
        // A barrier turned by π has no orientation error.
        assert!(angle_diff(pi + 0.05, 0.0, pi).abs() - 0.05 < 1e-12);
        assert!((angle_diff(pi - 0.1, -pi + 0.1, 2.0 * pi) + 0.2).abs() < 1e-12);
    }

    #[test]
    fn class_prompts_cover_the_ten_classes() {
        let p = class_prompts();
        for name in [
            "car",
            "pedestrian",
            "child",
            "traffic cone",
            "barrier",
            "bus",
        ] {
            assert!(p.contains(&name.to_string()), "{p:?}");
        }
        assert!(!p.contains(&"animal".to_string()));
        assert_eq!(p.iter().filter(|n| *n == "bus").count(), 1);
    }

    fn b(sample: &str, class: &str, x: f64, score: f64) -> NuscBox {
        NuscBox {
            sample_token: sample.into(),
            translation: [x, 0.0, 0.0],
            size: [2.0, 4.0, 1.5],
            rotation: [1.0, 0.0, 0.0, 0.0],
            velocity: [0.0, 0.0],
            detection_name: class.into(),
            score,
            attribute_name: String::new(),
            num_pts: if score < 0.0 { 5 } else { -1 },
        }
    }

    #[test]
    fn a_perfect_submission_scores_map_of_its_classes_and_no_error() {
        let truth = vec![SampleTruth {
            token: "s".into(),
            ego_translation: [0.0; 3],
            boxes: vec![b("s", "car", 10.0, -1.0), b("s", "car", 20.0, -1.0)],
            bike_racks: vec![],
        }];
        let preds = BTreeMap::from([(
            "s".to_string(),
            vec![b("s", "car", 10.0, 0.9), b("s", "car", 20.0, 0.8)],
        )]);
        let m = evaluate(&truth, &preds).unwrap();
        // Car AP 1, the nine other classes 0: mAP 0.1. Car's ATE, ASE, AOE, AVE 0 and AAE 1 (no attribute in
        // the truth: every match's error NaN, which the devkit's cummean turns into 1); classes without truth 1.
        assert!((m.mean_ap - 0.1).abs() < 1e-12, "{m:?}");
        assert!(m.classes["car"].ap.iter().all(|a| (a - 1.0).abs() < 1e-12));
        assert_eq!(&m.classes["car"].tp_errors[..4], &[0.0; 4]);
        assert_eq!(m.classes["car"].tp_errors[4], 1.0);
        assert_eq!(m.classes["truck"].tp_errors[0], 1.0);
        // A box beyond the class range (60 m for a car) does not count, neither as truth nor as prediction.
        let mut far = truth.clone();
        far[0].boxes.push(b("s", "car", 60.0, -1.0));
        let m2 = evaluate(&far, &preds).unwrap();
        assert_eq!(m2.classes["car"].truth, 2);
        // Exact matches: no error in any bin; the two boxes sit at 10 and 20 m.
        assert_eq!(m.by_range[1].truth, 1);
        assert_eq!(m.by_range[2].matched, 1);
        assert_eq!(m.by_range[2].radial_median_m, 0.0);
        // Samples must match.
        let other = BTreeMap::from([("t".to_string(), vec![])]);
        assert!(evaluate(&truth, &other).is_err());
    }

    #[test]
    fn range_errors_split_the_centre_error_along_and_across_the_line_of_sight() {
        // Ego at (100, 50); truths 5 m east, 15 m north, 25 m and 40 m along the diagonal.
        let ego = [100.0, 50.0, 0.0];
        let at = |x: f64, y: f64, score: f64| {
            let mut k = b("s", "car", 0.0, score);
            k.translation = [ego[0] + x, ego[1] + y, 0.5];
            k
        };
        let r = std::f64::consts::FRAC_1_SQRT_2;
        let truth = vec![SampleTruth {
            token: "s".into(),
            ego_translation: ego,
            boxes: vec![
                at(5.0, 0.0, -1.0),
                at(0.0, 15.0, -1.0),
                at(25.0 * r, 25.0 * r, -1.0),
                at(40.0 * r, 40.0 * r, -1.0),
            ],
            bike_racks: vec![],
        }];
        // Errors: +1 m radial and 0.5 m lateral; 2 m short (radial −2) and 1 m across; on the diagonal 3 m
        // beyond and 1 m across ((3 + 1)/√2 east, (3 − 1)/√2 north); the 40 m one missed (6 m off).
        let preds = BTreeMap::from([(
            "s".to_string(),
            vec![
                at(6.0, 0.5, 0.9),
                at(-1.0, 13.0, 0.8),
                at(28.0 * r + r, 28.0 * r - r, 0.7),
                at(46.0 * r, 46.0 * r, 0.6),
            ],
        )]);
        let m = evaluate(&truth, &preds).unwrap();
        let bins = &m.by_range;
        assert_eq!(
            bins.iter().map(|b| b.truth).collect::<Vec<_>>(),
            [1, 1, 1, 1]
        );
        assert_eq!(
            bins.iter().map(|b| b.matched).collect::<Vec<_>>(),
            [1, 1, 1, 0]
        );
        let close = |a: f64, e: f64| assert!((a - e).abs() < 1e-9, "{a} vs {e}");
        close(bins[0].radial_median_m, 1.0);
        close(bins[0].lateral_median_m, 0.5);
        close(bins[0].radial_bias_m, 1.0);
        close(bins[1].radial_bias_m, -2.0);
        close(bins[1].lateral_median_m, 1.0);
        close(bins[2].radial_median_m, 3.0);
        close(bins[2].lateral_median_m, 1.0);
        assert!(bins[3].radial_median_m.is_nan());
        assert!(markdown("m", &m).contains("| 20–30 | 1 | 1 | 3.00 | 1.00 | +3.00 |"));
    }
}

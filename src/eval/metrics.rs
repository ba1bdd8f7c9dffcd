//! Detection metrics on LiDAR-frame boxes, per sample and category.
//!
//! * The paper's (Table 1, 2), with the counting rule the paper leaves open defined here: per (sample, prompted
//!   category), predictions are matched one-to-one to ground truth by the Hungarian algorithm on 3D IoU, and a
//!   match with IoU ≥ 0.25 is a true positive; unmatched predictions (and matches below 0.25) are false
//!   positives, unmatched ground truth false negatives. Accuracy = TP / (TP + FP + FN), Recall = TP / (TP + FN),
//!   F1 = 2TP / (2TP + FP + FN). IoU of a category: the mean over its ground-truth boxes of the IoU with the
//!   matched prediction (0 when unmatched); mIoU the mean over categories.
//! * The peers': Acc@0.25 and Acc@0.5 (the share of ground-truth boxes matched at that 3D IoU, Mono3DVG /
//!   Talk2Car-3D), and nuScenes detection AP: greedy matching by score to the nearest ground-truth centre in the
//!   BEV within 0.5 / 1 / 2 / 4 m, precision interpolated at 101 recall points, AP over recall ≥ 0.1 with
//!   precision above 0.1 (the devkit's `calc_ap`), mAP the mean over categories and thresholds.
use std::collections::BTreeMap;

use serde::Serialize;

use crate::geometry::{iou_3d, Box3D};
use crate::perception::Detection;
use crate::train::matching::hungarian_match;
use crate::Result;

/// nuScenes' centre-distance thresholds, metres.
pub const DISTANCES_M: [f64; 4] = [0.5, 1.0, 2.0, 4.0];
/// The paper's true-positive IoU.
pub const TP_IOU: f64 = 0.25;

/// Ground truth and predictions of one (sample, category) query.
#[derive(Debug, Clone)]
pub struct Query {
    /// Sample token.
    pub sample: String,
    /// Category prompt name (`car`).
    pub category: String,
    /// Ground-truth boxes (LiDAR frame).
    pub truth: Vec<Box3D>,
    /// Predictions (LiDAR frame) with scores.
    pub predicted: Vec<Detection>,
}

/// Per-category results.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CategoryMetrics {
    /// Ground-truth boxes.
    pub truth: usize,
    /// Predictions.
    pub predicted: usize,
    /// True positives at IoU ≥ 0.25.
    pub tp: usize,
    /// False positives.
    pub fp: usize,
    /// False negatives.
    pub fn_: usize,
    /// Mean IoU of ground truth with its match (0 unmatched).
    pub iou: f64,
    /// Share of ground truth matched at IoU ≥ 0.25.
    pub acc_25: f64,
    /// Share of ground truth matched at IoU ≥ 0.5.
    pub acc_50: f64,
    /// nuScenes AP per distance threshold.
    pub ap: [f64; 4],
}

/// The whole report.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Metrics {
    /// TP / (TP + FP + FN) over all queries.
    pub accuracy: f64,
    /// TP / (TP + FN).
    pub recall: f64,
    /// 2TP / (2TP + FP + FN).
    pub f1: f64,
    /// Mean of the categories' IoU.
    pub miou: f64,
    /// Acc@0.25 over all ground truth.
    pub acc_25: f64,
    /// Acc@0.5 over all ground truth.
    pub acc_50: f64,
    /// nuScenes mAP (centre distance), mean over categories with ground truth and the four thresholds.
    pub nusc_map: f64,
    /// Per category.
    pub categories: BTreeMap<String, CategoryMetrics>,
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

/// The devkit's AP from a list of (score, is-TP) over all predictions and the number of ground-truth boxes.
pub fn nuscenes_ap(mut scored: Vec<(f32, bool)>, n_truth: usize) -> f64 {
    if n_truth == 0 || scored.is_empty() {
        return 0.0;
    }
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    let (mut tp, mut fp) = (0.0, 0.0);
    let mut prec = Vec::with_capacity(scored.len());
    let mut rec = Vec::with_capacity(scored.len());
    for (_, hit) in &scored {
        if *hit {
            tp += 1.0;
        } else {
            fp += 1.0;
        }
        prec.push(tp / (tp + fp));
        rec.push(tp / n_truth as f64);
    }
    // numpy's interp(rec_interp, rec, prec, right=0) on the devkit's 101 recall points, kept above recall 0.1.
    let (min_recall, min_precision) = (0.1, 0.1);
    let vals: Vec<f64> = super::nuscenes::recall_points()
        .into_iter()
        .skip((100.0 * min_recall) as usize + 1)
        .map(|r| {
            (super::nuscenes::np_interp(r, &rec, &prec, prec[0], 0.0) - min_precision).max(0.0)
        })
        .collect();
    vals.iter().sum::<f64>() / vals.len() as f64 / (1.0 - min_precision)
}

/// Computes every metric over `queries`.
pub fn evaluate(queries: &[Query]) -> Result<Metrics> {
    let mut cats: BTreeMap<String, CategoryMetrics> = BTreeMap::new();
    let mut iou_sum: BTreeMap<String, f64> = BTreeMap::new();
    let mut matched_at: BTreeMap<String, [usize; 2]> = BTreeMap::new();
    let mut scored: BTreeMap<String, [Vec<(f32, bool)>; 4]> = BTreeMap::new();
    for q in queries {
        let c = cats.entry(q.category.clone()).or_default();
        c.truth += q.truth.len();
        c.predicted += q.predicted.len();
        let preds: Vec<Box3D> = q
            .predicted
            .iter()
            .map(|d| d.to_box3d())
            .collect::<Result<_>>()?;
        // Paper metrics: Hungarian on 1 − IoU (pads with dummy columns when there are more truths than predictions).
        let mut tp = 0;
        let mut matched_pred = vec![false; preds.len()];
        if !q.truth.is_empty() && !preds.is_empty() {
            let cols = preds.len().max(q.truth.len());
            let cost: Vec<Vec<f64>> = q
                .truth
                .iter()
                .map(|t| {
                    (0..cols)
                        .map(|j| preds.get(j).map_or(1.0, |p| 1.0 - iou_3d(t, p)))
                        .collect()
                })
                .collect();
            let assign = hungarian_match(&cost)?;
            for (g, &j) in assign.iter().enumerate() {
                let iou = preds.get(j).map_or(0.0, |p| iou_3d(&q.truth[g], p));
                *iou_sum.entry(q.category.clone()).or_default() += iou;
                let m = matched_at.entry(q.category.clone()).or_default();
                if iou >= TP_IOU {
                    tp += 1;
                    m[0] += 1;
                    if j < preds.len() {
                        matched_pred[j] = true;
                    }
                }
                if iou >= 0.5 {
                    m[1] += 1;
                }
            }
        }
        c.tp += tp;
        c.fn_ += q.truth.len() - tp;
        c.fp += matched_pred.iter().filter(|m| !**m).count();
        // nuScenes AP: greedy by score to the nearest unmatched centre within d.
        let s = scored.entry(q.category.clone()).or_default();
        let mut order: Vec<usize> = (0..q.predicted.len()).collect();
        order.sort_by(|&a, &b| q.predicted[b].score.total_cmp(&q.predicted[a].score));
        for (k, &d) in DISTANCES_M.iter().enumerate() {
            let mut taken = vec![false; q.truth.len()];
            for &i in &order {
                let p = q.predicted[i].center();
                let best = q
                    .truth
                    .iter()
                    .enumerate()
                    .filter(|(g, _)| !taken[*g])
                    .map(|(g, t)| (g, (t.center()[0] - p[0]).hypot(t.center()[1] - p[1])))
                    .filter(|(_, dist)| *dist < d)
                    .min_by(|a, b| a.1.total_cmp(&b.1));
                if let Some((g, _)) = best {
                    taken[g] = true;
                }
                s[k].push((q.predicted[i].score, best.is_some()));
            }
        }
    }
    let mut m = Metrics::default();
    let (mut tp, mut fp, mut fn_, mut truth, mut at) = (0, 0, 0, 0, [0usize; 2]);
    let mut ious = Vec::new();
    let mut aps = Vec::new();
    for (name, c) in cats.iter_mut() {
        let mat = matched_at.get(name).copied().unwrap_or_default();
        c.iou = iou_sum.get(name).copied().unwrap_or(0.0) / (c.truth.max(1) as f64);
        c.acc_25 = ratio(mat[0], c.truth);
        c.acc_50 = ratio(mat[1], c.truth);
        if let Some(s) = scored.get(name) {
            c.ap = std::array::from_fn(|k| nuscenes_ap(s[k].clone(), c.truth));
        }
        if c.truth > 0 {
            ious.push(c.iou);
            aps.extend(c.ap);
        }
        tp += c.tp;
        fp += c.fp;
        fn_ += c.fn_;
        truth += c.truth;
        at[0] += mat[0];
        at[1] += mat[1];
    }
    m.accuracy = ratio(tp, tp + fp + fn_);
    m.recall = ratio(tp, tp + fn_);
    m.f1 = ratio(2 * tp, 2 * tp + fp + fn_);
    m.miou = if ious.is_empty() {
        0.0
    } else {
        ious.iter().sum::<f64>() / ious.len() as f64
    };
    m.acc_25 = ratio(at[0], truth);
    m.acc_50 = ratio(at[1], truth);
    m.nusc_map = if aps.is_empty() {
        0.0
    } else {
        aps.iter().sum::<f64>() / aps.len() as f64
    };
    m.categories = cats;
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(x: f64, y: f64) -> Box3D {
        Box3D::from_params([x, y, 0.0, 4.0, 2.0, 1.5, 0.0]).unwrap()
    }

    fn det(x: f64, y: f64, score: f32) -> Detection {
        Detection::new([x, y, 0.0, 4.0, 2.0, 1.5, 0.0], score)
    }

    fn cars(truth: Vec<Box3D>, predicted: Vec<Detection>) -> Query {
        Query {
            sample: "s".into(),
            category: "car".into(),
            truth,
            predicted,
        }
    }

    #[test]
    fn a_perfect_prediction_scores_one() {
        let q = cars(
            vec![b(10.0, 0.0), b(-5.0, 3.0)],
            vec![det(-5.0, 3.0, 0.9), det(10.0, 0.0, 0.8)],
        );
        let m = evaluate(&[q]).unwrap();
        for v in [
            m.accuracy, m.recall, m.f1, m.miou, m.acc_25, m.acc_50, m.nusc_map,
        ] {
            assert!((v - 1.0).abs() < 1e-9, "{m:?}");
        }
    }

    #[test]
    fn a_shifted_prediction_loses_what_the_rules_say() {
        // Shifted 1.5 m along the length (4 m): IoU = 2.5 / 5.5 = 0.4545…; centre distance 1.5 m.
        let q = cars(vec![b(10.0, 0.0)], vec![det(11.5, 0.0, 0.9)]);
        let m = evaluate(&[q]).unwrap();
        let iou = 2.5 / 5.5;
        assert!((m.miou - iou).abs() < 1e-9, "{}", m.miou);
        assert_eq!((m.acc_25, m.acc_50), (1.0, 0.0));
        assert_eq!((m.accuracy, m.recall, m.f1), (1.0, 1.0, 1.0));
        // Missed at 0.5 and 1 m, found at 2 and 4 m: AP 0, 0, 1, 1.
        let c = &m.categories["car"];
        for (got, want) in c.ap.iter().zip([0.0, 0.0, 1.0, 1.0]) {
            assert!((got - want).abs() < 1e-12, "{:?}", c.ap);
        }
        assert!((m.nusc_map - 0.5).abs() < 1e-12);
        // A far prediction: every count moves the way the rule says.
        let q = cars(vec![b(10.0, 0.0)], vec![det(30.0, 0.0, 0.9)]);
        let m = evaluate(&[q]).unwrap();
        let c = &m.categories["car"];
        assert_eq!((c.tp, c.fp, c.fn_), (0, 1, 1));
        assert_eq!(
            (m.accuracy, m.recall, m.f1, m.nusc_map),
            (0.0, 0.0, 0.0, 0.0)
        );
    }

    #[test]
    fn ap_matches_the_devkit_rule_on_a_hand_computed_curve() {
        // TP, FP, TP over 2 truths: precision 1, 0.5, 0.667 at recall 0.5, 0.5, 1.
        // Interpolated as numpy does: 1 below recall 0.5, then the segment from the last point at recall 0.5,
        // (0.5, 0.5), to (1, 0.667).
        let ap = nuscenes_ap(vec![(0.9, true), (0.8, false), (0.7, true)], 2);
        let mut want = 0.0;
        for k in 11..=100 {
            let r = k as f64 / 100.0;
            let p = if r < 0.5 {
                1.0
            } else {
                0.5 + (2.0 / 3.0 - 0.5) * (r - 0.5) / 0.5
            };
            want += (p - 0.1f64).max(0.0);
        }
        want /= 90.0 * 0.9;
        assert!((ap - want).abs() < 1e-9, "{ap} vs {want}");
        assert_eq!(nuscenes_ap(vec![], 3), 0.0);
    }
}

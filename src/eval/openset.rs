//! The open-set protocol's report: the categories held out of training (`holdout_categories` of the recipe,
//! `vlm3d eval --holdout`) scored apart from the seen ones. Each side is [`evaluate`] on its own queries, so a
//! category's numbers are the same as in the full report; mIoU, mAP and Acc@0.25 are over that side's
//! categories with ground truth. Evaluation itself is unchanged (the paper's prompt, the same queries).
use serde::Serialize;

use super::metrics::{evaluate, CategoryMetrics, Metrics, Query, DISTANCES_M};
use crate::Result;

/// One predictor's results split into seen and unseen (held-out) categories.
#[derive(Debug, Clone, Serialize)]
pub struct OpenSetSplit {
    /// The held-out categories (prompt names), as given.
    pub holdout: Vec<String>,
    /// Held-out categories with no query in the bag (nothing to score).
    pub unseen_missing: Vec<String>,
    /// Metrics over the queries of categories not held out.
    pub seen: Metrics,
    /// Metrics over the queries of held-out categories.
    pub unseen: Metrics,
}

/// Splits `queries` by `holdout` (prompt names) and scores each side.
pub fn split(queries: &[Query], holdout: &[String]) -> Result<OpenSetSplit> {
    let (unseen, seen): (Vec<Query>, Vec<Query>) = queries
        .iter()
        .cloned()
        .partition(|q| holdout.contains(&q.category));
    let unseen = evaluate(&unseen)?;
    Ok(OpenSetSplit {
        holdout: holdout.to_vec(),
        unseen_missing: holdout
            .iter()
            .filter(|h| !unseen.categories.contains_key(*h))
            .cloned()
            .collect(),
        seen: evaluate(&seen)?,
        unseen,
    })
}

/// Mean AP per distance threshold over the categories with ground truth (the mAP's parts).
fn mean_ap(m: &Metrics) -> [f64; 4] {
    let with_truth: Vec<&CategoryMetrics> = m.categories.values().filter(|c| c.truth > 0).collect();
    std::array::from_fn(|k| {
        if with_truth.is_empty() {
            0.0
        } else {
            with_truth.iter().map(|c| c.ap[k]).sum::<f64>() / with_truth.len() as f64
        }
    })
}

fn table(title: &str, m: &Metrics, missing: &[String]) -> String {
    let dist = DISTANCES_M.map(|d| format!("AP@{d} m"));
    let mut md = format!(
        "\n### {title}\n\n| category | truth | predicted | IoU | Acc@0.25 | {} | mAP |\n|---|---|---|---|---|---|---|---|---|---|\n",
        dist.join(" | ")
    );
    for (c, v) in &m.categories {
        md.push_str(&format!(
            "| {c} | {} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} |\n",
            v.truth,
            v.predicted,
            v.iou,
            v.acc_25,
            v.ap[0],
            v.ap[1],
            v.ap[2],
            v.ap[3],
            v.ap.iter().sum::<f64>() / 4.0
        ));
    }
    for c in missing {
        md.push_str(&format!(
            "| {c} | — | — | — | — | — | — | — | — | — (not in the bag) |\n"
        ));
    }
    let ap = mean_ap(m);
    let n = m.categories.values().filter(|c| c.truth > 0).count();
    md.push_str(&format!(
        "| **all ({n} with ground truth)** | {} | {} | **mIoU {:.3}** | **{:.3}** | {:.3} | {:.3} | {:.3} | {:.3} | **{:.3}** |\n",
        m.categories.values().map(|c| c.truth).sum::<usize>(),
        m.categories.values().map(|c| c.predicted).sum::<usize>(),
        m.miou,
        m.acc_25,
        ap[0],
        ap[1],
        ap[2],
        ap[3],
        m.nusc_map
    ));
    md
}

/// The seen / unseen summary of several predictors as one Markdown table (what `vlm3d eval` prints): per
/// predictor and side the categories with ground truth, nuScenes mAP, Acc@0.25, mIoU and F1.
pub fn summary_table(rows: &[(&str, &OpenSetSplit)]) -> String {
    let mut md = String::from(
        "| predictor | categories | with truth | nuScenes mAP | Acc@0.25 | mIoU | F1 |\n|---|---|---|---|---|---|---|\n",
    );
    for (name, s) in rows {
        for (side, m) in [("seen", &s.seen), ("unseen (held out)", &s.unseen)] {
            let with_truth = m.categories.values().filter(|c| c.truth > 0).count();
            md.push_str(&format!(
                "| {name} | {side} | {with_truth} | {:.4} | {:.4} | {:.4} | {:.4} |\n",
                m.nusc_map, m.acc_25, m.miou, m.f1
            ));
        }
    }
    md
}

/// The two tables (seen, unseen) of one predictor for `report.md`.
pub fn markdown(name: &str, s: &OpenSetSplit) -> String {
    let mut md = format!(
        "\n## {name}: open set (held out of training: {})\n\nSeen and unseen categories scored apart, each \
         with the paper's prompt; the last row is over the side's categories with ground truth (IoU column: \
         mIoU; Acc@0.25 over all its ground truth; mAP: nuScenes mAP).\n",
        s.holdout.join(", ")
    );
    md.push_str(&table(
        &format!("{name}: seen categories (trained on)"),
        &s.seen,
        &[],
    ));
    md.push_str(&table(
        &format!("{name}: unseen categories (held out)"),
        &s.unseen,
        &s.unseen_missing,
    ));
    md
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geometry::Box3D;
    use crate::perception::Detection;

    fn query(sample: &str, category: &str, truth: &[[f64; 7]], predicted: &[[f64; 7]]) -> Query {
        Query {
            sample: sample.into(),
            category: category.into(),
            truth: truth
                .iter()
                .map(|p| Box3D::from_params(*p).unwrap())
                .collect(),
            predicted: predicted.iter().map(|p| Detection::new(*p, 0.9)).collect(),
        }
    }

    #[test]
    fn seen_and_unseen_are_scored_apart() {
        let car = [10.0, 0.0, 0.8, 4.5, 1.9, 1.6, 0.0];
        let trailer = [20.0, 5.0, 1.9, 12.0, 2.9, 3.8, 0.3];
        let qs = vec![
            query("s1", "car", &[car], &[car]),
            query("s1", "trailer", &[trailer], &[]),
            query("s2", "car", &[car], &[car]),
            query("s2", "bus", &[], &[]),
        ];
        let s = split(&qs, &["trailer".into(), "barrier".into()]).unwrap();
        assert_eq!(s.seen.categories.keys().collect::<Vec<_>>(), ["bus", "car"]);
        assert_eq!(s.unseen.categories.keys().collect::<Vec<_>>(), ["trailer"]);
        assert_eq!(s.unseen_missing, ["barrier"]);
        assert!((s.seen.miou - 1.0).abs() < 1e-9 && (s.seen.acc_25 - 1.0).abs() < 1e-9);
        assert_eq!((s.unseen.miou, s.unseen.acc_25), (0.0, 0.0));
        // Per-category numbers equal the full report's.
        let all = evaluate(&qs).unwrap();
        assert_eq!(all.categories["car"].iou, s.seen.categories["car"].iou);
        let md = markdown("model", &s);
        assert!(
            md.contains("seen categories (trained on)")
                && md.contains("unseen categories (held out)")
        );
        assert!(
            md.contains("| barrier | —") && md.contains("**mIoU 1.000**"),
            "{md}"
        );
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["unseen"]["categories"]["trailer"]["truth"], 1);
        let t = summary_table(&[("model", &s)]);
        // Seen: car (truth 2, all matched) and bus (no truth); unseen: trailer (missed).
        assert!(t.contains("| model | seen | 1 | "), "{t}");
        assert!(t.contains("| 1.0000 | 1.0000 |"), "{t}");
        assert!(
            t.contains("| model | unseen (held out) | 1 | 0.0000 | 0.0000 | 0.0000 | 0.0000 |"),
            "{t}"
        );
    }
}

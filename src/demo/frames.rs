//! The node demo's frames, ROS-free: each sample of the synthetic bag as the perception node sees it (its six
//! views, keyed by the CAM_FRONT image stamp that the node's outputs carry) with its ground truth, and the
//! recorded `vlm3d/BoundingBox3DArray` boxes as drawable boxes.
use std::collections::BTreeMap;
use std::path::Path;

use crate::data::bag::msgs::BoundingBox3DMsg;
use crate::data::dataset::{prompt_name, Dataset, DatasetConfig, Example};
use crate::geometry::{Frame, VisibilityRule};
use crate::{Error, Result};

use super::picture::DrawBox;

/// One sample of the bag: its views in rig order and every box some camera sees (LiDAR frame).
#[derive(Debug, Clone)]
pub struct DemoFrame {
    /// nuScenes sample token.
    pub sample_token: String,
    /// Stamp of the first view's image (CAM_FRONT): the stamp of the node's outputs for this set, ns.
    pub stamp_ns: u64,
    /// The six views, rig order.
    pub views: Vec<Example>,
    /// Ground truth seen (at least one corner) by some camera, one per instance, LiDAR frame.
    pub truth: Vec<DrawBox>,
}

impl DemoFrame {
    /// Ground truth of these categories (prompt names).
    pub fn truth_of(&self, categories: &[String]) -> Vec<DrawBox> {
        self.truth
            .iter()
            .filter(|b| categories.contains(&b.label))
            .cloned()
            .collect()
    }

    /// Ground truth of other categories.
    pub fn truth_not_of(&self, categories: &[String]) -> Vec<DrawBox> {
        self.truth
            .iter()
            .filter(|b| !categories.contains(&b.label))
            .cloned()
            .collect()
    }
}

/// Reads every sample of a bag written by `vlm3d convert-nuscenes` (views in rig order, boxes in the LiDAR
/// frame, partly visible boxes included).
pub fn load_demo_frames(bag: &Path) -> Result<Vec<DemoFrame>> {
    let cfg = DatasetConfig {
        target_frame: Frame::Lidar,
        visibility: VisibilityRule::AnyCorner,
        keep_empty: true,
        ..Default::default()
    };
    let mut frames = Vec::new();
    for views in Dataset::new([bag.to_path_buf()], cfg).by_sample() {
        let views = views?;
        let first = views.first().ok_or_else(|| {
            Error::invalid(format!("bag {}", bag.display()), "a sample without views")
        })?;
        let mut seen: BTreeMap<String, DrawBox> = BTreeMap::new();
        for v in &views {
            for b in &v.boxes {
                seen.entry(b.instance_id.clone())
                    .or_insert_with(|| DrawBox {
                        params: b.params(Frame::Lidar),
                        label: prompt_name(&b.category),
                        score: None,
                    });
            }
        }
        frames.push(DemoFrame {
            sample_token: first.sample_token.clone(),
            stamp_ns: first.stamp_ns,
            truth: seen.into_values().collect(),
            views,
        });
    }
    if frames.is_empty() {
        return Err(Error::invalid(
            format!("bag {}", bag.display()),
            "holds no complete sample",
        ));
    }
    Ok(frames)
}

/// The `n` categories (prompt names) with the most ground-truth boxes over the frames, most first (ties
/// alphabetical); `car` when there is no box at all.
pub fn most_common_categories(frames: &[DemoFrame], n: usize) -> Vec<String> {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for f in frames {
        for b in &f.truth {
            *counts.entry(b.label.as_str()).or_default() += 1;
        }
    }
    let mut v: Vec<(&str, usize)> = counts.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let out: Vec<String> = v.into_iter().take(n).map(|(c, _)| c.to_string()).collect();
    if out.is_empty() {
        vec!["car".into()]
    } else {
        out
    }
}

/// Yaw about +z of a unit quaternion (w, x, y, z).
pub fn yaw_of_quaternion(w: f64, x: f64, y: f64, z: f64) -> f64 {
    (2.0 * (w * z + x * y)).atan2(1.0 - 2.0 * (y * y + z * z))
}

/// A recorded box as a drawable one (`[x, y, z, l, w, h, yaw]` in the message's frame).
pub fn draw_box_from_msg(b: &BoundingBox3DMsg) -> DrawBox {
    let p = &b.center.position;
    let q = &b.center.orientation;
    DrawBox {
        params: [
            p.x,
            p.y,
            p.z,
            b.size.x,
            b.size.y,
            b.size.z,
            yaw_of_quaternion(q.w, q.x, q.y, q.z),
        ],
        label: b.label.clone(),
        score: Some(b.score),
    }
}

/// Among the processed stamps, the frame with the most ground truth of `categories` (the earliest on ties),
/// matching a stamp to the frame whose CAM_FRONT stamp is within `tolerance_ns`. `None` when no processed
/// stamp matches a frame.
pub fn frame_with_most_truth<'a>(
    frames: &'a [DemoFrame],
    processed_stamps: &[i64],
    categories: &[String],
    tolerance_ns: u64,
) -> Option<(&'a DemoFrame, i64)> {
    let mut best: Option<(&DemoFrame, i64, usize)> = None;
    let mut stamps = processed_stamps.to_vec();
    stamps.sort_unstable();
    stamps.dedup();
    for s in stamps {
        let Some(f) = frames
            .iter()
            .find(|f| (f.stamp_ns as i64).abs_diff(s) <= tolerance_ns)
        else {
            continue;
        };
        let n = f.truth_of(categories).len();
        if best.is_none_or(|(_, _, m)| n > m) {
            best = Some((f, s, n));
        }
    }
    best.map(|(f, s, _)| (f, s))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(stamp: u64, labels: &[&str]) -> DemoFrame {
        DemoFrame {
            sample_token: format!("s{stamp}"),
            stamp_ns: stamp,
            views: Vec::new(),
            truth: labels
                .iter()
                .map(|l| DrawBox {
                    params: [1.0, 2.0, 0.0, 1.0, 1.0, 1.0, 0.0],
                    label: l.to_string(),
                    score: None,
                })
                .collect(),
        }
    }

    #[test]
    fn the_frame_with_most_prompted_truth_among_the_processed_is_picked() {
        let frames = vec![
            frame(1_000_000, &["car"]),
            frame(2_000_000, &["car", "car", "truck", "truck", "truck"]),
            frame(3_000_000, &["car", "car", "car"]),
        ];
        let cats = vec!["car".to_string()];
        // Frame 3 is not processed; frame 2 beats frame 1.
        let (f, s) = frame_with_most_truth(&frames, &[1_000_000, 2_000_100], &cats, 1_000).unwrap();
        assert_eq!((f.stamp_ns, s), (2_000_000, 2_000_100));
        let (f, _) = frame_with_most_truth(&frames, &[3_000_000, 2_000_000], &cats, 0).unwrap();
        assert_eq!(f.stamp_ns, 3_000_000);
        assert!(frame_with_most_truth(&frames, &[9], &cats, 1_000).is_none());
        assert_eq!(
            most_common_categories(&frames, 2),
            ["car".to_string(), "truck".to_string()]
        );
        assert_eq!(most_common_categories(&[], 2), ["car".to_string()]);
    }

    #[test]
    fn yaw_comes_back_from_the_quaternion() {
        for yaw in [-3.0, -1.2, 0.0, 0.4, 2.9] {
            let (s, c) = (yaw / 2.0f64).sin_cos();
            assert!((yaw_of_quaternion(c, 0.0, 0.0, s) - yaw).abs() < 1e-12);
        }
    }
}

//! Bird's-eye-view non-maximum suppression, to merge detections of the same object from overlapping cameras.
use super::{bev_iou, Box3D};
use crate::{Error, Result};

/// Greedy BEV NMS: keeps the highest-scoring box, drops every remaining box whose BEV IoU with a kept one
/// exceeds `iou_threshold`, and repeats. Returns the kept indices, highest score first (ties keep input order).
pub fn bev_nms(boxes: &[Box3D], scores: &[f64], iou_threshold: f64) -> Result<Vec<usize>> {
    if boxes.len() != scores.len() {
        return Err(Error::invalid(
            "nms input",
            format!("{} boxes but {} scores", boxes.len(), scores.len()),
        ));
    }
    if let Some(i) = scores.iter().position(|s| !s.is_finite()) {
        return Err(Error::invalid(
            "nms input",
            format!("score {i} is {}", scores[i]),
        ));
    }
    if !(0.0..=1.0).contains(&iou_threshold) {
        return Err(Error::invalid(
            "nms threshold",
            format!("{iou_threshold} is outside [0, 1]"),
        ));
    }
    let mut order: Vec<usize> = (0..boxes.len()).collect();
    order.sort_by(|&i, &j| scores[j].total_cmp(&scores[i]));
    let mut keep: Vec<usize> = Vec::new();
    for i in order {
        if keep
            .iter()
            .all(|&k| bev_iou(&boxes[k], &boxes[i]) <= iou_threshold)
        {
            keep.push(i);
        }
    }
    Ok(keep)
}

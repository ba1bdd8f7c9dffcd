//! What rviz2 draws for a box, ROS-free: the twelve edges as line-list point pairs and a stable colour per
//! label (the node wraps them in `visualization_msgs/Marker`s).
use super::detections::Detection;
use crate::Result;

/// The corner pairs of a box's twelve edges, in nuScenes' corner order (0–3 the front face, 4–7 the back).
pub const BOX_EDGES: [(usize, usize); 12] = [
    (0, 1),
    (1, 2),
    (2, 3),
    (3, 0),
    (4, 5),
    (5, 6),
    (6, 7),
    (7, 4),
    (0, 4),
    (1, 5),
    (2, 6),
    (3, 7),
];

/// The 24 points of a `LINE_LIST` marker for the box (each consecutive pair one edge).
pub fn box_edge_points(d: &Detection) -> Result<Vec<[f64; 3]>> {
    let c = d.to_box3d()?.corners();
    Ok(BOX_EDGES
        .iter()
        .flat_map(|&(a, b)| [c[a], c[b]])
        .map(|p| [p.x, p.y, p.z])
        .collect())
}

/// A saturated colour (RGBA in [0, 1]) that is the same for a label in every frame and every run.
pub fn label_color(label: &str) -> [f32; 4] {
    // FNV-1a: stable across runs and platforms (std's hasher is seeded per process).
    let mut h: u32 = 0x811c_9dc5;
    for b in label.trim().to_lowercase().bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    let hue = f64::from(h % 360) / 60.0;
    let x = 1.0 - (hue % 2.0 - 1.0).abs();
    let (r, g, b) = match hue as u32 {
        0 => (1.0, x, 0.0),
        1 => (x, 1.0, 0.0),
        2 => (0.0, 1.0, x),
        3 => (0.0, x, 1.0),
        4 => (x, 0.0, 1.0),
        _ => (1.0, 0.0, x),
    };
    [r as f32, g as f32, b as f32, 1.0]
}

/// The text shown above a box: its label and score.
pub fn box_caption(d: &Detection) -> String {
    format!("{} {:.2}", d.label, d.score)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edges_have_the_box_dimensions() {
        let d = Detection::new([3.0, -1.0, 0.5, 4.0, 2.0, 1.5, 0.4], 0.9);
        let pts = box_edge_points(&d).unwrap();
        assert_eq!(pts.len(), 24);
        let len = |i: usize| {
            let (a, b) = (pts[2 * i], pts[2 * i + 1]);
            ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2) + (a[2] - b[2]).powi(2)).sqrt()
        };
        let mut lengths: Vec<f64> = (0..12).map(len).collect();
        lengths.sort_by(f64::total_cmp);
        // Four edges each of height 1.5, width 2 and length 4.
        for (i, want) in [1.5, 2.0, 4.0].iter().enumerate() {
            for l in &lengths[4 * i..4 * i + 4] {
                assert!((l - want).abs() < 1e-12, "{lengths:?}");
            }
        }
        // Every corner is used by three edges, and the points' mean is the centre.
        let mean: Vec<f64> = (0..3)
            .map(|k| pts.iter().map(|p| p[k]).sum::<f64>() / 24.0)
            .collect();
        assert!((mean[0] - 3.0).abs() < 1e-12 && (mean[1] + 1.0).abs() < 1e-12);
    }

    #[test]
    fn colours_are_stable_and_distinguish_labels() {
        assert_eq!(label_color("car"), label_color(" Car "));
        assert_ne!(label_color("car"), label_color("pedestrian"));
        for l in ["car", "truck", "bus", "pedestrian", ""] {
            let c = label_color(l);
            assert!(c.iter().all(|v| (0.0..=1.0).contains(v)));
            assert_eq!(c.iter().take(3).cloned().fold(0.0, f32::max), 1.0);
        }
    }

    #[test]
    fn invalid_boxes_have_no_edges() {
        assert!(box_edge_points(&Detection::new(
            [f64::NAN, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0],
            0.5
        ))
        .is_err());
    }
}

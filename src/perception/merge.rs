//! The last step of detection, shared by the demo, `eval` and the perception node: each view's boxes into the
//! LiDAR frame with that camera's extrinsics, then one set across cameras by BEV NMS (an object seen by two
//! overlapping cameras is reported once, with its best score).
use nalgebra::Isometry3;

use super::detections::{Detection, ViewDetections};
use crate::geometry::{bev_nms, Frame, OrientedBox3D};
use crate::Result;

/// One camera view's boxes and where that camera sits.
#[derive(Debug, Clone, Copy)]
pub struct ViewInput<'a> {
    /// The head's boxes for the view.
    pub detections: &'a ViewDetections,
    /// Camera optical frame → LiDAR frame (from `/tf_static`, the bag, or the rig).
    pub camera_to_lidar: &'a Isometry3<f64>,
    /// Camera name written into each box's `camera`.
    pub camera: &'a str,
}

/// What [`merge_views`] made of the views.
#[derive(Debug, Clone)]
pub struct Merged {
    /// Boxes in the LiDAR frame after BEV NMS, highest score first.
    pub boxes: Vec<Detection>,
    /// Boxes before the merge (every view's valid boxes).
    pub before_nms: usize,
    /// Boxes dropped because they could not be placed (non-finite or non-positive sizes).
    pub invalid: usize,
}

/// A head box of `frame` in the LiDAR frame: camera-frame boxes go through `camera_to_lidar`; LiDAR-frame
/// boxes (a head trained in the paper's setting) are taken as they are.
pub fn to_lidar(
    d: &Detection,
    frame: Frame,
    camera_to_lidar: &Isometry3<f64>,
) -> Result<Detection> {
    let bbox = match frame {
        Frame::Camera => OrientedBox3D::from_camera_params(d.bbox)?
            .transform(camera_to_lidar)
            .to_box3d()?
            .params(),
        Frame::Lidar => d.to_box3d()?.params(),
    };
    Ok(Detection { bbox, ..d.clone() })
}

/// Moves every view's boxes into the LiDAR frame and merges them with BEV NMS at `nms_iou`; at most
/// `max_boxes` are kept. Invalid boxes are counted and logged, not fatal.
pub fn merge_views(views: &[ViewInput<'_>], nms_iou: f64, max_boxes: usize) -> Result<Merged> {
    let mut raw = Vec::new();
    let mut invalid = 0;
    for v in views {
        for d in &v.detections.boxes {
            match to_lidar(d, v.detections.frame, v.camera_to_lidar) {
                Ok(mut b) => {
                    b.camera = v.camera.to_string();
                    raw.push(b);
                }
                Err(e) => {
                    invalid += 1;
                    tracing::warn!("{}: dropping an invalid box: {e}", v.camera);
                }
            }
        }
    }
    let boxes = raw
        .iter()
        .map(|d| d.to_box3d())
        .collect::<Result<Vec<_>>>()?;
    let scores: Vec<f64> = raw.iter().map(|d| f64::from(d.score)).collect();
    let keep = bev_nms(&boxes, &scores, nms_iou)?;
    Ok(Merged {
        boxes: keep
            .iter()
            .take(max_boxes)
            .map(|&i| raw[i].clone())
            .collect(),
        before_nms: raw.len(),
        invalid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::perception::rig::Rig;
    use nalgebra::Point3;

    fn view(frame: Frame, boxes: Vec<Detection>) -> ViewDetections {
        ViewDetections {
            view: 0,
            frame,
            boxes,
        }
    }

    #[test]
    fn a_box_ahead_of_the_front_camera_lands_ahead_of_the_lidar() {
        // 10 m along CAM_FRONT's optical axis, heading along the axis (camera yaw π/2 → +z).
        let rig = Rig::nuscenes();
        let t = rig.camera_to_lidar(0);
        let d = Detection::new(
            [0.0, 0.0, 10.0, 4.0, 2.0, 1.5, std::f64::consts::FRAC_PI_2],
            0.9,
        );
        let l = to_lidar(&d, Frame::Camera, &t).unwrap();
        // Brute force: the camera-frame centre through the isometry.
        let want = t * Point3::new(0.0, 0.0, 10.0);
        for k in 0..3 {
            assert!((l.bbox[k] - want[k]).abs() < 1e-9);
        }
        // LiDAR y is forward: the heading along the optical axis is yaw π/2 in the LiDAR frame.
        assert!(
            (l.bbox[6] - std::f64::consts::FRAC_PI_2).abs() < 1e-9,
            "{:?}",
            l.bbox
        );
        assert_eq!(&l.bbox[3..6], &[4.0, 2.0, 1.5]);
    }

    #[test]
    fn overlapping_cameras_report_an_object_once() {
        let id = Isometry3::identity();
        let a = view(
            Frame::Lidar,
            vec![Detection::new([5.0, 0.0, 0.0, 4.0, 2.0, 1.5, 0.0], 0.6)],
        );
        let b = view(
            Frame::Lidar,
            vec![
                Detection::new([5.1, 0.0, 0.0, 4.0, 2.0, 1.5, 0.0], 0.8),
                Detection::new([-5.0, 0.0, 0.0, 4.0, 2.0, 1.5, 0.0], 0.3),
                Detection::new([0.0, 0.0, 0.0, f64::NAN, 2.0, 1.5, 0.0], 0.9),
            ],
        );
        let views = [
            ViewInput {
                detections: &a,
                camera_to_lidar: &id,
                camera: "cam_a",
            },
            ViewInput {
                detections: &b,
                camera_to_lidar: &id,
                camera: "cam_b",
            },
        ];
        let m = merge_views(&views, 0.3, 10).unwrap();
        assert_eq!((m.before_nms, m.invalid), (3, 1));
        let got: Vec<(f32, &str)> = m
            .boxes
            .iter()
            .map(|d| (d.score, d.camera.as_str()))
            .collect();
        assert_eq!(got, [(0.8, "cam_b"), (0.3, "cam_b")]);
        assert_eq!(merge_views(&views, 0.3, 1).unwrap().boxes.len(), 1);
    }
}

//! Conversions between the package's messages and the library's one detection type
//! ([`crate::perception::Detection`], grouped per prompt as [`crate::perception::Detections`]), and from it to
//! the ecosystem's `vision_msgs/Detection3DArray` and Autoware's `autoware_perception_msgs/DetectedObjects`.
use r2r::autoware_perception_msgs::msg::{
    DetectedObject, DetectedObjectKinematics, DetectedObjects, ObjectClassification, Shape,
};
use r2r::builtin_interfaces::msg::Time;
use r2r::geometry_msgs::msg::{
    Point, Polygon, Pose, PoseWithCovariance, Quaternion, TwistWithCovariance, Vector3,
};
use r2r::std_msgs::msg::Header;
use r2r::vision_msgs::msg::{
    BoundingBox3D as VisionBox, Detection3D, Detection3DArray, ObjectHypothesis,
    ObjectHypothesisWithPose,
};
use r2r::vlm3d::msg::{BoundingBox3D, BoundingBox3DArray};

use crate::geometry::PinholeCamera;
use crate::perception::{Detection, Detections};
use crate::runtime::autoware::AutowareObject;
use crate::{Error, Result};

/// The quaternion of a rotation by `yaw` radians about +z.
///
/// ```
/// use vlm3d::ros::convert::{quaternion_to_yaw, yaw_to_quaternion};
/// let q = yaw_to_quaternion(std::f64::consts::FRAC_PI_2);
/// assert!((q.z - q.w).abs() < 1e-12);
/// assert!((quaternion_to_yaw(&q) - std::f64::consts::FRAC_PI_2).abs() < 1e-12);
/// ```
pub fn yaw_to_quaternion(yaw: f64) -> Quaternion {
    let half = 0.5 * yaw;
    Quaternion {
        x: 0.0,
        y: 0.0,
        z: half.sin(),
        w: half.cos(),
    }
}

/// The heading (rotation about +z, in (-π, π]) of a quaternion; roll and pitch are ignored.
/// The quaternion need not be normalized.
pub fn quaternion_to_yaw(q: &Quaternion) -> f64 {
    let siny = 2.0 * (q.w * q.z + q.x * q.y);
    let cosy = q.w * q.w + q.x * q.x - q.y * q.y - q.z * q.z;
    siny.atan2(cosy)
}

/// A ROS time from nanoseconds since the epoch (negative values are clamped to 0, the latest
/// representable time saturates).
pub fn time_from_nanos(ns: i64) -> Time {
    let ns = ns.max(0);
    let sec = (ns / 1_000_000_000).min(i64::from(i32::MAX)) as i32;
    Time {
        sec,
        nanosec: (ns % 1_000_000_000) as u32,
    }
}

/// Nanoseconds since the epoch of a ROS time.
pub fn nanos_from_time(t: &Time) -> i64 {
    i64::from(t.sec) * 1_000_000_000 + i64::from(t.nanosec)
}

impl From<&Detection> for BoundingBox3D {
    fn from(b: &Detection) -> Self {
        let [x, y, z, l, w, h, yaw] = b.bbox;
        BoundingBox3D {
            center: Pose {
                position: Point { x, y, z },
                orientation: yaw_to_quaternion(yaw),
            },
            size: Vector3 { x: l, y: w, z: h },
            label: b.label.clone(),
            score: b.score,
            camera: b.camera.clone(),
            instance_id: b.instance_id.clone(),
        }
    }
}

impl TryFrom<&BoundingBox3D> for Detection {
    type Error = Error;

    /// Rejects non-finite values, negative sizes and an all-zero orientation quaternion.
    fn try_from(m: &BoundingBox3D) -> Result<Self> {
        let p = &m.center.position;
        let q = &m.center.orientation;
        let center = [p.x, p.y, p.z];
        let size = [m.size.x, m.size.y, m.size.z];
        let quat = [q.x, q.y, q.z, q.w];
        if center
            .iter()
            .chain(&size)
            .chain(&quat)
            .any(|v| !v.is_finite())
            || !m.score.is_finite()
        {
            return Err(Error::invalid("BoundingBox3D", "non-finite value"));
        }
        if size.iter().any(|&s| s < 0.0) {
            return Err(Error::invalid(
                "BoundingBox3D",
                format!("negative size {size:?}"),
            ));
        }
        if quat.iter().all(|&v| v == 0.0) {
            return Err(Error::invalid(
                "BoundingBox3D",
                "zero orientation quaternion",
            ));
        }
        let [x, y, z] = center;
        let [l, w, h] = size;
        Ok(Detection {
            label: m.label.clone(),
            camera: m.camera.clone(),
            instance_id: m.instance_id.clone(),
            ..Detection::new([x, y, z, l, w, h, quaternion_to_yaw(q)], m.score)
        })
    }
}

impl From<&Detections> for BoundingBox3DArray {
    fn from(d: &Detections) -> Self {
        BoundingBox3DArray {
            header: Header {
                stamp: time_from_nanos(d.stamp_ns),
                frame_id: d.frame_id.clone(),
            },
            prompt: d.prompt.clone(),
            boxes: d.boxes.iter().map(BoundingBox3D::from).collect(),
        }
    }
}

impl TryFrom<&BoundingBox3DArray> for Detections {
    type Error = Error;

    fn try_from(m: &BoundingBox3DArray) -> Result<Self> {
        Ok(Detections {
            stamp_ns: nanos_from_time(&m.header.stamp),
            frame_id: m.header.frame_id.clone(),
            prompt: m.prompt.clone(),
            boxes: m
                .boxes
                .iter()
                .map(Detection::try_from)
                .collect::<Result<_>>()?,
        })
    }
}

/// The same boxes as the ecosystem's `vision_msgs/Detection3DArray`: one detection per box with a
/// single hypothesis (class_id = label, score), the box pose as the hypothesis pose (zero covariance:
/// unknown), and the instance id as the detection id. The prompt has no place there and is dropped.
pub fn to_detection3d_array(m: &BoundingBox3DArray) -> Detection3DArray {
    Detection3DArray {
        header: m.header.clone(),
        detections: m
            .boxes
            .iter()
            .map(|b| Detection3D {
                header: m.header.clone(),
                results: vec![ObjectHypothesisWithPose {
                    hypothesis: ObjectHypothesis {
                        class_id: b.label.clone(),
                        score: f64::from(b.score),
                    },
                    pose: PoseWithCovariance {
                        pose: b.center.clone(),
                        covariance: vec![0.0; 36],
                    },
                }],
                bbox: VisionBox {
                    center: b.center.clone(),
                    size: b.size.clone(),
                },
                id: b.instance_id.clone(),
            })
            .collect(),
    }
}

/// One frame's boxes, every prompt's in prompt order, as Autoware's `DetectedObjects` (one message per frame, as
/// Autoware's trackers take one per sensor frame): header = the frame's (the first prompt's stamp and frame, as
/// on `BoundingBox3DArray`), each box an object with the fields of [`AutowareObject`] (label from the box's
/// category, probabilities = score, bounding-box shape, `SIGN_UNKNOWN` orientation, no covariance, no twist).
/// `None` for a frame without prompts; an invalid box is an error (no message rather than one that disagrees
/// with the boxes).
pub fn to_detected_objects(frame: &[Detections]) -> Result<Option<DetectedObjects>> {
    let Some(first) = frame.first() else {
        return Ok(None);
    };
    let mut objects = Vec::with_capacity(frame.iter().map(|d| d.boxes.len()).sum());
    for b in frame.iter().flat_map(|d| &d.boxes) {
        let o = AutowareObject::from_detection(b)?;
        let [x, y, z] = o.position;
        let [qx, qy, qz, qw] = o.orientation_xyzw;
        let [dx, dy, dz] = o.dimensions;
        objects.push(DetectedObject {
            existence_probability: o.existence_probability,
            classification: vec![ObjectClassification {
                label: o.label.value(),
                probability: o.classification_probability,
            }],
            kinematics: DetectedObjectKinematics {
                pose_with_covariance: PoseWithCovariance {
                    pose: Pose {
                        position: Point { x, y, z },
                        orientation: Quaternion {
                            x: qx,
                            y: qy,
                            z: qz,
                            w: qw,
                        },
                    },
                    covariance: vec![0.0; 36],
                },
                has_position_covariance: false,
                orientation_availability: o.orientation_availability,
                twist_with_covariance: TwistWithCovariance {
                    covariance: vec![0.0; 36],
                    ..Default::default()
                },
                has_twist: false,
                has_twist_covariance: false,
            },
            shape: Shape {
                type_: o.shape_type,
                footprint: Polygon::default(),
                dimensions: Vector3 {
                    x: dx,
                    y: dy,
                    z: dz,
                },
            },
        });
    }
    Ok(Some(DetectedObjects {
        header: Header {
            stamp: time_from_nanos(first.stamp_ns),
            frame_id: first.frame_id.clone(),
        },
        objects,
    }))
}

/// A `CameraInfo`'s row-major K as a pinhole camera: `Ok(None)` for ROS's "uncalibrated" all-zero K (and a K that
/// is not 3 × 3), an error for an invalid one (non-finite, non-positive focal length, singular).
pub fn pinhole_from_camera_info(
    k: &[f64],
    width: u32,
    height: u32,
) -> Result<Option<PinholeCamera>> {
    if k.len() != 9 || k.iter().all(|&v| v == 0.0) {
        return Ok(None);
    }
    let row = |r: usize| [k[3 * r], k[3 * r + 1], k[3 * r + 2]];
    PinholeCamera::from_rows([row(0), row(1), row(2)], width, height).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// All-zero or non-3×3 K: uncalibrated (None); a nuScenes K: that camera; a zero focal length: an error.
    #[test]
    fn camera_info_k_becomes_a_pinhole_camera() {
        assert_eq!(
            pinhole_from_camera_info(&[0.0; 9], 1600, 900).unwrap(),
            None
        );
        assert_eq!(
            pinhole_from_camera_info(&[1.0; 4], 1600, 900).unwrap(),
            None
        );
        let k = [1266.4, 0.0, 816.3, 0.0, 1266.4, 491.5, 0.0, 0.0, 1.0];
        let cam = pinhole_from_camera_info(&k, 1600, 900).unwrap().unwrap();
        assert_eq!(cam.k()[(0, 2)], 816.3);
        assert_eq!(cam.k()[(1, 1)], 1266.4);
        assert_eq!((cam.width(), cam.height()), (1600, 900));
        let mut bad = k;
        bad[0] = 0.0;
        assert!(pinhole_from_camera_info(&bad, 1600, 900).is_err());
    }

    fn sample() -> Detections {
        Detections {
            stamp_ns: 1_532_402_927_612_460_000,
            frame_id: "lidar_top".into(),
            prompt: "find every car".into(),
            boxes: vec![Detection {
                label: "car".into(),
                camera: "cam_front".into(),
                instance_id: "7".into(),
                ..Detection::new([10.5, -3.25, 0.75, 4.5, 1.9, 1.6, 0.7], 0.875)
            }],
        }
    }

    #[test]
    fn yaw_round_trips_through_the_quaternion() {
        for i in -31..=31 {
            let yaw = f64::from(i) * 0.1;
            assert!(
                (quaternion_to_yaw(&yaw_to_quaternion(yaw)) - yaw).abs() < 1e-12,
                "{yaw}"
            );
        }
    }

    #[test]
    fn time_round_trips() {
        for ns in [0, 1, 999_999_999, 1_000_000_000, 1_532_402_927_612_460_000] {
            assert_eq!(nanos_from_time(&time_from_nanos(ns)), ns);
        }
        assert_eq!(nanos_from_time(&time_from_nanos(-5)), 0);
    }

    #[test]
    fn detections_round_trip_through_the_message() {
        let d = sample();
        let m = BoundingBox3DArray::from(&d);
        let back = Detections::try_from(&m).unwrap();
        assert_eq!(back.prompt, d.prompt);
        assert_eq!(back.stamp_ns, d.stamp_ns);
        assert!((back.boxes[0].yaw() - 0.7).abs() < 1e-12);
        assert_eq!(back.boxes[0].center(), d.boxes[0].center());
    }

    #[test]
    fn malformed_boxes_are_rejected() {
        let mut m = BoundingBox3DArray::from(&sample());
        m.boxes[0].size.y = -1.0;
        assert!(Detections::try_from(&m).is_err());
        let mut m = BoundingBox3DArray::from(&sample());
        m.boxes[0].center.position.x = f64::NAN;
        assert!(Detections::try_from(&m).is_err());
    }

    /// The library's constants are the message's, and each box of each prompt becomes one object.
    #[test]
    fn autoware_objects_carry_every_prompts_boxes() {
        use crate::runtime::autoware::{ObjectLabel, ORIENTATION_SIGN_UNKNOWN, SHAPE_BOUNDING_BOX};
        assert_eq!(SHAPE_BOUNDING_BOX, Shape::BOUNDING_BOX as u8);
        assert_eq!(
            ORIENTATION_SIGN_UNKNOWN,
            DetectedObjectKinematics::SIGN_UNKNOWN as u8
        );
        assert_eq!(ObjectLabel::Car.value(), ObjectClassification::CAR as u8);
        assert_eq!(
            ObjectLabel::Pedestrian.value(),
            ObjectClassification::PEDESTRIAN as u8
        );
        assert_eq!(
            ObjectLabel::Unknown.value(),
            ObjectClassification::UNKNOWN as u8
        );
        let cars = sample();
        let mut cones = sample();
        cones.prompt = "find every traffic cone".into();
        cones.boxes[0].label = "traffic cone".into();
        cones.boxes[0].score = 0.25;
        let m = to_detected_objects(&[cars.clone(), cones])
            .unwrap()
            .unwrap();
        assert_eq!(m.header, BoundingBox3DArray::from(&cars).header);
        assert_eq!(m.objects.len(), 2);
        let o = &m.objects[0];
        assert_eq!(o.existence_probability, 0.875);
        assert_eq!(o.classification.len(), 1);
        assert_eq!(o.classification[0].label, ObjectClassification::CAR as u8);
        assert_eq!(o.classification[0].probability, 0.875);
        let k = &o.kinematics;
        assert_eq!(
            k.pose_with_covariance.pose,
            BoundingBox3D::from(&cars.boxes[0]).center
        );
        assert_eq!(k.pose_with_covariance.covariance.len(), 36);
        assert!(!k.has_position_covariance && !k.has_twist && !k.has_twist_covariance);
        assert_eq!(
            k.orientation_availability,
            DetectedObjectKinematics::SIGN_UNKNOWN as u8
        );
        assert_eq!(o.shape.type_, Shape::BOUNDING_BOX as u8);
        assert_eq!(
            (
                o.shape.dimensions.x,
                o.shape.dimensions.y,
                o.shape.dimensions.z
            ),
            (4.5, 1.9, 1.6)
        );
        assert!(o.shape.footprint.points.is_empty());
        let cone = &m.objects[1].classification[0];
        assert_eq!(
            (cone.label, cone.probability),
            (ObjectClassification::UNKNOWN as u8, 0.25)
        );
        assert!(to_detected_objects(&[]).unwrap().is_none());
        let mut bad = sample();
        bad.boxes[0].score = f32::NAN;
        assert!(to_detected_objects(&[bad]).is_err());
    }

    #[test]
    fn vision_msgs_view_keeps_every_box() {
        let m = BoundingBox3DArray::from(&sample());
        let v = to_detection3d_array(&m);
        assert_eq!(v.detections.len(), 1);
        let d = &v.detections[0];
        assert_eq!(d.results[0].hypothesis.class_id, "car");
        assert_eq!(d.results[0].hypothesis.score, 0.875);
        assert_eq!(d.bbox.size, m.boxes[0].size);
        assert_eq!(d.id, "7");
        assert_eq!(v.header, m.header);
    }
}

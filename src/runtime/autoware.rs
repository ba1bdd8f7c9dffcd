//! The node's boxes as Autoware sees objects (`autoware_perception_msgs/msg/DetectedObject`), without ROS: the
//! class label from the prompt's category, the probabilities from the score, pose and dimensions from the box.
//! The ROS layer only copies these fields into the r2r message (`ros::convert::to_detected_objects`).
//!
//! Label mapping, keyed on the prompt names of [`prompt_name`] (the crate's one definition of category names;
//! nuScenes' long names and the detection benchmark's `snake_case` names are brought to them first):
//!
//! | Autoware label | prompt names (nuScenes categories) |
//! |---|---|
//! | `CAR` | car, police car, ambulance (`vehicle.car`, `vehicle.emergency.*`) |
//! | `TRUCK` | truck, construction vehicle (`vehicle.truck`, `vehicle.construction`) |
//! | `BUS` | bus (`vehicle.bus.bendy`, `vehicle.bus.rigid`) |
//! | `TRAILER` | trailer |
//! | `MOTORCYCLE` | motorcycle |
//! | `BICYCLE` | bicycle |
//! | `PEDESTRIAN` | pedestrian, child, construction worker, police officer, personal mobility vehicle, stroller, wheelchair (every `human.pedestrian.*`) |
//! | `UNKNOWN` | everything else: traffic cone, barrier, debris, pushable pullable object, bicycle rack, animal, free-form prompts |
//!
//! Emergency vehicles count as cars and every `human.pedestrian.*` as a pedestrian, as Autoware's own
//! evaluation tools map nuScenes; construction vehicles (excavators, cranes) go to `TRUCK`, the large-vehicle
//! class whose size and motion they share. `animal` stays `UNKNOWN`: `ANIMAL` (8) is newer than the classes
//! 0–7 that Autoware's trackers and planners all handle.
use crate::data::dataset::prompt_name;
use crate::geometry::Box3D;
use crate::{Error, Result};

/// Autoware's object classes, valued as the constants of `autoware_perception_msgs/msg/ObjectClassification`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ObjectLabel {
    /// `UNKNOWN = 0`.
    Unknown = 0,
    /// `CAR = 1`.
    Car = 1,
    /// `TRUCK = 2`.
    Truck = 2,
    /// `BUS = 3`.
    Bus = 3,
    /// `TRAILER = 4`.
    Trailer = 4,
    /// `MOTORCYCLE = 5`.
    Motorcycle = 5,
    /// `BICYCLE = 6`.
    Bicycle = 6,
    /// `PEDESTRIAN = 7`.
    Pedestrian = 7,
}

impl ObjectLabel {
    /// Every label, in value order.
    pub const ALL: [ObjectLabel; 8] = [
        ObjectLabel::Unknown,
        ObjectLabel::Car,
        ObjectLabel::Truck,
        ObjectLabel::Bus,
        ObjectLabel::Trailer,
        ObjectLabel::Motorcycle,
        ObjectLabel::Bicycle,
        ObjectLabel::Pedestrian,
    ];

    /// The message's value (`ObjectClassification.label`).
    pub fn value(self) -> u8 {
        self as u8
    }

    /// The constant's name in `ObjectClassification.msg` (`CAR`, …).
    pub fn constant_name(self) -> &'static str {
        match self {
            ObjectLabel::Unknown => "UNKNOWN",
            ObjectLabel::Car => "CAR",
            ObjectLabel::Truck => "TRUCK",
            ObjectLabel::Bus => "BUS",
            ObjectLabel::Trailer => "TRAILER",
            ObjectLabel::Motorcycle => "MOTORCYCLE",
            ObjectLabel::Bicycle => "BICYCLE",
            ObjectLabel::Pedestrian => "PEDESTRIAN",
        }
    }
}

/// `Shape.BOUNDING_BOX`: dimensions are x = length, y = width, z = height.
pub const SHAPE_BOUNDING_BOX: u8 = 0;
/// `DetectedObjectKinematics.SIGN_UNKNOWN`: the heading is known up to a half turn.
pub const ORIENTATION_SIGN_UNKNOWN: u8 = 1;

/// The Autoware class of a category: a prompt name ("construction vehicle"), a nuScenes category
/// ("vehicle.bus.rigid") or a detection-benchmark name ("traffic_cone"), in any letter case. Names that are no
/// nuScenes category, such as free-form prompts, are [`ObjectLabel::Unknown`]. See the module docs for the table.
pub fn object_label(category: &str) -> ObjectLabel {
    let words: Vec<String> = category.split_whitespace().map(str::to_lowercase).collect();
    // A single token may be a nuScenes or benchmark name: prompt_name turns those into prompt names and leaves
    // plain words alone. Phrases are prompt names already (prompt_name would cut them at a full stop).
    let name = match words.as_slice() {
        [token] => prompt_name(token),
        _ => words.join(" "),
    };
    match name.as_str() {
        "car" | "police car" | "ambulance" => ObjectLabel::Car,
        "truck" | "construction vehicle" => ObjectLabel::Truck,
        "bus" => ObjectLabel::Bus,
        "trailer" => ObjectLabel::Trailer,
        "motorcycle" => ObjectLabel::Motorcycle,
        "bicycle" => ObjectLabel::Bicycle,
        "pedestrian"
        | "child"
        | "construction worker"
        | "police officer"
        | "personal mobility vehicle"
        | "stroller"
        | "wheelchair" => ObjectLabel::Pedestrian,
        _ => ObjectLabel::Unknown,
    }
}

/// The fields of one `autoware_perception_msgs/msg/DetectedObject`, in the frame of the box. What the message has
/// beyond these stays empty: no covariance (`has_position_covariance` false, zero matrices), no twist, no
/// footprint polygon.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AutowareObject {
    /// `existence_probability`: the box's score.
    pub existence_probability: f32,
    /// The one `classification` entry's label.
    pub label: ObjectLabel,
    /// The one `classification` entry's probability: the score as well (the model has no separate class
    /// confidence: the prompt fixes the class).
    pub classification_probability: f32,
    /// `kinematics.pose_with_covariance.pose.position`: the box centre.
    pub position: [f64; 3],
    /// `kinematics.pose_with_covariance.pose.orientation` as (x, y, z, w): the yaw about +z.
    pub orientation_xyzw: [f64; 4],
    /// `kinematics.orientation_availability`: always [`ORIENTATION_SIGN_UNKNOWN`] (the model learns yaw modulo π).
    pub orientation_availability: u8,
    /// `shape.type`: always [`SHAPE_BOUNDING_BOX`].
    pub shape_type: u8,
    /// `shape.dimensions` (x = length, y = width, z = height), metres.
    pub dimensions: [f64; 3],
}

impl AutowareObject {
    /// One object from a box [x, y, z, l, w, h, yaw] (frame z up, yaw about +z), the category it was prompted
    /// with (see [`object_label`]) and its score. Errors on a non-finite value, a negative size, or a score
    /// outside [0, 1].
    pub fn new(bbox: [f64; 7], category: &str, score: f32) -> Result<Self> {
        let b = Box3D::from_params(bbox)?;
        if !(0.0..=1.0).contains(&score) {
            return Err(Error::invalid(
                "detected object",
                format!("score {score} is not a probability in [0, 1]"),
            ));
        }
        let half = 0.5 * b.yaw();
        Ok(Self {
            existence_probability: score,
            label: object_label(category),
            classification_probability: score,
            position: b.center(),
            orientation_xyzw: [0.0, 0.0, half.sin(), half.cos()],
            orientation_availability: ORIENTATION_SIGN_UNKNOWN,
            shape_type: SHAPE_BOUNDING_BOX,
            dimensions: b.size(),
        })
    }

    /// The object of one of the node's detections (its label is the prompt's category).
    pub fn from_detection(d: &crate::perception::Detection) -> Result<Self> {
        Self::new(d.bbox, &d.label, d.score)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::dataset::default_vocabulary;

    /// Every nuScenes category, by its prompt name: the table of the module docs.
    #[test]
    fn every_nuscenes_category_has_its_autoware_label() {
        use ObjectLabel::*;
        let want = [
            ("animal", Unknown),
            ("pedestrian", Pedestrian),
            ("child", Pedestrian),
            ("construction worker", Pedestrian),
            ("personal mobility vehicle", Pedestrian),
            ("police officer", Pedestrian),
            ("stroller", Pedestrian),
            ("wheelchair", Pedestrian),
            ("barrier", Unknown),
            ("debris", Unknown),
            ("pushable pullable object", Unknown),
            ("traffic cone", Unknown),
            ("bicycle rack", Unknown),
            ("bicycle", Bicycle),
            ("bus", Bus),
            ("car", Car),
            ("construction vehicle", Truck),
            ("ambulance", Car),
            ("police car", Car),
            ("motorcycle", Motorcycle),
            ("trailer", Trailer),
            ("truck", Truck),
        ];
        // The vocabulary is the prompt names of all 23 categories: a renamed or added one fails here.
        let vocab = default_vocabulary();
        assert_eq!(vocab, want.map(|(n, _)| n.to_string()));
        for (name, label) in want {
            assert_eq!(object_label(name), label, "{name}");
        }
    }

    #[test]
    fn long_benchmark_and_cased_names_map_like_prompt_names() {
        use ObjectLabel::*;
        for (name, label) in [
            ("vehicle.car", Car),
            ("vehicle.bus.rigid", Bus),
            ("vehicle.bus.bendy", Bus),
            ("vehicle.construction", Truck),
            ("vehicle.emergency.police", Car),
            ("human.pedestrian.adult", Pedestrian),
            ("human.pedestrian.police_officer", Pedestrian),
            ("movable_object.trafficcone", Unknown),
            ("construction_vehicle", Truck),
            ("traffic_cone", Unknown),
            ("  Construction   Vehicle ", Truck),
            ("TRUCK", Truck),
            ("find every car", Unknown),
            ("a car. bus", Unknown),
            ("", Unknown),
        ] {
            assert_eq!(object_label(name), label, "{name:?}");
        }
    }

    #[test]
    fn labels_carry_the_message_values() {
        let values: Vec<u8> = ObjectLabel::ALL.iter().map(|l| l.value()).collect();
        assert_eq!(values, (0..8).collect::<Vec<u8>>());
        assert_eq!(ObjectLabel::Pedestrian.constant_name(), "PEDESTRIAN");
    }

    #[test]
    fn a_box_becomes_pose_dimensions_and_probabilities() {
        let yaw = 2.5_f64;
        let o = AutowareObject::new([10.5, -3.25, 0.75, 4.5, 1.9, 1.6, yaw], "car", 0.875).unwrap();
        assert_eq!(o.label, ObjectLabel::Car);
        assert_eq!(o.existence_probability, 0.875);
        assert_eq!(o.classification_probability, 0.875);
        assert_eq!(o.position, [10.5, -3.25, 0.75]);
        assert_eq!(o.dimensions, [4.5, 1.9, 1.6]);
        assert_eq!(o.shape_type, SHAPE_BOUNDING_BOX);
        assert_eq!(o.orientation_availability, ORIENTATION_SIGN_UNKNOWN);
        let [x, y, z, w] = o.orientation_xyzw;
        assert_eq!((x, y), (0.0, 0.0));
        assert!((z * z + w * w - 1.0).abs() < 1e-12);
        // The quaternion turns +x onto the box's heading.
        let back = (2.0 * w * z).atan2(w * w - z * z);
        assert!((back - yaw).abs() < 1e-12, "{back}");
        let d = crate::perception::Detection {
            label: "pedestrian".into(),
            ..crate::perception::Detection::new([1.0, 2.0, 0.0, 0.6, 0.7, 1.8, -0.4], 0.5)
        };
        let p = AutowareObject::from_detection(&d).unwrap();
        assert_eq!(p.label, ObjectLabel::Pedestrian);
        assert_eq!(p.dimensions, [0.6, 0.7, 1.8]);
    }

    #[test]
    fn bad_boxes_and_scores_are_errors() {
        let good = [1.0, 2.0, 0.0, 4.0, 2.0, 1.5, 0.1];
        let mut nan = good;
        nan[0] = f64::NAN;
        let mut negative = good;
        negative[4] = -1.0;
        let mut inf_yaw = good;
        inf_yaw[6] = f64::INFINITY;
        for b in [nan, negative, inf_yaw] {
            assert!(AutowareObject::new(b, "car", 0.5).is_err(), "{b:?}");
        }
        for s in [f32::NAN, -0.1, 1.5] {
            let e = AutowareObject::new(good, "car", s).unwrap_err();
            assert!(e.to_string().contains("score"), "{e}");
        }
    }
}

//! The one detection type of the package: what the box head decodes, what the merge moves into the LiDAR
//! frame, what the demo and `eval` report and what the ROS layer turns into messages.
use serde::{Deserialize, Serialize};

use crate::geometry::{Box3D, Frame};
use crate::Result;

/// One detected object: an oriented box with its confidence, label and origin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Detection {
    /// The paper's [x, y, z, l, w, h, yaw]: centre and size in metres, yaw in radians, in the frame of the
    /// enclosing output (the camera's optical frame for the head's raw boxes, see [`Frame`]).
    pub bbox: [f64; 7],
    /// Confidence in [0, 1].
    pub score: f32,
    /// Open-vocabulary class name (empty until the caller names what was prompted).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub label: String,
    /// Frame id (or channel) of the camera whose view produced the box; empty when unknown.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub camera: String,
    /// Index of the box query that produced it (stable across score ties, unlike the output order).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<usize>,
    /// Identifier across messages (empty when not tracked; ground truth carries the nuScenes instance).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub instance_id: String,
}

impl Detection {
    /// A box with a score and nothing else known.
    pub fn new(bbox: [f64; 7], score: f32) -> Self {
        Self {
            bbox,
            score,
            label: String::new(),
            camera: String::new(),
            query: None,
            instance_id: String::new(),
        }
    }

    /// Centre (x, y, z).
    pub fn center(&self) -> [f64; 3] {
        [self.bbox[0], self.bbox[1], self.bbox[2]]
    }

    /// Size (length along the heading, width, height).
    pub fn size(&self) -> [f64; 3] {
        [self.bbox[3], self.bbox[4], self.bbox[5]]
    }

    /// Heading in radians.
    pub fn yaw(&self) -> f64 {
        self.bbox[6]
    }

    /// The box as a z-up [`Box3D`] (validates finiteness and positive sizes).
    pub fn to_box3d(&self) -> Result<Box3D> {
        Box3D::from_params(self.bbox)
    }
}

/// The boxes one prompt produced for one set of images: what a `vlm3d/BoundingBox3DArray` carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Detections {
    /// Stamp of the source images, nanoseconds since the epoch.
    pub stamp_ns: i64,
    /// Frame id of every box (the LiDAR frame for the perception node).
    pub frame_id: String,
    /// The prompt the boxes answer.
    pub prompt: String,
    /// The boxes.
    pub boxes: Vec<Detection>,
}

/// The detections of one camera view, in the frame the head predicts in.
#[derive(Debug, Clone, Serialize)]
pub struct ViewDetections {
    /// Index of the view in the input order.
    pub view: usize,
    /// Frame of the boxes.
    pub frame: Frame,
    /// Boxes above the threshold, highest score first.
    pub boxes: Vec<Detection>,
}

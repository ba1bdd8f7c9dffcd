//! What a converted nuScenes bag contains beyond standard ROS messages: the topic/frame configuration of
//! the converter and the per-sample index message that lets a reader regroup a key frame's messages.
//!
//! # Topics (defaults; all configurable through [`BagLayout`])
//! | topic | type | frame | content |
//! |---|---|---|---|
//! | `/cam_front/image_rect_compressed` (per camera) | `sensor_msgs/msg/CompressedImage` | `cam_front` | the original JPEG bytes, format `jpeg` |
//! | `/cam_front/camera_info` (per camera) | `sensor_msgs/msg/CameraInfo` | `cam_front` | K from the intrinsics, R = I, P = [K \| 0], plumb_bob with zero distortion; one per image, same stamp |
//! | `/lidar_top` | `sensor_msgs/msg/PointCloud2` | `lidar_top` | x, y, z, intensity, ring as float32 |
//! | `/tf_static` | `tf2_msgs/msg/TFMessage` | `base_link` → sensor frames | calibrated_sensor extrinsics; once per scene (before its first message) |
//! | `/tf` | `tf2_msgs/msg/TFMessage` | `map` → `base_link` | the ego pose of every converted sample_data, at the ego pose's time |
//! | `/annotations` | `vlm3d/msg/BoundingBox3DArray` | `lidar_top` | per sample, at its LIDAR_TOP key-frame time: every annotation in the LiDAR frame, label = category name, instance_id = instance token, score 1, prompt empty |
//! | `/vlm3d/sample` | `std_msgs/msg/String` | – | per sample, JSON [`SampleIndex`]: scene token and name, sample token, the key-frame stamps of each sensor; logged before the sample's first key-frame message |
//! | `/vlm3d/annotation_info` | `std_msgs/msg/String` | – | per sample, right after its `/annotations`, JSON [`AnnotationInfo`]: per box (same order) the LiDAR and radar point counts, attributes and the devkit's velocity estimate, which the nuScenes detection protocol needs and a box message does not carry |
//!
//! Timestamps are nuScenes microseconds × 1000. Messages of one scene are written in time order (ties: the
//! index first, then sensor data, then the annotations); scenes follow one another in the order of the
//! `scene` table.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Topic names and frame ids of a converted bag. Loadable from YAML (every key optional).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BagLayout {
    /// Prepended to every topic name (e.g. `/nuscenes`); empty by default.
    pub topic_prefix: String,
    /// Camera image topic: `{prefix}/{frame}{image_suffix}`.
    pub image_suffix: String,
    /// Camera info topic: `{prefix}/{frame}{info_suffix}`.
    pub info_suffix: String,
    /// LiDAR topic: `{prefix}/{frame}{lidar_suffix}`.
    pub lidar_suffix: String,
    /// Annotations topic (`{prefix}` is prepended).
    pub annotations_topic: String,
    /// Per-sample index topic (`{prefix}` is prepended).
    pub sample_topic: String,
    /// Per-sample annotation facts topic ([`AnnotationInfo`]; `{prefix}` is prepended).
    pub annotation_info_topic: String,
    /// Dynamic transforms topic (not prefixed: tf tools expect `/tf`).
    pub tf_topic: String,
    /// Static transforms topic (not prefixed).
    pub tf_static_topic: String,
    /// World frame of the ego poses.
    pub map_frame: String,
    /// Vehicle frame.
    pub base_frame: String,
}

impl Default for BagLayout {
    fn default() -> Self {
        Self {
            topic_prefix: String::new(),
            image_suffix: "/image_rect_compressed".into(),
            info_suffix: "/camera_info".into(),
            lidar_suffix: String::new(),
            annotations_topic: "/annotations".into(),
            sample_topic: "/vlm3d/sample".into(),
            annotation_info_topic: ANNOTATION_INFO_TOPIC.into(),
            tf_topic: "/tf".into(),
            tf_static_topic: "/tf_static".into(),
            map_frame: "map".into(),
            base_frame: "base_link".into(),
        }
    }
}

impl BagLayout {
    /// Frame id of a nuScenes channel: the channel lowercased (`CAM_FRONT` → `cam_front`).
    pub fn frame(channel: &str) -> String {
        channel.to_ascii_lowercase()
    }

    /// Image topic of a camera channel.
    pub fn image_topic(&self, channel: &str) -> String {
        format!(
            "{}/{}{}",
            self.topic_prefix,
            Self::frame(channel),
            self.image_suffix
        )
    }

    /// Camera info topic of a camera channel.
    pub fn info_topic(&self, channel: &str) -> String {
        format!(
            "{}/{}{}",
            self.topic_prefix,
            Self::frame(channel),
            self.info_suffix
        )
    }

    /// Point cloud topic of a LiDAR channel.
    pub fn lidar_topic(&self, channel: &str) -> String {
        format!(
            "{}/{}{}",
            self.topic_prefix,
            Self::frame(channel),
            self.lidar_suffix
        )
    }

    /// Annotations topic.
    pub fn annotations(&self) -> String {
        format!("{}{}", self.topic_prefix, self.annotations_topic)
    }

    /// Sample index topic.
    pub fn sample(&self) -> String {
        format!("{}{}", self.topic_prefix, self.sample_topic)
    }

    /// Annotation facts topic.
    pub fn annotation_info(&self) -> String {
        format!("{}{}", self.topic_prefix, self.annotation_info_topic)
    }
}

/// The default annotation facts topic (also what a reader assumes for a bag whose index does not name one).
pub const ANNOTATION_INFO_TOPIC: &str = "/vlm3d/annotation_info";

/// One sensor's key frame of a sample.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SensorKeyFrame {
    /// Frame id (`cam_front`).
    pub frame: String,
    /// Topic of the data (image or point cloud).
    pub topic: String,
    /// Stamp of the data, ns.
    pub stamp_ns: u64,
    /// Stamp of the `/tf` ego pose that goes with it, ns.
    pub ego_stamp_ns: u64,
}

/// The per-sample index message (JSON in a `std_msgs/msg/String`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SampleIndex {
    /// nuScenes scene token.
    pub scene_token: String,
    /// nuScenes scene name (`scene-0061`).
    pub scene_name: String,
    /// nuScenes sample token.
    pub sample_token: String,
    /// The sample's timestamp, ns.
    pub stamp_ns: u64,
    /// The LiDAR key frame: the annotations' frame and stamp.
    pub lidar: SensorKeyFrame,
    /// Camera key frames by channel (`CAM_FRONT`), those whose images were written.
    pub cameras: BTreeMap<String, SensorKeyFrame>,
    /// Topic of the annotations.
    pub annotations_topic: String,
    /// Topic of the annotations' [`AnnotationInfo`] (empty in bags written before it existed).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub annotation_info_topic: String,
    /// Topic of the ego poses.
    pub tf_topic: String,
    /// Topic of the sensor extrinsics.
    pub tf_static_topic: String,
}

impl SampleIndex {
    /// Earliest stamp of the sample's key frames (where the index is logged).
    pub fn first_stamp(&self) -> u64 {
        self.cameras
            .values()
            .map(|c| c.stamp_ns.min(c.ego_stamp_ns))
            .chain([self.lidar.stamp_ns, self.lidar.ego_stamp_ns])
            .min()
            .unwrap_or(self.stamp_ns)
    }
}

/// What the nuScenes detection protocol needs of a sample's annotations beyond their boxes (JSON in a
/// `std_msgs/msg/String` on [`BagLayout::annotation_info`], one per sample, logged right after the sample's
/// annotations): per box of the annotations message, in the same order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnnotationInfo {
    /// nuScenes sample token.
    pub sample_token: String,
    /// One entry per box of the sample's annotations message.
    pub boxes: Vec<AnnotationFacts>,
}

/// One annotation's facts ([`AnnotationInfo`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnnotationFacts {
    /// Instance token (the box's `instance_id`, to check the order).
    pub instance_id: String,
    /// LiDAR points inside the box (`num_lidar_pts`).
    pub num_lidar_pts: i64,
    /// Radar points inside the box (`num_radar_pts`).
    pub num_radar_pts: i64,
    /// Attribute names (`vehicle.moving`); nuScenes gives at most one per annotation.
    pub attributes: Vec<String>,
    /// Velocity in the global frame (x, y), m/s, as the devkit's `box_velocity` estimates it from the previous
    /// and next annotations of the instance; `None` where it cannot (no neighbour, or too far apart in time).
    pub velocity: Option<[f64; 2]>,
}

//! Training examples streamed from converted bags: per sample and per camera, the original JPEG, the
//! camera model, the camera → LiDAR transform, the boxes the camera sees (by the paper's projection rule) in
//! the configured target frame, and prompts — one per category present, plus negative prompts (no boxes)
//! for absent categories of the vocabulary.
//!
//! The reader relies on the converter's per-sample index message ([`SampleIndex`], see
//! [`crate::data::bag::bagschema`]) to regroup a key frame's messages, and buffers only the messages of the
//! samples it is assembling (one or two at a time), so memory does not grow with the bag.
//!
//! Geometry: the camera → LiDAR transform chains the camera's extrinsics, the ego pose at the image's
//! time, the ego pose at the LiDAR key frame's time and the LiDAR's extrinsics, as the nuScenes devkit does
//! (`LidarPointCloud` → camera projection and `get_sample_data`).
//!
//! Split: a scene goes to validation when `fnv1a64(scene name) mod 10_000 < val_fraction · 10_000` — stable
//! across runs, machines and bag orders.
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;

use nalgebra::{Isometry3, Point3, Translation3, UnitQuaternion};
use serde::{Deserialize, Serialize};

use super::bag::bagschema::SampleIndex;
use super::bag::msgs::{
    BoundingBox3DArrayMsg, CameraInfo, CompressedImage, StringMsg, TFMessage, Transform,
};
use super::bag::rosbag::{BagReader, Messages, RawMessage};
use crate::geometry::{Frame, OrientedBox3D, PinholeCamera, VisibilityRule};
use crate::{Error, Result};

/// The paper's prompt template; `{category}` is replaced by the category's prompt name.
pub use crate::perception::prompt::PAPER_PROMPT;

/// Which scenes to yield.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    /// Every scene.
    #[default]
    All,
    /// Scenes not in validation.
    Train,
    /// Validation scenes.
    Val,
}

/// Dataset options (YAML-loadable; every key optional).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatasetConfig {
    /// Frame of the boxes.
    pub target_frame: Frame,
    /// Which boxes a camera sees.
    pub visibility: VisibilityRule,
    /// Prompt template with `{category}`.
    pub prompt_template: String,
    /// Prompt names of the vocabulary used for negative prompts. Empty: [`default_vocabulary`].
    pub vocabulary: Vec<String>,
    /// Category name (nuScenes) → prompt name; categories not listed use [`prompt_name`].
    pub prompt_names: BTreeMap<String, String>,
    /// At most this many negative prompts per example (chosen deterministically); `None`: all absent ones.
    pub max_negatives: Option<usize>,
    /// Fraction of scenes in the validation split.
    pub val_fraction: f64,
    /// Which split to yield.
    pub split: Split,
    /// Topic of the converter's per-sample index.
    pub sample_topic: String,
    /// Topic of the sensor extrinsics (static transforms).
    pub tf_static_topic: String,
    /// Yield examples of cameras that see no box (they then carry only negative prompts).
    pub keep_empty: bool,
}

impl Default for DatasetConfig {
    fn default() -> Self {
        Self {
            target_frame: Frame::default(),
            visibility: VisibilityRule::AllCorners,
            prompt_template: PAPER_PROMPT.into(),
            vocabulary: Vec::new(),
            prompt_names: BTreeMap::new(),
            max_negatives: None,
            val_fraction: 0.2,
            split: Split::All,
            sample_topic: super::bag::bagschema::BagLayout::default().sample(),
            tf_static_topic: super::bag::bagschema::BagLayout::default().tf_static_topic,
            keep_empty: true,
        }
    }
}

/// The natural-language name a nuScenes category is prompted with (`vehicle.car` → `car`,
/// `human.pedestrian.adult` → `pedestrian`, `movable_object.trafficcone` → `traffic cone`).
pub fn prompt_name(category: &str) -> String {
    let known = [
        ("human.pedestrian.adult", "pedestrian"),
        ("human.pedestrian.child", "child"),
        (
            "human.pedestrian.construction_worker",
            "construction worker",
        ),
        (
            "human.pedestrian.personal_mobility",
            "personal mobility vehicle",
        ),
        ("human.pedestrian.police_officer", "police officer"),
        (
            "movable_object.pushable_pullable",
            "pushable pullable object",
        ),
        ("movable_object.trafficcone", "traffic cone"),
        ("vehicle.bus.bendy", "bus"),
        ("vehicle.bus.rigid", "bus"),
        ("vehicle.construction", "construction vehicle"),
        ("vehicle.emergency.ambulance", "ambulance"),
        ("vehicle.emergency.police", "police car"),
    ];
    if let Some((_, n)) = known.iter().find(|(c, _)| *c == category) {
        return n.to_string();
    }
    category
        .rsplit('.')
        .next()
        .unwrap_or(category)
        .replace('_', " ")
}

/// nuScenes' 23 annotation categories.
pub const NUSCENES_CATEGORIES: [&str; 23] = [
    "animal",
    "human.pedestrian.adult",
    "human.pedestrian.child",
    "human.pedestrian.construction_worker",
    "human.pedestrian.personal_mobility",
    "human.pedestrian.police_officer",
    "human.pedestrian.stroller",
    "human.pedestrian.wheelchair",
    "movable_object.barrier",
    "movable_object.debris",
    "movable_object.pushable_pullable",
    "movable_object.trafficcone",
    "static_object.bicycle_rack",
    "vehicle.bicycle",
    "vehicle.bus.bendy",
    "vehicle.bus.rigid",
    "vehicle.car",
    "vehicle.construction",
    "vehicle.emergency.ambulance",
    "vehicle.emergency.police",
    "vehicle.motorcycle",
    "vehicle.trailer",
    "vehicle.truck",
];

/// Prompt names of nuScenes' 23 annotation categories (deduplicated), the default negative vocabulary.
pub fn default_vocabulary() -> Vec<String> {
    let cats = NUSCENES_CATEGORIES;
    let mut v: Vec<String> = Vec::new();
    for c in cats {
        let n = prompt_name(c);
        if !v.contains(&n) {
            v.push(n);
        }
    }
    v
}

/// 64-bit FNV-1a: a stable hash for splits and deterministic choices.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Whether a scene belongs to the validation split.
pub fn is_val_scene(scene_name: &str, val_fraction: f64) -> bool {
    (fnv1a64(scene_name.as_bytes()) % 10_000) < (val_fraction * 10_000.0).round() as u64
}

/// A ground-truth box of an example.
#[derive(Debug, Clone, PartialEq)]
pub struct LabeledBox {
    /// The box in the example's target frame.
    pub oriented: OrientedBox3D,
    /// nuScenes category name (`vehicle.car`).
    pub category: String,
    /// nuScenes instance token.
    pub instance_id: String,
}

impl LabeledBox {
    /// The paper's 7-vector [x, y, z, l, w, h, yaw] in `frame`: in the LiDAR frame yaw is about +z; in the
    /// camera frame it is the heading's angle about the camera's up axis (−y), `atan2(h_z, h_x)`.
    pub fn params(&self, frame: Frame) -> [f64; 7] {
        let c = self.oriented.center;
        let [l, w, h] = self.oriented.size;
        let yaw = match frame {
            Frame::Lidar => self.oriented.yaw(),
            Frame::Camera => self.oriented.camera_params()[6],
        };
        [c.x, c.y, c.z, l, w, h, yaw]
    }
}

/// A prompt and the indices (into [`Example::boxes`]) of the boxes that answer it; empty for a negative.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prompt {
    /// The category's prompt name (`car`).
    pub category: String,
    /// The full prompt text.
    pub text: String,
    /// Boxes answering it.
    pub boxes: Vec<usize>,
}

/// One training example: one camera of one sample.
#[derive(Debug, Clone)]
pub struct Example {
    /// nuScenes scene token.
    pub scene_token: String,
    /// nuScenes scene name.
    pub scene_name: String,
    /// nuScenes sample token.
    pub sample_token: String,
    /// Camera channel (`CAM_FRONT`).
    pub channel: String,
    /// Image stamp, ns.
    pub stamp_ns: u64,
    /// The original JPEG bytes.
    pub image_jpeg: Vec<u8>,
    /// Intrinsics and image size.
    pub camera: PinholeCamera,
    /// Maps camera-frame points (at the image's time) into the LiDAR frame (at the key frame's time).
    pub cam_to_lidar: Isometry3<f64>,
    /// Maps LiDAR-frame points (at the key frame) into the global frame (nuScenes results are global).
    pub lidar_to_global: Isometry3<f64>,
    /// Frame of `boxes`.
    pub frame: Frame,
    /// The boxes the camera sees, in `frame`.
    pub boxes: Vec<LabeledBox>,
    /// Positive prompts (categories present) first, then negative ones.
    pub prompts: Vec<Prompt>,
}

impl Example {
    /// The view's camera as the detector needs it (intrinsics and camera → LiDAR).
    pub fn view_camera(&self) -> crate::geometry::ViewCamera {
        crate::geometry::ViewCamera {
            camera: self.camera,
            camera_to_lidar: self.cam_to_lidar,
        }
    }

    /// What [`Example::decode_image`]'s errors call the image: `"CAM_FRONT image of sample <token>"`.
    pub fn image_source(&self) -> String {
        format!("{} image of sample {}", self.channel, self.sample_token)
    }

    /// Decodes the view's JPEG with the project's strict decoder
    /// ([`crate::perception::image::decode_compressed`]): a truncated or corrupt image is an error naming the
    /// channel and sample, never a partly grey picture.
    pub fn decode_image(&self) -> Result<image::RgbImage> {
        crate::perception::image::decode_compressed(&self.image_jpeg, "jpeg", &self.image_source())
    }
}

pub(crate) fn iso_from_transform(t: &Transform) -> Option<Isometry3<f64>> {
    let q = nalgebra::Quaternion::new(t.rotation.w, t.rotation.x, t.rotation.y, t.rotation.z);
    if q.norm().is_nan() || q.norm() <= 1e-9 {
        return None;
    }
    Some(Isometry3::from_parts(
        Translation3::new(t.translation.x, t.translation.y, t.translation.z),
        UnitQuaternion::from_quaternion(q),
    ))
}

#[derive(Debug)]
struct Pending {
    index: SampleIndex,
    images: HashMap<String, (Vec<u8>, CameraInfo)>,
    infos: HashMap<String, CameraInfo>,
    jpegs: HashMap<String, Vec<u8>>,
    ego: HashMap<u64, Isometry3<f64>>,
    boxes: Option<Vec<(OrientedBox3D, String, String)>>,
}

impl Pending {
    fn complete(&self) -> bool {
        self.boxes.is_some()
            && self.index.cameras.len() == self.images.len()
            && self
                .index
                .cameras
                .values()
                .all(|c| self.ego.contains_key(&c.ego_stamp_ns))
            && self.ego.contains_key(&self.index.lidar.ego_stamp_ns)
    }
}

/// Streams [`Example`]s from one or more bags, in bag order then time order.
pub struct Dataset {
    config: DatasetConfig,
    vocabulary: Vec<String>,
    bags: VecDeque<PathBuf>,
    messages: Option<Messages>,
    /// base frame → sensor frame extrinsics (sensor → base), from `/tf_static`.
    statics: HashMap<String, Isometry3<f64>>,
    pending: VecDeque<Pending>,
    ready: VecDeque<Example>,
    skipped_samples: u64,
    done: bool,
}

impl Dataset {
    /// A dataset over `bags` (rosbag2 folders written by `vlm3d convert-nuscenes`).
    pub fn new(bags: impl IntoIterator<Item = PathBuf>, config: DatasetConfig) -> Self {
        let vocabulary = if config.vocabulary.is_empty() {
            default_vocabulary()
        } else {
            config.vocabulary.clone()
        };
        Self {
            config,
            vocabulary,
            bags: bags.into_iter().collect(),
            messages: None,
            statics: HashMap::new(),
            pending: VecDeque::new(),
            ready: VecDeque::new(),
            skipped_samples: 0,
            done: false,
        }
    }

    /// Samples dropped so far because some of their messages were missing.
    pub fn skipped_samples(&self) -> u64 {
        self.skipped_samples
    }

    fn category_name(&self, category: &str) -> String {
        self.config
            .prompt_names
            .get(category)
            .cloned()
            .unwrap_or_else(|| prompt_name(category))
    }

    fn wanted(&self, scene_name: &str) -> bool {
        match self.config.split {
            Split::All => true,
            Split::Val => is_val_scene(scene_name, self.config.val_fraction),
            Split::Train => !is_val_scene(scene_name, self.config.val_fraction),
        }
    }

    fn handle(&mut self, m: RawMessage) -> Result<()> {
        if *m.topic == *self.config.sample_topic {
            let s: StringMsg = m.decode()?;
            let index: SampleIndex = serde_json::from_str(&s.data).map_err(|e| {
                Error::format(
                    &*m.file,
                    Some(format!("message #{} on {}", m.index, m.topic)),
                    format!("bad sample index: {e}"),
                )
            })?;
            // Data of earlier samples is complete by now (time order): flush what is left of them.
            while let Some(p) = self.pending.pop_front() {
                self.finish(p)?;
            }
            if self.wanted(&index.scene_name) {
                self.pending.push_back(Pending {
                    index,
                    images: HashMap::new(),
                    infos: HashMap::new(),
                    jpegs: HashMap::new(),
                    ego: HashMap::new(),
                    boxes: None,
                });
            }
            return Ok(());
        }
        match &*m.type_name {
            "tf2_msgs/msg/TFMessage" => {
                let tf: TFMessage = m.decode()?;
                let is_static = *m.topic == *self.config.tf_static_topic;
                if is_static {
                    // New extrinsics (a new scene): samples still assembling belong to the previous one.
                    while let Some(p) = self.pending.pop_front() {
                        self.finish(p)?;
                    }
                }
                for t in tf.transforms {
                    let iso = iso_from_transform(&t.transform).ok_or_else(|| {
                        Error::format(
                            &*m.file,
                            Some(format!(
                                "message #{} on {}, child {}",
                                m.index, m.topic, t.child_frame_id
                            )),
                            "zero quaternion",
                        )
                    })?;
                    if is_static {
                        self.statics.insert(t.child_frame_id.clone(), iso);
                    } else {
                        let stamp = t.header.stamp.to_nanos();
                        for p in self.pending.iter_mut() {
                            let needed = p.index.lidar.ego_stamp_ns == stamp
                                || p.index.cameras.values().any(|c| c.ego_stamp_ns == stamp);
                            if needed && *m.topic == *p.index.tf_topic {
                                p.ego.insert(stamp, iso);
                            }
                        }
                    }
                }
            }
            "sensor_msgs/msg/CompressedImage" | "sensor_msgs/msg/CameraInfo" => {
                let wanted = self
                    .pending
                    .iter()
                    .any(|p| p.index.cameras.values().any(|c| c.stamp_ns == m.log_time));
                if !wanted {
                    return Ok(());
                }
                let (frame, image, info) = if &*m.type_name == "sensor_msgs/msg/CompressedImage" {
                    let img: CompressedImage = m.decode()?;
                    (img.header.frame_id.clone(), Some(img), None)
                } else {
                    let info: CameraInfo = m.decode()?;
                    (info.header.frame_id.clone(), None, Some(info))
                };
                let found = self.pending.iter_mut().find_map(|p| {
                    let ch = p
                        .index
                        .cameras
                        .iter()
                        .find(|(_, c)| c.stamp_ns == m.log_time && c.frame == frame)
                        .map(|(ch, _)| ch.clone())?;
                    Some((p, ch))
                });
                let Some((p, channel)) = found else {
                    return Ok(());
                };
                if let Some(img) = image {
                    p.jpegs.insert(channel.clone(), img.data);
                }
                if let Some(info) = info {
                    p.infos.insert(channel.clone(), info);
                }
                if p.jpegs.contains_key(&channel) && p.infos.contains_key(&channel) {
                    let jpeg = p.jpegs.remove(&channel).expect("checked");
                    let info = p.infos.remove(&channel).expect("checked");
                    p.images.insert(channel, (jpeg, info));
                }
            }
            "vlm3d/msg/BoundingBox3DArray" => {
                let Some(pi) = self.pending.iter().position(|p| {
                    *m.topic == *p.index.annotations_topic && p.index.lidar.stamp_ns == m.log_time
                }) else {
                    return Ok(());
                };
                let arr: BoundingBox3DArrayMsg = m.decode()?;
                let mut boxes = Vec::with_capacity(arr.boxes.len());
                for (i, b) in arr.boxes.iter().enumerate() {
                    let record = || {
                        format!(
                            "message #{} on {}, box {i} ({})",
                            m.index, m.topic, b.instance_id
                        )
                    };
                    let o = &b.center.orientation;
                    let q = nalgebra::Quaternion::new(o.w, o.x, o.y, o.z);
                    if q.norm().is_nan() || q.norm() <= 1e-9 {
                        return Err(Error::format(&*m.file, Some(record()), "zero quaternion"));
                    }
                    let ob = OrientedBox3D::new(
                        Point3::new(
                            b.center.position.x,
                            b.center.position.y,
                            b.center.position.z,
                        ),
                        [b.size.x, b.size.y, b.size.z],
                        UnitQuaternion::from_quaternion(q),
                    )
                    .map_err(|e| Error::format(&*m.file, Some(record()), e.to_string()))?;
                    boxes.push((ob, b.label.clone(), b.instance_id.clone()));
                }
                self.pending[pi].boxes = Some(boxes);
            }
            _ => {}
        }
        // Emit completed samples in order.
        while self.pending.front().is_some_and(Pending::complete) {
            let p = self.pending.pop_front().expect("checked");
            self.finish(p)?;
        }
        Ok(())
    }

    /// Turns an assembled sample into examples (one per camera with an image).
    fn finish(&mut self, p: Pending) -> Result<()> {
        let Pending {
            index,
            mut images,
            ego,
            boxes,
            ..
        } = p;
        let p = Pending {
            index,
            images: HashMap::new(),
            infos: HashMap::new(),
            jpegs: HashMap::new(),
            ego,
            boxes,
        };
        let lidar_frame = &p.index.lidar.frame;
        let (Some(boxes), Some(lidar_ext), Some(ego_l)) = (
            p.boxes.as_ref(),
            self.statics.get(lidar_frame),
            p.ego.get(&p.index.lidar.ego_stamp_ns),
        ) else {
            tracing::warn!(sample = %p.index.sample_token, "sample incomplete in the bag (annotations, LiDAR extrinsics or ego pose missing): skipped");
            self.skipped_samples += 1;
            return Ok(());
        };
        // global → lidar at the key frame.
        let global_to_lidar = (ego_l * lidar_ext).inverse();
        // A sample's views in the rig's camera order (channels the rig does not know last, by name).
        let rig = crate::perception::Rig::nuscenes();
        let mut cameras: Vec<_> = p.index.cameras.iter().collect();
        cameras.sort_by_key(|(ch, _)| (rig.camera_index(ch).unwrap_or(usize::MAX), ch.as_str()));
        for (channel, kf) in cameras {
            let (Some((jpeg, info)), Some(cam_ext), Some(ego_c)) = (
                images.remove(channel),
                self.statics.get(&kf.frame),
                p.ego.get(&kf.ego_stamp_ns),
            ) else {
                tracing::warn!(sample = %p.index.sample_token, %channel, "camera incomplete in the bag: skipped");
                continue;
            };
            let cam_to_lidar = global_to_lidar * ego_c * cam_ext;
            let lidar_to_cam = cam_to_lidar.inverse();
            let camera =
                PinholeCamera::from_rows(info.k_rows(), info.width, info.height).map_err(|e| {
                    Error::format(
                        p.index.sample_token.clone(),
                        Some(format!("camera_info of {channel}")),
                        e.to_string(),
                    )
                })?;
            let mut ex_boxes = Vec::new();
            for (b, cat, inst) in boxes {
                let in_cam = b.transform(&lidar_to_cam);
                if !camera.sees_corners(&in_cam.corners(), self.config.visibility) {
                    continue;
                }
                let oriented = match self.config.target_frame {
                    Frame::Lidar => *b,
                    Frame::Camera => in_cam,
                };
                ex_boxes.push(LabeledBox {
                    oriented,
                    category: cat.clone(),
                    instance_id: inst.clone(),
                });
            }
            if ex_boxes.is_empty() && !self.config.keep_empty {
                continue;
            }
            let prompts = self.prompts(&ex_boxes, &p.index.sample_token, channel);
            self.ready.push_back(Example {
                scene_token: p.index.scene_token.clone(),
                scene_name: p.index.scene_name.clone(),
                sample_token: p.index.sample_token.clone(),
                channel: channel.clone(),
                stamp_ns: kf.stamp_ns,
                image_jpeg: jpeg,
                camera,
                cam_to_lidar,
                lidar_to_global: global_to_lidar.inverse(),
                frame: self.config.target_frame,
                boxes: ex_boxes,
                prompts,
            });
        }
        Ok(())
    }

    fn prompts(&self, boxes: &[LabeledBox], sample: &str, channel: &str) -> Vec<Prompt> {
        let text = |name: &str| self.config.prompt_template.replace("{category}", name);
        let mut positive: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, b) in boxes.iter().enumerate() {
            positive
                .entry(self.category_name(&b.category))
                .or_default()
                .push(i);
        }
        let mut out: Vec<Prompt> = positive
            .iter()
            .map(|(name, idx)| Prompt {
                category: name.clone(),
                text: text(name),
                boxes: idx.clone(),
            })
            .collect();
        let mut negatives: Vec<&String> = self
            .vocabulary
            .iter()
            .filter(|n| !positive.contains_key(*n))
            .collect();
        if let Some(k) = self.config.max_negatives {
            let key = |n: &String| fnv1a64(format!("{sample}/{channel}/{n}").as_bytes());
            negatives.sort_by_key(|n| key(n));
            negatives.truncate(k);
        }
        out.extend(negatives.into_iter().map(|n| Prompt {
            category: n.clone(),
            text: text(n),
            boxes: Vec::new(),
        }));
        out
    }
}

impl Dataset {
    /// The examples grouped by sample (a key frame's views, in the rig's camera order), in bag order.
    pub fn by_sample(self) -> BySample {
        BySample {
            inner: self,
            pending: None,
        }
    }
}

/// [`Dataset::by_sample`]: one item per sample, all of its views.
pub struct BySample {
    inner: Dataset,
    pending: Option<Example>,
}

impl Iterator for BySample {
    type Item = Result<Vec<Example>>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut views: Vec<Example> = self.pending.take().into_iter().collect();
        loop {
            match self.inner.next() {
                None => return (!views.is_empty()).then_some(Ok(views)),
                Some(Err(e)) => return Some(Err(e)),
                Some(Ok(ex)) => {
                    if views
                        .first()
                        .is_some_and(|v| v.sample_token != ex.sample_token)
                    {
                        self.pending = Some(ex);
                        return Some(Ok(views));
                    }
                    views.push(ex);
                }
            }
        }
    }
}

impl Iterator for Dataset {
    type Item = Result<Example>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(e) = self.ready.pop_front() {
                return Some(Ok(e));
            }
            if self.done {
                return None;
            }
            if self.messages.is_none() {
                let Some(bag) = self.bags.pop_front() else {
                    self.done = true;
                    continue;
                };
                match BagReader::open(&bag) {
                    Ok(r) => self.messages = Some(r.messages()),
                    Err(e) => {
                        self.done = true;
                        return Some(Err(e));
                    }
                }
                self.statics.clear();
            }
            match self.messages.as_mut().expect("opened").next() {
                Some(Ok(m)) => {
                    if let Err(e) = self.handle(m) {
                        self.done = true;
                        return Some(Err(e));
                    }
                }
                Some(Err(e)) => {
                    self.done = true;
                    // Examples completed before the damage were already queued; flush the rest first.
                    self.messages = None;
                    return Some(Err(e));
                }
                None => {
                    self.messages = None;
                    while let Some(p) = self.pending.pop_front() {
                        if let Err(e) = self.finish(p) {
                            self.done = true;
                            return Some(Err(e));
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_names_and_split_are_stable() {
        assert_eq!(prompt_name("vehicle.car"), "car");
        assert_eq!(prompt_name("movable_object.trafficcone"), "traffic cone");
        assert_eq!(prompt_name("vehicle.bus.rigid"), "bus");
        assert_eq!(prompt_name("static_object.bicycle_rack"), "bicycle rack");
        let v = default_vocabulary();
        assert_eq!(v.len(), 22);
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        let val = (0..1000)
            .filter(|i| is_val_scene(&format!("scene-{i:04}"), 0.2))
            .count();
        assert!((150..250).contains(&val), "{val}");
    }
    #[test]
    fn example_images_decode_strictly() {
        let img =
            image::RgbImage::from_fn(64, 48, |x, y| image::Rgb([x as u8 * 4, y as u8 * 5, 77]));
        let mut jpeg = std::io::Cursor::new(Vec::new());
        img.write_to(&mut jpeg, image::ImageFormat::Jpeg).unwrap();
        let jpeg = jpeg.into_inner();
        let mut ex = Example {
            scene_token: "scene".into(),
            scene_name: "scene-0001".into(),
            sample_token: "s123".into(),
            channel: "CAM_FRONT".into(),
            stamp_ns: 0,
            image_jpeg: jpeg.clone(),
            camera: PinholeCamera::from_rows(
                [[50.0, 0.0, 32.0], [0.0, 50.0, 24.0], [0.0, 0.0, 1.0]],
                64,
                48,
            )
            .unwrap(),
            cam_to_lidar: Isometry3::identity(),
            lidar_to_global: Isometry3::identity(),
            frame: Frame::Lidar,
            boxes: vec![],
            prompts: vec![],
        };
        assert_eq!(ex.decode_image().unwrap().dimensions(), (64, 48));
        ex.image_jpeg.truncate(jpeg.len() / 2);
        let msg = ex.decode_image().unwrap_err().to_string();
        assert!(
            msg.contains("CAM_FRONT image of sample s123") && msg.contains("truncated JPEG"),
            "{msg}"
        );
    }
}

//! Scoring a recording of the perception node against the input bag it was fed: the node publishes one
//! `vlm3d/msg/BoundingBox3DArray` per standing prompt and synchronized frame, stamped with the frame's first
//! camera image (CAM_FRONT), boxes in the LiDAR frame. Each message is matched to the bag's sample whose CAM_FRONT
//! key-frame stamp (from the converter's sample index) equals its `header.stamp`, its category is
//! [`label_from_prompt`] of its prompt, and the queries are built with the same ground truth per (sample,
//! category) as [`super::evaluate_bag`] and scored with the same [`super::metrics::evaluate`].
//!
//! Rules:
//! * only samples with at least one recorded message are scored ("the same frames" as the node saw), and within
//!   them only the (sample, category) pairs with a message; samples and pairs without one are reported;
//! * duplicates of a (sample, category) — a looped playback, or two prompts with the same label — keep the first
//!   message in recording order;
//! * messages whose stamp matches no sample are counted and reported, not fatal; a recording none of whose
//!   messages matches a sample is an error that says so (it was not recorded from a playback of this bag, or the
//!   node's first camera is not CAM_FRONT);
//! * with [`EvalOptions::categories`] set only those categories are scored (in that order); messages of other
//!   categories are counted; without it the categories are those recorded, in the order they first appear.
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use crate::data::bag::msgs::{
    BoundingBox3DArrayMsg, BoundingBox3DMsg, Point, Pose, Quaternion, RosMessage, Vector3,
};
use crate::data::bag::rosbag::{BagReader, RawMessage};
use crate::perception::prompt::label_from_prompt;
use crate::perception::Detection;
use crate::{Error, Result};

use super::metrics::{evaluate, Query};
use super::{classes_of, poses_of, samples, EvalOptions, EvalRun, SampleTruth};

/// The camera whose image stamp the node puts on its outputs (the rig's first camera).
pub const STAMP_CHANNEL: &str = "CAM_FRONT";

/// At most this many unmatched stamps are listed in [`RecordedRun::unmatched_stamps`].
const LISTED: usize = 5;

/// A scored recording: the run (queries, metrics, every sample of the bag, classes: what
/// [`super::write_nuscenes_results`], [`super::write_report`] and the plots take) and how much of the bag the
/// recording covers.
#[derive(Debug, Clone)]
pub struct RecordedRun {
    /// The evaluation of the recorded boxes.
    pub run: EvalRun,
    /// The topic read.
    pub topic: String,
    /// Messages on that topic.
    pub messages: usize,
    /// Messages scored (one per query).
    pub used: usize,
    /// Messages for a (sample, category) already seen, ignored.
    pub duplicates: usize,
    /// Messages whose stamp is no sample's CAM_FRONT key-frame stamp.
    pub unmatched: usize,
    /// The first few distinct unmatched stamps, ns.
    pub unmatched_stamps: Vec<u64>,
    /// Of the unmatched, those whose stamp is another camera's key-frame stamp of a sample (a node whose first
    /// camera is not CAM_FRONT).
    pub unmatched_other_camera: usize,
    /// Messages of categories outside [`EvalOptions::categories`], per category.
    pub other_categories: BTreeMap<String, usize>,
    /// `header.frame_id` of the messages read, with counts (the boxes are taken to be in the LiDAR frame).
    pub frames: BTreeMap<String, usize>,
    /// Samples scored.
    pub samples_scored: usize,
    /// Samples of the bag without any recorded message, in bag order.
    pub samples_without_output: Vec<String>,
    /// (sample, category) pairs of scored samples without a message (not scored).
    pub missing: Vec<(String, String)>,
}

impl RecordedRun {
    /// Samples of the bag.
    pub fn samples_in_bag(&self) -> usize {
        self.run.samples.len()
    }

    /// A few lines on what was read and what the recording covers.
    pub fn coverage(&self) -> String {
        let mut s = format!(
            "{}: {} messages, {} scored; {} of {} samples scored, {} without output",
            self.topic,
            self.messages,
            self.used,
            self.samples_scored,
            self.samples_in_bag(),
            self.samples_without_output.len()
        );
        if !self.samples_without_output.is_empty() {
            let shown: Vec<&str> = self
                .samples_without_output
                .iter()
                .take(LISTED)
                .map(String::as_str)
                .collect();
            let more = self.samples_without_output.len() - shown.len();
            s.push_str(&format!(" ({}", shown.join(", ")));
            if more > 0 {
                s.push_str(&format!(", and {more} more"));
            }
            s.push(')');
        }
        if self.duplicates > 0 {
            s.push_str(&format!(
                "\n{} duplicate messages for a (sample, category) ignored (first kept)",
                self.duplicates
            ));
        }
        if self.unmatched > 0 {
            s.push_str(&format!(
                "\n{} messages stamped at no sample's {STAMP_CHANNEL} key frame, ignored (stamps {:?}{})",
                self.unmatched,
                self.unmatched_stamps,
                if self.unmatched_other_camera > 0 {
                    format!(
                        "; {} of them are another camera's key-frame stamp: is the node's first camera not {STAMP_CHANNEL}?",
                        self.unmatched_other_camera
                    )
                } else {
                    String::new()
                }
            ));
        }
        if !self.missing.is_empty() {
            s.push_str(&format!(
                "\n{} (sample, category) pairs of scored samples without a message, not scored",
                self.missing.len()
            ));
        }
        if !self.other_categories.is_empty() {
            s.push_str(&format!(
                "\nmessages of categories not asked for, ignored: {:?}",
                self.other_categories
            ));
        }
        let frames: Vec<&str> = self.frames.keys().map(String::as_str).collect();
        s.push_str(&format!("\nbox frames: {}", frames.join(", ")));
        s
    }
}

/// The box of a `BoundingBox3D` message as a [`Detection`] (yaw from the quaternion's rotation about +z, as the
/// ROS layer reads it); non-finite values, negative sizes and a zero quaternion are errors.
pub fn detection_from_msg(m: &BoundingBox3DMsg) -> Result<Detection> {
    let p = &m.center.position;
    let q = &m.center.orientation;
    let quat = [q.x, q.y, q.z, q.w];
    let values = [p.x, p.y, p.z, m.size.x, m.size.y, m.size.z];
    if values.iter().chain(&quat).any(|v| !v.is_finite()) || !m.score.is_finite() {
        return Err(Error::invalid("BoundingBox3D", "non-finite value"));
    }
    if values[3..].iter().any(|&s| s < 0.0) {
        return Err(Error::invalid(
            "BoundingBox3D",
            format!("negative size {:?}", &values[3..]),
        ));
    }
    if quat.iter().all(|&v| v == 0.0) {
        return Err(Error::invalid(
            "BoundingBox3D",
            "zero orientation quaternion",
        ));
    }
    let yaw = (2.0 * (q.w * q.z + q.x * q.y)).atan2(q.w * q.w + q.x * q.x - q.y * q.y - q.z * q.z);
    let [x, y, z, l, w, h] = values;
    Ok(Detection {
        label: m.label.clone(),
        camera: m.camera.clone(),
        instance_id: m.instance_id.clone(),
        ..Detection::new([x, y, z, l, w, h, yaw], m.score)
    })
}

/// A [`Detection`] as the `BoundingBox3D` message the perception node publishes (orientation: the rotation by
/// its yaw about +z).
pub fn detection_to_msg(d: &Detection) -> BoundingBox3DMsg {
    let [x, y, z, l, w, h, yaw] = d.bbox;
    let half = 0.5 * yaw;
    BoundingBox3DMsg {
        center: Pose {
            position: Point { x, y, z },
            orientation: Quaternion {
                x: 0.0,
                y: 0.0,
                z: half.sin(),
                w: half.cos(),
            },
        },
        size: Vector3 { x: l, y: w, z: h },
        label: d.label.clone(),
        score: d.score,
        camera: d.camera.clone(),
        instance_id: d.instance_id.clone(),
    }
}

/// Checks [`EvalOptions::categories`]: when set, non-empty, no empty name, no repeats.
pub(super) fn check_categories(opts: &EvalOptions) -> Result<()> {
    let Some(cats) = &opts.categories else {
        return Ok(());
    };
    if cats.is_empty() {
        return Err(Error::invalid("categories", "the list is empty"));
    }
    let mut seen = std::collections::BTreeSet::new();
    for c in cats {
        if c.trim().is_empty() {
            return Err(Error::invalid("categories", "an empty category name"));
        }
        if !seen.insert(c.as_str()) {
            return Err(Error::invalid(
                "categories",
                format!("{c:?} is listed twice"),
            ));
        }
    }
    Ok(())
}

/// The messages of the one `BoundingBox3DArray` topic of `recorded` (or of `topic`), in recording order.
fn boxes_messages(recorded: &Path, topic: Option<&str>) -> Result<(String, Vec<RawMessage>)> {
    let reader = BagReader::open(recorded)?;
    let mut by_topic: BTreeMap<String, Vec<RawMessage>> = BTreeMap::new();
    let mut other_types: BTreeMap<String, String> = BTreeMap::new();
    for m in reader.messages() {
        let m = m?;
        if *m.type_name == *BoundingBox3DArrayMsg::TYPE {
            by_topic.entry(m.topic.to_string()).or_default().push(m);
        } else {
            other_types
                .entry(m.topic.to_string())
                .or_insert_with(|| m.type_name.to_string());
        }
    }
    let list = |m: &BTreeMap<String, Vec<RawMessage>>| {
        m.iter()
            .map(|(t, v)| format!("{t} ({} messages)", v.len()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let what = || format!("recording {}", recorded.display());
    match topic {
        Some(t) => {
            if let Some(v) = by_topic.remove(t) {
                return Ok((t.to_string(), v));
            }
            let why = match other_types.get(t) {
                Some(ty) => format!(
                    "topic {t} carries {ty}, not {}",
                    BoundingBox3DArrayMsg::TYPE
                ),
                None if by_topic.is_empty() => {
                    format!("no {} messages at all", BoundingBox3DArrayMsg::TYPE)
                }
                None => format!(
                    "no messages on {t}; topics of type {}: {}",
                    BoundingBox3DArrayMsg::TYPE,
                    list(&by_topic)
                ),
            };
            Err(Error::invalid(what(), why))
        }
        None => match by_topic.len() {
            1 => Ok(by_topic.pop_first().expect("one topic")),
            0 => Err(Error::invalid(
                what(),
                format!(
                    "no {} messages (topics with messages: {})",
                    BoundingBox3DArrayMsg::TYPE,
                    if other_types.is_empty() {
                        "none".to_string()
                    } else {
                        other_types.keys().cloned().collect::<Vec<_>>().join(", ")
                    }
                ),
            )),
            _ => Err(Error::invalid(
                what(),
                format!(
                    "several topics of type {}: {}; choose one (--boxes-topic)",
                    BoundingBox3DArrayMsg::TYPE,
                    list(&by_topic)
                ),
            )),
        },
    }
}

/// Scores the perception node's boxes recorded in the rosbag2 folder (or MCAP file) `recorded` against the
/// annotations of the bag it was fed, `opts.bag`: the same ground truth and metrics as [`super::evaluate_bag`]
/// on the same frames (see the module's rules). `boxes_topic`: the topic to read; by default the recording's one
/// topic of type `vlm3d/msg/BoundingBox3DArray` (none or several are an error naming them). `opts.nms_iou` and
/// `opts.absent_prompts` are not used (the node merged its views itself).
pub fn evaluate_recording(
    recorded: &Path,
    opts: &EvalOptions,
    boxes_topic: Option<&str>,
) -> Result<RecordedRun> {
    check_categories(opts)?;
    let all = samples(&opts.bag)?;
    // The node stamps a frame with its first camera's image: CAM_FRONT's key-frame stamp of the sample index.
    let mut by_stamp: HashMap<u64, usize> = HashMap::new();
    let mut other_camera: HashMap<u64, usize> = HashMap::new();
    for (i, s) in all.iter().enumerate() {
        for v in &s.views {
            if v.channel == STAMP_CHANNEL {
                by_stamp.entry(v.stamp_ns).or_insert(i);
            } else {
                other_camera.entry(v.stamp_ns).or_insert(i);
            }
        }
    }
    let (topic, raw) = boxes_messages(recorded, boxes_topic)?;
    let wanted: Option<&Vec<String>> = opts.categories.as_ref();
    let mut order: Vec<String> = wanted.cloned().unwrap_or_default();
    let mut kept: HashMap<(usize, String), Vec<Detection>> = HashMap::new();
    let mut run = RecordedRun {
        run: EvalRun {
            metrics: Default::default(),
            queries: Vec::new(),
            samples: poses_of(&all),
            classes: classes_of(&all),
        },
        topic,
        messages: raw.len(),
        used: 0,
        duplicates: 0,
        unmatched: 0,
        unmatched_stamps: Vec::new(),
        unmatched_other_camera: 0,
        other_categories: BTreeMap::new(),
        frames: BTreeMap::new(),
        samples_scored: 0,
        samples_without_output: Vec::new(),
        missing: Vec::new(),
    };
    let (mut first_stamp, mut last_stamp) = (u64::MAX, 0);
    for m in &raw {
        let msg: BoundingBox3DArrayMsg = m.decode()?;
        let record = || format!("message #{} on {} at {} ns", m.index, m.topic, m.log_time);
        if msg.prompt.trim().is_empty() {
            return Err(Error::format(
                &*m.file,
                Some(record()),
                "empty prompt: ground truth (/annotations), not the perception node's output? Choose the node's \
                 boxes topic (--boxes-topic)",
            ));
        }
        *run.frames.entry(msg.header.frame_id.clone()).or_default() += 1;
        let stamp = msg.header.stamp.to_nanos();
        first_stamp = first_stamp.min(stamp);
        last_stamp = last_stamp.max(stamp);
        let Some(&sample) = by_stamp.get(&stamp) else {
            run.unmatched += 1;
            if other_camera.contains_key(&stamp) {
                run.unmatched_other_camera += 1;
            }
            if run.unmatched_stamps.len() < LISTED && !run.unmatched_stamps.contains(&stamp) {
                run.unmatched_stamps.push(stamp);
            }
            continue;
        };
        let category = label_from_prompt(&msg.prompt);
        match wanted {
            Some(w) if !w.contains(&category) => {
                *run.other_categories.entry(category).or_default() += 1;
                continue;
            }
            None if !order.contains(&category) => order.push(category.clone()),
            _ => {}
        }
        let key = (sample, category);
        if kept.contains_key(&key) {
            run.duplicates += 1;
            continue;
        }
        let boxes = msg
            .boxes
            .iter()
            .map(|b| {
                detection_from_msg(b)
                    .map(|d| Detection {
                        label: key.1.clone(),
                        ..d
                    })
                    .map_err(|e| Error::format(&*m.file, Some(record()), e.to_string()))
            })
            .collect::<Result<Vec<_>>>()?;
        kept.insert(key, boxes);
    }
    if kept.is_empty() {
        let bag_range = by_stamp
            .keys()
            .min()
            .zip(by_stamp.keys().max())
            .map(|(a, b)| format!("{a}..{b} ns"))
            .unwrap_or_else(|| format!("none: the bag has no {STAMP_CHANNEL} images"));
        let why = if run.unmatched == 0 {
            format!(
                "none of the {} messages on {} is of the categories asked for ({:?}; recorded: {:?})",
                run.messages, run.topic, opts.categories, run.other_categories
            )
        } else {
            format!(
                "none of the {} messages on {} is stamped at a sample's {STAMP_CHANNEL} key frame of {} (recorded \
                 stamps {first_stamp}..{last_stamp} ns; the bag's {STAMP_CHANNEL} stamps {bag_range}{}): was it \
                 recorded from a playback of this bag?",
                run.messages,
                run.topic,
                opts.bag.display(),
                if run.unmatched_other_camera > 0 {
                    format!(
                        "; {} messages carry another camera's key-frame stamp: is the node's first camera not \
                         {STAMP_CHANNEL}?",
                        run.unmatched_other_camera
                    )
                } else {
                    String::new()
                }
            )
        };
        return Err(Error::invalid(
            format!("recording {}", recorded.display()),
            why,
        ));
    }
    for (i, s) in all.iter().enumerate() {
        if !order.iter().any(|c| kept.contains_key(&(i, c.clone()))) {
            run.samples_without_output.push(s.token.clone());
            continue;
        }
        run.samples_scored += 1;
        let truth = SampleTruth::new(s);
        for c in &order {
            match kept.remove(&(i, c.clone())) {
                Some(predicted) => run.run.queries.push(Query {
                    sample: s.token.clone(),
                    category: c.clone(),
                    truth: truth.boxes(c)?,
                    predicted,
                }),
                None => run.missing.push((s.token.clone(), c.clone())),
            }
        }
    }
    run.used = run.run.queries.len();
    run.run.metrics = evaluate(&run.run.queries)?;
    Ok(run)
}

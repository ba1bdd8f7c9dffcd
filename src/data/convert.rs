//! nuScenes → rosbag2 (MCAP, CDR) conversion. Topics, frames and the order of messages are described in
//! [`crate::data::bag::bagschema`]; the defaults follow nuscenes2mcap's names (`/cam_front/image_rect_compressed`,
//! `/cam_front/camera_info`, `/lidar_top`, `/tf`, `/tf_static`, frames = lowercased channels).
//!
//! What is converted: the key frames of every sample (six cameras, LIDAR_TOP), the ego pose of each, the
//! sensors' extrinsics per scene, the annotations per sample in the LiDAR frame, and a per-sample index.
//! Sweeps (non-key frames) and radars are not converted.
//!
//! Safety: the bag is written to `<out>.partial/` and renamed to `<out>` once `metadata.yaml` (written
//! after the MCAP summary) is in place, so an interrupted run never leaves something that looks complete.
//! An existing complete bag is only replaced with `force`.
//!
//! Memory: [`convert_nuscenes`] holds the small tables, one scene's records (see
//! [`crate::data::nuscenes::scene_split`]), that scene's list of (time, record) events and a few messages at a time —
//! not the dataset.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::ProgressBar;

use crate::data::progress_bar;
use nalgebra::Isometry3;

use super::bag::bagschema::{
    AnnotationFacts, AnnotationInfo, BagLayout, SampleIndex, SensorKeyFrame,
};
use super::bag::msgs::{
    BoundingBox3DArrayMsg, BoundingBox3DMsg, CameraInfo, CompressedImage, Header, Point,
    PointCloud2, PointField, Pose, Quaternion, StringMsg, TFMessage, Transform, TransformStamped,
    Vector3,
};
use super::bag::rosbag::{BagWriter, BagWriterOptions, Qos, TopicId};
use super::nuscenes::scene_split::SceneSplit;
use super::nuscenes::{NuScenes, SampleData, Scene};
use crate::{Error, Result};

/// Source files read ahead of the writer.
const PREFETCH: usize = 16;

/// Free bytes the reader leaves in front of each source file, where the message's CDR prefix (header, format,
/// field layout, byte count) is written in place: the file's bytes then go from the page cache to the MCAP
/// chunk with one copy in between, not two. A prefix that does not fit (very long frame ids) takes the
/// copying path.
const ROOM: usize = 512;

/// Bytes reserved after each file for the fields that follow the data (PointCloud2's `is_dense`).
const SUFFIX_ROOM: usize = 16;

/// Reads `path` after [`ROOM`] free bytes. (Recycling these buffers between files measured slower: glibc
/// already reuses freed blocks of this size, and grown recycled buffers took more page faults.)
fn read_framed(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata().map(|m| m.len() as usize).unwrap_or(0);
    // Room for the file and a message suffix, so neither the read nor the suffix reallocates.
    let mut buf = Vec::with_capacity(ROOM + len + SUFFIX_ROOM);
    buf.resize(ROOM, 0);
    file.read_to_end(&mut buf)?;
    Ok(buf)
}

/// The message made of `prefix` (a CDR encoding that ends with the byte count of the payload), the payload
/// at `framed[ROOM..]` and `suffix` (bytes whose alignment is 1): written around the payload in place when
/// the prefix fits in front of it, else copied into `scratch`. Returns the message's bytes.
fn frame_message<'a>(
    framed: &'a mut Vec<u8>,
    prefix: &[u8],
    suffix: &[u8],
    scratch: &'a mut Vec<u8>,
) -> &'a [u8] {
    if prefix.len() <= ROOM {
        let start = ROOM - prefix.len();
        framed[start..ROOM].copy_from_slice(prefix);
        framed.extend_from_slice(suffix);
        &framed[start..]
    } else {
        scratch.clear();
        scratch.extend_from_slice(prefix);
        scratch.extend_from_slice(&framed[ROOM..]);
        scratch.extend_from_slice(suffix);
        scratch
    }
}

/// Options of [`convert_nuscenes`].
#[derive(Debug, Clone)]
pub struct ConvertOptions {
    /// Output bag folder.
    pub out: PathBuf,
    /// Convert LiDAR point clouds (skipped with a warning when the files are missing).
    pub lidar: bool,
    /// Replace an existing bag.
    pub force: bool,
    /// Topic names and frames.
    pub layout: BagLayout,
    /// MCAP chunk size, bytes.
    pub chunk_size: u64,
    /// Show a progress bar on stderr.
    pub progress: bool,
    /// Convert only the first N scenes (all when `None`).
    pub max_scenes: Option<usize>,
}

impl ConvertOptions {
    /// Defaults for output `out`: LiDAR on, no force, default layout, 1 MiB chunks, progress bar.
    pub fn new(out: impl Into<PathBuf>) -> Self {
        Self {
            out: out.into(),
            lidar: true,
            force: false,
            layout: BagLayout::default(),
            chunk_size: BagWriterOptions::default().chunk_size,
            progress: true,
            max_scenes: None,
        }
    }
}

/// What a conversion did.
#[derive(Debug, Clone, Default)]
pub struct ConvertReport {
    /// Scenes converted.
    pub scenes: usize,
    /// Samples converted.
    pub samples: usize,
    /// Messages written.
    pub messages: u64,
    /// Annotations written.
    pub annotations: u64,
    /// Bytes of the MCAP file.
    pub bag_bytes: u64,
    /// Bytes of source files read (JPEG, .pcd.bin).
    pub source_bytes: u64,
    /// Wall time, seconds.
    pub seconds: f64,
    /// LiDAR files that were missing (skipped).
    pub missing_lidar: u64,
    /// Samples without a LIDAR_TOP key frame (no annotations or index written).
    pub samples_without_lidar: u64,
    /// (topic, type, count).
    pub topics: Vec<(String, String, u64)>,
}

/// The path with `suffix` appended to its last component (`out` → `out.partial`).
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

/// Converts `<dataroot>/<version>` (see the module docs) scene by scene: the big tables are split by scene
/// into a scratch folder beside the output (`<out>.partial-tables`, removed afterwards) and one scene at a
/// time is loaded and validated, so memory does not grow with the size of the dataset.
pub fn convert_nuscenes(
    dataroot: &Path,
    version: &str,
    opts: &ConvertOptions,
) -> Result<ConvertReport> {
    let mut session = Session::begin(opts, version)?;
    let spill = with_suffix(&opts.out, ".partial-tables");
    if spill.exists() {
        std::fs::remove_dir_all(&spill).map_err(|e| Error::io(&spill, e))?;
    }
    let max = opts.max_scenes.unwrap_or(usize::MAX);
    let split = SceneSplit::build(dataroot, version, &spill, |i| i < max, opts.progress)?;
    let n = split.scenes().len().min(max);
    session.bar.set_length(
        split.scenes()[..n]
            .iter()
            .map(|s| s.nbr_samples as u64)
            .sum(),
    );
    for i in 0..n {
        let nusc = split.load_scene(i)?;
        session.convert_scene(&nusc, &split.scenes()[i])?;
    }
    session.finish()
}

fn quat(q: &nalgebra::UnitQuaternion<f64>) -> Quaternion {
    Quaternion {
        x: q.i,
        y: q.j,
        z: q.k,
        w: q.w,
    }
}

fn transform(iso: &Isometry3<f64>) -> Transform {
    let t = iso.translation.vector;
    Transform {
        translation: Vector3 {
            x: t.x,
            y: t.y,
            z: t.z,
        },
        rotation: quat(&iso.rotation),
    }
}

fn ns(us: i64) -> u64 {
    (us.max(0) as u64) * 1000
}

enum Event<'a> {
    TfStatic,
    Index(usize),
    Data(&'a SampleData),
    Annotations(usize),
}

struct Topics {
    tf: TopicId,
    tf_static: TopicId,
    annotations: TopicId,
    annotation_info: TopicId,
    sample: TopicId,
    images: BTreeMap<String, (TopicId, TopicId)>,
    lidar: BTreeMap<String, TopicId>,
}

/// The facts of a sample's annotations that their boxes do not carry ([`AnnotationInfo`]), in `boxes`' order.
fn annotation_info(
    nusc: &NuScenes,
    sample_token: &str,
    boxes: &[super::nuscenes::AnnotatedBox<'_>],
) -> Result<AnnotationInfo> {
    let boxes = boxes
        .iter()
        .map(|b| {
            let a = b.annotation;
            Ok(AnnotationFacts {
                instance_id: a.instance_token.clone(),
                num_lidar_pts: a.num_lidar_pts,
                num_radar_pts: a.num_radar_pts,
                attributes: a
                    .attribute_tokens
                    .iter()
                    .map(|t| Ok(nusc.attribute(t)?.name.clone()))
                    .collect::<Result<_>>()?,
                velocity: nusc.box_velocity(a)?.map(|v| [v[0], v[1]]),
            })
        })
        .collect::<Result<_>>()?;
    Ok(AnnotationInfo {
        sample_token: sample_token.to_string(),
        boxes,
    })
}

/// Converts an already loaded nuScenes version (see the module docs). [`convert_nuscenes`] does the same
/// without loading the big tables whole.
pub fn convert_loaded(nusc: &NuScenes, opts: &ConvertOptions) -> Result<ConvertReport> {
    let mut session = Session::begin(opts, nusc.version())?;
    let scenes: Vec<_> = nusc
        .scenes()
        .iter()
        .take(opts.max_scenes.unwrap_or(usize::MAX))
        .collect();
    session
        .bar
        .set_length(scenes.iter().map(|s| s.nbr_samples as u64).sum());
    for scene in scenes {
        session.convert_scene(nusc, scene)?;
    }
    session.finish()
}

/// One conversion in progress: the bag being written to `<out>.partial`, its topics and the running report.
struct Session<'o> {
    opts: &'o ConvertOptions,
    started: Instant,
    partial: PathBuf,
    writer: BagWriter,
    topics: Topics,
    report: ConvertReport,
    bar: ProgressBar,
    scratch: Vec<u8>,
}

impl<'o> Session<'o> {
    /// Checks the output path and opens the partial bag.
    fn begin(opts: &'o ConvertOptions, version: &str) -> Result<Self> {
        let started = Instant::now();
        let out = &opts.out;
        let bag_name = out
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|n| !n.is_empty())
            .ok_or_else(|| {
                Error::invalid(
                    "output path",
                    format!("{} has no usable folder name", out.display()),
                )
            })?
            .to_string();
        if out.exists() && !opts.force {
            let what = if out.join("metadata.yaml").exists() {
                "a complete bag"
            } else {
                "something that is not a finished bag"
            };
            return Err(Error::invalid(
                "output path",
                format!(
                    "{} exists ({what}); pass --force to replace it",
                    out.display()
                ),
            ));
        }
        let partial = with_suffix(out, ".partial");
        if partial.exists() {
            tracing::warn!(path = %partial.display(), "removing the leftovers of an interrupted conversion");
            std::fs::remove_dir_all(&partial).map_err(|e| Error::io(&partial, e))?;
        }
        let mut writer = BagWriter::create(
            &partial,
            &bag_name,
            BagWriterOptions {
                chunk_size: opts.chunk_size,
                ..Default::default()
            },
        )?;
        writer.set_custom_data("nuscenes_version", version);
        writer.set_custom_data("converter", &format!("vlm3d {}", env!("CARGO_PKG_VERSION")));
        let layout = &opts.layout;
        let topics = Topics {
            tf_static: writer.add_topic::<TFMessage>(&layout.tf_static_topic, Qos::Latched)?,
            tf: writer.add_topic::<TFMessage>(&layout.tf_topic, Qos::Reliable)?,
            sample: writer.add_topic::<StringMsg>(&layout.sample(), Qos::Reliable)?,
            annotations: writer
                .add_topic::<BoundingBox3DArrayMsg>(&layout.annotations(), Qos::Reliable)?,
            annotation_info: writer
                .add_topic::<StringMsg>(&layout.annotation_info(), Qos::Reliable)?,
            images: BTreeMap::new(),
            lidar: BTreeMap::new(),
        };
        let bar = progress_bar(
            opts.progress,
            0,
            "{spinner} converting [{bar:40}] {pos}/{len} samples {per_sec} eta {eta} {msg}",
        );
        Ok(Self {
            opts,
            started,
            partial,
            writer,
            topics,
            report: ConvertReport::default(),
            bar,
            scratch: Vec::with_capacity(1 << 20),
        })
    }

    /// Writes one scene's messages, in time order.
    fn convert_scene(&mut self, nusc: &NuScenes, scene: &Scene) -> Result<()> {
        let opts = self.opts;
        let layout = &opts.layout;
        let Self {
            writer,
            topics,
            report,
            bar,
            scratch,
            ..
        } = self;
        let scratch = &mut *scratch;
        bar.set_message(scene.name.clone());
        let samples = nusc.scene_samples(scene)?;
        // Events of the scene, in time order.
        let mut events: Vec<(u64, u8, usize, Event)> = Vec::new();
        let mut indices: Vec<Option<SampleIndex>> = Vec::with_capacity(samples.len());
        let mut lidar_sd: Vec<Option<&SampleData>> = Vec::with_capacity(samples.len());
        let mut statics: BTreeMap<String, Isometry3<f64>> = BTreeMap::new();
        for (si, sample) in samples.iter().enumerate() {
            let mut cameras = BTreeMap::new();
            let mut lidar = None;
            for sd in nusc.key_frames(sample) {
                let sensor = nusc.sensor_of(sd)?;
                let frame = BagLayout::frame(&sensor.channel);
                let ego_stamp = ns(nusc.ego_pose(&sd.ego_pose_token)?.timestamp);
                statics
                    .entry(frame.clone())
                    .or_insert(nusc.sensor_to_ego(sd)?);
                match sensor.modality.as_str() {
                    "camera" => {
                        if !topics.images.contains_key(&sensor.channel) {
                            let img = writer.add_topic::<CompressedImage>(
                                &layout.image_topic(&sensor.channel),
                                Qos::Reliable,
                            )?;
                            let info = writer.add_topic::<CameraInfo>(
                                &layout.info_topic(&sensor.channel),
                                Qos::Reliable,
                            )?;
                            topics.images.insert(sensor.channel.clone(), (img, info));
                        }
                        cameras.insert(
                            sensor.channel.clone(),
                            SensorKeyFrame {
                                frame,
                                topic: layout.image_topic(&sensor.channel),
                                stamp_ns: ns(sd.timestamp),
                                ego_stamp_ns: ego_stamp,
                            },
                        );
                        events.push((ns(sd.timestamp), 2, events.len(), Event::Data(sd)));
                    }
                    "lidar" => {
                        if opts.lidar && !topics.lidar.contains_key(&sensor.channel) {
                            let id = writer.add_topic::<PointCloud2>(
                                &layout.lidar_topic(&sensor.channel),
                                Qos::Reliable,
                            )?;
                            topics.lidar.insert(sensor.channel.clone(), id);
                        }
                        if sensor.channel == crate::perception::Rig::nuscenes().lidar.channel {
                            lidar = Some((
                                sd,
                                SensorKeyFrame {
                                    frame,
                                    topic: layout.lidar_topic(&sensor.channel),
                                    stamp_ns: ns(sd.timestamp),
                                    ego_stamp_ns: ego_stamp,
                                },
                            ));
                        }
                        events.push((ns(sd.timestamp), 2, events.len(), Event::Data(sd)));
                    }
                    _ => {}
                }
            }
            match lidar {
                Some((sd, kf)) => {
                    let idx = SampleIndex {
                        scene_token: scene.token.clone(),
                        scene_name: scene.name.clone(),
                        sample_token: sample.token.clone(),
                        stamp_ns: ns(sample.timestamp),
                        lidar: kf,
                        cameras,
                        annotations_topic: layout.annotations(),
                        annotation_info_topic: layout.annotation_info(),
                        tf_topic: layout.tf_topic.clone(),
                        tf_static_topic: layout.tf_static_topic.clone(),
                    };
                    events.push((idx.first_stamp(), 1, events.len(), Event::Index(si)));
                    events.push((ns(sd.timestamp), 3, events.len(), Event::Annotations(si)));
                    indices.push(Some(idx));
                    lidar_sd.push(Some(sd));
                }
                None => {
                    tracing::warn!(sample = %sample.token, "sample has no LIDAR_TOP key frame: no annotations written for it");
                    report.samples_without_lidar += 1;
                    indices.push(None);
                    lidar_sd.push(None);
                }
            }
        }
        let t0 = events.iter().map(|e| e.0).min().unwrap_or(0);
        events.push((t0, 0, 0, Event::TfStatic));
        events.sort_by_key(|e| (e.0, e.1, e.2));

        // Source files are read ahead, in event order, by a second thread (at most PREFETCH files in
        // flight), so that reading overlaps serializing and writing.
        let mut reads: Vec<Option<PathBuf>> = Vec::new();
        for (_, _, _, ev) in &events {
            if let Event::Data(sd) = ev {
                let skip = nusc.sensor_of(sd)?.modality != "camera" && !opts.lidar;
                reads.push((!skip).then(|| nusc.file_path(sd)));
            }
        }
        std::thread::scope(|scope| -> Result<()> {
            let (tx, rx) =
                std::sync::mpsc::sync_channel::<Option<std::io::Result<Vec<u8>>>>(PREFETCH);
            scope.spawn(move || {
                for p in reads {
                    if tx.send(p.map(|p| read_framed(&p))).is_err() {
                        break;
                    }
                }
            });
            for (t, _, _, ev) in &events {
                match ev {
                    Event::TfStatic => {
                        let msg = TFMessage {
                            transforms: statics
                                .iter()
                                .map(|(frame, iso)| TransformStamped {
                                    header: Header::new(*t, layout.base_frame.clone()),
                                    child_frame_id: frame.clone(),
                                    transform: transform(iso),
                                })
                                .collect(),
                        };
                        writer.write(topics.tf_static, *t, &msg, scratch)?;
                    }
                    Event::Index(si) => {
                        let idx = indices[*si]
                            .as_ref()
                            .expect("index events only for indexed samples");
                        let data = serde_json::to_string(idx)
                            .map_err(|e| Error::invalid("sample index", e.to_string()))?;
                        writer.write(topics.sample, *t, &StringMsg { data }, scratch)?;
                    }
                    Event::Data(sd) => {
                        let payload = rx
                            .recv()
                            .expect("the reader thread sends one result per file");
                        write_sample_data(
                            nusc, sd, payload, *t, opts, topics, writer, scratch, report,
                        )?;
                    }
                    Event::Annotations(si) => {
                        let sd =
                            lidar_sd[*si].expect("annotation events only for samples with a LiDAR");
                        let frame = indices[*si].as_ref().expect("indexed").lidar.frame.clone();
                        let boxes = nusc.boxes_in_sensor(sd)?;
                        let msg = BoundingBox3DArrayMsg {
                            header: Header::new(*t, frame),
                            prompt: String::new(),
                            boxes: boxes
                                .iter()
                                .map(|b| BoundingBox3DMsg {
                                    center: Pose {
                                        position: Point {
                                            x: b.bbox.center.x,
                                            y: b.bbox.center.y,
                                            z: b.bbox.center.z,
                                        },
                                        orientation: quat(&b.bbox.rotation),
                                    },
                                    size: Vector3 {
                                        x: b.bbox.size[0],
                                        y: b.bbox.size[1],
                                        z: b.bbox.size[2],
                                    },
                                    label: b.category.to_string(),
                                    score: 1.0,
                                    camera: String::new(),
                                    instance_id: b.annotation.instance_token.clone(),
                                })
                                .collect(),
                        };
                        report.annotations += msg.boxes.len() as u64;
                        writer.write(topics.annotations, *t, &msg, scratch)?;
                        let info = annotation_info(nusc, &sd.sample_token, &boxes)?;
                        let data = serde_json::to_string(&info)
                            .map_err(|e| Error::invalid("annotation info", e.to_string()))?;
                        writer.write(topics.annotation_info, *t, &StringMsg { data }, scratch)?;
                        report.samples += 1;
                        bar.inc(1);
                    }
                }
            }
            Ok(())
        })?;
        report.scenes += 1;
        Ok(())
    }

    /// Finishes the MCAP file and moves the bag to its final name.
    fn finish(self) -> Result<ConvertReport> {
        let Self {
            opts,
            started,
            partial,
            writer,
            mut report,
            bar,
            ..
        } = self;
        let out = &opts.out;
        bar.finish_and_clear();
        let summary = writer.finish()?;
        if out.exists() {
            // Only reached with `force` (checked in `begin`).
            std::fs::remove_dir_all(out).map_err(|e| Error::io(out, e))?;
        }
        std::fs::rename(&partial, out).map_err(|e| Error::io(&partial, e))?;
        report.messages = summary.message_count;
        report.bag_bytes = summary.file_bytes;
        report.topics = summary.topics;
        report.seconds = started.elapsed().as_secs_f64();
        Ok(report)
    }
}

#[allow(clippy::too_many_arguments)]
fn write_sample_data(
    nusc: &NuScenes,
    sd: &SampleData,
    read: Option<std::io::Result<Vec<u8>>>,
    t: u64,
    opts: &ConvertOptions,
    topics: &Topics,
    writer: &mut BagWriter,
    scratch: &mut Vec<u8>,
    report: &mut ConvertReport,
) -> Result<()> {
    let sensor = nusc.sensor_of(sd)?;
    let frame = BagLayout::frame(&sensor.channel);
    let record = || format!("sample_data {}", sd.token);
    let is_camera = sensor.modality == "camera";
    let path = nusc.file_path(sd);
    let Some(read) = read else {
        return Ok(()); // LiDAR not converted
    };
    // `framed` holds the file after ROOM free bytes (see `read_framed`).
    let mut framed = if is_camera {
        read.map_err(|e| {
            Error::format(&path, Some(record()), format!("cannot read the image: {e}"))
        })?
    } else {
        match read {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if report.missing_lidar == 0 {
                    tracing::warn!(path = %path.display(), "LiDAR file missing: point clouds that are missing are skipped");
                }
                report.missing_lidar += 1;
                return Ok(());
            }
            Err(e) => {
                return Err(Error::format(
                    &path,
                    Some(record()),
                    format!("cannot read the point cloud: {e}"),
                ))
            }
        }
    };
    let payload_len = framed.len() - ROOM;
    report.source_bytes += payload_len as u64;

    // The ego pose at this sample_data.
    let ego = nusc.ego_pose(&sd.ego_pose_token)?;
    let tf = TFMessage {
        transforms: vec![TransformStamped {
            header: Header::new(ns(ego.timestamp), opts.layout.map_frame.clone()),
            child_frame_id: opts.layout.base_frame.clone(),
            transform: transform(&nusc.ego_to_global(sd)?),
        }],
    };
    writer.write(topics.tf, t, &tf, scratch)?;

    let header = Header::new(t, frame);
    if is_camera {
        let (img_topic, info_topic) = topics.images[&sensor.channel];
        let cam = nusc.camera(sd)?;
        let k = cam.k();
        let rows = [
            [k[(0, 0)], k[(0, 1)], k[(0, 2)]],
            [k[(1, 0)], k[(1, 1)], k[(1, 2)]],
            [k[(2, 0)], k[(2, 1)], k[(2, 2)]],
        ];
        if !framed[ROOM..].starts_with(&[0xff, 0xd8]) {
            return Err(Error::format(
                &path,
                Some(record()),
                "not a JPEG file (no SOI marker)",
            ));
        }
        let prefix = CompressedImage::cdr_prefix(&header, "jpeg", payload_len);
        writer.write_raw(
            img_topic,
            t,
            frame_message(&mut framed, &prefix, &[], scratch),
        )?;
        let info = CameraInfo::pinhole(header, cam.width(), cam.height(), rows);
        writer.write(info_topic, t, &info, scratch)?;
    } else {
        const STEP: usize = 20;
        if !payload_len.is_multiple_of(STEP) {
            return Err(Error::format(
                &path,
                Some(record()),
                format!("{payload_len} bytes is not a whole number of 5-float points"),
            ));
        }
        let topic = topics.lidar[&sensor.channel];
        let n = (payload_len / STEP) as u32;
        let cloud = PointCloud2 {
            header,
            height: 1,
            width: n,
            fields: ["x", "y", "z", "intensity", "ring"]
                .iter()
                .enumerate()
                .map(|(i, name)| PointField::f32(name, 4 * i as u32))
                .collect(),
            is_bigendian: false,
            point_step: STEP as u32,
            row_step: STEP as u32 * n,
            data: Vec::new(),
            is_dense: true,
        };
        let (prefix, suffix) = cloud.cdr_around_data(payload_len);
        writer.write_raw(
            topic,
            t,
            frame_message(&mut framed, &prefix, &suffix, scratch),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file framed in place and one whose prefix does not fit in front of it give the same message.
    #[test]
    fn framing_in_place_equals_copying() {
        let dir = std::env::temp_dir().join(format!("vlm3d-frame-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("points.bin");
        let data: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        std::fs::write(&path, &data).unwrap();
        for prefix_len in [0usize, 7, ROOM, ROOM + 1, 3 * ROOM] {
            let prefix: Vec<u8> = (0..prefix_len).map(|i| (i % 251) as u8).collect();
            let mut framed = read_framed(&path).unwrap();
            let cap = framed.capacity();
            let mut scratch = Vec::new();
            let msg = frame_message(&mut framed, &prefix, &[1], &mut scratch).to_vec();
            let want = [prefix.as_slice(), &data, &[1]].concat();
            assert_eq!(msg, want, "prefix of {prefix_len} bytes");
            if prefix_len <= ROOM {
                assert_eq!(
                    framed.capacity(),
                    cap,
                    "the suffix fits without reallocating"
                );
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

//! What the perception node does with one synchronized frame, without ROS: pre-process the six views, run the
//! vision tower and the image prefill once, answer every standing prompt on that prefix (the detector's
//! KV-cache reuse), move each view's boxes into the LiDAR frame and merge the cameras with BEV NMS. `vlm3d
//! eval` scores through [`detect_prompt`], the node through [`PerceptionRuntime::process`]: one code path.
//! [`autoware`] gives the boxes as Autoware's `DetectedObject` fields (the label mapping lives there).
pub mod autoware;

use std::time::Instant;

use image::RgbImage;
use nalgebra::Isometry3;
use serde::Serialize;

use crate::geometry::{PinholeCamera, ViewCamera};
use crate::model::detector::{Detector, FramePrefix};
use crate::perception::prompt::label_from_prompt;
use crate::perception::{merge_views, Detection, Detections, Merged, ViewInput};
use crate::{Error, Result};

/// Settings of the last step (the node's parameters of the same names).
#[derive(Debug, Clone, PartialEq)]
pub struct RuntimeConfig {
    /// Boxes below this confidence are dropped.
    pub score_threshold: f32,
    /// BEV IoU above which the weaker of two overlapping boxes is suppressed.
    pub nms_iou: f64,
    /// At most this many boxes per prompt.
    pub max_boxes: usize,
    /// Frame id of the published boxes (the LiDAR frame).
    pub output_frame: String,
}

/// One synchronized frame: the views in rig order, with where each camera sits.
#[derive(Debug, Clone, Copy)]
pub struct FrameInput<'a> {
    /// Stamp the outputs carry (the first camera's), ns.
    pub stamp_ns: i64,
    /// Decoded images, rig order.
    pub images: &'a [RgbImage],
    /// Camera name of each view (written into each box's `camera`).
    pub cameras: &'a [String],
    /// Camera optical frame → LiDAR frame of each view.
    pub camera_to_lidar: &'a [Isometry3<f64>],
    /// Intrinsics of each view (`CameraInfo`, or the rig's nominal ones).
    pub intrinsics: &'a [PinholeCamera],
}

/// Milliseconds per stage of [`PerceptionRuntime::process`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct StageTimes {
    /// Image processor (resize, normalize, patchify).
    pub preprocess_ms: f64,
    /// Vision tower, image prefill and every prompt's decoder pass and head.
    pub model_ms: f64,
    /// Camera → LiDAR and BEV NMS for every prompt.
    pub merge_ms: f64,
}

/// The answer to one frame: one [`Detections`] per prompt, in prompt order.
#[derive(Debug, Clone)]
pub struct FrameOutput {
    /// Boxes per prompt, LiDAR frame.
    pub detections: Vec<Detections>,
    /// Where the time went.
    pub times: StageTimes,
}

/// The detector with the node's last-step settings.
pub struct PerceptionRuntime {
    /// The model (its score threshold is the runtime's).
    pub detector: Detector,
    /// Thresholds and the output frame.
    pub config: RuntimeConfig,
}

impl PerceptionRuntime {
    /// Wraps `detector`; its score threshold becomes `config.score_threshold`.
    pub fn new(mut detector: Detector, config: RuntimeConfig) -> Self {
        detector.config.score_threshold = config.score_threshold;
        Self { detector, config }
    }

    /// Runs every prompt on the frame (see the module docs). Views, names and extrinsics must agree in count,
    /// and at least one prompt is needed.
    pub fn process(&self, frame: &FrameInput<'_>, prompts: &[String]) -> Result<FrameOutput> {
        let n = frame.images.len();
        if n == 0
            || frame.cameras.len() != n
            || frame.camera_to_lidar.len() != n
            || frame.intrinsics.len() != n
        {
            return Err(Error::invalid(
                "frame",
                format!(
                    "{n} images, {} camera names, {} extrinsics, {} intrinsics",
                    frame.cameras.len(),
                    frame.camera_to_lidar.len(),
                    frame.intrinsics.len()
                ),
            ));
        }
        if prompts.is_empty() {
            return Err(Error::invalid("prompts", "no prompt to answer"));
        }
        let mut times = StageTimes::default();
        let t = Instant::now();
        let processed = self.detector.preprocess(frame.images)?;
        times.preprocess_ms = ms(t);
        let t = Instant::now();
        let (feats, grids) = self.detector.encode_processed(&processed)?;
        let cameras: Vec<ViewCamera> = frame
            .intrinsics
            .iter()
            .zip(frame.camera_to_lidar)
            .map(|(&camera, &camera_to_lidar)| ViewCamera {
                camera,
                camera_to_lidar,
            })
            .collect();
        let prefix = self.detector.prefill(&feats, &grids, &cameras)?;
        times.model_ms = ms(t);
        let views: Vec<(&str, &Isometry3<f64>)> = frame
            .cameras
            .iter()
            .map(String::as_str)
            .zip(frame.camera_to_lidar)
            .collect();
        let mut detections = Vec::with_capacity(prompts.len());
        for prompt in prompts {
            let merged = detect_prompt(
                &self.detector,
                &prefix,
                prompt,
                &views,
                self.config.nms_iou,
                self.config.max_boxes,
                &mut times,
            )?;
            let label = label_from_prompt(prompt);
            detections.push(Detections {
                stamp_ns: frame.stamp_ns,
                frame_id: self.config.output_frame.clone(),
                prompt: prompt.clone(),
                boxes: merged
                    .boxes
                    .into_iter()
                    .map(|d| Detection {
                        label: label.clone(),
                        ..d
                    })
                    .collect(),
            });
        }
        Ok(FrameOutput { detections, times })
    }
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// One prompt on a prefilled frame: the detector's per-view boxes, moved into the LiDAR frame with each
/// view's `(camera name, camera → LiDAR)` and merged by BEV NMS (`nms_iou`, at most `max_boxes`). Adds the
/// decoder + head time to `times.model_ms` and the merge time to `times.merge_ms`.
pub fn detect_prompt(
    detector: &Detector,
    prefix: &FramePrefix,
    prompt: &str,
    views: &[(&str, &Isometry3<f64>)],
    nms_iou: f64,
    max_boxes: usize,
    times: &mut StageTimes,
) -> Result<Merged> {
    let t = Instant::now();
    let per_view = detector.detect_cached(prefix, prompt)?;
    times.model_ms += ms(t);
    let t = Instant::now();
    let inputs = per_view
        .iter()
        .map(|vd| {
            let (camera, camera_to_lidar) = views.get(vd.view).ok_or_else(|| {
                Error::invalid(
                    "views",
                    format!("detector view {} of {} views", vd.view, views.len()),
                )
            })?;
            Ok(ViewInput {
                detections: vd,
                camera_to_lidar,
                camera,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let merged = merge_views(&inputs, nms_iou, max_boxes)?;
    times.merge_ms += ms(t);
    Ok(merged)
}

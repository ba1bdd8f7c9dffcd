//! The node demo's summary, ROS-free: what the perception node did, from its `~/debug/frame_stats` lines
//! (one JSON object per processed frame, the node's `FrameStats`): sets in, processed and dropped, boxes, and
//! per stage the median and 95th percentile (nearest rank, [`crate::perception::health::percentile`]).
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::perception::health::{percentile, STAGES};
use crate::{Error, Result};

/// One `~/debug/frame_stats` line as the node writes it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct FrameStatsLine {
    /// Stamp of the frame (its first camera's image), ns.
    pub stamp_ns: i64,
    /// Milliseconds per stage: decode, preprocess, model, merge, publish.
    pub stage_ms: BTreeMap<String, f64>,
    /// From the set's last image received to the outputs published, ms.
    pub input_to_output_ms: f64,
    /// Boxes published for the frame over all prompts.
    pub boxes: usize,
    /// Complete sets so far.
    pub sets_in: u64,
    /// Sets processed so far.
    pub sets_processed: u64,
    /// Complete sets replaced by a newer one before the model got to them, so far.
    pub sets_dropped: u64,
    /// Camera messages that never became part of a set, so far.
    #[serde(default)]
    pub messages_dropped: u64,
}

impl FrameStatsLine {
    /// Parses one line; the error names the line number (1-based) and what is wrong.
    pub fn parse(line: &str, number: usize) -> Result<Self> {
        serde_json::from_str(line).map_err(|e| {
            Error::invalid(
                format!("frame_stats line {number}"),
                format!("{e}: {}", line.chars().take(120).collect::<String>()),
            )
        })
    }
}

/// Median and 95th percentile of one stage over the frames.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StageStat {
    /// `decode`, `preprocess`, `model`, `merge`, `publish`, `total` (their sum) or `input_to_output`.
    pub stage: String,
    /// Frames with a value.
    pub frames: usize,
    /// Median, ms.
    pub median_ms: f64,
    /// 95th percentile (nearest rank), ms.
    pub p95_ms: f64,
}

/// What the node did over the demo.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DemoSummary {
    /// Frames reported on `~/debug/frame_stats`.
    pub frames: usize,
    /// Complete camera sets the node assembled (the last report's count).
    pub sets_in: u64,
    /// Sets the model processed.
    pub sets_processed: u64,
    /// Sets replaced by a newer one while the model was busy.
    pub sets_dropped: u64,
    /// Camera messages that never became part of a set.
    pub messages_dropped: u64,
    /// Boxes published over all frames and prompts.
    pub boxes: usize,
    /// Per stage, in pipeline order, then `total` (the stages' sum per frame) and `input_to_output`.
    pub stages: Vec<StageStat>,
}

/// The stage rows of the summary, in order.
pub fn stage_names() -> Vec<&'static str> {
    let mut v: Vec<&str> = STAGES.to_vec();
    v.extend(["total", "input_to_output"]);
    v
}

/// Summarizes frame_stats lines (in the order they were published); blank lines are skipped, a malformed
/// line is an error naming it. No line gives zero counts and NaN latencies (`null` in JSON).
pub fn summarize<S: AsRef<str>>(lines: &[S]) -> Result<DemoSummary> {
    let stats: Vec<FrameStatsLine> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| !l.as_ref().trim().is_empty())
        .map(|(i, l)| FrameStatsLine::parse(l.as_ref(), i + 1))
        .collect::<Result<_>>()?;
    Ok(summarize_stats(&stats))
}

/// [`summarize`] on parsed lines.
pub fn summarize_stats(stats: &[FrameStatsLine]) -> DemoSummary {
    let mut samples: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for s in stats {
        for stage in STAGES {
            if let Some(v) = s.stage_ms.get(stage).filter(|v| v.is_finite()) {
                samples.entry(stage).or_default().push(*v);
            }
        }
        let total: f64 = s.stage_ms.values().filter(|v| v.is_finite()).sum();
        samples.entry("total").or_default().push(total);
        if s.input_to_output_ms.is_finite() {
            samples
                .entry("input_to_output")
                .or_default()
                .push(s.input_to_output_ms);
        }
    }
    let stages = stage_names()
        .into_iter()
        .map(|stage| {
            let mut v = samples.remove(stage).unwrap_or_default();
            v.sort_by(f64::total_cmp);
            StageStat {
                stage: stage.to_string(),
                frames: v.len(),
                median_ms: percentile(&v, 50.0),
                p95_ms: percentile(&v, 95.0),
            }
        })
        .collect();
    // Counters only grow; the largest is the last report's (robust to reordering on the way).
    let max = |f: fn(&FrameStatsLine) -> u64| stats.iter().map(f).max().unwrap_or(0);
    DemoSummary {
        frames: stats.len(),
        sets_in: max(|s| s.sets_in),
        sets_processed: max(|s| s.sets_processed),
        sets_dropped: max(|s| s.sets_dropped),
        messages_dropped: max(|s| s.messages_dropped),
        boxes: stats.iter().map(|s| s.boxes).sum(),
        stages,
    }
}

impl DemoSummary {
    /// The counts as a sentence and the latencies as a Markdown table.
    pub fn markdown(&self) -> String {
        let ms = |v: f64| {
            if v.is_finite() {
                format!("{v:.1}")
            } else {
                "–".into()
            }
        };
        let mut s = format!(
            "sets in {}, processed {}, dropped {} (camera messages dropped {}); {} boxes published over {} frames\n\n",
            self.sets_in,
            self.sets_processed,
            self.sets_dropped,
            self.messages_dropped,
            self.boxes,
            self.frames
        );
        s.push_str("| stage | frames | median ms | p95 ms |\n|---|---:|---:|---:|\n");
        for st in &self.stages {
            s.push_str(&format!(
                "| {} | {} | {} | {} |\n",
                st.stage,
                st.frames,
                ms(st.median_ms),
                ms(st.p95_ms)
            ));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(k: u64, model: f64, boxes: usize) -> String {
        serde_json::json!({
            "stamp_ns": 1_000 + k as i64,
            "stage_ms": {"decode": 2.0, "preprocess": 3.0, "model": model, "merge": 0.5, "publish": 0.5},
            "input_to_output_ms": model + 10.0,
            "boxes": boxes,
            "sets_in": k + 1,
            "sets_processed": k,
            "sets_dropped": 1,
            "messages_dropped": 0,
        })
        .to_string()
    }

    #[test]
    fn statistics_come_from_the_frame_stats_lines() {
        // Model times 100, 200, …, 2000 ms over 20 frames (published out of order).
        let mut lines: Vec<String> = (1..=20).map(|k| line(k, 100.0 * k as f64, 2)).collect();
        lines.swap(3, 17);
        lines.insert(5, "   ".into());
        let s = summarize(&lines).unwrap();
        assert_eq!(s.frames, 20);
        assert_eq!((s.sets_in, s.sets_processed, s.sets_dropped), (21, 20, 1));
        assert_eq!(s.boxes, 40);
        let names: Vec<&str> = s.stages.iter().map(|x| x.stage.as_str()).collect();
        assert_eq!(
            names,
            [
                "decode",
                "preprocess",
                "model",
                "merge",
                "publish",
                "total",
                "input_to_output"
            ]
        );
        let get = |n: &str| s.stages.iter().find(|x| x.stage == n).unwrap();
        // Nearest rank: the 10th and the 19th of 20.
        assert_eq!(get("model").median_ms, 1000.0);
        assert_eq!(get("model").p95_ms, 1900.0);
        assert_eq!(get("decode").median_ms, 2.0);
        assert_eq!(get("total").median_ms, 1006.0);
        assert_eq!(get("input_to_output").p95_ms, 1910.0);
        assert!(get("merge").frames == 20);
        let md = s.markdown();
        assert!(md.contains("| model | 20 | 1000.0 | 1900.0 |"), "{md}");
        assert!(
            md.starts_with("sets in 21, processed 20, dropped 1"),
            "{md}"
        );
    }

    #[test]
    fn no_frame_gives_zero_counts_and_a_bad_line_is_named() {
        let s = summarize::<&str>(&[]).unwrap();
        assert_eq!((s.frames, s.sets_in, s.boxes), (0, 0, 0));
        assert!(s
            .stages
            .iter()
            .all(|x| x.median_ms.is_nan() && x.frames == 0));
        assert!(s.markdown().contains("| model | 0 | – | – |"));
        let json = serde_json::to_value(&s).unwrap();
        assert!(json["stages"][0]["median_ms"].is_null());
        let e = summarize(&[line(1, 5.0, 0), "{not json".into()]).unwrap_err();
        assert!(e.to_string().contains("frame_stats line 2"), "{e}");
    }
}

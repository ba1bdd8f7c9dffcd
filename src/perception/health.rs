//! Health bookkeeping of a running perception node, ROS-free: input errors grouped by cause (logged and
//! reported once per cause and interval, not once per message) and per-stage latencies (median, p95).
use std::collections::{BTreeMap, VecDeque};

use serde::Serialize;

/// Input errors seen during one reporting interval and in total, by cause.
#[derive(Debug, Clone, Default)]
pub struct InputErrors {
    interval: BTreeMap<String, (u64, String)>,
    total: BTreeMap<String, u64>,
}

/// One cause's errors in an interval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErrorReport {
    /// Short cause (e.g. "cam_front image: truncated JPEG").
    pub cause: String,
    /// Occurrences in the interval.
    pub count: u64,
    /// The first message of the interval, in full.
    pub example: String,
    /// Occurrences since the start.
    pub total: u64,
}

impl InputErrors {
    /// Counts one error of `cause` with its full message.
    pub fn report(&mut self, cause: impl Into<String>, message: impl Into<String>) {
        let cause = cause.into();
        *self.total.entry(cause.clone()).or_default() += 1;
        self.interval
            .entry(cause)
            .or_insert_with(|| (0, message.into()))
            .0 += 1;
    }

    /// The interval's errors, one per cause, and a fresh interval.
    pub fn end_interval(&mut self) -> Vec<ErrorReport> {
        std::mem::take(&mut self.interval)
            .into_iter()
            .map(|(cause, (count, example))| ErrorReport {
                total: self.total[&cause],
                cause,
                count,
                example,
            })
            .collect()
    }

    /// Errors since the start, by cause.
    pub fn totals(&self) -> &BTreeMap<String, u64> {
        &self.total
    }
}

/// The stages a frame goes through in the node.
pub const STAGES: [&str; 5] = ["decode", "preprocess", "model", "merge", "publish"];

/// Rolling per-stage latencies, milliseconds, over the last `window` frames.
#[derive(Debug, Clone)]
pub struct StageLatencies {
    window: usize,
    samples: BTreeMap<String, VecDeque<f64>>,
}

/// Median and 95th percentile of one stage.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LatencySummary {
    /// Frames in the window.
    pub count: usize,
    /// Median, ms.
    pub median_ms: f64,
    /// 95th percentile (nearest rank), ms.
    pub p95_ms: f64,
}

impl StageLatencies {
    /// Keeps the last `window` (≥ 1) samples per stage.
    pub fn new(window: usize) -> Self {
        Self {
            window: window.max(1),
            samples: BTreeMap::new(),
        }
    }

    /// Adds one sample of `stage`.
    pub fn add(&mut self, stage: &str, ms: f64) {
        let q = self.samples.entry(stage.to_string()).or_default();
        q.push_back(ms);
        if q.len() > self.window {
            q.pop_front();
        }
    }

    /// Median and p95 per stage with samples.
    pub fn summary(&self) -> BTreeMap<String, LatencySummary> {
        self.samples
            .iter()
            .filter(|(_, q)| !q.is_empty())
            .map(|(k, q)| {
                let mut v: Vec<f64> = q.iter().copied().collect();
                v.sort_by(f64::total_cmp);
                (
                    k.clone(),
                    LatencySummary {
                        count: v.len(),
                        median_ms: percentile(&v, 50.0),
                        p95_ms: percentile(&v, 95.0),
                    },
                )
            })
            .collect()
    }
}

/// Nearest-rank percentile of sorted values (NaN when empty).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_grouped_per_cause_and_interval() {
        let mut e = InputErrors::default();
        for i in 0..1000 {
            e.report("cam_front image: truncated JPEG", format!("frame {i}"));
        }
        e.report("prompt: empty", "empty prompt");
        let r = e.end_interval();
        assert_eq!(r.len(), 2);
        let jpeg = r.iter().find(|r| r.cause.contains("JPEG")).unwrap();
        assert_eq!((jpeg.count, jpeg.total), (1000, 1000));
        assert_eq!(jpeg.example, "frame 0");
        assert!(e.end_interval().is_empty());
        e.report("prompt: empty", "again");
        assert_eq!(e.end_interval()[0].total, 2);
    }

    #[test]
    fn percentiles_follow_the_nearest_rank_rule() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 95.0), 95.0);
        assert_eq!(percentile(&[7.0], 95.0), 7.0);
        assert!(percentile(&[], 50.0).is_nan());
        let mut s = StageLatencies::new(3);
        for ms in [10.0, 20.0, 30.0, 40.0] {
            s.add("model", ms);
        }
        let m = s.summary()["model"];
        assert_eq!(m.count, 3);
        assert_eq!(m.median_ms, 30.0);
        assert_eq!(m.p95_ms, 40.0);
    }
}

//! Approximate-time synchronization of the rig's camera views (ROS-free).
//!
//! Each view keeps a short queue of its newest messages. After every arrival the synchronizer looks for the
//! *newest* complete set: one message per view whose stamps span at most `slop`. The set with the largest
//! newest stamp wins, so a node that falls behind always processes the latest complete frame. Messages older
//! than an emitted set can never join a later one: they are dropped and counted, as are messages pushed out of
//! a full queue and messages that arrive older than the last emitted set.
use std::collections::VecDeque;

use serde::Serialize;

use crate::{Error, Result};

/// Settings of a [`Synchronizer`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SyncConfig {
    /// Number of views (cameras) in a set.
    pub views: usize,
    /// Largest spread of stamps in a set, nanoseconds.
    pub slop_ns: i64,
    /// Messages kept per view; the oldest is dropped when a new one arrives on a full queue.
    pub queue_depth: usize,
}

/// Counters of a [`Synchronizer`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SyncStats {
    /// Messages pushed.
    pub received: u64,
    /// Complete sets emitted.
    pub sets: u64,
    /// Messages that never became part of a set (queue overflow, or older than an emitted set).
    pub dropped_messages: u64,
    /// Of those, messages that arrived already older than the last emitted set.
    pub late_messages: u64,
}

/// One synchronized set: a message per view, in view order.
#[derive(Debug, Clone, PartialEq)]
pub struct FrameSet<T> {
    /// Stamp of view 0's message (the rig's first camera): the stamp the set's outputs carry.
    pub stamp_ns: i64,
    /// Newest minus oldest stamp in the set.
    pub spread_ns: i64,
    /// Per view: its message's stamp and the message.
    pub views: Vec<(i64, T)>,
}

/// Approximate-time synchronizer over `views` streams (see the module docs).
#[derive(Debug, Clone)]
pub struct Synchronizer<T> {
    config: SyncConfig,
    queues: Vec<VecDeque<(i64, T)>>,
    last_set_newest: Option<i64>,
    stats: SyncStats,
}

impl<T> Synchronizer<T> {
    /// A synchronizer; zero views, a negative slop or a zero queue depth are errors.
    pub fn new(config: SyncConfig) -> Result<Self> {
        if config.views == 0 || config.slop_ns < 0 || config.queue_depth == 0 {
            return Err(Error::invalid(
                "synchronizer settings",
                format!(
                    "need views ≥ 1, slop ≥ 0 and queue depth ≥ 1, got {} views, slop {} ns, depth {}",
                    config.views, config.slop_ns, config.queue_depth
                ),
            ));
        }
        Ok(Self {
            config,
            queues: (0..config.views).map(|_| VecDeque::new()).collect(),
            last_set_newest: None,
            stats: SyncStats::default(),
        })
    }

    /// The counters so far.
    pub fn stats(&self) -> SyncStats {
        self.stats
    }

    /// Messages waiting in the queues.
    pub fn pending(&self) -> usize {
        self.queues.iter().map(VecDeque::len).sum()
    }

    /// Adds view `view`'s message stamped `stamp_ns`; returns the newest complete set when this arrival
    /// completes one. A view index out of range is an error.
    pub fn push(&mut self, view: usize, stamp_ns: i64, msg: T) -> Result<Option<FrameSet<T>>> {
        let n = self.queues.len();
        let queue = self.queues.get_mut(view).ok_or_else(|| {
            Error::invalid("synchronizer view", format!("view {view} of {n} views"))
        })?;
        self.stats.received += 1;
        if self.last_set_newest.is_some_and(|t| stamp_ns <= t) {
            self.stats.dropped_messages += 1;
            self.stats.late_messages += 1;
            return Ok(None);
        }
        // Keep the queue sorted by stamp (streams are usually in order; a reordered one is still handled).
        let at = queue.partition_point(|(t, _)| *t <= stamp_ns);
        queue.insert(at, (stamp_ns, msg));
        if queue.len() > self.config.queue_depth {
            queue.pop_front();
            self.stats.dropped_messages += 1;
        }
        Ok(self.take_newest_set())
    }

    /// The pick (index per view) of the newest complete set, if any.
    fn newest_pick(&self) -> Option<Vec<usize>> {
        if self.queues.iter().any(VecDeque::is_empty) {
            return None;
        }
        let mut candidates: Vec<i64> = self
            .queues
            .iter()
            .flat_map(|q| q.iter().map(|(t, _)| *t))
            .collect();
        candidates.sort_unstable_by(|a, b| b.cmp(a));
        candidates.dedup();
        // A set whose newest stamp is `top`: every view's newest message in [top - slop, top].
        candidates.into_iter().find_map(|top| {
            self.queues
                .iter()
                .map(|q| {
                    q.iter()
                        .rposition(|(t, _)| *t <= top && *t >= top - self.config.slop_ns)
                })
                .collect::<Option<Vec<usize>>>()
        })
    }

    fn take_newest_set(&mut self) -> Option<FrameSet<T>> {
        let pick = self.newest_pick()?;
        let mut views = Vec::with_capacity(pick.len());
        for (q, &i) in self.queues.iter_mut().zip(&pick) {
            // Everything before the pick can never join a later set.
            self.stats.dropped_messages += i as u64;
            q.drain(..i);
            views.push(q.pop_front().expect("picked message is in the queue"));
        }
        let newest = views.iter().map(|(t, _)| *t).max().unwrap_or_default();
        let oldest = views.iter().map(|(t, _)| *t).min().unwrap_or_default();
        // Messages at or before the set's newest stamp in other queues are now stale too.
        for q in &mut self.queues {
            let stale = q.partition_point(|(t, _)| *t <= newest);
            self.stats.dropped_messages += stale as u64;
            q.drain(..stale);
        }
        self.last_set_newest = Some(newest);
        self.stats.sets += 1;
        Some(FrameSet {
            stamp_ns: views[0].0,
            spread_ns: newest - oldest,
            views,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sync(views: usize, slop_ms: i64, depth: usize) -> Synchronizer<u32> {
        Synchronizer::new(SyncConfig {
            views,
            slop_ns: slop_ms * 1_000_000,
            queue_depth: depth,
        })
        .unwrap()
    }

    const MS: i64 = 1_000_000;

    #[test]
    fn a_set_forms_when_the_last_view_arrives_within_the_slop() {
        let mut s = sync(3, 10, 4);
        assert!(s.push(0, 100 * MS, 0).unwrap().is_none());
        assert!(s.push(1, 105 * MS, 1).unwrap().is_none());
        let set = s.push(2, 108 * MS, 2).unwrap().expect("complete");
        assert_eq!(set.stamp_ns, 100 * MS);
        assert_eq!(set.spread_ns, 8 * MS);
        assert_eq!(set.views.iter().map(|v| v.1).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(s.pending(), 0);
        assert_eq!(s.stats().sets, 1);
        assert_eq!(s.stats().dropped_messages, 0);
    }

    #[test]
    fn stamps_further_apart_than_the_slop_do_not_form_a_set() {
        let mut s = sync(2, 10, 4);
        s.push(0, 100 * MS, 0).unwrap();
        assert!(s.push(1, 111 * MS, 1).unwrap().is_none());
        // A later view-0 message within the slop of view 1 completes the set; the old one is dropped.
        let set = s.push(0, 115 * MS, 2).unwrap().expect("complete");
        assert_eq!(set.views[0], (115 * MS, 2));
        assert_eq!(set.views[1], (111 * MS, 1));
        assert_eq!(s.stats().dropped_messages, 1);
    }

    #[test]
    fn the_newest_complete_set_wins_and_older_messages_are_dropped() {
        let mut s = sync(2, 5, 8);
        // View 0 runs ahead with three frames; view 1 arrives late with two.
        for (i, t) in [100, 200, 300].into_iter().enumerate() {
            assert!(s.push(0, t * MS, i as u32).unwrap().is_none());
        }
        let set = s.push(1, 201 * MS, 10).unwrap().expect("frame 200");
        assert_eq!(set.views[0].0, 200 * MS);
        // Frame 100 of view 0 can never complete: dropped. Frame 300 waits.
        assert_eq!(s.stats().dropped_messages, 1);
        assert_eq!(s.pending(), 1);
        // A late view-1 message older than the emitted set is dropped on arrival.
        assert!(s.push(1, 150 * MS, 11).unwrap().is_none());
        assert_eq!(s.stats().late_messages, 1);
        let set = s.push(1, 299 * MS, 12).unwrap().expect("frame 300");
        assert_eq!(set.views[1].1, 12);
    }

    #[test]
    fn queues_stay_bounded_when_a_view_is_missing() {
        let mut s = sync(6, 50, 4);
        for k in 0..1000 {
            for v in 0..5 {
                assert!(s.push(v, k * 10 * MS, k as u32).unwrap().is_none());
            }
        }
        assert_eq!(s.pending(), 5 * 4);
        assert_eq!(s.stats().received, 5000);
        assert_eq!(s.stats().dropped_messages, 5000 - 20);
        // The sixth camera comes back: the newest set forms at once.
        let set = s.push(5, 9990 * MS, 7).unwrap().expect("complete");
        assert_eq!(set.stamp_ns, 9990 * MS);
    }

    #[test]
    fn matches_a_brute_force_search_for_the_newest_set() {
        // Random arrivals; after each, the emitted set (if any) must be the brute-force newest set over the
        // queues' contents as they were just before the pick.
        let mut rng: u64 = 0x9e3779b97f4a7c15;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut s = sync(3, 7, 3);
        for _ in 0..2000 {
            let view = (next() % 3) as usize;
            let t = (next() % 400) as i64 * MS;
            let before: Vec<Vec<i64>> = s
                .queues
                .iter()
                .map(|q| q.iter().map(|(t, _)| *t).collect())
                .collect();
            let last = s.last_set_newest;
            let got = s.push(view, t, 0).unwrap();
            if last.is_some_and(|l| t <= l) {
                assert!(got.is_none());
                continue;
            }
            let mut queues = before;
            let pos = queues[view].partition_point(|x| *x <= t);
            queues[view].insert(pos, t);
            if queues[view].len() > 3 {
                queues[view].remove(0);
            }
            // Brute force over every combination.
            let mut best: Option<i64> = None;
            for &a in &queues[0] {
                for &b in &queues[1] {
                    for &c in &queues[2] {
                        let (lo, hi) = (a.min(b).min(c), a.max(b).max(c));
                        if hi - lo <= 7 * MS && best.is_none_or(|x| hi > x) {
                            best = Some(hi);
                        }
                    }
                }
            }
            match (got, best) {
                (None, None) => {}
                (Some(set), Some(hi)) => {
                    let newest = set.views.iter().map(|v| v.0).max().unwrap();
                    assert_eq!(newest, hi);
                    assert!(set.spread_ns <= 7 * MS);
                }
                (g, b) => panic!("synchronizer {:?} vs brute force {b:?}", g.map(|s| s.views)),
            }
        }
    }

    #[test]
    fn bad_settings_and_views_are_errors() {
        assert!(Synchronizer::<u8>::new(SyncConfig {
            views: 0,
            slop_ns: 1,
            queue_depth: 1
        })
        .is_err());
        let mut s = sync(2, 1, 1);
        assert!(s.push(2, 0, 0).is_err());
    }
}

//! `vlm3d play`: publishes a rosbag2 folder's messages through r2r with their recorded timing, and `/clock`,
//! for machines without `ros2 bag` (users with a full ROS 2 run `ros2 bag play` on the same bags).
//!
//! Messages go out as their recorded CDR bytes (no decoding), each topic with its recorded type and with the
//! durability it was offered with (transient-local topics such as `/tf_static` stay latched for late
//! subscribers).
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use r2r::rosgraph_msgs::msg::Clock;
use r2r::{Context, Node, PublisherUntyped, QosProfile};

use super::convert::time_from_nanos;
use crate::data::bag::rosbag::BagReader;
use crate::{Error, Result};

/// Settings of [`play`].
#[derive(Debug, Clone)]
pub struct PlayOptions {
    /// The rosbag2 folder (or a lone `.mcap`).
    pub bag: PathBuf,
    /// Speed factor: 2 plays twice as fast.
    pub rate: f64,
    /// Start again from the beginning at the end, until stopped.
    pub looped: bool,
    /// Only these topics (all when empty).
    pub topics: Vec<String>,
    /// Publish `/clock` (rosgraph_msgs/Clock) with each message's recorded time.
    pub clock: bool,
    /// Before the first message, wait until each of these topics has a subscriber (at most `wait_timeout`).
    pub wait_for: Vec<String>,
    /// Subscribers each `wait_for` topic needs (e.g. 2: a node and a recorder).
    pub min_subscribers: usize,
    /// Longest wait for `wait_for`.
    pub wait_timeout: Duration,
    /// Pause after the subscribers matched and before the first message (like `ros2 bag play --delay`): a
    /// publisher sees a match before a best-effort subscriber is ready to receive.
    pub delay: Duration,
    /// Stop when this returns true (checked between messages).
    pub stop: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

impl PlayOptions {
    /// Real time, all topics, once, with `/clock`.
    pub fn new(bag: impl Into<PathBuf>) -> Self {
        Self {
            bag: bag.into(),
            rate: 1.0,
            looped: false,
            topics: Vec::new(),
            clock: true,
            wait_for: Vec::new(),
            min_subscribers: 1,
            wait_timeout: Duration::from_secs(60),
            delay: Duration::ZERO,
            stop: None,
        }
    }
}

/// What [`play`] published.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PlayReport {
    /// Messages published per topic.
    pub published: BTreeMap<String, u64>,
    /// Wall-clock seconds from the first message to the last.
    pub seconds: f64,
    /// Passes over the bag.
    pub passes: u64,
}

fn latched(qos_yaml: &serde_yaml::Value) -> bool {
    serde_yaml::to_string(qos_yaml)
        .map(|s| s.contains("transient_local"))
        .unwrap_or(false)
}

/// Plays the bag (see the module docs). A bad rate, an unreadable bag, or a damaged message is an error that
/// names it; publishing stops at the damage.
pub fn play(opts: &PlayOptions) -> Result<PlayReport> {
    if !(opts.rate.is_finite() && opts.rate > 0.0) {
        return Err(Error::invalid(
            "play rate",
            format!("{} (must be > 0)", opts.rate),
        ));
    }
    let reader = BagReader::open(&opts.bag)?;
    let ctx = Context::create()?;
    let mut node = Node::create(ctx, "vlm3d_player", "")?;
    let meta = reader.metadata().ok_or_else(|| {
        Error::invalid(
            format!("bag {}", opts.bag.display()),
            "no metadata.yaml: play needs a rosbag2 folder",
        )
    })?;
    for t in &opts.topics {
        if !meta
            .topics_with_message_count
            .iter()
            .any(|m| m.topic_metadata.name == *t)
        {
            return Err(Error::invalid(
                format!("topic {t}"),
                format!("not in {}", opts.bag.display()),
            ));
        }
    }
    let clock_pub = if opts.clock {
        Some(node.create_publisher::<Clock>("/clock", QosProfile::default())?)
    } else {
        None
    };
    // Every publisher exists before the first message, so subscribers can match them all.
    let mut publishers: BTreeMap<String, PublisherUntyped> = BTreeMap::new();
    for t in &meta.topics_with_message_count {
        let m = &t.topic_metadata;
        if !opts.topics.is_empty() && !opts.topics.contains(&m.name) {
            continue;
        }
        let qos = if latched(&m.offered_qos_profiles) {
            QosProfile::default().transient_local().keep_last(1)
        } else {
            QosProfile::default()
        };
        let p = node
            .create_publisher_untyped(&m.name, &m.type_name, qos)
            .map_err(|e| {
                Error::Ros(format!(
                    "cannot publish {} as {}: {e} (is the type among the generated interfaces?)",
                    m.name, m.type_name
                ))
            })?;
        publishers.insert(m.name.clone(), p);
    }
    wait_for_subscribers(
        &publishers,
        &opts.wait_for,
        opts.min_subscribers.max(1),
        opts.wait_timeout,
    )?;
    // The player's node only publishes: nothing arrives for it, and rcl returns at once from a wait on its empty
    // wait set, so `spin_once` would never wait and every loop around it would take a whole core from the
    // processes the bag feeds (measured: the demo's node decoded and ran its model at half speed). It sleeps.
    std::thread::sleep(opts.delay);
    let mut report = PlayReport::default();
    let stopped = || {
        opts.stop
            .as_ref()
            .is_some_and(|s| s.load(std::sync::atomic::Ordering::Relaxed))
    };
    let start = Instant::now();
    loop {
        report.passes += 1;
        let mut first: Option<(u64, Instant)> = None;
        for msg in reader.messages() {
            if stopped() {
                return Ok(finish(report, start));
            }
            let msg = msg?;
            let Some(publisher) = publishers.get(&*msg.topic) else {
                continue;
            };
            let (t0, w0) = *first.get_or_insert((msg.log_time, Instant::now()));
            let due = w0
                + Duration::from_secs_f64(msg.log_time.saturating_sub(t0) as f64 / 1e9 / opts.rate);
            while let Some(left) = due.checked_duration_since(Instant::now()) {
                if stopped() {
                    return Ok(finish(report, start));
                }
                std::thread::sleep(left.min(Duration::from_millis(10)));
            }
            if let Some(c) = &clock_pub {
                c.publish(&Clock {
                    clock: time_from_nanos(msg.log_time as i64),
                })?;
            }
            publisher.publish_raw(&msg.data)?;
            *report.published.entry(msg.topic.to_string()).or_default() += 1;
        }
        if !opts.looped || report.published.is_empty() {
            break;
        }
    }
    // Let the last messages leave before the node (and its publishers) go.
    std::thread::sleep(Duration::from_millis(500));
    Ok(finish(report, start))
}

fn finish(mut report: PlayReport, start: Instant) -> PlayReport {
    report.seconds = start.elapsed().as_secs_f64();
    report
}

/// Waits until the publisher of every topic in `topics` is matched by at least `min` subscribers, or fails
/// naming the unmatched ones after `timeout`.
fn wait_for_subscribers(
    publishers: &BTreeMap<String, PublisherUntyped>,
    topics: &[String],
    min: usize,
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut missing = Vec::new();
        for t in topics {
            let matched = match publishers.get(t) {
                Some(p) => p.get_inter_process_subscription_count()? >= min,
                None => {
                    return Err(Error::invalid(
                        format!("--wait-for {t}"),
                        "the bag has no such topic (or it is filtered out)",
                    ))
                }
            };
            if !matched {
                missing.push(t.as_str());
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Error::Ros(format!(
                "fewer than {min} subscriber(s) on {} after {timeout:?}",
                missing.join(", ")
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

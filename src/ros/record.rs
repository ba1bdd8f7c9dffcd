//! `vlm3d record`: writes what is published on some topics to a rosbag2 MCAP folder that `ros2 bag play`,
//! Foxglove and [`crate::data::bag::rosbag::BagReader`] open, for machines without `ros2 bag record`.
//!
//! Topics are subscribed as raw CDR with the type the graph reports (a topic that does not exist yet is
//! picked up when it appears); each message is logged with its receive time. Message definitions and type
//! hashes come from the package's own definitions or the ROS 2 install's `.msg` files (`AMENT_PREFIX_PATH`).
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::{FutureExt, Stream, StreamExt};
use r2r::qos::DurabilityPolicy;
use r2r::{Context, Node, QosProfile};

use crate::data::bag::msgs::definition_and_hash;
use crate::data::bag::rosbag::{BagSummary, BagWriter, BagWriterOptions, Qos, TopicId};
use crate::{Error, Result};

/// Settings of [`record`].
#[derive(Debug, Clone)]
pub struct RecordOptions {
    /// The bag folder to create (must not exist).
    pub out: PathBuf,
    /// Topics to record (absolute names).
    pub topics: Vec<String>,
    /// Stop after this long (none: until `stop`).
    pub duration: Option<Duration>,
    /// Stop when this becomes true.
    pub stop: Arc<AtomicBool>,
}

/// What [`record`] wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RecordReport {
    /// The bag folder.
    pub bag: PathBuf,
    /// Messages per topic.
    pub messages: BTreeMap<String, u64>,
    /// Topics asked for that never appeared.
    pub never_seen: Vec<String>,
}

type RawStream = Box<dyn Stream<Item = Vec<u8>> + Unpin + Send>;

fn ament_prefixes() -> Vec<PathBuf> {
    std::env::var_os("AMENT_PREFIX_PATH")
        .map(|v| std::env::split_paths(&v).collect())
        .unwrap_or_default()
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Records until the duration has passed or `stop` is set; the bag is finished (metadata written) either way.
pub fn record(opts: &RecordOptions) -> Result<RecordReport> {
    if opts.topics.is_empty() {
        return Err(Error::invalid("record topics", "no topic given"));
    }
    if opts.out.exists() {
        return Err(Error::invalid(
            format!("record output {}", opts.out.display()),
            "already exists (rosbag2 folders are not overwritten)",
        ));
    }
    let parent = opts.out.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    let ctx = Context::create()?;
    let mut node = Node::create(ctx, &format!("vlm3d_recorder_{}", std::process::id()), "")?;
    let name = opts
        .out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "recording".into());
    let mut writer = BagWriter::create(&opts.out, &name, BagWriterOptions::default())?;
    let prefixes = ament_prefixes();
    let mut subs: Vec<(TopicId, String, RawStream)> = Vec::new();
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    let start = Instant::now();
    let mut last_discovery = None::<Instant>;
    loop {
        let done = opts.stop.load(Ordering::Relaxed)
            || opts.duration.is_some_and(|d| start.elapsed() >= d);
        if subs.len() < opts.topics.len()
            && last_discovery.is_none_or(|t: Instant| t.elapsed() > Duration::from_millis(200))
            && !done
        {
            last_discovery = Some(Instant::now());
            let graph = node.get_topic_names_and_types()?;
            for topic in &opts.topics {
                if subs.iter().any(|(_, t, _)| t == topic) {
                    continue;
                }
                let Some(types) = graph.get(topic) else {
                    continue;
                };
                let Some(ty) = types.first() else { continue };
                let (definition, hash) = definition_and_hash(ty, &prefixes).unwrap_or_default();
                // Latched when a publisher offers it so (e.g. /tf_static): the subscription then gets what
                // was published before it existed, as `ros2 bag record` does.
                let latched = node
                    .get_publishers_info_by_topic(topic, false)?
                    .iter()
                    .any(|p| matches!(p.qos_profile.durability, DurabilityPolicy::TransientLocal));
                let qos = if latched {
                    QosProfile::default().transient_local().keep_last(1)
                } else {
                    QosProfile::default().keep_last(100)
                };
                let stream = node.subscribe_raw(topic, ty, qos)?;
                let id = writer.add_topic_raw(
                    topic,
                    ty,
                    &definition,
                    &hash,
                    if latched { Qos::Latched } else { Qos::Reliable },
                )?;
                subs.push((id, topic.clone(), Box::new(stream)));
                counts.insert(topic.clone(), 0);
            }
        }
        if subs.is_empty() {
            // rcl reports an empty wait set as an error (and rcutils then warns when the next error
            // overwrites it): nothing to wait on yet.
            std::thread::sleep(Duration::from_millis(5));
        } else {
            node.spin_once(Duration::from_millis(5));
        }
        for (id, topic, stream) in &mut subs {
            while let Some(Some(data)) = stream.next().now_or_never() {
                writer.write_raw(*id, now_ns(), &data)?;
                *counts.get_mut(topic.as_str()).expect("counted") += 1;
            }
        }
        if done {
            break;
        }
    }
    let never_seen = opts
        .topics
        .iter()
        .filter(|t| !counts.contains_key(*t))
        .cloned()
        .collect();
    let _summary: BagSummary = writer.finish()?;
    Ok(RecordReport {
        bag: opts.out.clone(),
        messages: counts,
        never_seen,
    })
}

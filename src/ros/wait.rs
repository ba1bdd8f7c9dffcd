//! Waiting for discovery.
//!
//! Messages published right after a node starts go out before DDS discovery has matched anybody and are lost.
//! These helpers spin the node until the expected peers are matched, with a deadline.
//!
//! rcl returns at once from a wait on an empty wait set (a node that only publishes), so `Node::spin_once`'s
//! timeout does not bound a loop's pace there: [`spin_for`] sleeps out the rest of it.
use std::time::{Duration, Instant};

use r2r::{Node, Publisher, WrappedTypesupport};

use crate::{Error, Result};

/// Spins `node` until `publisher` has at least `min` subscribers in other processes, or fails after
/// `timeout`. Returns the number of matched subscribers.
pub fn wait_for_subscribers<T: WrappedTypesupport + 'static>(
    node: &mut Node,
    publisher: &Publisher<T>,
    min: usize,
    timeout: Duration,
) -> Result<usize> {
    let deadline = Instant::now() + timeout;
    loop {
        let n = publisher.get_inter_process_subscription_count()?;
        if n >= min {
            return Ok(n);
        }
        if Instant::now() >= deadline {
            return Err(Error::Ros(format!(
                "{n} of {min} subscriber(s) matched after {timeout:?}"
            )));
        }
        spin_for(node, Duration::from_millis(20));
    }
}

/// Spins `node` until `topic` has at least `min` publishers (this process's included), or fails after
/// `timeout`. Returns the number of publishers seen.
pub fn wait_for_publishers(
    node: &mut Node,
    topic: &str,
    min: usize,
    timeout: Duration,
) -> Result<usize> {
    let deadline = Instant::now() + timeout;
    loop {
        let n = node.get_publishers_info_by_topic(topic, false)?.len();
        if n >= min {
            return Ok(n);
        }
        if Instant::now() >= deadline {
            return Err(Error::Ros(format!(
                "{n} of {min} publisher(s) on {topic} after {timeout:?}"
            )));
        }
        spin_for(node, Duration::from_millis(20));
    }
}

/// Spins `node` once and then sleeps out whatever is left of `period`: a polling loop's pace, also for a node
/// with nothing to wait on (where `spin_once` returns at once and a loop around it would take a whole core).
pub fn spin_for(node: &mut Node, period: Duration) {
    let t = Instant::now();
    node.spin_once(period);
    if let Some(left) = period.checked_sub(t.elapsed()) {
        std::thread::sleep(left);
    }
}

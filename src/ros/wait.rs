//! Waiting for discovery.
//!
//! `Node::spin_once` returns at once when nothing is pending, so messages published right after a node
//! starts go out before DDS discovery has matched anybody and are lost. These helpers spin the node until
//! the expected peers are matched, with a deadline.
use std::time::{Duration, Instant};

use r2r::{Node, Publisher, WrappedTypesupport};

use crate::{Error, Result};

/// Spins `node` until `publisher` has at least `min` subscribers in other processes, or fails after
/// `timeout`. Returns the number of matched subscribers.
pub fn wait_for_subscribers<T: WrappedTypesupport>(
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
        node.spin_once(Duration::from_millis(20));
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
        node.spin_once(Duration::from_millis(20));
    }
}

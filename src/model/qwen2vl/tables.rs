//! Position tables (rotary cos/sin, causal masks) kept on the model's device. They depend only on the image grids
//! and token counts, which repeat from frame to frame (a rig's six views, a node's prompt), so each is built on
//! the host and uploaded once per distinct key, not once per forward pass: on a GPU a frame then moves no table
//! between host and device.
use std::sync::Mutex;

use candle_core::Tensor;

use crate::Result;

/// Most distinct keys kept; the least recently used one goes first.
const CAPACITY: usize = 16;

/// A small least-recently-used map from a key to device tensors.
pub(crate) struct TableCache<K> {
    entries: Mutex<Vec<(K, Vec<Tensor>)>>,
}

impl<K> Default for TableCache<K> {
    fn default() -> Self {
        Self {
            entries: Mutex::new(Vec::new()),
        }
    }
}

impl<K: PartialEq> TableCache<K> {
    /// The tables of `key`, built by `build` the first time (and again after eviction).
    pub(crate) fn get_or_build(
        &self,
        key: K,
        build: impl FnOnce() -> Result<Vec<Tensor>>,
    ) -> Result<Vec<Tensor>> {
        {
            // A poisoned lock only means another thread panicked mid-lookup; the entries are still whole.
            let mut e = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(i) = e.iter().position(|(k, _)| *k == key) {
                let hit = e.remove(i);
                let t = hit.1.clone();
                e.push(hit);
                return Ok(t);
            }
        }
        let t = build()?;
        let mut e = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if e.len() >= CAPACITY {
            e.remove(0);
        }
        e.push((key, t.clone()));
        Ok(t)
    }

    /// Number of keys held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.lock().map(|e| e.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn builds_once_per_key_and_evicts_the_least_recently_used() {
        let c: TableCache<usize> = TableCache::default();
        let mut builds = 0;
        let get = |k: usize, builds: &mut usize| {
            c.get_or_build(k, || {
                *builds += 1;
                Ok(vec![Tensor::new(&[k as f32], &Device::Cpu)?])
            })
            .unwrap()
        };
        let a = get(1, &mut builds);
        let b = get(1, &mut builds);
        assert_eq!(builds, 1);
        // The very tensor comes back: nothing is rebuilt or copied.
        assert_eq!(a[0].id(), b[0].id());
        for k in 2..=CAPACITY {
            get(k, &mut builds);
        }
        assert_eq!(builds, CAPACITY);
        get(1, &mut builds); // 1 is now the most recent; 2 the least
        get(CAPACITY + 1, &mut builds);
        assert_eq!(c.len(), CAPACITY);
        get(1, &mut builds);
        assert_eq!(builds, CAPACITY + 1, "1 was kept");
        get(2, &mut builds);
        assert_eq!(builds, CAPACITY + 2, "2 was evicted");
    }
}

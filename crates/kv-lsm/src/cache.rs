//! A sharded LRU cache of verified table blocks.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use parking_lot::Mutex;

const SHARDS: usize = 16;

/// (table id, block offset).
type BlockKey = (u64, u64);

#[derive(Debug, Default)]
struct Shard {
    blocks: HashMap<BlockKey, (Arc<[u8]>, u64)>,
    by_age: BTreeMap<u64, BlockKey>,
    bytes: usize,
    tick: u64,
}

/// Blocks already read and checksummed, shared by every table of an engine.
#[derive(Debug)]
pub(crate) struct BlockCache {
    shards: Vec<Mutex<Shard>>,
    shard_capacity: usize,
}

impl BlockCache {
    /// A cache holding about `capacity` bytes (0 disables caching).
    pub(crate) fn new(capacity: usize) -> Self {
        BlockCache {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            shard_capacity: capacity / SHARDS,
        }
    }

    fn shard(&self, key: BlockKey) -> &Mutex<Shard> {
        let h =
            key.0.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ key.1.wrapping_mul(0xc2b2_ae3d_27d4_eb4f);
        &self.shards[(h >> 59) as usize % SHARDS]
    }

    pub(crate) fn get(&self, key: BlockKey) -> Option<Arc<[u8]>> {
        if self.shard_capacity == 0 {
            return None;
        }
        let mut shard = self.shard(key).lock();
        shard.tick += 1;
        let tick = shard.tick;
        let (block, old) = {
            let entry = shard.blocks.get_mut(&key)?;
            let old = std::mem::replace(&mut entry.1, tick);
            (entry.0.clone(), old)
        };
        shard.by_age.remove(&old);
        shard.by_age.insert(tick, key);
        Some(block)
    }

    pub(crate) fn insert(&self, key: BlockKey, block: Arc<[u8]>) {
        if self.shard_capacity == 0 || block.len() > self.shard_capacity {
            return;
        }
        let mut shard = self.shard(key).lock();
        shard.tick += 1;
        let tick = shard.tick;
        let size = block.len();
        if let Some((old, old_tick)) = shard.blocks.insert(key, (block, tick)) {
            shard.bytes -= old.len();
            shard.by_age.remove(&old_tick);
        }
        shard.by_age.insert(tick, key);
        shard.bytes += size;
        while shard.bytes > self.shard_capacity {
            let Some((_, oldest)) = shard.by_age.pop_first() else {
                break;
            };
            if let Some((old, _)) = shard.blocks.remove(&oldest) {
                shard.bytes -= old.len();
            }
        }
    }

    /// Drops every block of table `id` (its file is gone).
    pub(crate) fn forget_table(&self, id: u64) {
        for shard in &self.shards {
            let mut shard = shard.lock();
            let doomed: Vec<(BlockKey, u64)> = shard
                .blocks
                .iter()
                .filter(|(k, _)| k.0 == id)
                .map(|(k, (_, t))| (*k, *t))
                .collect();
            for (key, tick) in doomed {
                if let Some((old, _)) = shard.blocks.remove(&key) {
                    shard.bytes -= old.len();
                }
                shard.by_age.remove(&tick);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recently_used_within_capacity() {
        let cache = BlockCache::new(16 * 100);
        // All keys in one shard would be ideal; check the global bound.
        for i in 0..1000u64 {
            cache.insert((1, i), Arc::from(vec![0u8; 10]));
        }
        let total: usize = cache.shards.iter().map(|s| s.lock().bytes).sum();
        assert!(total <= 16 * 100);
        assert!(cache.get((1, 999)).is_some(), "the newest survives");
        cache.forget_table(1);
        assert!(cache.get((1, 999)).is_none());
        let disabled = BlockCache::new(0);
        disabled.insert((1, 1), Arc::from(vec![1u8]));
        assert!(disabled.get((1, 1)).is_none());
    }
}

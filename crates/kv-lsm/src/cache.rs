//! A sharded cache of verified table blocks, evicting by CLOCK (second
//! chance): a hit only sets a flag, so reads that hit the cache do no
//! bookkeeping beyond one hash lookup; the eviction hand spares each
//! block used since it last passed once.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

const SHARDS: usize = 16;

/// (table id, block offset).
type BlockKey = (u64, u64);

#[derive(Debug)]
struct Slot {
    key: BlockKey,
    block: Arc<[u8]>,
    /// Used since the hand last passed.
    referenced: bool,
}

#[derive(Debug, Default)]
struct Shard {
    /// The clock: blocks in the order the hand visits them; `None` is a
    /// free slot (listed in `free`).
    slots: Vec<Option<Slot>>,
    index: HashMap<BlockKey, usize>,
    free: Vec<usize>,
    hand: usize,
    bytes: usize,
}

impl Shard {
    fn remove(&mut self, at: usize) {
        if let Some(slot) = self.slots[at].take() {
            self.index.remove(&slot.key);
            self.bytes -= slot.block.len();
            self.free.push(at);
        }
    }

    /// Evicts blocks, sparing each referenced one once, until the shard
    /// holds at most `capacity` bytes.
    fn evict_to(&mut self, capacity: usize) {
        while self.bytes > capacity && !self.index.is_empty() {
            self.hand = (self.hand + 1) % self.slots.len();
            let at = self.hand;
            match &mut self.slots[at] {
                Some(slot) if slot.referenced => slot.referenced = false,
                Some(_) => self.remove(at),
                None => {}
            }
        }
    }
}

/// Blocks shared by every table of an engine, up to a byte capacity.
#[derive(Debug)]
pub(crate) struct BlockCache {
    shards: Vec<Mutex<Shard>>,
    shard_capacity: usize,
}

impl BlockCache {
    /// A cache of `capacity` bytes (0 caches nothing).
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

    /// The cached block, marked as used.
    pub(crate) fn get(&self, key: BlockKey) -> Option<Arc<[u8]>> {
        if self.shard_capacity == 0 {
            return None;
        }
        let mut shard = self.shard(key).lock();
        let at = *shard.index.get(&key)?;
        let slot = shard.slots[at].as_mut()?;
        slot.referenced = true;
        Some(slot.block.clone())
    }

    /// Caches `block`, evicting others to stay within the capacity.
    pub(crate) fn insert(&self, key: BlockKey, block: Arc<[u8]>) {
        if self.shard_capacity == 0 || block.len() > self.shard_capacity {
            return;
        }
        let mut shard = self.shard(key).lock();
        if let Some(at) = shard.index.get(&key).copied() {
            shard.remove(at);
        }
        shard.bytes += block.len();
        // Not yet referenced: a block read once (a scan) goes first, yet
        // the hand reaches it last, after everything else.
        let slot = Some(Slot {
            key,
            block,
            referenced: false,
        });
        let at = match shard.free.pop() {
            Some(at) => {
                shard.slots[at] = slot;
                at
            }
            None => {
                shard.slots.push(slot);
                shard.slots.len() - 1
            }
        };
        shard.index.insert(key, at);
        shard.evict_to(self.shard_capacity);
    }

    /// Drops every block of table `id` (deleted after a compaction).
    pub(crate) fn forget_table(&self, id: u64) {
        for shard in &self.shards {
            let mut shard = shard.lock();
            let doomed: Vec<usize> = shard
                .index
                .iter()
                .filter(|(k, _)| k.0 == id)
                .map(|(_, &at)| at)
                .collect();
            for at in doomed {
                shard.remove(at);
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

    #[test]
    fn a_block_read_since_the_hand_passed_gets_a_second_chance() {
        // Three 10-byte blocks fit each shard.
        let cache = BlockCache::new(SHARDS * 30);
        let same_shard: Vec<BlockKey> = (0..10_000u64)
            .map(|i| (7, i))
            .filter(|&k| std::ptr::eq(cache.shard(k), cache.shard((7, 0))))
            .take(4)
            .collect();
        let [a, b, c, d] = same_shard[..] else {
            panic!("four keys in one shard");
        };
        for key in [a, b, c] {
            cache.insert(key, Arc::from(vec![0u8; 10]));
        }
        assert!(cache.get(a).is_some());
        cache.insert(d, Arc::from(vec![0u8; 10]));
        assert!(cache.get(a).is_some(), "read, so spared");
        assert!(cache.get(d).is_some(), "the newest is reached last");
        let kept = [b, c].iter().filter(|&&k| cache.get(k).is_some()).count();
        assert_eq!(kept, 1, "one unread block evicted");
        assert_eq!(cache.shard(a).lock().bytes, 30);
    }

    #[test]
    fn replacing_a_block_keeps_the_byte_count() {
        let cache = BlockCache::new(SHARDS * 100);
        cache.insert((1, 1), Arc::from(vec![0u8; 10]));
        cache.insert((1, 1), Arc::from(vec![0u8; 20]));
        assert_eq!(cache.get((1, 1)).unwrap().len(), 20);
        let total: usize = cache.shards.iter().map(|s| s.lock().bytes).sum();
        assert_eq!(total, 20);
        let disabled = BlockCache::new(0);
        disabled.insert((1, 1), Arc::from(vec![1u8]));
        assert!(disabled.get((1, 1)).is_none());
    }
}

//! Where a memtable's keys and values live: copied one after another into
//! large chunks that are freed together with the memtable.
//!
//! One allocation per entry cost the writer an allocator call per put and
//! the flush thread a free per entry when the flushed memtable was
//! dropped (`lsm-bench --workload fillrandom` with glibc: 13% of the
//! writer's samples in `malloc`, `_int_malloc` and `malloc_consolidate`,
//! 6% of the flush thread's in `free`). Chunks are allocated with a fixed
//! size and never grow, so an entry's bytes never move: the skip list's
//! keys point into them.

use std::alloc::{Layout, alloc, dealloc, handle_alloc_error};
use std::fmt;
use std::ptr::NonNull;

use parking_lot::Mutex;

/// Chunk size bounds: a sixty-fourth of the memtable, within these.
const MIN_CHUNK: usize = 4 << 10;
const MAX_CHUNK: usize = 1 << 20;

/// One allocation of plain bytes, freed on drop.
struct Chunk {
    ptr: NonNull<u8>,
    layout: Layout,
}

impl Chunk {
    /// A chunk of `len > 0` bytes.
    fn new(len: usize) -> Chunk {
        debug_assert!(len > 0);
        let layout =
            Layout::array::<u8>(len).unwrap_or_else(|_| handle_alloc_error(Layout::new::<u8>()));
        // SAFETY: `layout` has a non-zero size (`len > 0`: callers never
        // ask for an empty chunk).
        #[allow(unsafe_code)]
        let ptr = unsafe { alloc(layout) };
        let Some(ptr) = NonNull::new(ptr) else {
            handle_alloc_error(layout)
        };
        Chunk { ptr, layout }
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        // SAFETY: allocated in `Chunk::new` with this very layout, freed
        // only here.
        #[allow(unsafe_code)]
        unsafe {
            dealloc(self.ptr.as_ptr(), self.layout);
        }
    }
}

// SAFETY: a chunk is an allocation of plain bytes that it alone frees; it
// may be freed on any thread (the global allocator allows it).
#[allow(unsafe_code)]
unsafe impl Send for Chunk {}

/// The chunks and how much of the newest is used.
#[derive(Default)]
struct Chunks {
    /// Every chunk, the one being filled last.
    filling: Vec<Chunk>,
    /// Entries too large to share a chunk, each in its own.
    large: Vec<Chunk>,
    /// Bytes used of the last chunk in `filling`.
    used: usize,
}

/// A memtable's bytes. A pointer [`store`](Arena::store) returns stays
/// valid, and its bytes unchanged, until the arena is dropped.
pub(crate) struct Arena {
    chunk_bytes: usize,
    chunks: Mutex<Chunks>,
}

impl Arena {
    /// An arena for a memtable of `memtable_bytes`. Allocates nothing
    /// until the first entry.
    pub(crate) fn new(memtable_bytes: usize) -> Arena {
        Arena {
            chunk_bytes: (memtable_bytes / 64).clamp(MIN_CHUNK, MAX_CHUNK),
            chunks: Mutex::new(Chunks::default()),
        }
    }

    /// Copies `key` then `value` into the arena, one after the other, and
    /// returns where the copy starts (dangling when both are empty).
    pub(crate) fn store(&self, key: &[u8], value: &[u8]) -> NonNull<u8> {
        let len = key.len() + value.len();
        if len == 0 {
            return NonNull::dangling();
        }
        let mut chunks = self.chunks.lock();
        let start = if len > self.chunk_bytes / 4 {
            let chunk = Chunk::new(len);
            let start = chunk.ptr;
            chunks.large.push(chunk);
            start
        } else {
            let used = chunks.used;
            let base = match chunks.filling.last() {
                Some(last) if last.layout.size() - used >= len => last.ptr,
                _ => {
                    let chunk = Chunk::new(self.chunk_bytes);
                    let base = chunk.ptr;
                    chunks.filling.push(chunk);
                    chunks.used = 0;
                    base
                }
            };
            // SAFETY: `used + len` is within the chunk's size (checked
            // above, or a new chunk of at least `4 * len` bytes with
            // `used` 0), so the offset stays inside its allocation.
            #[allow(unsafe_code)]
            let start = unsafe { base.add(chunks.used) };
            chunks.used += len;
            start
        };
        // SAFETY: `start .. start + len` lies inside one chunk, was handed
        // out to no one before (the chunk's `used` moved past it above,
        // under the lock), so it overlaps neither the caller's slices nor
        // any key a reader holds.
        #[allow(unsafe_code)]
        unsafe {
            std::ptr::copy_nonoverlapping(key.as_ptr(), start.as_ptr(), key.len());
            std::ptr::copy_nonoverlapping(
                value.as_ptr(),
                start.as_ptr().add(key.len()),
                value.len(),
            );
        }
        start
    }

    /// Bytes held in chunks.
    #[cfg(test)]
    fn allocated(&self) -> usize {
        let chunks = self.chunks.lock();
        chunks
            .filling
            .iter()
            .chain(&chunks.large)
            .map(|c| c.layout.size())
            .sum()
    }
}

impl fmt::Debug for Arena {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let chunks = self.chunks.lock();
        f.debug_struct("Arena")
            .field("chunk_bytes", &self.chunk_bytes)
            .field("chunks", &chunks.filling.len())
            .field("large", &chunks.large.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads back `len` bytes at `ptr`: the arena must still be alive.
    fn read(_arena: &Arena, ptr: NonNull<u8>, len: usize) -> Vec<u8> {
        // SAFETY: `ptr` came from `_arena.store` with `len` bytes, and the
        // borrow of the arena keeps it alive.
        #[allow(unsafe_code)]
        unsafe {
            std::slice::from_raw_parts(ptr.as_ptr(), len).to_vec()
        }
    }

    #[test]
    fn stored_bytes_stay_put_while_chunks_fill_and_large_entries_get_their_own() {
        let arena = Arena::new(0);
        assert_eq!(arena.chunk_bytes, MIN_CHUNK);
        let mut stored = Vec::new();
        for i in 0..2000usize {
            // Mostly small entries, some over a quarter of a chunk, some empty.
            let key = format!("key{i:05}").into_bytes();
            let value = match i % 97 {
                0 => vec![i as u8; MIN_CHUNK * 2],
                1 => Vec::new(),
                _ => vec![i as u8; i % 300],
            };
            let key = if i % 97 == 1 { Vec::new() } else { key };
            let ptr = arena.store(&key, &value);
            stored.push((ptr, [key, value].concat()));
        }
        for (ptr, bytes) in &stored {
            assert_eq!(&read(&arena, *ptr, bytes.len()), bytes);
        }
        let data: usize = stored.iter().map(|(_, b)| b.len()).sum();
        let held = arena.allocated();
        assert!(held >= data, "{held} < {data}");
        // Small entries waste at most a quarter of each chunk.
        assert!(held < data + data / 2 + MIN_CHUNK, "{held} for {data}");
    }

    #[test]
    fn chunk_size_follows_the_memtable_within_bounds() {
        assert_eq!(Arena::new(64 << 20).chunk_bytes, MAX_CHUNK);
        assert_eq!(Arena::new(16 << 20).chunk_bytes, 256 << 10);
        assert_eq!(Arena::new(1 << 10).chunk_bytes, MIN_CHUNK);
    }
}

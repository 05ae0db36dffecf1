//! What a replica stores for a key: its versions, as a dotted version
//! vector set. Shared by the replica and the hint store, neither of which
//! depends on the other for it.

use kv_clock::DvvSet;

/// A sibling's value: `None` is a tombstone (a delete is a version like
/// any other).
pub type Value = Option<Vec<u8>>;

/// One key's versions.
pub type Siblings = DvvSet<Value>;

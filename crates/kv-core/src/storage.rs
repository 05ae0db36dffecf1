//! The storage-engine port: an ordered, durable map of bytes to bytes.

use std::ops::Bound;

use crate::Durable;

/// A sequence number: every write applied to an engine gets the next one,
/// and a read at sequence `s` sees exactly the writes numbered `<= s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct SeqNo(pub u64);

/// One operation of a [`WriteBatch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchOp {
    /// Set `key` to `value`.
    Put {
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
    },
    /// Remove `key`.
    Delete {
        /// The key.
        key: Vec<u8>,
    },
}

impl BatchOp {
    /// The key the operation touches.
    pub fn key(&self) -> &[u8] {
        match self {
            BatchOp::Put { key, .. } | BatchOp::Delete { key } => key,
        }
    }
}

/// Writes applied atomically: after a crash either all of them are present
/// or none, and no reader ever sees some without the others. Later
/// operations on the same key win.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteBatch {
    ops: Vec<BatchOp>,
    bytes: usize,
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a put.
    pub fn put(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> &mut Self {
        let (key, value) = (key.into(), value.into());
        self.bytes += key.len() + value.len();
        self.ops.push(BatchOp::Put { key, value });
        self
    }

    /// Adds a delete.
    pub fn delete(&mut self, key: impl Into<Vec<u8>>) -> &mut Self {
        let key = key.into();
        self.bytes += key.len();
        self.ops.push(BatchOp::Delete { key });
        self
    }

    /// The operations, in order.
    pub fn ops(&self) -> &[BatchOp] {
        &self.ops
    }

    /// How many operations the batch holds.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether the batch holds no operation.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The bytes of keys and values the batch carries.
    pub fn payload_bytes(&self) -> usize {
        self.bytes
    }
}

/// Why a storage operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The request itself is invalid (for example a key over the size
    /// limit); nothing was written and retrying the same request cannot
    /// help.
    #[error("invalid request: {0}")]
    InvalidInput(String),
    /// The engine hit an I/O or durability failure earlier and refuses
    /// writes until it is reopened.
    #[error("storage engine is poisoned and refuses writes until reopened: {0}")]
    Poisoned(String),
    /// Stored data failed verification.
    #[error("corruption: {0}")]
    Corruption(String),
    /// An I/O error; the message names the file and operation.
    #[error("i/o error: {0}")]
    Io(String),
    /// The engine is closed.
    #[error("storage engine is closed")]
    Closed,
}

impl StorageError {
    /// Whether retrying the same operation later may succeed (a transient
    /// I/O error may clear; bad input, corruption and poisoning do not).
    pub fn is_retryable(&self) -> bool {
        matches!(self, StorageError::Io(_))
    }
}

/// A key-value pair read from an engine.
pub type KvPair = (Vec<u8>, Vec<u8>);

/// An iterator over a consistent, point-in-time view of a key range.
pub type ScanIter<'a> = Box<dyn Iterator<Item = Result<KvPair, StorageError>> + Send + 'a>;

/// An ordered, durable map from byte keys to byte values.
///
/// Implementations: `kv_lsm::LsmEngine` (on disk) and the in-memory
/// `MemEngine` of the test kit; both pass the same conformance suite.
/// Every method takes `&self`: engines are shared between threads.
pub trait StorageEngine: Send + Sync {
    /// The value of `key`, if any.
    ///
    /// # Errors
    ///
    /// [`StorageError`] if the engine cannot read (I/O, a damaged table).
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError>;

    /// Sets `key` to `value`.
    ///
    /// # Errors
    ///
    /// As [`write`](Self::write).
    fn put(&self, key: &[u8], value: &[u8]) -> Result<(), StorageError> {
        let mut batch = WriteBatch::new();
        batch.put(key, value);
        self.write(batch)
    }

    /// Removes `key` (a no-op if absent).
    ///
    /// # Errors
    ///
    /// As [`write`](Self::write).
    fn delete(&self, key: &[u8]) -> Result<(), StorageError> {
        let mut batch = WriteBatch::new();
        batch.delete(key);
        self.write(batch)
    }

    /// Applies `batch` atomically and returns once it is as durable as the
    /// engine's policy promises.
    ///
    /// # Errors
    ///
    /// [`StorageError`] if the batch was not applied: invalid input (a key or
    /// value over the engine's limits), I/O, or an engine poisoned by an
    /// earlier failed sync. [`StorageError::is_retryable`] says whether trying
    /// again can help.
    fn write(&self, batch: WriteBatch) -> Result<(), StorageError>;

    /// Applies `batch` atomically and returns once it is applied, leaving
    /// the wait for durability to the returned [`Durable`]: an engine that
    /// syncs on a thread of its own lets an async caller await the sync
    /// instead of parking a blocking thread on it. The batch is invisible
    /// to [`get`](Self::get) and scans until it is durable, but
    /// [`get_latest`](Self::get_latest) sees it at once, so a
    /// read-modify-write serialised by the caller's own locks stays
    /// correct. Whether this call itself may wait: see
    /// [`inline_writes`](Self::inline_writes). The default writes with
    /// [`write`](Self::write) and returns a finished `Durable`.
    ///
    /// # Errors
    ///
    /// As [`write`](Self::write) for a batch that was not applied; a
    /// failed sync resolves the `Durable` with the error instead.
    fn write_deferred(&self, batch: WriteBatch) -> Result<Durable, StorageError> {
        self.write(batch)?;
        Ok(Durable::ready(Ok(())))
    }

    /// The value of `key` including writes made with
    /// [`write_deferred`](Self::write_deferred) that are not durable yet:
    /// what a writer's read-modify-write must start from. Readers that
    /// answer clients use [`get`](Self::get). The default is `get`.
    ///
    /// # Errors
    ///
    /// As [`get`](Self::get).
    fn get_latest(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.get(key)
    }

    /// The pairs with keys in `(start, end)`, in ascending key order, as of
    /// the moment of the call: writes made while iterating are not seen.
    ///
    /// # Errors
    ///
    /// [`StorageError`] if the engine cannot start the scan; items of the
    /// iterator carry their own errors.
    fn scan(&self, start: Bound<&[u8]>, end: Bound<&[u8]>) -> Result<ScanIter<'_>, StorageError>;

    /// Makes every acknowledged write durable (whatever the policy), and
    /// moves in-memory state to its durable form where the engine has one.
    ///
    /// # Errors
    ///
    /// [`StorageError`] if the data could not be made durable; the engine may
    /// then refuse writes.
    fn flush(&self) -> Result<(), StorageError>;

    /// The sequence number of the latest write visible to readers.
    fn last_sequence(&self) -> SeqNo;

    /// Whether [`get`](Self::get) finishes in microseconds: it never waits
    /// for a lock held across disk I/O, and touches the disk at most
    /// through page faults on memory-mapped files. An async caller may then
    /// run reads inline on its executor instead of handing each one to a
    /// blocking thread pool (two thread switches per read). `false` unless
    /// an engine says otherwise.
    fn inline_reads(&self) -> bool {
        false
    }

    /// Whether a [`write_deferred`](Self::write_deferred) made now would
    /// return in microseconds: it does not wait for a sync (the policy
    /// acknowledges before the disk has the write, or the sync is left to
    /// the returned [`Durable`]) nor for a stall or a switch of in-memory
    /// tables the engine sees coming. An async caller may then write inline
    /// on its executor instead of handing the write to a blocking thread
    /// pool. Asked before each write; the answer is a forecast, so a write
    /// may still, rarely, wait a few milliseconds. `false` unless an engine
    /// says otherwise.
    fn inline_writes(&self) -> bool {
        false
    }

    /// Whether the engine still accepts writes: `Err` with the reason once
    /// it refuses them for good (poisoned by a failed write or sync, a
    /// full disk), so that a node can step aside instead of failing every
    /// write it coordinates. `Ok` unless an engine says otherwise.
    ///
    /// # Errors
    ///
    /// [`StorageError::Poisoned`] (or [`StorageError::Closed`]) with the
    /// reason.
    fn health(&self) -> Result<(), StorageError> {
        Ok(())
    }
}

/// A shared engine is an engine (so a node and its restarted self, or a
/// replica and its hint store, can hold the same one).
impl<E: StorageEngine + ?Sized> StorageEngine for std::sync::Arc<E> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        (**self).get(key)
    }

    fn put(&self, key: &[u8], value: &[u8]) -> Result<(), StorageError> {
        (**self).put(key, value)
    }

    fn delete(&self, key: &[u8]) -> Result<(), StorageError> {
        (**self).delete(key)
    }

    fn write(&self, batch: WriteBatch) -> Result<(), StorageError> {
        (**self).write(batch)
    }

    fn write_deferred(&self, batch: WriteBatch) -> Result<Durable, StorageError> {
        (**self).write_deferred(batch)
    }

    fn get_latest(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        (**self).get_latest(key)
    }

    fn scan(&self, start: Bound<&[u8]>, end: Bound<&[u8]>) -> Result<ScanIter<'_>, StorageError> {
        (**self).scan(start, end)
    }

    fn flush(&self) -> Result<(), StorageError> {
        (**self).flush()
    }

    fn inline_reads(&self) -> bool {
        (**self).inline_reads()
    }

    fn inline_writes(&self) -> bool {
        (**self).inline_writes()
    }

    fn health(&self) -> Result<(), StorageError> {
        (**self).health()
    }

    fn last_sequence(&self) -> SeqNo {
        (**self).last_sequence()
    }
}

//! The commit log: segmented, append-only, every record checksummed.
//!
//! A segment `NNNNNN.log` holds records, each 8-byte aligned:
//!
//! ```text
//! crc32c u32 LE   over bytes 4 .. 24 + len (all that follows, but padding)
//! len    u32 LE   payload length (never 0), top bit set (see below)
//! number u64 LE   the segment's log number
//! synced u64 LE   bytes of this segment durable when the record was framed
//! payload         one write batch (see below)
//! padding         zeros up to the next multiple of 8
//! ```
//!
//! The top bit of `len` says the header holds `synced`; records written
//! before it was added have a 16-byte header without it, and are read as
//! they were.
//!
//! Each batch is one record, so a batch is atomic on recovery. The log
//! number in every record lets segments be recycled (overwritten in place,
//! which makes fdatasync cheap): a record left over from the file's earlier
//! life carries an older number and ends the log like preallocated zeros do.
//!
//! Batch payload: base sequence number (u64 LE), operation count (varint),
//! then per operation a kind byte (0 delete, 1 put), the key (varint length
//! and bytes) and, for puts, the value (varint length and bytes). Operation
//! `i` gets sequence number `base + i`.
//!
//! A segment the writer moves on from ends with an all-zero header (the
//! *terminator*), written when the next segment is named and synced
//! before anything is written to the next one (see [`Prerequisite`]): in
//! a recycled file, what follows the last record is the file's earlier
//! life, which may be cut mid-record, and only the terminator tells that
//! apart from damage once records follow in a later segment.
//!
//! Recovery reads records until the first one that is missing or fails its
//! checksum. If a valid record of the same segment follows that point and
//! says (by `synced`) that the damaged bytes were durable before it was
//! written, the damage is in the middle of the log: an error naming
//! segment and offset (or, with `RecoveryMode::TruncateAtCorruption`, the
//! point where the log is cut). Otherwise it is a torn tail, which is
//! truncated: a power cut keeps any subset of what was written since the
//! last sync (the disk writes pages back in no particular order), so valid
//! records after a gap in that region are as unsynced as the gap, and none
//! of them was acknowledged as durable.

use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use kv_core::codec::{DecodeError, DecodeResult, Reader, put_varint};
use kv_core::{BatchOp, WriteBatch};

use crate::error::{Error, Result};
use crate::fs::WritableFile;

/// Bytes before a record's payload.
pub(crate) const HEADER: usize = 24;

/// Bytes before the payload of a record without `synced` (written before
/// it was added); also the terminator's length.
const SHORT_HEADER: usize = 16;

/// The bit of a record's length word saying its header holds `synced`.
const HAS_SYNCED: u32 = 1 << 31;

/// Rounds `n` up to a multiple of 8.
const fn align8(n: usize) -> usize {
    (n + 7) & !7
}

/// Kind byte of a put.
pub(crate) const KIND_PUT: u8 = 1;
/// Kind byte of a delete.
pub(crate) const KIND_DELETE: u8 = 0;

/// One decoded operation of a batch record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LoggedOp<'a> {
    pub(crate) seq: u64,
    pub(crate) key: &'a [u8],
    /// `None` for a delete.
    pub(crate) value: Option<&'a [u8]>,
}

/// Appends the payload of `batch` numbered from `base_seq`.
pub(crate) fn encode_batch(out: &mut Vec<u8>, base_seq: u64, batch: &WriteBatch) {
    out.extend_from_slice(&base_seq.to_le_bytes());
    put_varint(out, batch.len() as u64);
    for op in batch.ops() {
        match op {
            BatchOp::Put { key, value } => {
                out.push(KIND_PUT);
                put_varint(out, key.len() as u64);
                out.extend_from_slice(key);
                put_varint(out, value.len() as u64);
                out.extend_from_slice(value);
            }
            BatchOp::Delete { key } => {
                out.push(KIND_DELETE);
                put_varint(out, key.len() as u64);
                out.extend_from_slice(key);
            }
        }
    }
}

/// Decodes a batch payload. Garbage gives an error, never a panic.
pub(crate) fn decode_batch(payload: &[u8]) -> DecodeResult<Vec<LoggedOp<'_>>> {
    let mut reader = Reader::new(payload);
    let base = reader.bytes(8, "batch sequence number")?;
    let mut base_bytes = [0u8; 8];
    base_bytes.copy_from_slice(base);
    let base_seq = u64::from_le_bytes(base_bytes);
    // Each operation takes at least two bytes (kind and key length).
    let count = reader.count("batch operation count", 2)?;
    let mut ops = Vec::with_capacity(count);
    for i in 0..count as u64 {
        let at = reader.position();
        let kind = reader.u8("operation kind")?;
        let key_len = reader.count("key length", 1)?;
        let key = reader.bytes(key_len, "key")?;
        let value = match kind {
            KIND_PUT => {
                let len = reader.count("value length", 1)?;
                Some(reader.bytes(len, "value")?)
            }
            KIND_DELETE => None,
            _ => {
                return Err(DecodeError::Invalid {
                    offset: at,
                    what: "operation kind",
                });
            }
        };
        let seq = base_seq.checked_add(i).ok_or(DecodeError::Invalid {
            offset: 0,
            what: "batch sequence number (overflows)",
        })?;
        ops.push(LoggedOp { seq, key, value });
    }
    reader.finish()?;
    Ok(ops)
}

/// Frames the payload that starts at `payload_start` (after `HEADER`
/// reserved bytes) and runs to the end of `out`, saying `synced` bytes of
/// the segment were durable when it was framed.
fn frame_into(out: &mut Vec<u8>, log_number: u64, synced: u64, payload_start: usize) {
    let len = out.len() - payload_start;
    let header_at = payload_start - HEADER;
    out[header_at + 4..header_at + 8].copy_from_slice(&(len as u32 | HAS_SYNCED).to_le_bytes());
    out[header_at + 8..header_at + 16].copy_from_slice(&log_number.to_le_bytes());
    out[header_at + 16..header_at + 24].copy_from_slice(&synced.to_le_bytes());
    let crc = crc32c::crc32c(&out[header_at + 4..]);
    out[header_at..header_at + 4].copy_from_slice(&crc.to_le_bytes());
    out.resize(align8(out.len()), 0);
}

/// Work that must be done before the first byte of a segment reaches its
/// file: the segment before it synced through its terminator, and the
/// directory entry naming this one made durable. A memtable switch leaves
/// it to be done later, outside the log lock (the log syncer does it
/// before it next takes the lock); whoever gets to it first does it, and
/// a writer about to write the segment waits for it.
///
/// The order is what recovery needs: once any record of a segment can be
/// on disk, the segment before it is complete there, so only the last
/// segment can end torn.
#[derive(Clone)]
pub(crate) struct Prerequisite(Arc<Mutex<Step>>);

type Work = Box<dyn FnOnce() -> Result<()> + Send>;

enum Step {
    Pending(Work),
    Done,
    /// The work failed (the engine is poisoned by whoever did it).
    Failed(String),
}

impl std::fmt::Debug for Prerequisite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let step = match &*self.0.lock() {
            Step::Pending(_) => "pending",
            Step::Done => "done",
            Step::Failed(_) => "failed",
        };
        f.debug_tuple("Prerequisite").field(&step).finish()
    }
}

impl Prerequisite {
    pub(crate) fn new(work: impl FnOnce() -> Result<()> + Send + 'static) -> Self {
        Prerequisite(Arc::new(Mutex::new(Step::Pending(Box::new(work)))))
    }

    /// Does the work unless it is done; a caller that finds it under way
    /// waits for it. Once it has failed, every caller gets the failure.
    pub(crate) fn settle(&self) -> Result<()> {
        let mut step = self.0.lock();
        match std::mem::replace(&mut *step, Step::Done) {
            Step::Done => Ok(()),
            Step::Pending(work) => work().inspect_err(|err| *step = Step::Failed(err.to_string())),
            Step::Failed(reason) => {
                *step = Step::Failed(reason.clone());
                Err(Error::Poisoned(reason))
            }
        }
    }
}

/// The writer of one segment.
#[derive(Debug)]
pub(crate) struct LogWriter {
    file: Box<dyn WritableFile>,
    path: PathBuf,
    number: u64,
    /// Done before anything is written to or synced in this segment.
    after: Option<Prerequisite>,
    /// How far the segment is written and synced (shared with its
    /// syncers).
    progress: Arc<Progress>,
    /// Bytes written to the file so far.
    offset: u64,
    /// Records framed but not yet written.
    buffer: Vec<u8>,
    /// Bytes of the file reserved on disk (preallocated) so far.
    reserved: u64,
    /// Bytes reserved at a time ahead of the writes; 0 reserves nothing.
    reserve_step: u64,
}

impl LogWriter {
    pub(crate) fn new(file: Box<dyn WritableFile>, path: PathBuf, number: u64) -> Self {
        LogWriter {
            file,
            path,
            number,
            after: None,
            progress: Arc::default(),
            offset: 0,
            buffer: Vec::with_capacity(64 * 1024),
            reserved: 0,
            reserve_step: 0,
        }
    }

    /// Keeps `step` bytes reserved on disk (written zeros, see
    /// [`WritableFile::preallocate`]) ahead of the writes, one step at a
    /// time, starting now: appends inside reserved space change neither
    /// the file's size nor its block map, so a data sync has no metadata
    /// to write but once per step, and the segment never takes more than
    /// one step beyond what it holds.
    pub(crate) fn reserve_in_steps(&mut self, step: u64) {
        self.reserve_step = step;
        self.reserve(self.len());
    }

    /// Reserves space up to past `end`, when the step is set and `end`
    /// is beyond what is reserved. A failure only costs speed (the writes
    /// themselves report a full disk), so it is not an error.
    fn reserve(&mut self, end: u64) {
        if self.reserve_step == 0 || end < self.reserved {
            return;
        }
        let target = (end / self.reserve_step + 1) * self.reserve_step;
        if self.file.preallocate(target).is_ok() {
            self.reserved = target;
        } else {
            self.reserve_step = 0;
        }
    }

    pub(crate) fn number(&self) -> u64 {
        self.number
    }

    /// Makes `work` a prerequisite of anything written to or synced in
    /// this segment (see [`Prerequisite`]).
    pub(crate) fn after(&mut self, work: Prerequisite) {
        self.after = Some(work);
    }

    /// Bytes in the segment, written or buffered.
    pub(crate) fn len(&self) -> u64 {
        self.offset + self.buffer.len() as u64
    }

    /// Frames `batch` (numbered from `base_seq`) into the buffer.
    pub(crate) fn add_batch(&mut self, base_seq: u64, batch: &WriteBatch) {
        self.buffer.extend_from_slice(&[0u8; HEADER]);
        let start = self.buffer.len();
        encode_batch(&mut self.buffer, base_seq, batch);
        frame_into(&mut self.buffer, self.number, self.progress.synced(), start);
    }

    /// Frames a one-operation batch into the buffer (the same payload as
    /// [`add_batch`](Self::add_batch) with one operation).
    pub(crate) fn add_single(&mut self, seq: u64, key: &[u8], value: Option<&[u8]>) {
        self.buffer.extend_from_slice(&[0u8; HEADER]);
        let start = self.buffer.len();
        self.buffer.extend_from_slice(&seq.to_le_bytes());
        put_varint(&mut self.buffer, 1);
        self.buffer.push(if value.is_some() {
            KIND_PUT
        } else {
            KIND_DELETE
        });
        put_varint(&mut self.buffer, key.len() as u64);
        self.buffer.extend_from_slice(key);
        if let Some(value) = value {
            put_varint(&mut self.buffer, value.len() as u64);
            self.buffer.extend_from_slice(value);
        }
        frame_into(&mut self.buffer, self.number, self.progress.synced(), start);
    }

    /// Frames an arbitrary payload (manifest edits) into the buffer.
    pub(crate) fn add_record(&mut self, payload: &[u8]) {
        self.buffer.extend_from_slice(&[0u8; HEADER]);
        let start = self.buffer.len();
        self.buffer.extend_from_slice(payload);
        frame_into(&mut self.buffer, self.number, self.progress.synced(), start);
    }

    /// Bytes added and not yet written.
    pub(crate) fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// Writes the buffered records to the file (one system call).
    pub(crate) fn write_buffered(&mut self) -> Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        settle(&mut self.after)?;
        self.reserve(self.len());
        let result = self.file.write_all(&self.buffer);
        // A failed write leaves an unknown prefix on disk; the caller
        // poisons the engine, so the buffer can be dropped either way.
        self.offset += self.buffer.len() as u64;
        self.buffer.clear();
        if result.is_ok() {
            self.progress.written.store(self.offset, Ordering::Release);
        }
        result.map_err(|e| Error::io("write commit log", &self.path, e))
    }

    /// Ends the segment: writes what is buffered, then the terminator (an
    /// all-zero header) after the last record. The caller syncs.
    pub(crate) fn end_segment(&mut self) -> Result<()> {
        self.buffer.extend_from_slice(&[0u8; SHORT_HEADER]);
        self.write_buffered()
    }

    /// Makes everything written so far durable.
    pub(crate) fn sync(&mut self) -> Result<()> {
        sync_segment(
            self.file.as_mut(),
            &self.path,
            &mut self.after,
            &self.progress,
        )
    }

    /// A handle that makes everything written so far durable without this
    /// writer (see [`WritableFile::sync_handle`]).
    pub(crate) fn syncer(&self) -> Option<LogSyncer> {
        Some(LogSyncer {
            file: self.file.sync_handle()?,
            path: self.path.clone(),
            after: self.after.clone(),
            progress: self.progress.clone(),
        })
    }
}

/// Syncs a commit-log segment apart from its writer.
#[derive(Debug)]
pub(crate) struct LogSyncer {
    file: Box<dyn WritableFile>,
    path: PathBuf,
    after: Option<Prerequisite>,
    progress: Arc<Progress>,
}

/// Does a segment's prerequisite (see [`Prerequisite`]), if it has one
/// not yet done.
fn settle(after: &mut Option<Prerequisite>) -> Result<()> {
    if let Some(work) = after {
        work.settle()?;
        *after = None;
    }
    Ok(())
}

/// Makes what was written to a segment through `file` (or another handle
/// on it) durable, its prerequisite first, and records how far.
fn sync_segment(
    file: &mut dyn WritableFile,
    path: &std::path::Path,
    after: &mut Option<Prerequisite>,
    progress: &Progress,
) -> Result<()> {
    settle(after)?;
    // What was written before the sync starts is what it covers.
    let through = progress.written.load(Ordering::Acquire);
    file.sync_data()
        .map_err(|e| Error::io("fsync commit log", path, e))?;
    progress.synced.fetch_max(through, Ordering::Release);
    Ok(())
}

/// How far a segment is written and how far it is known durable.
#[derive(Debug, Default)]
struct Progress {
    written: AtomicU64,
    synced: AtomicU64,
}

impl Progress {
    fn synced(&self) -> u64 {
        self.synced.load(Ordering::Acquire)
    }
}

impl LogSyncer {
    /// Makes what the segment's writer wrote before the handle was taken
    /// durable (and the segment's prerequisite done).
    pub(crate) fn sync(&mut self) -> Result<()> {
        sync_segment(
            self.file.as_mut(),
            &self.path,
            &mut self.after,
            &self.progress,
        )
    }
}

/// How a segment ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SegmentEnd {
    /// At the end of the file, at preallocated zeros, or at a record left
    /// from the file's earlier life.
    Clean,
    /// A last record was cut short or damaged and nothing valid follows.
    Torn { offset: u64, reason: String },
    /// A record failed verification and valid records follow it.
    Corrupt { offset: u64, reason: String },
}

/// What a segment holds.
#[derive(Debug)]
pub(crate) struct SegmentContents {
    /// The payload of each valid record, in order.
    pub(crate) records: Vec<Range<usize>>,
    /// Where the valid records end.
    pub(crate) valid_len: u64,
    pub(crate) end: SegmentEnd,
}

/// A valid record: its payload, and how many bytes of its segment were
/// durable when it was framed (`u64::MAX` for a record without the field:
/// nothing tells, so it is taken to prove everything before it).
struct Record {
    payload: Range<usize>,
    synced: u64,
}

/// Parses the record at `at`: `Ok(Some(record))`, `Ok(None)` for a clean
/// end, or `Err(reason)` for a damaged record.
fn record_at(bytes: &[u8], at: usize, number: u64) -> std::result::Result<Option<Record>, String> {
    if at == bytes.len() {
        return Ok(None);
    }
    let Some(short) = bytes.get(at..at + SHORT_HEADER) else {
        return if bytes[at..].iter().all(|&b| b == 0) {
            Ok(None)
        } else {
            Err("record header cut short".to_string())
        };
    };
    let word = |r: Range<usize>| {
        let mut b = [0u8; 4];
        b.copy_from_slice(&short[r]);
        u32::from_le_bytes(b)
    };
    let u64_at = |from: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&bytes[from..from + 8]);
        u64::from_le_bytes(b)
    };
    let crc = word(0..4);
    let len_word = word(4..8);
    let record_number = u64_at(at + 8);
    if crc == 0 && len_word == 0 && record_number == 0 {
        return Ok(None);
    }
    let (header, len) = if len_word & HAS_SYNCED == 0 {
        (SHORT_HEADER, len_word as usize)
    } else {
        (HEADER, (len_word & !HAS_SYNCED) as usize)
    };
    let end = at + header + len;
    let checksum_ok = || end <= bytes.len() && crc32c::crc32c(&bytes[at + 4..end]) == crc;
    if record_number != number {
        // A record of an earlier life of a recycled file ends the log; a
        // damaged one is damage.
        return if record_number < number && checksum_ok() {
            Ok(None)
        } else {
            Err(format!(
                "record names log {record_number}, expected {number}"
            ))
        };
    }
    if len == 0 {
        return Err("record of length 0".to_string());
    }
    if end > bytes.len() {
        return Err(format!(
            "record of {len} bytes runs past the end of the file"
        ));
    }
    if !checksum_ok() {
        return Err("record failed its checksum".to_string());
    }
    let synced = if header == HEADER {
        u64_at(at + SHORT_HEADER)
    } else {
        u64::MAX
    };
    Ok(Some(Record {
        payload: at + header..end,
        synced,
    }))
}

/// Reads the records of segment `number` from its bytes.
pub(crate) fn scan_segment(bytes: &[u8], number: u64) -> SegmentContents {
    let mut records = Vec::new();
    let mut at = 0usize;
    loop {
        let reason = match record_at(bytes, at, number) {
            Ok(Some(record)) => {
                at = align8(record.payload.end).min(bytes.len());
                records.push(record.payload);
                continue;
            }
            // A clean end is only clean if nothing valid follows.
            Ok(None) => None,
            Err(reason) => Some(reason),
        };
        let end = match (after_damage(bytes, at, number), reason) {
            (After::Nothing, None) => SegmentEnd::Clean,
            (After::Nothing, Some(reason)) => SegmentEnd::Torn {
                offset: at as u64,
                reason,
            },
            (After::Unsynced(next), reason) => SegmentEnd::Torn {
                offset: at as u64,
                reason: format!(
                    "{}, and the records from byte {next} on were written before it was synced",
                    reason.as_deref().unwrap_or("a gap")
                ),
            },
            (After::Proof { at: next, synced }, reason) => SegmentEnd::Corrupt {
                offset: at as u64,
                reason: format!(
                    "{} (the valid record at byte {next} was written once {synced} bytes were synced)",
                    reason.as_deref().unwrap_or("a gap ends the log")
                ),
            },
        };
        return SegmentContents {
            records,
            valid_len: at as u64,
            end,
        };
    }
}

/// What follows the end of a segment's valid records.
enum After {
    /// No valid record of the segment.
    Nothing,
    /// Valid records, the first at this offset, none written after the
    /// end was synced: the end is where a power cut tore the unsynced tail.
    Unsynced(usize),
    /// A valid record written after the end's bytes were durable: they
    /// were damaged since.
    Proof { at: usize, synced: u64 },
}

/// Classifies what follows `end`, where the valid records of `number` stop.
fn after_damage(bytes: &[u8], end: usize, number: u64) -> After {
    let mut at = align8(end + 8);
    // The usual case: preallocated zeros to the end.
    if bytes
        .get(at..)
        .is_none_or(|rest| rest.iter().all(|&b| b == 0))
    {
        return After::Nothing;
    }
    let mut first = None;
    while at + SHORT_HEADER <= bytes.len() {
        if bytes[at + 8..at + 16] == number.to_le_bytes()
            && let Ok(Some(record)) = record_at(bytes, at, number)
        {
            if record.synced > end as u64 {
                return After::Proof {
                    at,
                    synced: record.synced,
                };
            }
            first.get_or_insert(at);
            at = align8(record.payload.end);
            continue;
        }
        at += 8;
    }
    first.map_or(After::Nothing, After::Unsynced)
}

/// The file name of segment `number`.
pub(crate) fn segment_name(number: u64) -> String {
    format!("{number:06}.log")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(ops: &[(&[u8], Option<&[u8]>)]) -> WriteBatch {
        let mut b = WriteBatch::new();
        for (k, v) in ops {
            match v {
                Some(v) => b.put(*k, *v),
                None => b.delete(*k),
            };
        }
        b
    }

    fn segment(number: u64, batches: &[WriteBatch]) -> Vec<u8> {
        let mut buf = Vec::new();
        let mut seq = 1;
        for b in batches {
            buf.extend_from_slice(&[0u8; HEADER]);
            let start = buf.len();
            encode_batch(&mut buf, seq, b);
            frame_into(&mut buf, number, u64::MAX, start);
            seq += b.len() as u64;
        }
        buf
    }

    #[test]
    fn a_recycled_segment_ends_cleanly_only_with_its_terminator() {
        // The file's earlier life: log 5, records of varied sizes.
        let old: Vec<WriteBatch> = (0..40u8)
            .map(|i| {
                let value = vec![0xA5 ^ i; 17 + usize::from(i) * 13];
                batch(&[(b"old-key", Some(value.as_slice()))])
            })
            .collect();
        let earlier = segment(5, &old);
        // Its new life, log 9: fewer, differently sized records, written
        // over the start, so they end in the middle of an old record.
        let new: Vec<WriteBatch> = (0..3u8)
            .map(|i| batch(&[(b"new", Some(&[i; 29][..]))]))
            .collect();
        let fresh = segment(9, &new);
        let mut recycled = earlier.clone();
        recycled[..fresh.len()].copy_from_slice(&fresh);
        // Without a terminator the end looks torn: fine for the last
        // segment (it is cut there), but a closed segment would read as
        // damaged. This is what a full disk left behind: a flush failed,
        // the closed segment was still needed, and the node could not open.
        let contents = scan_segment(&recycled, 9);
        assert_eq!(contents.records.len(), 3);
        assert!(
            matches!(contents.end, SegmentEnd::Torn { .. }),
            "{:?}",
            contents.end
        );
        // With the terminator the writer adds when it moves on, clean.
        let mut ended = earlier;
        ended[..fresh.len()].copy_from_slice(&fresh);
        ended[fresh.len()..fresh.len() + HEADER].fill(0);
        let contents = scan_segment(&ended, 9);
        assert_eq!(contents.records.len(), 3);
        assert_eq!(contents.end, SegmentEnd::Clean);
        assert_eq!(contents.valid_len, fresh.len() as u64);
    }

    #[test]
    fn batches_round_trip() {
        let b = batch(&[(b"k1", Some(b"v1")), (b"k2", None), (b"", Some(b""))]);
        let mut out = Vec::new();
        encode_batch(&mut out, 41, &b);
        let ops = decode_batch(&out).unwrap();
        assert_eq!(ops.len(), 3);
        assert_eq!(
            ops[0],
            LoggedOp {
                seq: 41,
                key: b"k1",
                value: Some(b"v1")
            }
        );
        assert_eq!(
            ops[1],
            LoggedOp {
                seq: 42,
                key: b"k2",
                value: None
            }
        );
        assert_eq!(
            ops[2],
            LoggedOp {
                seq: 43,
                key: b"",
                value: Some(b"")
            }
        );
    }

    #[test]
    fn single_operation_records_match_batches_of_one() {
        let path = PathBuf::from("unused");
        for value in [Some(&b"value"[..]), None] {
            let mut single = LogWriter::new(Box::new(MemFile::default()), path.clone(), 3);
            single.add_single(9, b"key", value);
            let mut batched = LogWriter::new(Box::new(MemFile::default()), path.clone(), 3);
            batched.add_batch(9, &batch(&[(b"key", value)]));
            assert_eq!(single.buffer, batched.buffer);
        }
    }

    #[test]
    fn clean_segment_with_zero_tail() {
        let mut bytes = segment(7, &[batch(&[(b"a", Some(b"1"))]), batch(&[(b"b", None)])]);
        bytes.extend_from_slice(&[0u8; 4096]);
        let contents = scan_segment(&bytes, 7);
        assert_eq!(contents.records.len(), 2);
        assert_eq!(contents.end, SegmentEnd::Clean);
    }

    #[test]
    fn torn_tail_is_detected() {
        let bytes = segment(
            7,
            &[batch(&[(b"a", Some(b"1"))]), batch(&[(b"b", Some(b"2"))])],
        );
        for cut in 1..bytes.len() {
            let contents = scan_segment(&bytes[..cut], 7);
            assert!(
                !matches!(contents.end, SegmentEnd::Corrupt { .. }),
                "cut at {cut}: {:?}",
                contents.end
            );
            assert!(contents.records.len() <= 2);
        }
    }

    #[test]
    fn damage_before_a_valid_record_is_corruption() {
        let mut bytes = segment(
            7,
            &[
                batch(&[(b"a", Some(b"1"))]),
                batch(&[(b"b", Some(b"2"))]),
                batch(&[(b"c", Some(b"3"))]),
            ],
        );
        // Flip a payload byte of the first record.
        bytes[HEADER + 9] ^= 0x40;
        let contents = scan_segment(&bytes, 7);
        assert!(contents.records.is_empty());
        assert!(
            matches!(contents.end, SegmentEnd::Corrupt { offset: 0, .. }),
            "{:?}",
            contents.end
        );
    }

    /// A file in memory; its sync handle shares the bytes.
    #[derive(Debug, Clone, Default)]
    struct MemFile(Arc<Mutex<Vec<u8>>>);

    impl WritableFile for MemFile {
        fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
            self.0.lock().extend_from_slice(buf);
            Ok(())
        }
        fn sync_data(&mut self) -> std::io::Result<()> {
            Ok(())
        }
        fn preallocate(&mut self, _: u64) -> std::io::Result<()> {
            Ok(())
        }
        fn sync_handle(&self) -> Option<Box<dyn WritableFile>> {
            Some(Box::new(self.clone()))
        }
    }

    /// Three records written one at a time by a writer, the first two
    /// synced before the third (by the writer, or by a sync handle) or
    /// not; then the second one's bytes damaged as `damage` says. The
    /// records' starts are returned with the bytes.
    fn three_records(sync: Option<bool>, damage: fn(&mut [u8])) -> (Vec<u8>, Vec<usize>) {
        let file = MemFile::default();
        let mut writer = LogWriter::new(Box::new(file.clone()), PathBuf::from("x"), 4);
        let mut starts = Vec::new();
        for i in 0..3u8 {
            if i == 2 {
                match sync {
                    Some(true) => writer.sync().unwrap(),
                    Some(false) => writer.syncer().unwrap().sync().unwrap(),
                    None => {}
                }
            }
            starts.push(writer.len() as usize);
            writer.add_batch(u64::from(i) + 1, &batch(&[(b"k", Some(&[i; 40][..]))]));
            writer.write_buffered().unwrap();
        }
        let mut bytes = file.0.lock().clone();
        damage(&mut bytes[starts[1]..starts[2]]);
        (bytes, starts)
    }

    /// Scans `bytes` from [`three_records`]: the first record only, its
    /// end, and the damage the scan names, where the second starts. How
    /// the segment ends.
    fn ends_at_the_second(bytes: &[u8], starts: &[usize]) -> SegmentEnd {
        let contents = scan_segment(bytes, 4);
        assert_eq!(contents.records.len(), 1);
        assert_eq!(contents.valid_len, starts[1] as u64);
        match &contents.end {
            SegmentEnd::Torn { offset, .. } | SegmentEnd::Corrupt { offset, .. } => {
                assert_eq!(*offset, starts[1] as u64, "{:?}", contents.end);
            }
            SegmentEnd::Clean => panic!("the damage was not seen"),
        }
        contents.end
    }

    #[test]
    fn damage_in_what_was_never_synced_is_a_torn_tail_whatever_follows() {
        // A power cut keeps any subset of the unsynced pages: the second
        // record lost (zeros) or half written, the third kept.
        let lost: fn(&mut [u8]) = |b| b.fill(0);
        let torn: fn(&mut [u8]) = |b| b[30..].fill(0);
        for damage in [lost, torn] {
            let (bytes, starts) = three_records(None, damage);
            let end = ends_at_the_second(&bytes, &starts);
            assert!(matches!(end, SegmentEnd::Torn { .. }), "{end:?}");
        }
    }

    #[test]
    fn damage_a_later_record_proves_was_synced_is_corruption() {
        let flip: fn(&mut [u8]) = |b| b[HEADER + 5] ^= 0x10;
        let lost: fn(&mut [u8]) = |b| b.fill(0);
        for by_writer in [true, false] {
            for damage in [flip, lost] {
                let (bytes, starts) = three_records(Some(by_writer), damage);
                let end = ends_at_the_second(&bytes, &starts);
                assert!(matches!(end, SegmentEnd::Corrupt { .. }), "{end:?}");
            }
        }
    }

    #[test]
    fn records_without_the_synced_field_still_read_and_prove_what_precedes_them() {
        // The 16-byte header of records written before `synced` existed.
        let mut bytes = Vec::new();
        for i in 0..3u8 {
            let start = bytes.len();
            bytes.extend_from_slice(&[0u8; SHORT_HEADER]);
            encode_batch(
                &mut bytes,
                u64::from(i) + 1,
                &batch(&[(b"k", Some(&[i; 9][..]))]),
            );
            let len = (bytes.len() - start - SHORT_HEADER) as u32;
            bytes[start + 4..start + 8].copy_from_slice(&len.to_le_bytes());
            bytes[start + 8..start + 16].copy_from_slice(&4u64.to_le_bytes());
            let crc = crc32c::crc32c(&bytes[start + 4..]);
            bytes[start..start + 4].copy_from_slice(&crc.to_le_bytes());
            bytes.resize(align8(bytes.len()), 0);
        }
        let whole = scan_segment(&bytes, 4);
        assert_eq!(whole.records.len(), 3);
        assert_eq!(whole.end, SegmentEnd::Clean);
        let ops = decode_batch(&bytes[whole.records[2].clone()]).unwrap();
        assert_eq!(ops[0].value, Some(&[2u8; 9][..]));
        // Damage in the second: the third proves it was written before.
        let second = whole.records[1].start;
        bytes[second + 3] ^= 1;
        let damaged = scan_segment(&bytes, 4);
        assert_eq!(damaged.records.len(), 1);
        assert!(
            matches!(damaged.end, SegmentEnd::Corrupt { .. }),
            "{:?}",
            damaged.end
        );
    }

    #[test]
    fn stale_records_of_a_recycled_file_end_the_log() {
        let old = segment(3, &vec![batch(&[(b"old", Some(b"x"))]); 4]);
        let new = segment(9, &[batch(&[(b"new", Some(b"y"))])]);
        let mut bytes = old.clone();
        bytes[..new.len()].copy_from_slice(&new);
        let contents = scan_segment(&bytes, 9);
        assert_eq!(contents.records.len(), 1);
        assert_eq!(contents.end, SegmentEnd::Clean);
    }

    #[test]
    fn garbage_never_panics() {
        let mut state = 1u64;
        for len in 0..300 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
                    (state >> 56) as u8
                })
                .collect();
            let _ = scan_segment(&bytes, 1);
            let _ = decode_batch(&bytes);
        }
    }
}

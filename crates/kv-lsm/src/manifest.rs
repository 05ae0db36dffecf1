//! The manifest: which tables are live, as a log of checksummed edits.
//!
//! `CURRENT` names the live manifest (`MANIFEST-NNNNNN`). A manifest is a
//! sequence of records framed exactly like commit-log records (with the
//! manifest's file number in place of the log number), each holding one
//! version edit:
//!
//! ```text
//! tag 1 varint           log number: segments below it are no longer needed
//! tag 2 varint           next file number
//! tag 3 varint           last sequence number
//! tag 4 level u8, table  a table added (number, size, entries varints;
//!                        smallest and largest: key length, key, sequence)
//! tag 5 level u8, number a table removed
//! ```
//!
//! A new manifest starts with one edit describing the whole state; it is
//! made durable before `CURRENT` is switched to it by writing `CURRENT.tmp`,
//! fsyncing it, renaming it over `CURRENT` and fsyncing the directory.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use kv_core::codec::{DecodeError, DecodeResult, Reader, put_varint};

use crate::error::{Error, Result};
use crate::fs::FileSystem;
use crate::log::{LogWriter, SegmentEnd, scan_segment};
use crate::table::TableMeta;

/// Levels of the tree (L0 to L6).
pub(crate) const LEVELS: usize = 7;

const TAG_LOG_NUMBER: u8 = 1;
const TAG_NEXT_FILE: u8 = 2;
const TAG_LAST_SEQ: u8 = 3;
const TAG_ADD: u8 = 4;
const TAG_DELETE: u8 = 5;

/// One change to the set of live tables.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct VersionEdit {
    pub(crate) log_number: Option<u64>,
    pub(crate) next_file: Option<u64>,
    pub(crate) last_seq: Option<u64>,
    pub(crate) added: Vec<(usize, TableMeta)>,
    pub(crate) deleted: Vec<(usize, u64)>,
}

fn put_key(out: &mut Vec<u8>, key: &(Vec<u8>, u64)) {
    put_varint(out, key.0.len() as u64);
    out.extend_from_slice(&key.0);
    put_varint(out, key.1);
}

fn read_key(reader: &mut Reader<'_>) -> DecodeResult<(Vec<u8>, u64)> {
    let len = reader.count("key length", 1)?;
    let key = reader.bytes(len, "key")?.to_vec();
    Ok((key, reader.varint("sequence number")?))
}

fn read_level(reader: &mut Reader<'_>) -> DecodeResult<usize> {
    let at = reader.position();
    let level = reader.u8("level")? as usize;
    if level >= LEVELS {
        return Err(DecodeError::Invalid {
            offset: at,
            what: "level",
        });
    }
    Ok(level)
}

impl VersionEdit {
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        for (tag, value) in [
            (TAG_LOG_NUMBER, self.log_number),
            (TAG_NEXT_FILE, self.next_file),
            (TAG_LAST_SEQ, self.last_seq),
        ] {
            if let Some(v) = value {
                out.push(tag);
                put_varint(out, v);
            }
        }
        for (level, meta) in &self.added {
            out.push(TAG_ADD);
            out.push(*level as u8);
            put_varint(out, meta.number);
            put_varint(out, meta.size);
            put_varint(out, meta.entries);
            put_key(out, &meta.smallest);
            put_key(out, &meta.largest);
        }
        for (level, number) in &self.deleted {
            out.push(TAG_DELETE);
            out.push(*level as u8);
            put_varint(out, *number);
        }
    }

    /// Decodes an edit; garbage gives an error, never a panic.
    pub(crate) fn decode(bytes: &[u8]) -> DecodeResult<Self> {
        let mut reader = Reader::new(bytes);
        let mut edit = VersionEdit::default();
        while reader.remaining() > 0 {
            let at = reader.position();
            match reader.u8("edit tag")? {
                TAG_LOG_NUMBER => edit.log_number = Some(reader.varint("log number")?),
                TAG_NEXT_FILE => edit.next_file = Some(reader.varint("next file number")?),
                TAG_LAST_SEQ => edit.last_seq = Some(reader.varint("last sequence")?),
                TAG_ADD => {
                    let level = read_level(&mut reader)?;
                    let meta = TableMeta {
                        number: reader.varint("table number")?,
                        size: reader.varint("table size")?,
                        entries: reader.varint("table entries")?,
                        smallest: read_key(&mut reader)?,
                        largest: read_key(&mut reader)?,
                    };
                    edit.added.push((level, meta));
                }
                TAG_DELETE => {
                    let level = read_level(&mut reader)?;
                    edit.deleted.push((level, reader.varint("table number")?));
                }
                _ => {
                    return Err(DecodeError::Invalid {
                        offset: at,
                        what: "edit tag",
                    });
                }
            }
        }
        Ok(edit)
    }
}

/// The state a manifest describes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ManifestState {
    pub(crate) levels: Vec<Vec<TableMeta>>,
    pub(crate) log_number: u64,
    pub(crate) next_file: u64,
    pub(crate) last_seq: u64,
}

impl ManifestState {
    pub(crate) fn empty() -> Self {
        ManifestState {
            levels: vec![Vec::new(); LEVELS],
            log_number: 0,
            next_file: 1,
            last_seq: 0,
        }
    }

    /// Applies an edit; an edit removing a table that is not live, or
    /// adding one twice, is corruption.
    pub(crate) fn apply(&mut self, edit: &VersionEdit) -> std::result::Result<(), String> {
        if let Some(n) = edit.log_number {
            self.log_number = self.log_number.max(n);
        }
        if let Some(n) = edit.next_file {
            self.next_file = self.next_file.max(n);
        }
        if let Some(s) = edit.last_seq {
            self.last_seq = self.last_seq.max(s);
        }
        for (level, number) in &edit.deleted {
            let files = &mut self.levels[*level];
            let before = files.len();
            files.retain(|m| m.number != *number);
            if files.len() == before {
                return Err(format!(
                    "edit removes table {number} which is not live at level {level}"
                ));
            }
        }
        for (level, meta) in &edit.added {
            if self
                .levels
                .iter()
                .flatten()
                .any(|m| m.number == meta.number)
            {
                return Err(format!("edit adds table {} twice", meta.number));
            }
            self.next_file = self.next_file.max(meta.number + 1);
            self.levels[*level].push(meta.clone());
        }
        Ok(())
    }

    /// One edit that recreates this state.
    pub(crate) fn snapshot_edit(&self) -> VersionEdit {
        VersionEdit {
            log_number: Some(self.log_number),
            next_file: Some(self.next_file),
            last_seq: Some(self.last_seq),
            added: self
                .levels
                .iter()
                .enumerate()
                .flat_map(|(level, files)| files.iter().map(move |m| (level, m.clone())))
                .collect(),
            deleted: Vec::new(),
        }
    }
}

pub(crate) fn manifest_name(number: u64) -> String {
    format!("MANIFEST-{number:06}")
}

/// Reads `CURRENT` and replays the manifest it names. `None` for a new
/// directory (no `CURRENT`).
pub(crate) fn recover(dir: &Path, fs: &dyn FileSystem) -> Result<Option<(ManifestState, u64)>> {
    let current_path = dir.join("CURRENT");
    let current = match std::fs::read_to_string(&current_path) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("read", &current_path, e)),
    };
    let name = current.trim_end_matches('\n');
    let number = name
        .strip_prefix("MANIFEST-")
        .and_then(|n| n.parse::<u64>().ok())
        .filter(|_| !name.contains('/'))
        .ok_or_else(|| {
            Error::corrupt(&current_path, format!("does not name a manifest: {name:?}"))
        })?;
    let path = dir.join(name);
    let bytes = std::fs::read(&path).map_err(|e| Error::io("read manifest", &path, e))?;
    let contents = scan_segment(&bytes, number);
    match &contents.end {
        SegmentEnd::Clean => {}
        // An edit cut short by a crash was never acted on: the files it
        // would have added are unreferenced and the logs they came from
        // are still there. Drop it.
        SegmentEnd::Torn { .. } => {
            fs.truncate(&path, contents.valid_len)
                .map_err(|e| Error::io("truncate manifest", &path, e))?;
        }
        SegmentEnd::Corrupt { offset, reason } => {
            return Err(Error::corrupt(
                &path,
                format!("edit at byte {offset}: {reason}"),
            ));
        }
    }
    if contents.records.is_empty() {
        return Err(Error::corrupt(&path, "manifest holds no edit"));
    }
    let mut state = ManifestState::empty();
    for record in &contents.records {
        let edit = VersionEdit::decode(&bytes[record.clone()])
            .map_err(|e| Error::decode(&path, &format!("edit at byte {}", record.start), e))?;
        state
            .apply(&edit)
            .map_err(|reason| Error::corrupt(&path, reason))?;
    }
    Ok(Some((state, number)))
}

/// The live manifest, appended to by flushes and compactions.
#[derive(Debug)]
pub(crate) struct Manifest {
    dir: PathBuf,
    fs: Arc<dyn FileSystem>,
    writer: LogWriter,
}

/// A manifest grows to this size before it is rewritten as one edit.
const ROTATE_BYTES: u64 = 16 << 20;

impl Manifest {
    /// Writes a new manifest numbered `number` holding `state` and points
    /// `CURRENT` at it; removes the manifest it replaces.
    pub(crate) fn create(
        dir: &Path,
        fs: Arc<dyn FileSystem>,
        number: u64,
        state: &ManifestState,
        old: Option<u64>,
    ) -> Result<Self> {
        let path = dir.join(manifest_name(number));
        let file = fs
            .create(&path)
            .map_err(|e| Error::io("create manifest", &path, e))?;
        let mut writer = LogWriter::new(file, path.clone(), number);
        let mut payload = Vec::new();
        state.snapshot_edit().encode(&mut payload);
        writer.add_record(&payload);
        writer.write_buffered()?;
        writer.sync()?;
        let tmp = dir.join("CURRENT.tmp");
        let mut current = fs.create(&tmp).map_err(|e| Error::io("create", &tmp, e))?;
        current
            .write_all(format!("{}\n", manifest_name(number)).as_bytes())
            .map_err(|e| Error::io("write", &tmp, e))?;
        current
            .sync_data()
            .map_err(|e| Error::io("fsync", &tmp, e))?;
        drop(current);
        let current_path = dir.join("CURRENT");
        fs.rename(&tmp, &current_path)
            .map_err(|e| Error::io("rename to", &current_path, e))?;
        fs.sync_dir(dir)
            .map_err(|e| Error::io("fsync directory", dir, e))?;
        if let Some(old) = old.filter(|&o| o != number) {
            let old_path = dir.join(manifest_name(old));
            // Best effort: a leftover old manifest is never read again.
            let _ = fs.remove_file(&old_path);
        }
        Ok(Manifest {
            dir: dir.to_path_buf(),
            fs,
            writer,
        })
    }

    /// Appends `edit` durably. When the manifest has grown past its limit,
    /// it is first rewritten from `state` (which must already include
    /// `edit`) under `new_number`.
    pub(crate) fn log_edit(
        &mut self,
        edit: &VersionEdit,
        state: &ManifestState,
        new_number: impl FnOnce() -> u64,
    ) -> Result<()> {
        if self.writer.len() > ROTATE_BYTES {
            let old = self.writer.number();
            let rotated =
                Manifest::create(&self.dir, self.fs.clone(), new_number(), state, Some(old))?;
            *self = rotated;
            return Ok(());
        }
        let mut payload = Vec::new();
        edit.encode(&mut payload);
        self.writer.add_record(&payload);
        self.writer.write_buffered()?;
        self.writer.sync()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(number: u64) -> TableMeta {
        TableMeta {
            number,
            size: 4096,
            entries: 10,
            smallest: (b"a".to_vec(), 5),
            largest: (b"z".to_vec(), 1),
        }
    }

    #[test]
    fn edits_round_trip() {
        let edit = VersionEdit {
            log_number: Some(4),
            next_file: Some(9),
            last_seq: Some(1234),
            added: vec![(0, meta(7)), (3, meta(8))],
            deleted: vec![(1, 2)],
        };
        let mut bytes = Vec::new();
        edit.encode(&mut bytes);
        assert_eq!(VersionEdit::decode(&bytes).unwrap(), edit);
        for cut in 0..bytes.len() {
            // Prefixes either fail or decode to a prefix of the edit; never panic.
            let _ = VersionEdit::decode(&bytes[..cut]);
        }
        assert!(VersionEdit::decode(&[9]).is_err());
        assert!(
            VersionEdit::decode(&[TAG_DELETE, 7, 1]).is_err(),
            "level out of range"
        );
    }

    #[test]
    fn state_applies_edits_and_refuses_nonsense() {
        let mut state = ManifestState::empty();
        state
            .apply(&VersionEdit {
                added: vec![(0, meta(3))],
                ..Default::default()
            })
            .unwrap();
        assert_eq!(state.next_file, 4);
        assert!(
            state
                .apply(&VersionEdit {
                    added: vec![(1, meta(3))],
                    ..Default::default()
                })
                .is_err()
        );
        assert!(
            state
                .apply(&VersionEdit {
                    deleted: vec![(2, 3)],
                    ..Default::default()
                })
                .is_err()
        );
        state
            .apply(&VersionEdit {
                deleted: vec![(0, 3)],
                ..Default::default()
            })
            .unwrap();
        assert!(state.levels[0].is_empty());
    }
}

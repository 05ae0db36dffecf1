//! The history file: one JSON object per line. A `meta` line first, then
//! every operation as it completes (`write`, `read`) and, in runs with a
//! watch, every change it delivered (`change`), then the converged
//! state of every key written (`final`). Keys and states are hex; values
//! are named by their id (see [`crate::workload::value`]).

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write as _};
use std::path::Path;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// One line of a history file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// How the run was set up.
    Meta {
        /// Replicas per key.
        n: u32,
        /// Write quorum used (0: the cluster's).
        w: u32,
        /// Read quorum used (0: the cluster's).
        r: u32,
        /// Whether every read must see every write acknowledged before it
        /// began (R + W > N and no sloppy quorum).
        strict: bool,
        /// Value size, to rebuild values from their ids.
        value_size: usize,
        /// The cluster's sibling bound.
        max_siblings: usize,
        /// When the run began (milliseconds since the Unix epoch), to
        /// line operations up with a fault log; absent in older files.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        started_unix_ms: Option<u64>,
        /// Whether a watch of every key ran alongside (its changes are
        /// `change` lines); absent in older files.
        #[serde(default, skip_serializing_if = "is_false")]
        watched: bool,
    },
    /// A put or delete.
    Write {
        /// The key, hex.
        key: String,
        /// The value's id; `None` for a delete.
        value: Option<u64>,
        /// The context sent, hex.
        context: String,
        /// The new version's dot when acknowledged; `None` when the
        /// outcome is unknown (failed or timed out).
        acked: Option<(u64, u64)>,
        /// Microseconds since the run began, at invocation.
        invoke_us: u64,
        /// ... and at completion.
        complete_us: u64,
        /// Why it failed, when it did: the error's class, a colon, the
        /// message.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        /// The write's tag id when acknowledged (0: unknown).
        #[serde(default, skip_serializing_if = "is_zero")]
        write_id: u64,
    },
    /// A get that failed.
    ReadFailed {
        /// The key, hex.
        key: String,
        /// The error's class, a colon, the message.
        error: String,
        /// Microseconds since the run began, at invocation.
        invoke_us: u64,
        /// ... and at completion.
        complete_us: u64,
    },
    /// A get that returned.
    Read {
        /// The key, hex.
        key: String,
        /// The ids of the values returned.
        values: Vec<u64>,
        /// Microseconds since the run began, at invocation.
        invoke_us: u64,
        /// ... and at completion.
        complete_us: u64,
    },
    /// A change the run's watch delivered (runs with a watch).
    Change {
        /// The key, hex.
        key: String,
        /// The ids of its live values (none for a delete).
        values: Vec<u64>,
        /// The change's context, hex.
        context: String,
        /// Whether it was a resent current state.
        resync: bool,
        /// Microseconds since the run began, when it arrived.
        at_us: u64,
    },
    /// A key's converged state at each of its replicas.
    Final {
        /// The key, hex.
        key: String,
        /// (replica, stored state in hex or `None`).
        replicas: Vec<(u64, Option<String>)>,
    },
}

pub use kv_server::client::{hex, unhex};

/// Appends events to a history file; shared by every worker.
#[derive(Debug)]
pub struct Recorder {
    out: Mutex<BufWriter<File>>,
}

impl Recorder {
    /// Creates (truncates) `path`.
    ///
    /// # Errors
    ///
    /// The operating system's error creating `path`.
    pub fn create(path: &Path) -> std::io::Result<Self> {
        Ok(Recorder {
            out: Mutex::new(BufWriter::new(File::create(path)?)),
        })
    }

    /// Writes one event.
    ///
    /// # Errors
    ///
    /// The operating system's error writing the event.
    pub fn record(&self, event: &Event) -> std::io::Result<()> {
        let line = serde_json::to_string(event).map_err(std::io::Error::other)?;
        let mut out = self.out.lock();
        out.write_all(line.as_bytes())?;
        out.write_all(b"\n")
    }

    /// Flushes to the file.
    ///
    /// # Errors
    ///
    /// The operating system's error.
    pub fn flush(&self) -> std::io::Result<()> {
        self.out.lock().flush()
    }
}

/// Whether a number is zero (fields serialised only when set).
#[allow(clippy::trivially_copy_pass_by_ref)]
fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Whether a flag is off (fields serialised only when set).
#[allow(clippy::trivially_copy_pass_by_ref)]
fn is_false(b: &bool) -> bool {
    !*b
}

/// Reads a history file; a line that does not parse is an error naming it.
///
/// # Errors
///
/// A message naming the line that cannot be read or parsed.
pub fn read(path: &Path) -> Result<Vec<Event>, String> {
    let file = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut events = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| format!("{}: {e}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        events.push(
            serde_json::from_str(&line)
                .map_err(|e| format!("{} line {}: {e}", path.display(), i + 1))?,
        );
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_through_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.jsonl");
        let events = vec![
            Event::Meta {
                n: 3,
                w: 2,
                r: 2,
                strict: true,
                value_size: 100,
                max_siblings: 100,
                started_unix_ms: Some(1_800_000_000_000),
                watched: true,
            },
            Event::Write {
                key: hex(b"k"),
                value: Some(7),
                context: String::new(),
                acked: Some((1, 1)),
                invoke_us: 5,
                complete_us: 9,
                error: None,
                write_id: 0,
            },
            Event::Write {
                key: hex(b"k"),
                value: Some(8),
                context: String::new(),
                acked: None,
                invoke_us: 6,
                complete_us: 11,
                error: Some("timeout: deadline".into()),
                write_id: 0,
            },
            Event::ReadFailed {
                key: hex(b"k"),
                error: "unavailable/read-quorum: 1 of 2".into(),
                invoke_us: 7,
                complete_us: 8,
            },
            Event::Read {
                key: hex(b"k"),
                values: vec![7],
                invoke_us: 10,
                complete_us: 12,
            },
            Event::Change {
                key: hex(b"k"),
                values: vec![7],
                context: "0100".into(),
                resync: false,
                at_us: 13,
            },
            Event::Final {
                key: hex(b"k"),
                replicas: vec![(1, Some("00".into())), (2, None)],
            },
        ];
        let recorder = Recorder::create(&path).unwrap();
        for e in &events {
            recorder.record(e).unwrap();
        }
        recorder.flush().unwrap();
        assert_eq!(read(&path).unwrap(), events);
        std::fs::write(&path, "{\"type\":\"meta\"}\nnot json\n").unwrap();
        let err = read(&path).unwrap_err();
        assert!(err.contains("line 1"), "{err}");
        assert_eq!(unhex(&hex(b"\x00\xffab")).unwrap(), b"\x00\xffab");
        assert!(unhex("abc").is_err() && unhex("zz").is_err());
    }
}

//! Which node a data directory belongs to, and the epoch of each start.
//!
//! `<data_dir>/identity` is a short text file:
//!
//! ```text
//! kv node identity 1
//! node 3
//! epoch 1764860000
//! crc32c 0x1c2d3e4f
//! ```
//!
//! Every start takes a new epoch, above the stored one and at least the
//! wall clock's seconds, and makes it durable (written to a temporary
//! file, synced, renamed, directory synced) before the node coordinates
//! anything. The actor of the dots the node issues is the node in that
//! epoch ([`kv_core::ActorId`]), so a node whose local state went
//! backwards (a wiped or replaced disk, a restored backup, an unsynced tail
//! lost in a crash) can never reissue a dot other replicas already hold:
//!
//! - a restored backup or an old copy carries an older epoch; the new one
//!   is above it, and above every earlier start's clock reading;
//! - a wiped directory has no file; the clock alone gives an epoch above
//!   every earlier start of the node, as long as the machine's clock is not
//!   behind where it was at the last start (the one assumption);
//! - two starts within one second still differ (stored + 1);
//! - a start does not serve until the clock has passed its epoch
//!   ([`wait_past`]), so a later start that finds no file (a wiped disk)
//!   reads a clock above every epoch that issued a dot.
//!
//! The file also names the node: starting node 2 on node 3's directory is
//! refused, instead of serving node 3's data as node 2's.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use kv_core::{ActorId, NodeId};

/// The file's name inside the data directory.
pub const IDENTITY_FILE: &str = "identity";

const HEADER: &str = "kv node identity 1";

/// Why a node's identity could not be read or renewed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// Reading or writing the file failed.
    #[error("identity file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not an identity file, or fails its checksum.
    #[error(
        "identity file {path} is damaged ({what}); if this directory is this node's, delete the file and start again (a new epoch is taken from the clock)"
    )]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// The directory belongs to another node.
    #[error(
        "data directory {dir} belongs to node {owner}, not to node {node}: give each node its own directory"
    )]
    OtherNode {
        /// The directory.
        dir: PathBuf,
        /// The node the directory belongs to.
        owner: u64,
        /// The node that tried to start on it.
        node: u64,
    },
    /// The node id cannot author versions.
    #[error("node id {0} is above {max}, the largest node id", max = ActorId::MAX_NODE)]
    NodeIdTooLarge(u64),
    /// Every epoch has been used (the clock is past 2106, or the file was
    /// forged).
    #[error("no epoch is left for this node (the stored epoch is {0})")]
    Exhausted(u32),
}

/// A data directory's owner and the epoch of its latest start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    /// The node the directory belongs to.
    pub node: NodeId,
    /// The epoch of the latest start.
    pub epoch: u32,
}

impl Identity {
    /// The file's text.
    pub fn encode(&self) -> String {
        let body = format!("{HEADER}\nnode {}\nepoch {}\n", self.node.0, self.epoch);
        format!("{body}crc32c {:#010x}\n", crc32c::crc32c(body.as_bytes()))
    }

    /// Parses the file's text.
    ///
    /// # Errors
    ///
    /// A description of what is wrong.
    pub fn decode(text: &[u8]) -> Result<Identity, String> {
        let text = std::str::from_utf8(text).map_err(|_| "not UTF-8 text".to_string())?;
        let lines: Vec<&str> = text.lines().collect();
        let [header, node, epoch, crc] = lines[..] else {
            return Err(format!("{} lines, expected 4", lines.len()));
        };
        if header != HEADER {
            return Err(format!("first line {header:?}, expected {HEADER:?}"));
        }
        let field = |line: &str, name: &str| -> Result<String, String> {
            line.strip_prefix(name)
                .and_then(|rest| rest.strip_prefix(' '))
                .map(str::to_string)
                .ok_or_else(|| format!("expected a line `{name} ...`, found {line:?}"))
        };
        let crc = field(crc, "crc32c")?;
        let crc = u32::from_str_radix(crc.trim_start_matches("0x"), 16)
            .map_err(|_| format!("checksum {crc:?} is not hexadecimal"))?;
        let body_len = text
            .find("crc32c ")
            .ok_or_else(|| "no checksum line".to_string())?;
        if crc32c::crc32c(&text.as_bytes()[..body_len]) != crc {
            return Err("checksum mismatch".into());
        }
        let node = field(node, "node")?
            .parse::<u64>()
            .map_err(|e| format!("node: {e}"))?;
        let epoch = field(epoch, "epoch")?
            .parse::<u32>()
            .map_err(|e| format!("epoch: {e}"))?;
        Ok(Identity {
            node: NodeId(node),
            epoch,
        })
    }
}

/// The identity stored in `dir`, if any.
///
/// # Errors
///
/// [`IdentityError`] for an unreadable or damaged file.
pub fn load(dir: &Path) -> Result<Option<Identity>, IdentityError> {
    let path = dir.join(IDENTITY_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => Identity::decode(&bytes)
            .map(Some)
            .map_err(|what| IdentityError::Damaged { path, what }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(IdentityError::Io { path, source }),
    }
}

/// Takes this start's epoch for `node` in `dir` at `now_secs` (seconds
/// since the Unix epoch): above the stored epoch and at least `now_secs`,
/// durable when this returns. Creates `dir` if needed.
///
/// # Errors
///
/// [`IdentityError`]: the directory belongs to another node, the file is
/// damaged or cannot be written, or no epoch is left.
pub fn take_epoch(dir: &Path, node: NodeId, now_secs: u64) -> Result<Identity, IdentityError> {
    if node.0 > ActorId::MAX_NODE {
        return Err(IdentityError::NodeIdTooLarge(node.0));
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| IdentityError::Io { path, source }
    };
    kv_core::files::create_private_dir(dir).map_err(io(dir))?;
    let stored = load(dir)?;
    if let Some(stored) = stored
        && stored.node != node
    {
        return Err(IdentityError::OtherNode {
            dir: dir.to_path_buf(),
            owner: stored.node.0,
            node: node.0,
        });
    }
    let clock = u32::try_from(now_secs).unwrap_or(u32::MAX);
    let epoch = match stored {
        Some(s) => s
            .epoch
            .checked_add(1)
            .ok_or(IdentityError::Exhausted(s.epoch))?
            .max(clock),
        None => clock.max(1),
    };
    let identity = Identity { node, epoch };
    let tmp = dir.join(format!("{IDENTITY_FILE}.tmp"));
    let mut file = kv_core::files::private_file()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(io(&tmp))?;
    file.write_all(identity.encode().as_bytes())
        .map_err(io(&tmp))?;
    file.sync_all().map_err(io(&tmp))?;
    drop(file);
    let path = dir.join(IDENTITY_FILE);
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))?;
    Ok(identity)
}

/// Blocks until the wall clock's seconds are above `epoch` (at most a
/// second after [`take_epoch`] read the clock, unless the stored epoch ran
/// ahead of it). A node calls this before it coordinates anything: then
/// every later start, even one that finds no identity file, takes an epoch
/// above this one.
pub fn wait_past(epoch: u32) {
    loop {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let second = u64::from(epoch) + 1;
        if now.as_secs() >= second {
            return;
        }
        let until = std::time::Duration::from_secs(second).saturating_sub(now);
        std::thread::sleep(until.max(std::time::Duration::from_millis(1)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_start_takes_a_higher_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let first = take_epoch(dir.path(), NodeId(3), 1_000).unwrap();
        assert_eq!(first.epoch, 1_000);
        // Same second: still a new epoch.
        let second = take_epoch(dir.path(), NodeId(3), 1_000).unwrap();
        assert_eq!(second.epoch, 1_001);
        // The clock moved on: the clock's reading.
        assert_eq!(
            take_epoch(dir.path(), NodeId(3), 5_000).unwrap().epoch,
            5_000
        );
        // The clock went back: still above the stored epoch.
        assert_eq!(take_epoch(dir.path(), NodeId(3), 10).unwrap().epoch, 5_001);
        assert_eq!(
            load(dir.path()).unwrap(),
            Some(Identity {
                node: NodeId(3),
                epoch: 5_001
            })
        );
    }

    #[test]
    fn a_restored_copy_and_a_wiped_directory_still_move_forward() {
        let dir = tempfile::tempdir().unwrap();
        take_epoch(dir.path(), NodeId(1), 1_000).unwrap();
        let backup = std::fs::read(dir.path().join(IDENTITY_FILE)).unwrap();
        let latest = take_epoch(dir.path(), NodeId(1), 2_000).unwrap();
        // The backup is restored later: the clock is past the latest start.
        std::fs::write(dir.path().join(IDENTITY_FILE), &backup).unwrap();
        let restored = take_epoch(dir.path(), NodeId(1), 3_000).unwrap();
        assert!(restored.epoch > latest.epoch);
        // Wiped.
        std::fs::remove_file(dir.path().join(IDENTITY_FILE)).unwrap();
        let wiped = take_epoch(dir.path(), NodeId(1), 4_000).unwrap();
        assert!(wiped.epoch > restored.epoch);
    }

    #[test]
    fn another_nodes_directory_and_damage_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        take_epoch(dir.path(), NodeId(3), 1_000).unwrap();
        let err = take_epoch(dir.path(), NodeId(2), 2_000).unwrap_err();
        assert!(
            matches!(
                err,
                IdentityError::OtherNode {
                    owner: 3,
                    node: 2,
                    ..
                }
            ),
            "{err}"
        );
        let path = dir.path().join(IDENTITY_FILE);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replace("epoch 1000", "epoch 9000")).unwrap();
        let err = take_epoch(dir.path(), NodeId(3), 2_000).unwrap_err();
        assert!(err.to_string().contains("checksum"), "{err}");
        assert!(matches!(
            take_epoch(dir.path(), NodeId(1 << 40), 1),
            Err(IdentityError::NodeIdTooLarge(_))
        ));
    }

    #[test]
    fn garbage_is_an_error_never_a_panic() {
        for text in [
            &b""[..],
            b"\xff\xfe",
            b"kv node identity 1\nnode x\nepoch 1\ncrc32c 0x0\n",
            b"kv node identity 1\nnode 1\nepoch 1\ncrc32c zz\n",
            b"kv node identity 1\nnode 1\nepoch 99999999999\ncrc32c 0x0\n",
            b"kv node identity 2\n\n\n\n",
        ] {
            assert!(Identity::decode(text).is_err());
        }
        let good = Identity {
            node: NodeId(7),
            epoch: 42,
        };
        assert_eq!(Identity::decode(good.encode().as_bytes()), Ok(good));
    }
}

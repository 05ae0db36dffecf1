//! Snapshots (`kvctl snapshot DIR`): a consistent point-in-time copy of
//! this node's data directory, made while it serves. Restoring is starting
//! `kvd` on the copy: the node takes a new epoch at start (above the
//! copy's and the clock's), so it never reissues a dot it issued after the
//! snapshot, and anti-entropy, hints and read repair bring it the writes
//! it missed since.

use std::path::Path;

use super::*;
use crate::identity::IDENTITY_FILE;
use crate::proto::SnapshotReply;

/// Whether `dest` lies strictly below `root`: no `..` in it, and
/// its deepest existing ancestor, symbolic links resolved, inside `root`
/// resolved (so a link under the root cannot lead out of it).
fn within_root(dest: &Path, root: &Path) -> Result<(), String> {
    use std::path::Component;
    let outside = || format!("not below the node's snapshot_root {}", root.display());
    if dest.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err("give a path without .. components".into());
    }
    if !dest.starts_with(root) || dest == root {
        return Err(outside());
    }
    let root = root
        .canonicalize()
        .map_err(|e| format!("snapshot_root {}: {e}", root.display()))?;
    let existing = dest
        .ancestors()
        .find(|a| a.exists())
        .ok_or_else(outside)?
        .canonicalize()
        .map_err(|e| e.to_string())?;
    if existing.starts_with(&root) {
        Ok(())
    } else {
        Err(outside())
    }
}

impl Cluster {
    /// Copies this node's engines (data and hints: tables hard-linked, the
    /// commit-log tail copied), its ring and its identity into `dir`, a new
    /// or empty directory on this machine.
    ///
    /// # Errors
    ///
    /// `InvalidArgument` for a relative path, a directory that holds
    /// anything, or one outside the node's `snapshot_root` when it has
    /// one; `Internal` for I/O errors (a partial copy may be left).
    pub async fn snapshot(&self, dir: &str) -> Result<SnapshotReply, ClusterError> {
        let dest = PathBuf::from(dir);
        if !dest.is_absolute() {
            return Err(ClusterError::Invalid(format!(
                "snapshot directory {dir:?}: give an absolute path on the node's machine"
            )));
        }
        if let Some(root) = &self.settings.snapshot_root {
            within_root(&dest, root).map_err(|reason| {
                ClusterError::Invalid(format!("snapshot directory {dir:?}: {reason}"))
            })?;
        }
        let replica = self.coordinator.replica().clone();
        let ring = self.ring_state();
        let source = self.settings.data_dir.clone();
        let reply = tokio::task::spawn_blocking(move || -> Result<SnapshotReply, ClusterError> {
            let refuse = |e: kv_lsm::Error| match e {
                kv_lsm::Error::InvalidOption { reason, .. } => ClusterError::Invalid(format!(
                    "snapshot directory {}: {reason}",
                    dest.display()
                )),
                other => ClusterError::internal(other),
            };
            kv_core::files::create_empty_private_dir(&dest).map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    ClusterError::Invalid(format!("snapshot directory {e}"))
                } else {
                    ClusterError::internal(e)
                }
            })?;
            let data = replica
                .engine()
                .checkpoint(&dest.join("data"))
                .map_err(refuse)?;
            let hints = replica
                .hints()
                .engine()
                .checkpoint(&dest.join("hints"))
                .map_err(refuse)?;
            ring_state::store(&dest, &ring).map_err(ClusterError::internal)?;
            copy_durably(&source.join(IDENTITY_FILE), &dest.join(IDENTITY_FILE))?;
            std::fs::File::open(&dest)
                .and_then(|d| d.sync_all())
                .map_err(ClusterError::internal)?;
            Ok(SnapshotReply {
                dir: dest.display().to_string(),
                tables: (data.tables + hints.tables) as u64,
                linked: (data.linked + hints.linked) as u64,
                table_bytes: data.table_bytes + hints.table_bytes,
                log_bytes: data.log_bytes + hints.log_bytes,
                ring_epoch: ring.epoch,
            })
        })
        .await
        .map_err(ClusterError::internal)??;
        tracing::info!(dir = %reply.dir, tables = reply.tables, "snapshot made");
        Ok(reply)
    }
}

fn copy_durably(from: &Path, to: &Path) -> Result<(), ClusterError> {
    let bytes = std::fs::read(from).map_err(ClusterError::internal)?;
    let mut file = kv_core::files::private_file()
        .write(true)
        .create_new(true)
        .open(to)
        .map_err(ClusterError::internal)?;
    std::io::Write::write_all(&mut file, &bytes).map_err(ClusterError::internal)?;
    file.sync_all().map_err(ClusterError::internal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_stay_below_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("backups");
        std::fs::create_dir(&root).unwrap();
        assert_eq!(within_root(&root.join("monday"), &root), Ok(()));
        assert_eq!(within_root(&root.join("2026/monday"), &root), Ok(()));
        for bad in [
            dir.path().join("elsewhere"),
            root.clone(),
            root.join("../escape"),
            PathBuf::from("/etc/kv"),
        ] {
            assert!(within_root(&bad, &root).is_err(), "{}", bad.display());
        }
        // A link inside the root that points out of it is outside.
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(dir.path(), root.join("link")).unwrap();
            let err = within_root(&root.join("link/monday"), &root).unwrap_err();
            assert!(err.contains("snapshot_root"), "{err}");
        }
    }
}

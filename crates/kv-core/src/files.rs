//! Files only their owner may read: a node's data, hints, ring and
//! identity hold every value and the cluster's shape, so they are created
//! `0600` in directories created `0700` (on Unix; elsewhere the platform's
//! defaults).

use std::fs::OpenOptions;
use std::io;
use std::path::Path;

/// Creates `dir` and any missing parents, each new one readable by its
/// owner only. Directories that exist keep their permissions.
///
/// # Errors
///
/// The I/O error of a directory that could not be created.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// Creates `dir` (and its parents) readable by its owner only, for a copy
/// that must not mix with other files (a checkpoint, a snapshot): an
/// existing empty directory is fine, one holding anything is refused.
///
/// # Errors
///
/// [`io::ErrorKind::AlreadyExists`] naming the directory when it holds
/// anything; the I/O error of one that could not be read or created.
pub fn create_empty_private_dir(dir: &Path) -> io::Result<()> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => match entries.next() {
            Some(_) => Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{} is not empty; a copy goes to a new directory",
                    dir.display()
                ),
            )),
            None => Ok(()),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => create_private_dir(dir),
        Err(e) => Err(e),
    }
}

/// Options that create a file readable and writable by its owner only
/// (the caller adds read, write, create, truncate as it needs).
pub fn private_file() -> OpenOptions {
    let mut options = OpenOptions::new();
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn new_files_and_directories_are_private() {
        let root = std::env::temp_dir().join(format!("kv-core-files-{}", std::process::id()));
        let dir = root.join("a").join("b");
        create_private_dir(&dir).unwrap();
        for d in [&root.join("a"), &dir] {
            let mode = std::fs::metadata(d).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{}", d.display());
        }
        let path = dir.join("f");
        private_file().write(true).create(true).open(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_copy_goes_to_a_new_or_empty_directory_only() {
        let root = std::env::temp_dir().join(format!("kv-core-empty-{}", std::process::id()));
        let fresh = root.join("fresh");
        create_empty_private_dir(&fresh).unwrap();
        let mode = std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        // Empty: fine again.
        create_empty_private_dir(&fresh).unwrap();
        std::fs::write(fresh.join("mine"), b"x").unwrap();
        let refused = create_empty_private_dir(&fresh).unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::AlreadyExists);
        assert!(refused.to_string().contains("not empty"), "{refused}");
        assert_eq!(std::fs::read(fresh.join("mine")).unwrap(), b"x");
        std::fs::remove_dir_all(&root).unwrap();
    }
}

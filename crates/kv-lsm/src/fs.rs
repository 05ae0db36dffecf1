//! The file layer the engine writes through, so tests can inject faults.
//!
//! Every write, fsync, rename and delete the engine makes goes through a
//! [`FileSystem`]. [`StdFs`] is the real one; [`FaultFs`] wraps it and fails
//! chosen operations, which is how the tests show that a failed fsync
//! poisons the engine instead of being forgotten. Reads of immutable tables
//! go straight to memory maps.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// A file open for writing.
pub trait WritableFile: Send + fmt::Debug {
    /// Appends `buf` at the current position.
    ///
    /// # Errors
    ///
    /// The operating system's error.
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()>;
    /// Makes the written data durable (`fdatasync`).
    ///
    /// # Errors
    ///
    /// The operating system's error; the engine treats it as fatal (poisoned),
    /// since what reached the disk is unknown.
    fn sync_data(&mut self) -> io::Result<()>;
    /// Extends the file to `len` bytes of zeros written to disk (without
    /// moving the append position), so later writes within them change no
    /// file-system metadata and a data sync writes only the data. A file
    /// already that long is left as it is.
    ///
    /// # Errors
    ///
    /// The operating system's error (a full disk); the caller stops
    /// reserving and lets the writes report it.
    fn preallocate(&mut self, len: u64) -> io::Result<()>;

    /// Writes the `len` bytes from `offset` (written already) to the disk
    /// and waits until they are there, without making them durable (no
    /// cache flush, no metadata): a background writer hands its bytes to
    /// the disk in steps this way instead of all at once at its sync (see
    /// `engine::pacing`). Best effort; the default does nothing.
    ///
    /// # Errors
    ///
    /// The operating system's error.
    fn write_back(&mut self, offset: u64, len: u64) -> io::Result<()> {
        let _ = (offset, len);
        Ok(())
    }

    /// A second handle on the same open file, whose
    /// [`sync_data`](Self::sync_data) makes this file's written data
    /// durable, so a periodic sync can run while writers go on appending.
    /// `None` (the default) makes such syncs hold off the writers instead.
    fn sync_handle(&self) -> Option<Box<dyn WritableFile>> {
        None
    }
}

/// The operations the engine performs on its directory.
pub trait FileSystem: Send + Sync + fmt::Debug {
    /// Creates (or truncates) `path` for writing.
    ///
    /// # Errors
    ///
    /// The operating system's error.
    fn create(&self, path: &Path) -> io::Result<Box<dyn WritableFile>>;
    /// Opens an existing file for writing from its start, keeping its
    /// contents and size (used to recycle commit-log segments).
    ///
    /// # Errors
    ///
    /// The operating system's error.
    fn overwrite(&self, path: &Path) -> io::Result<Box<dyn WritableFile>>;
    /// Renames `from` to `to`, replacing `to`.
    ///
    /// # Errors
    ///
    /// The operating system's error.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Deletes `path`.
    ///
    /// # Errors
    ///
    /// The operating system's error.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Makes the directory's entries (creations, renames, deletions) durable.
    ///
    /// # Errors
    ///
    /// The operating system's error.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Cuts `path` to `len` bytes and makes that durable.
    ///
    /// # Errors
    ///
    /// The operating system's error.
    fn truncate(&self, path: &Path, len: u64) -> io::Result<()>;
}

/// The operating system's file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct StdFs;

#[derive(Debug)]
struct StdFile(File);

impl WritableFile for StdFile {
    fn write_back(&mut self, offset: u64, len: u64) -> io::Result<()> {
        write_back(&self.0, offset, len)
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.0.write_all(buf)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn sync_handle(&self) -> Option<Box<dyn WritableFile>> {
        let file = self.0.try_clone().ok()?;
        Some(Box::new(StdFile(file)))
    }

    fn preallocate(&mut self, len: u64) -> io::Result<()> {
        zero_fill(&self.0, len)
    }
}

/// Extends `file` to `len` bytes with written zeros and starts writing
/// them back. Written, not merely reserved: ext4 (and XFS) mark blocks
/// reserved by `fallocate` unwritten, and the first write into each block
/// converts its extent, so a sync that reaches a new block writes the
/// extent tree and the inode besides the data. Measured on this project's
/// machine (ext4, a sync after every 2.4 KB appended): 285-320 us per
/// sync in a `fallocate`d file, 210-226 us in a zero-filled one. The
/// zeros cost one extra write of the log's bytes, which the kernel starts
/// at once so that the next sync finds them written.
#[cfg(unix)]
fn zero_fill(file: &File, len: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    const CHUNK: usize = 64 << 10;
    static ZEROS: [u8; CHUNK] = [0; CHUNK];
    let size = file.metadata()?.len();
    let mut at = size;
    while at < len {
        let n = usize::try_from(len - at).map_or(CHUNK, |left| left.min(CHUNK));
        file.write_all_at(&ZEROS[..n], at)?;
        at += n as u64;
    }
    if len > size {
        start_writeback(file, size, len - size);
    }
    Ok(())
}

#[cfg(not(unix))]
fn zero_fill(_file: &File, _len: u64) -> io::Result<()> {
    Ok(())
}

/// `sync_file_range(2)` of `len` bytes of `file` from `offset` with
/// `flags`: writes them to disk, waiting or not, and makes nothing
/// durable.
#[cfg(target_os = "linux")]
fn sync_range(file: &File, offset: u64, len: u64, flags: u32) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let out_of_range = || io::Error::new(io::ErrorKind::InvalidInput, "range past i64");
    let offset = libc::off64_t::try_from(offset).map_err(|_| out_of_range())?;
    let len = libc::off64_t::try_from(len).map_err(|_| out_of_range())?;
    // SAFETY: sync_file_range only reads its integer arguments; the
    // descriptor is owned by `file`, which outlives the call.
    #[allow(unsafe_code)]
    let done = unsafe { libc::sync_file_range(file.as_raw_fd(), offset, len, flags) };
    if done == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Starts writing `len` bytes of `file` from `offset` to disk without
/// waiting (best effort: it makes nothing durable).
#[cfg(target_os = "linux")]
fn start_writeback(file: &File, offset: u64, len: u64) {
    let _ = sync_range(file, offset, len, libc::SYNC_FILE_RANGE_WRITE);
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &File, _offset: u64, _len: u64) {}

/// Writes `len` bytes of `file` from `offset` to disk and waits for them
/// (waiting before and after: it makes nothing durable). Best effort:
/// only an I/O error or a full disk is an error.
#[cfg(target_os = "linux")]
fn write_back(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
        | libc::SYNC_FILE_RANGE_WRITE
        | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    match sync_range(file, offset, len, flags) {
        // The disk failing (or full, for delayed allocation) fails the
        // table now, as its sync would; anything else (a file system
        // without the call) leaves the bytes to that sync.
        Err(err) if matches!(err.raw_os_error(), Some(libc::EIO | libc::ENOSPC)) => Err(err),
        _ => Ok(()),
    }
}

#[cfg(not(target_os = "linux"))]
fn write_back(_file: &File, _offset: u64, _len: u64) -> io::Result<()> {
    Ok(())
}

/// The space of the file system that holds a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskSpace {
    /// Bytes an unprivileged writer may still use.
    pub available: u64,
    /// The file system's size in bytes.
    pub total: u64,
}

/// The space of the file system holding `path` (`statvfs`).
///
/// # Errors
///
/// The operating system's error (a path that does not exist, say).
#[cfg(unix)]
pub fn disk_space(path: &Path) -> io::Result<DiskSpace> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a path with a NUL byte"))?;
    // SAFETY: statvfs writes only into `stats`, which it is given whole,
    // and reads the NUL-terminated path that outlives the call.
    #[allow(unsafe_code)]
    let (rc, stats) = unsafe {
        let mut stats: libc::statvfs = std::mem::zeroed();
        let rc = libc::statvfs(c_path.as_ptr(), &mut stats);
        (rc, stats)
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // The fields are 64-bit here, narrower on some platforms.
    #[allow(clippy::useless_conversion)]
    let (block, available, total) = (
        u64::from(stats.f_frsize),
        u64::from(stats.f_bavail),
        u64::from(stats.f_blocks),
    );
    Ok(DiskSpace {
        available: available.saturating_mul(block),
        total: total.saturating_mul(block),
    })
}

/// The space of the file system holding `path` (not known off Unix).
///
/// # Errors
///
/// Always `Unsupported`.
#[cfg(not(unix))]
pub fn disk_space(_path: &Path) -> io::Result<DiskSpace> {
    Err(io::Error::new(io::ErrorKind::Unsupported, "statvfs"))
}

impl FileSystem for StdFs {
    fn create(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        let file = kv_core::files::private_file()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        Ok(Box::new(StdFile(file)))
    }

    fn overwrite(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        let file = OpenOptions::new().write(true).open(path)?;
        Ok(Box::new(StdFile(file)))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let file = OpenOptions::new().write(true).open(path)?;
        file.set_len(len)?;
        file.sync_all()
    }
}

/// Which operations a [`FaultFs`] makes fail.
#[derive(Debug, Default)]
struct Faults {
    /// Fail every `sync_data` and `sync_dir` once this many have succeeded.
    syncs_before_failure: AtomicU64,
    sync_armed: AtomicBool,
    /// Fail every write.
    fail_writes: AtomicBool,
    /// Syncs that succeeded so far.
    syncs: AtomicU64,
    /// Steps handed to the disk by `write_back`.
    write_backs: AtomicU64,
    /// Whether file writes wait (a stalled disk), and how many do.
    stall: std::sync::Mutex<(bool, usize)>,
    stall_changed: std::sync::Condvar,
}

impl Faults {
    fn sync(&self) -> io::Result<()> {
        if self.sync_armed.load(Ordering::SeqCst) {
            let done = self.syncs.load(Ordering::SeqCst);
            if done >= self.syncs_before_failure.load(Ordering::SeqCst) {
                return Err(io::Error::other("injected fsync failure"));
            }
        }
        self.syncs.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn write(&self) -> io::Result<()> {
        if self.fail_writes.load(Ordering::SeqCst) {
            return Err(io::Error::other("injected write failure"));
        }
        Ok(())
    }

    fn lock_stall(&self) -> std::sync::MutexGuard<'_, (bool, usize)> {
        self.stall
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits while writes are stalled, counted among those waiting.
    fn pass_stall(&self) {
        let mut stall = self.lock_stall();
        if !stall.0 {
            return;
        }
        stall.1 += 1;
        self.stall_changed.notify_all();
        stall = self
            .stall_changed
            .wait_while(stall, |s| s.0)
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        stall.1 -= 1;
    }
}

/// A [`FileSystem`] over [`StdFs`] that fails operations on demand, for
/// tests of the engine's failure handling.
#[derive(Debug, Clone, Default)]
pub struct FaultFs {
    faults: Arc<Faults>,
}

impl FaultFs {
    /// A file system that fails nothing until told to.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes every fsync fail after `n` more succeed.
    pub fn fail_syncs_after(&self, n: u64) {
        let done = self.faults.syncs.load(Ordering::SeqCst);
        self.faults
            .syncs_before_failure
            .store(done + n, Ordering::SeqCst);
        self.faults.sync_armed.store(true, Ordering::SeqCst);
    }

    /// Makes every write fail (or stops doing so).
    pub fn fail_writes(&self, fail: bool) {
        self.faults.fail_writes.store(fail, Ordering::SeqCst);
    }

    /// Makes every file write wait, as on a stalled disk, until called
    /// again with `false`.
    pub fn stall_writes(&self, stall: bool) {
        self.faults.lock_stall().0 = stall;
        self.faults.stall_changed.notify_all();
    }

    /// Blocks until `n` file writes wait on a stall.
    pub fn wait_for_stalled_writes(&self, n: usize) {
        let stall = self.faults.lock_stall();
        drop(
            self.faults
                .stall_changed
                .wait_while(stall, |s| s.1 < n)
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
    }

    /// Stops injecting faults.
    pub fn heal(&self) {
        self.faults.sync_armed.store(false, Ordering::SeqCst);
        self.faults.fail_writes.store(false, Ordering::SeqCst);
        self.stall_writes(false);
    }

    /// How many fsyncs have succeeded.
    pub fn syncs(&self) -> u64 {
        self.faults.syncs.load(Ordering::SeqCst)
    }

    /// How many steps of written bytes were handed to the disk
    /// ([`WritableFile::write_back`]).
    pub fn write_backs(&self) -> u64 {
        self.faults.write_backs.load(Ordering::SeqCst)
    }
}

#[derive(Debug)]
struct FaultFile {
    inner: Box<dyn WritableFile>,
    faults: Arc<Faults>,
}

impl WritableFile for FaultFile {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.faults.write()?;
        self.faults.pass_stall();
        self.inner.write_all(buf)
    }

    fn write_back(&mut self, offset: u64, len: u64) -> io::Result<()> {
        self.faults.write_backs.fetch_add(1, Ordering::SeqCst);
        self.inner.write_back(offset, len)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.faults.sync()?;
        self.inner.sync_data()
    }

    fn preallocate(&mut self, len: u64) -> io::Result<()> {
        self.faults.write()?;
        self.inner.preallocate(len)
    }

    fn sync_handle(&self) -> Option<Box<dyn WritableFile>> {
        Some(Box::new(FaultFile {
            inner: self.inner.sync_handle()?,
            faults: self.faults.clone(),
        }))
    }
}

impl FileSystem for FaultFs {
    fn create(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        self.faults.write()?;
        Ok(Box::new(FaultFile {
            inner: StdFs.create(path)?,
            faults: self.faults.clone(),
        }))
    }

    fn overwrite(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        Ok(Box::new(FaultFile {
            inner: StdFs.overwrite(path)?,
            faults: self.faults.clone(),
        }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.faults.write()?;
        StdFs.rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        StdFs.remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.faults.sync()?;
        StdFs.sync_dir(dir)
    }

    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        self.faults.sync()?;
        StdFs.truncate(path, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_space_is_the_file_systems_and_a_missing_path_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let space = disk_space(dir.path()).unwrap();
        assert!(
            space.total > 0 && space.available <= space.total,
            "{space:?}"
        );
        assert!(disk_space(&dir.path().join("missing")).is_err());
        assert!(disk_space(Path::new("a\0b")).is_err());
    }

    /// A stalled write waits, counted, until the stall ends (`heal` ends
    /// it too), and then lands.
    #[test]
    fn a_stalled_write_waits_until_the_stall_ends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let fs = FaultFs::new();
        let mut file = fs.create(&path).unwrap();
        fs.stall_writes(true);
        std::thread::scope(|s| {
            let writer = s.spawn(move || file.write_all(b"late"));
            fs.wait_for_stalled_writes(1);
            assert_eq!(
                std::fs::read(&path).unwrap(),
                b"",
                "written during the stall"
            );
            fs.heal();
            writer.join().unwrap().unwrap();
        });
        assert_eq!(std::fs::read(&path).unwrap(), b"late");
        // No stall: writes pass at once.
        let mut file = fs.create(&path).unwrap();
        file.write_all(b"now").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"now");
    }

    /// A new file in `dir` holding `records` then `tail`, with 1 MiB
    /// reserved in between, synced.
    fn reserved_file(dir: &Path, tail: &[u8]) -> std::path::PathBuf {
        let path = dir.join("segment");
        let mut file = StdFs.create(&path).unwrap();
        file.write_all(b"records").unwrap();
        file.preallocate(1 << 20).unwrap();
        file.write_all(tail).unwrap();
        file.sync_data().unwrap();
        path
    }

    #[test]
    fn reserved_space_is_written_zeros_behind_the_append_position() {
        let dir = tempfile::tempdir().unwrap();
        // Appends go on where they were, inside the zeros.
        let path = reserved_file(dir.path(), b" more");
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), 1 << 20);
        assert_eq!(&bytes[..12], b"records more");
        assert!(bytes[12..].iter().all(|&b| b == 0));
        // A file already longer (a recycled segment) is left as it is.
        std::fs::write(&path, vec![7u8; 8192]).unwrap();
        StdFs.overwrite(&path).unwrap().preallocate(4096).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), vec![7u8; 8192]);
    }

    /// The point of writing zeros rather than `fallocate`: no extent of the
    /// reserved space is left unwritten (each would be converted, metadata
    /// and all, by the sync that first reaches it). Checked with FIEMAP
    /// where the file system has it (ext4, XFS, btrfs); tmpfs and some
    /// others have none, and then only the zeros are checked (above).
    #[cfg(target_os = "linux")]
    #[test]
    fn reserved_space_has_no_unwritten_extents() {
        let dir = tempfile::tempdir().unwrap();
        let path = reserved_file(dir.path(), b"");
        match extent_flags(&path) {
            Ok(extents) => {
                let mapped: u64 = extents.iter().map(|&(len, _)| len).sum();
                assert!(mapped >= 1 << 20, "{extents:?}");
                assert!(
                    extents.iter().all(|&(_, flags)| flags
                        & (FIEMAP_EXTENT_UNWRITTEN | FIEMAP_EXTENT_DELALLOC)
                        == 0),
                    "unwritten or unallocated extents: {extents:?}"
                );
            }
            // EOPNOTSUPP from tmpfs; ENOTTY from file systems without the
            // ioctl at all.
            Err(err) if matches!(err.raw_os_error(), Some(libc::EOPNOTSUPP | libc::ENOTTY)) => {
                eprintln!("no FIEMAP on this file system: {err}");
            }
            Err(err) => panic!("FIEMAP: {err}"),
        }
    }

    const FIEMAP_EXTENT_DELALLOC: u32 = 0x4;
    const FIEMAP_EXTENT_UNWRITTEN: u32 = 0x800;

    /// The length and flags of each extent of the file at `path` (the
    /// `FS_IOC_FIEMAP` ioctl, after syncing the file).
    #[cfg(target_os = "linux")]
    fn extent_flags(path: &Path) -> io::Result<Vec<(u64, u32)>> {
        use std::os::fd::AsRawFd;
        #[repr(C)]
        #[derive(Clone, Copy, Default)]
        struct Extent {
            logical: u64,
            physical: u64,
            length: u64,
            reserved64: [u64; 2],
            flags: u32,
            reserved: [u32; 3],
        }
        #[repr(C)]
        struct Fiemap {
            start: u64,
            length: u64,
            flags: u32,
            mapped_extents: u32,
            extent_count: u32,
            reserved: u32,
            extents: [Extent; 64],
        }
        const FS_IOC_FIEMAP: libc::c_ulong = 0xC020_660B;
        const FIEMAP_FLAG_SYNC: u32 = 0x1;
        let file = File::open(path)?;
        let mut map = Fiemap {
            start: 0,
            length: u64::MAX,
            flags: FIEMAP_FLAG_SYNC,
            mapped_extents: 0,
            extent_count: 64,
            reserved: 0,
            extents: [Extent::default(); 64],
        };
        // SAFETY: the kernel writes at most `extent_count` extents into
        // `map`, which is a `fiemap` header followed by that many extents
        // and outlives the call; the descriptor is owned by `file`.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), FS_IOC_FIEMAP, &mut map) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        let n = (map.mapped_extents as usize).min(map.extents.len());
        Ok(map.extents[..n]
            .iter()
            .map(|e| (e.length, e.flags))
            .collect())
    }
}

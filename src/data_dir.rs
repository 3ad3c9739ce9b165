//! The data directory: its layout, and the kernel lock taken on `DATA_DIR/LOCK`
//! before anything in it is read or repaired.
//!
//! The lock is an `flock` held through an open file descriptor (`File::try_lock`),
//! not a pid file: the kernel drops it when the process dies, so a `kill -9`
//! leaves nothing to clean up, and pid reuse cannot fool it. The file's
//! contents are informational only (the pid of the holder).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::log::OpenError;

/// A locked data directory; the lock lives as long as any clone.
#[derive(Debug, Clone)]
pub struct DataDir {
    inner: Arc<Locked>,
}

#[derive(Debug)]
struct Locked {
    root: PathBuf,
    _lock: File,
}

impl DataDir {
    /// Creates `root` and `root/log` if needed and takes the lock on `root/LOCK`.
    ///
    /// # Errors
    /// [`OpenError::Locked`] when another process holds the lock, [`OpenError::Io`]
    /// when the directory cannot be created or the lock file opened.
    pub fn lock(root: &Path) -> Result<DataDir, OpenError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| OpenError::Io { path, source }
        };
        std::fs::create_dir_all(root).map_err(io(root))?;
        let lock_path = root.join("LOCK");
        let mut lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(OpenError::Locked { lock: lock_path });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(&lock_path)(e)),
        }
        // Informational only; failure to record the pid does not matter.
        if lock.set_len(0).is_ok() {
            let _ = writeln!(lock, "{}", std::process::id());
        }
        let log_dir = root.join("log");
        std::fs::create_dir_all(&log_dir).map_err(io(&log_dir))?;
        Ok(DataDir {
            inner: Arc::new(Locked {
                root: root.to_path_buf(),
                _lock: lock,
            }),
        })
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// `DATA_DIR/log`, where the segments live.
    pub fn log_dir(&self) -> PathBuf {
        log_dir(&self.inner.root)
    }
}

/// `root/log` for a data directory that is not (or need not be) locked, as
/// the read-only `sessionlog` subcommands use it.
pub fn log_dir(root: &Path) -> PathBuf {
    root.join("log")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_is_refused_and_released_on_drop() {
        let tmp = tempfile::tempdir().unwrap();
        let first = DataDir::lock(tmp.path()).unwrap();
        match DataDir::lock(tmp.path()) {
            Err(OpenError::Locked { lock }) => assert_eq!(lock, tmp.path().join("LOCK")),
            other => panic!("expected Locked, got {other:?}"),
        }
        drop(first);
        DataDir::lock(tmp.path()).unwrap();
    }

    #[test]
    fn garbage_in_the_lock_file_is_no_obstacle() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("LOCK"), b"1\n\xff garbage").unwrap();
        DataDir::lock(tmp.path()).unwrap();
    }
}

//! The data directory and its lock: one live store per directory.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};

use crate::StoreError;

/// The name of the lock file inside a data directory.
const LOCK_FILE: &str = "LOCK";

/// A data directory held for the lifetime of a store. The lock is an OS file lock on
/// `LOCK`, so it is released when the process dies, however it dies, and a second store on
/// the same directory fails even within one process.
#[derive(Debug)]
pub(crate) struct DataDir {
    path: PathBuf,
    /// Held, never read: dropping it releases the lock.
    _lock: File,
}

impl DataDir {
    /// Creates `path` (and its parents) if needed and takes its lock.
    pub(crate) fn acquire(path: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(path).map_err(|source| StoreError::Io {
            action: "creating the data directory",
            path: path.to_path_buf(),
            source,
        })?;
        let lock_path = path.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|source| StoreError::Io {
                action: "opening the lock file",
                path: lock_path.clone(),
                source,
            })?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(StoreError::Locked {
                    path: path.to_path_buf(),
                    lock: lock_path,
                });
            }
            Err(TryLockError::Error(source)) => {
                return Err(StoreError::Io {
                    action: "locking",
                    path: lock_path,
                    source,
                });
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            _lock: lock,
        })
    }

    /// The directory.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

//! LQSM's durable storage.
//!
//! The server keeps its whole state in memory, in a deterministic core. After it applies a
//! batch of commands it hands this crate **one** [`WriteBatch`] to commit atomically and
//! durably (the group commit), and only then answers clients. At start it reads everything
//! back with [`Store::load`].
//!
//! Records are opaque bytes here: the server encodes them. Storage is a trait, [`Store`], so
//! that backends can be swapped; every backend must pass the checks of [`conformance`]. The
//! default backend is [`EmbeddedStore`]: one data directory, nothing to install.

mod data_dir;
mod embedded;

pub mod conformance;

pub use embedded::EmbeddedStore;

use std::path::PathBuf;

/// The longest queue path or meta name a store accepts, in bytes. Longer ones are refused
/// with [`StoreError::TooLarge`] (the server's own limits are far below).
pub const MAX_NAME_BYTES: usize = 4096;

/// The largest record, payload or meta value a store accepts, in bytes (256 MiB).
pub const MAX_VALUE_BYTES: usize = 256 << 20;

/// A job's key: its 16-byte id (a UUIDv7, so byte order is time order).
pub type JobKey = [u8; 16];

/// Everything one group commit writes: applied all at once or not at all.
///
/// Within one batch, deletions win: a job (or queue) both written and deleted in the same
/// batch is absent afterwards. Writing the same key twice in one batch keeps the last value.
#[derive(Debug, Default, Clone)]
pub struct WriteBatch {
    /// Job records to insert or overwrite.
    pub jobs: Vec<(JobKey, Vec<u8>)>,
    /// Job payloads (arguments, argv, env) kept out of the server's memory; written once with
    /// the job.
    pub payloads: Vec<(JobKey, Vec<u8>)>,
    /// Captured output of jobs' attempts (what a worker uploaded), insert or overwrite.
    pub logs: Vec<(JobKey, Vec<u8>)>,
    /// Jobs to delete (record, payload and logs), e.g. after retention.
    pub deleted_jobs: Vec<JobKey>,
    /// Queue records by queue path (e.g. "root.etl"), insert or overwrite.
    pub queues: Vec<(String, Vec<u8>)>,
    /// Queues to delete, by path.
    pub deleted_queues: Vec<String>,
    /// Small named values (e.g. "next_token"), insert or overwrite.
    pub meta: Vec<(String, Vec<u8>)>,
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the batch holds no operation at all (committing it is a no-op).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The number of operations in the batch: every write and every deletion counts one.
    pub fn len(&self) -> usize {
        self.jobs.len()
            + self.payloads.len()
            + self.logs.len()
            + self.deleted_jobs.len()
            + self.queues.len()
            + self.deleted_queues.len()
            + self.meta.len()
    }

    /// Checks every name and value against [`MAX_NAME_BYTES`] and [`MAX_VALUE_BYTES`].
    /// Backends call it before writing anything, so an oversized entry fails the whole batch
    /// with [`StoreError::TooLarge`] and applies none of it.
    pub fn check_limits(&self) -> Result<(), StoreError> {
        let value = |len: usize, what: &dyn Fn() -> String| {
            if len <= MAX_VALUE_BYTES {
                return Ok(());
            }
            Err(StoreError::TooLarge {
                what: what(),
                len,
                max: MAX_VALUE_BYTES,
            })
        };
        let name = |name: &str, kind: &str| {
            if name.len() <= MAX_NAME_BYTES {
                return Ok(());
            }
            let start: String = name.chars().take(40).collect();
            Err(StoreError::TooLarge {
                what: format!("the {kind} starting `{start}`"),
                len: name.len(),
                max: MAX_NAME_BYTES,
            })
        };
        for (key, record) in &self.jobs {
            value(record.len(), &|| {
                format!("the record of job {}", JobKeyHex(key))
            })?;
        }
        for (key, payload) in &self.payloads {
            value(payload.len(), &|| {
                format!("the payload of job {}", JobKeyHex(key))
            })?;
        }
        for (key, log) in &self.logs {
            value(log.len(), &|| format!("the logs of job {}", JobKeyHex(key)))?;
        }
        for (path, record) in &self.queues {
            name(path, "queue path")?;
            value(record.len(), &|| format!("the record of queue `{path}`"))?;
        }
        for path in &self.deleted_queues {
            name(path, "queue path")?;
        }
        for (meta_name, meta_value) in &self.meta {
            name(meta_name, "meta name")?;
            value(meta_value.len(), &|| {
                format!("the meta value `{meta_name}`")
            })?;
        }
        Ok(())
    }

    /// Empties the batch but keeps its allocations, so the next group commit can reuse them.
    pub fn clear(&mut self) {
        self.jobs.clear();
        self.payloads.clear();
        self.logs.clear();
        self.deleted_jobs.clear();
        self.queues.clear();
        self.deleted_queues.clear();
        self.meta.clear();
    }
}

/// Shows a job key as the hex of its UUID, for error messages.
struct JobKeyHex<'a>(&'a JobKey);

impl std::fmt::Display for JobKeyHex<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, byte) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

/// Everything the server needs to rebuild its state at start (payloads excepted: they are
/// read on demand with [`Store::payloads`]).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// All job records, in key order (so in submission-time order for UUIDv7 keys).
    pub jobs: Vec<(JobKey, Vec<u8>)>,
    /// All queue records, in path order (byte order of the path).
    pub queues: Vec<(String, Vec<u8>)>,
    /// All named values, in name order.
    pub meta: Vec<(String, Vec<u8>)>,
}

/// Why a store operation failed. Each message says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The operating system refused a file operation.
    #[error(
        "{action} `{path}` failed: {source}; check that the disk is not full, that the path exists and that this user may write to it"
    )]
    Io {
        /// What was being done, e.g. "creating the data directory".
        action: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// Another process (or another store in this process) holds the data directory.
    #[error(
        "data directory `{path}` is already in use by another LQSM store (its lock file `{lock}` is held); stop the other server or give this one a different data directory"
    )]
    Locked {
        /// The data directory.
        path: PathBuf,
        /// The lock file inside it.
        lock: PathBuf,
    },
    /// Stored data failed an integrity check.
    #[error(
        "stored data is corrupt: {what}; restore the data directory from a backup (do not edit its files by hand)"
    )]
    Corrupt {
        /// What was found corrupt.
        what: String,
    },
    /// A name or value of the batch is over the store's limits; nothing of the batch was
    /// applied.
    #[error("{what} is {len} bytes, over the limit of {max}; nothing of this batch was stored")]
    TooLarge {
        /// Which entry, e.g. "the payload of job 0190…".
        what: String,
        /// Its size in bytes.
        len: usize,
        /// The limit in bytes.
        max: usize,
    },
    /// The engine refuses writes after a write to disk failed, since it can no longer tell
    /// what reached the disk.
    #[error(
        "the store refuses writes since a write to disk failed ({0}); check the disk, then restart the server, which recovers everything committed"
    )]
    Poisoned(String),
    /// The storage engine failed; the message is the engine's own.
    #[error(
        "storage engine error: {0}; if it persists after a restart, check the disk and the server logs"
    )]
    Engine(String),
}

/// Durable storage for LQSM's jobs, queues and named values.
///
/// Implementations must pass every check of [`conformance`].
pub trait Store: Send + Sync + 'static {
    /// Applies the whole batch atomically and durably: after `Ok`, a crash (kill -9, power
    /// loss) cannot lose any of it; after `Err`, none of it is applied. May be called from
    /// several threads at once; each call is its own atomic unit.
    fn commit(&self, batch: &WriteBatch) -> Result<(), StoreError>;

    /// Everything needed to rebuild state at start (payloads are NOT included).
    fn load(&self) -> Result<Snapshot, StoreError>;

    /// Payloads of these jobs, in the same order (None for a job without one).
    fn payloads(&self, jobs: &[JobKey]) -> Result<Vec<Option<Vec<u8>>>, StoreError>;

    /// The logs stored for a job (None when it has none, or is gone).
    fn logs(&self, job: &JobKey) -> Result<Option<Vec<u8>>, StoreError>;
}

//! LQSM's durable storage.
//!
//! The server keeps its whole state in memory, in a deterministic core. After it applies a
//! batch of commands it hands this crate **one** [`WriteBatch`] to commit atomically and
//! durably (the group commit), and only then answers clients. At start it reads everything
//! back with [`Store::load`].
//!
//! Records are opaque bytes here: the server encodes them (`lqsm_core::codec`). Next to each
//! job record, a batch carries the few fields the store indexes ([`JobIndex`]: queue, state,
//! tags), so that the reads a JobServer needs ([`Store::job`], [`Store::jobs`],
//! [`Store::counts`]) are answered by the store itself. The writer also passes the index
//! each job had before the batch ([`JobWrite::previous`], [`JobDeletion::previous`]): it
//! holds every job in memory anyway, and a backend that keeps its indexes by hand (the
//! embedded one) then never reads its own index back on the hot path.
//!
//! A writer holds a **lease** and writes at its **epoch**: every commit carries the epoch
//! ([`WriteBatch::epoch`]) and a commit from an older epoch is refused
//! ([`StoreError::Fenced`]), so a deposed leader cannot overwrite its successor's writes.
//!
//! Storage is a trait, [`Store`], so that backends can be swapped; every backend must pass
//! the checks of the test kit (module `testsuite`, cargo feature `testsuite`). The default
//! backend is [`EmbeddedStore`]: one data directory, nothing to install.
//!
//! For tests, the same feature brings a store in memory (module `memory`) and a wrapper
//! that makes writes fail and the machine crash on demand (module `faults`), which checks
//! that nothing is acknowledged before it is durable.

mod data_dir;
mod embedded;

#[cfg(any(test, feature = "testsuite"))]
pub mod testsuite;

#[cfg(any(test, feature = "testsuite"))]
pub mod faults;
#[cfg(any(test, feature = "testsuite"))]
pub mod memory;

pub use embedded::EmbeddedStore;

use std::path::PathBuf;
use std::time::Duration;

/// A leader's term. Each lease acquisition makes a new, larger epoch; a fresh store is at
/// epoch 0 (no lease ever taken).
pub type Epoch = u64;

/// What the store indexes of a job, next to its opaque record.
#[derive(Debug, Default, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct JobIndex {
    /// Its leaf queue's path, e.g. "root.etl".
    pub queue: String,
    /// Its state's name, e.g. "pending".
    pub state: String,
    /// Its tags.
    pub tags: Vec<String>,
}

/// A job record to insert or overwrite, with what the store indexes of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobWrite {
    /// The job's key (its UUIDv7: byte order is submission order).
    pub key: JobKey,
    /// The encoded record, opaque to the store.
    pub record: Vec<u8>,
    /// Queue, state and tags, kept in the store's secondary indexes.
    pub index: JobIndex,
    /// The index this job had in the store before this batch: `None` for a job the store
    /// does not hold yet. The writer must give it exactly (it is what the writer's last
    /// committed batch wrote, or what it loaded); a backend may rely on it instead of
    /// reading its index back, and its reads are undefined when it is wrong.
    pub previous: Option<JobIndex>,
}

/// A job to delete (record, payload and logs), e.g. after retention.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobDeletion {
    /// The job's key.
    pub key: JobKey,
    /// The index the job had in the store before this batch (`None` when the store does not
    /// hold it), with the same promise as [`JobWrite::previous`].
    pub previous: Option<JobIndex>,
}

/// Which jobs a listing wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobFilter {
    /// Every job.
    All,
    /// The jobs of one queue.
    Queue(String),
    /// The jobs in one state.
    State(String),
    /// The jobs carrying one tag.
    Tag(String),
}

/// The order of a listing, by submission (key) order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Oldest first.
    OldestFirst,
    /// Newest first.
    NewestFirst,
}

/// One page of a job listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobQuery {
    /// Which jobs.
    pub filter: JobFilter,
    /// In which order.
    pub order: Order,
    /// Start strictly after this key (in `order`): the `next` of the previous page.
    pub after: Option<JobKey>,
    /// At most this many jobs (at least 1 is asked for; 0 is read as 1).
    pub limit: usize,
}

/// A page of jobs: `(key, record)` in the order asked.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct JobPage {
    /// The jobs.
    pub jobs: Vec<(JobKey, Vec<u8>)>,
    /// The cursor of the next page, or `None` when this page is the last.
    pub next: Option<JobKey>,
}

/// The number of jobs of one queue in one state.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct JobCount {
    /// The queue.
    pub queue: String,
    /// The state.
    pub state: String,
    /// How many (never 0: empty groups are left out).
    pub count: u64,
}

/// The right to write, held by one named writer until it expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Who holds it (e.g. a host name and process id).
    pub holder: String,
    /// The epoch its holder writes at.
    pub epoch: Epoch,
    /// When it lapses unless renewed, in milliseconds since the Unix epoch.
    pub expires_at_ms: u64,
}

impl Lease {
    /// Whether the lease still holds at `now_ms`.
    pub fn is_live(&self, now_ms: u64) -> bool {
        now_ms < self.expires_at_ms
    }
}

/// A server sharing the store, as it last announced itself ([`Store::announce`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInfo {
    /// Its name (the one it holds the lease under when it leads).
    pub node: String,
    /// Where the others reach its HTTP API, e.g. `http://10.0.0.5:7420`.
    pub address: String,
    /// When it last announced itself, by the lease clock (ms since the Unix epoch).
    pub seen_at_ms: u64,
}

/// When a lease taken or renewed at `now_ms` for `ttl` lapses, without overflow and within
/// what a signed 64-bit column holds.
pub fn expiry(now_ms: u64, ttl: Duration) -> u64 {
    let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
    now_ms.saturating_add(ttl_ms).min(i64::MAX as u64)
}

/// A store's current epoch and lease, and the rules that change them. Every backend keeps
/// one durably and applies these rules under its own lock (a mutex, a locked row), so that
/// all backends grant, renew, resign and fence alike.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Term {
    /// The epoch of the last lease acquired (0 if none ever was).
    pub epoch: Epoch,
    /// The current lease, if one was acquired and not resigned (it may have lapsed).
    pub lease: Option<Lease>,
}

impl Term {
    /// The term after `holder` takes the lease at `now_ms` for `ttl`: a new epoch, one above
    /// this one. Refused with [`StoreError::LeaseHeld`] while another holder's lease is live.
    pub fn acquired(&self, holder: &str, ttl: Duration, now_ms: u64) -> Result<Term, StoreError> {
        if let Some(current) = &self.lease
            && current.holder != holder
            && current.is_live(now_ms)
        {
            return Err(StoreError::LeaseHeld {
                holder: current.holder.clone(),
                epoch: current.epoch,
                remaining_ms: current.expires_at_ms - now_ms,
            });
        }
        let lease = Lease {
            holder: holder.to_string(),
            epoch: self.epoch + 1,
            expires_at_ms: expiry(now_ms, ttl),
        };
        Ok(Term {
            epoch: lease.epoch,
            lease: Some(lease),
        })
    }

    /// The term after `lease` is extended to `now_ms + ttl`; [`StoreError::LeaseLost`] when
    /// it is not the current lease.
    pub fn renewed(&self, lease: &Lease, ttl: Duration, now_ms: u64) -> Result<Term, StoreError> {
        self.check_current(lease)?;
        Ok(Term {
            epoch: self.epoch,
            lease: Some(Lease {
                expires_at_ms: expiry(now_ms, ttl),
                ..lease.clone()
            }),
        })
    }

    /// The term after `lease` is given up (the epoch stays); [`StoreError::LeaseLost`] when
    /// it is not the current lease.
    pub fn resigned(&self, lease: &Lease) -> Result<Term, StoreError> {
        self.check_current(lease)?;
        Ok(Term {
            epoch: self.epoch,
            lease: None,
        })
    }

    /// Refuses a batch written at `writer` unless it is this term's epoch.
    pub fn check_writer(&self, writer: Epoch) -> Result<(), StoreError> {
        if writer == self.epoch {
            return Ok(());
        }
        Err(StoreError::Fenced {
            writer,
            current: self.epoch,
            holder: self
                .lease
                .as_ref()
                .map_or_else(|| "nobody".to_string(), |l| l.holder.clone()),
        })
    }

    fn check_current(&self, lease: &Lease) -> Result<(), StoreError> {
        let lost = |why: String| StoreError::LeaseLost {
            holder: lease.holder.clone(),
            epoch: lease.epoch,
            why,
        };
        match &self.lease {
            Some(current) if current.epoch == lease.epoch && current.holder == lease.holder => {
                Ok(())
            }
            Some(current) => Err(lost(format!(
                "epoch {} was granted to `{}`",
                current.epoch, current.holder
            ))),
            None => Err(lost("it was resigned".to_string())),
        }
    }
}

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
    /// The writer's epoch (that of its lease; 0 while no lease was ever taken). A batch of
    /// another epoch than the store's current one is refused with [`StoreError::Fenced`].
    pub epoch: Epoch,
    /// Job records to insert or overwrite, with their index fields.
    pub jobs: Vec<JobWrite>,
    /// Job payloads (arguments, argv, env) kept out of the server's memory; written once with
    /// the job.
    pub payloads: Vec<(JobKey, Vec<u8>)>,
    /// Captured output of jobs' attempts (what a worker uploaded), insert or overwrite.
    pub logs: Vec<(JobKey, Vec<u8>)>,
    /// Results of jobs too large to keep in the server's memory (JSON text), insert or
    /// overwrite; deleted with their job.
    pub results: Vec<(JobKey, Vec<u8>)>,
    /// Jobs to delete (record, payload and logs), e.g. after retention.
    pub deleted_jobs: Vec<JobDeletion>,
    /// Queue records by queue path (e.g. "root.etl"), insert or overwrite.
    pub queues: Vec<(String, Vec<u8>)>,
    /// Queues to delete, by path.
    pub deleted_queues: Vec<String>,
    /// Small named values (e.g. "next_token"), insert or overwrite.
    pub meta: Vec<(String, Vec<u8>)>,
    /// Named values to delete, by name.
    pub deleted_meta: Vec<String>,
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
            + self.results.len()
            + self.deleted_jobs.len()
            + self.queues.len()
            + self.deleted_queues.len()
            + self.meta.len()
            + self.deleted_meta.len()
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
        let index = |index: &JobIndex| {
            name(&index.queue, "queue path")?;
            name(&index.state, "job state")?;
            index.tags.iter().try_for_each(|tag| name(tag, "tag"))
        };
        for job in &self.jobs {
            value(job.record.len(), &|| {
                format!("the record of job {}", JobKeyHex(&job.key))
            })?;
            index(&job.index)?;
        }
        for (key, payload) in &self.payloads {
            value(payload.len(), &|| {
                format!("the payload of job {}", JobKeyHex(key))
            })?;
        }
        for (key, log) in &self.logs {
            value(log.len(), &|| format!("the logs of job {}", JobKeyHex(key)))?;
        }
        for (key, result) in &self.results {
            value(result.len(), &|| {
                format!("the result of job {}", JobKeyHex(key))
            })?;
        }
        for (path, record) in &self.queues {
            name(path, "queue path")?;
            value(record.len(), &|| format!("the record of queue `{path}`"))?;
        }
        for path in &self.deleted_queues {
            name(path, "queue path")?;
        }
        for meta_name in &self.deleted_meta {
            name(meta_name, "meta name")?;
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
        self.results.clear();
        self.deleted_jobs.clear();
        self.queues.clear();
        self.deleted_queues.clear();
        self.deleted_meta.clear();
        self.meta.clear();
    }
}

/// Shows a job key as the hex of its UUID, for error messages.
pub(crate) struct JobKeyHex<'a>(&'a JobKey);

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
    /// The batch was written at an epoch that is not the store's current one: another writer
    /// has taken the lease since, and this one must stop writing.
    #[error(
        "this server is no longer the leader: it writes at epoch {writer} but the store is at epoch {current} (lease held by `{holder}`); nothing of this batch was stored. Stop this server or restart it so that it rejoins under the current leader"
    )]
    Fenced {
        /// The epoch the refused batch carried.
        writer: Epoch,
        /// The store's current epoch.
        current: Epoch,
        /// Who holds the current lease ("nobody" when it was resigned).
        holder: String,
    },
    /// Another writer holds a live lease.
    #[error(
        "the lease is held by `{holder}` (epoch {epoch}) for another {remaining_ms} ms; wait for it to lapse or stop that server"
    )]
    LeaseHeld {
        /// The current holder.
        holder: String,
        /// Its epoch.
        epoch: Epoch,
        /// How long its lease still runs.
        remaining_ms: u64,
    },
    /// A renewal or resignation named a lease that is no longer current.
    #[error(
        "the lease of `{holder}` at epoch {epoch} is no longer current ({why}); stop writing and acquire a new lease"
    )]
    LeaseLost {
        /// The holder named in the request.
        holder: String,
        /// The epoch named in the request.
        epoch: Epoch,
        /// What happened instead (e.g. "epoch 4 was granted to `b`").
        why: String,
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
/// Implementations must pass every check of the test kit (`testsuite` feature). The trait
/// is synchronous: callers on an async runtime call it from a blocking thread (see
/// docs/ARCHITECTURE.md, "Storage").
pub trait Store: Send + Sync + 'static {
    /// Applies the whole batch atomically and durably: after `Ok`, a crash (kill -9, power
    /// loss) cannot lose any of it; after `Err`, none of it is applied. May be called from
    /// several threads at once; each call is its own atomic unit.
    ///
    /// A batch whose [`WriteBatch::epoch`] is not the store's current epoch is refused with
    /// [`StoreError::Fenced`], even an empty one.
    fn commit(&self, batch: &WriteBatch) -> Result<(), StoreError>;

    /// Everything needed to rebuild state at start (payloads are NOT included).
    fn load(&self) -> Result<Snapshot, StoreError>;

    /// Payloads of these jobs, in the same order (None for a job without one).
    fn payloads(&self, jobs: &[JobKey]) -> Result<Vec<Option<Vec<u8>>>, StoreError>;

    /// The logs stored for a job (None when it has none, or is gone).
    fn logs(&self, job: &JobKey) -> Result<Option<Vec<u8>>, StoreError>;

    /// The results kept apart for these jobs (`WriteBatch::results`), in the same order
    /// (None for a job without one).
    fn results(&self, jobs: &[JobKey]) -> Result<Vec<Option<Vec<u8>>>, StoreError>;

    /// One job's record (None when there is no such job).
    fn job(&self, key: &JobKey) -> Result<Option<Vec<u8>>, StoreError>;

    /// A page of jobs matching `query.filter`, in `query.order`, after `query.after`.
    fn jobs(&self, query: &JobQuery) -> Result<JobPage, StoreError>;

    /// The number of jobs per queue and state, sorted by queue then state.
    fn counts(&self) -> Result<Vec<JobCount>, StoreError>;

    /// The current epoch: that of the last lease acquired (0 if none ever was).
    fn epoch(&self) -> Result<Epoch, StoreError>;

    /// The current lease, if one was acquired and not resigned (it may have lapsed).
    fn lease(&self) -> Result<Option<Lease>, StoreError>;

    /// Takes the lease for `holder` until `now_ms + ttl`, with a new epoch one above the
    /// current one, made durable before returning. Refused with [`StoreError::LeaseHeld`]
    /// while another holder's lease is live. A holder acquiring again (e.g. after a
    /// restart) also gets a new epoch, which fences its own earlier writers.
    fn acquire_lease(&self, holder: &str, ttl: Duration, now_ms: u64) -> Result<Lease, StoreError>;

    /// Extends `lease` to `now_ms + ttl`. Only its holder at its epoch may, and only while
    /// it is current (a lapsed lease nobody else took can still be renewed); otherwise
    /// [`StoreError::LeaseLost`].
    fn renew_lease(&self, lease: &Lease, ttl: Duration, now_ms: u64) -> Result<Lease, StoreError>;

    /// The clock leases are judged by, in milliseconds since the Unix epoch, when the store
    /// has one that every server sharing it reads (a database's): servers pass it as
    /// `now_ms` to the lease calls, so that their own clocks' drift cannot make two of them
    /// believe they hold the lease. `None` (the default): use the local clock.
    fn clock_ms(&self) -> Result<Option<u64>, StoreError> {
        Ok(None)
    }

    /// Gives `lease` up so that another writer can acquire at once. The epoch stays (so
    /// writes at it are still accepted until someone acquires); [`StoreError::LeaseLost`]
    /// when it is no longer current.
    fn resign_lease(&self, lease: &Lease) -> Result<(), StoreError>;

    /// Records that `server` is alive and where it answers, for the other servers sharing
    /// the store (a follower finds the leader's address this way). Not fenced: every
    /// server announces itself, leader or not. The default keeps nothing (a store only one
    /// server can open has no one to tell).
    fn announce(&self, server: &ServerInfo) -> Result<(), StoreError> {
        let _ = server;
        Ok(())
    }

    /// Every server that announced itself, by node name, with when it was last seen.
    fn servers(&self) -> Result<Vec<ServerInfo>, StoreError> {
        Ok(Vec::new())
    }
}

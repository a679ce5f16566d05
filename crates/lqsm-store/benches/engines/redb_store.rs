//! The store on redb (a copy-on-write B-tree), the engine that was measured against fjall and
//! not chosen. It passed the whole conformance suite of the time (before the store gained
//! indexes, reads and leases) before it was measured; it lives here only so that the
//! comparison of commits and loads can be run again, and implements only those.

use std::path::Path;

use lqsm_store::{JobKey, Snapshot, StoreError, WriteBatch};
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

const JOBS: TableDefinition<&JobKey, &[u8]> = TableDefinition::new("jobs");
const PAYLOADS: TableDefinition<&JobKey, &[u8]> = TableDefinition::new("payloads");
const LOGS: TableDefinition<&JobKey, &[u8]> = TableDefinition::new("logs");
const QUEUES: TableDefinition<&str, &[u8]> = TableDefinition::new("queues");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// Commits and loads on redb, default durability (every commit fsynced before it returns).
pub struct RedbStore {
    db: redb::Database,
}

impl RedbStore {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
            action: "creating the data directory",
            path: dir.to_path_buf(),
            source,
        })?;
        let db = redb::Database::create(dir.join("lqsm.redb")).map_err(engine)?;
        let txn = db.begin_write().map_err(engine)?;
        txn.open_table(JOBS).map_err(engine)?;
        txn.open_table(PAYLOADS).map_err(engine)?;
        txn.open_table(LOGS).map_err(engine)?;
        txn.open_table(QUEUES).map_err(engine)?;
        txn.open_table(META).map_err(engine)?;
        txn.commit().map_err(engine)?;
        Ok(Self { db })
    }
}

impl RedbStore {
    /// As `Store::commit` (without indexes or epochs).
    pub fn commit(&self, batch: &WriteBatch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        batch.check_limits()?;
        let txn = self.db.begin_write().map_err(engine)?;
        {
            let mut jobs = txn.open_table(JOBS).map_err(engine)?;
            let mut payloads = txn.open_table(PAYLOADS).map_err(engine)?;
            let mut logs = txn.open_table(LOGS).map_err(engine)?;
            let mut queues = txn.open_table(QUEUES).map_err(engine)?;
            let mut meta = txn.open_table(META).map_err(engine)?;
            for job in &batch.jobs {
                jobs.insert(&job.key, job.record.as_slice())
                    .map_err(engine)?;
            }
            for (key, payload) in &batch.payloads {
                payloads.insert(key, payload.as_slice()).map_err(engine)?;
            }
            for (key, log) in &batch.logs {
                logs.insert(key, log.as_slice()).map_err(engine)?;
            }
            for (path, record) in &batch.queues {
                queues
                    .insert(path.as_str(), record.as_slice())
                    .map_err(engine)?;
            }
            for (name, value) in &batch.meta {
                meta.insert(name.as_str(), value.as_slice())
                    .map_err(engine)?;
            }
            for deletion in &batch.deleted_jobs {
                let key = &deletion.key;
                jobs.remove(key).map_err(engine)?;
                payloads.remove(key).map_err(engine)?;
                logs.remove(key).map_err(engine)?;
            }
            for path in &batch.deleted_queues {
                queues.remove(path.as_str()).map_err(engine)?;
            }
        }
        txn.commit().map_err(engine)
    }

    /// As `Store::load`.
    pub fn load(&self) -> Result<Snapshot, StoreError> {
        let txn = self.db.begin_read().map_err(engine)?;
        let jobs_table = txn.open_table(JOBS).map_err(engine)?;
        let len = usize::try_from(jobs_table.len().map_err(engine)?).unwrap_or(0);
        let mut jobs = Vec::with_capacity(len);
        for entry in jobs_table.iter().map_err(engine)? {
            let (key, record) = entry.map_err(engine)?;
            jobs.push((*key.value(), record.value().to_vec()));
        }
        let queues = read_named(&txn.open_table(QUEUES).map_err(engine)?)?;
        let meta = read_named(&txn.open_table(META).map_err(engine)?)?;
        Ok(Snapshot { jobs, queues, meta })
    }
}

fn read_named(
    table: &redb::ReadOnlyTable<&'static str, &'static [u8]>,
) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
    let mut out = Vec::new();
    for entry in table.iter().map_err(engine)? {
        let (name, value) = entry.map_err(engine)?;
        out.push((name.value().to_string(), value.value().to_vec()));
    }
    Ok(out)
}

fn engine(err: impl Into<redb::Error>) -> StoreError {
    StoreError::Engine(err.into().to_string())
}

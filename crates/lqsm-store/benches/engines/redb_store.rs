//! The store on redb (a copy-on-write B-tree), the engine that was measured against fjall and
//! not chosen. It passed the whole conformance suite before it was measured; it lives here
//! only so that the comparison can be run again.

use std::path::Path;

use lqsm_store::{JobKey, Snapshot, Store, StoreError, WriteBatch};
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

const JOBS: TableDefinition<&JobKey, &[u8]> = TableDefinition::new("jobs");
const PAYLOADS: TableDefinition<&JobKey, &[u8]> = TableDefinition::new("payloads");
const LOGS: TableDefinition<&JobKey, &[u8]> = TableDefinition::new("logs");
const QUEUES: TableDefinition<&str, &[u8]> = TableDefinition::new("queues");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// [`Store`] on redb, default durability (every commit fsynced before it returns).
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

impl Store for RedbStore {
    fn commit(&self, batch: &WriteBatch) -> Result<(), StoreError> {
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
            for (key, record) in &batch.jobs {
                jobs.insert(key, record.as_slice()).map_err(engine)?;
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
            for key in &batch.deleted_jobs {
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

    fn load(&self) -> Result<Snapshot, StoreError> {
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

    fn payloads(&self, jobs: &[JobKey]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let txn = self.db.begin_read().map_err(engine)?;
        let table = txn.open_table(PAYLOADS).map_err(engine)?;
        jobs.iter()
            .map(|key| {
                let found = table.get(key).map_err(engine)?;
                Ok(found.map(|payload| payload.value().to_vec()))
            })
            .collect()
    }

    fn logs(&self, job: &JobKey) -> Result<Option<Vec<u8>>, StoreError> {
        self.read_log(job)
    }
}

impl RedbStore {
    fn read_log(&self, job: &JobKey) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.db.begin_read().map_err(engine)?;
        let table = txn.open_table(LOGS).map_err(engine)?;
        let found = table.get(job).map_err(engine)?;
        Ok(found.map(|log| log.value().to_vec()))
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

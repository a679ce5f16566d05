//! LQSM's PostgreSQL storage backend: the [`Store`] contract kept in one PostgreSQL
//! database (one schema of it), which several LQSM servers can share.
//!
//! ```no_run
//! use lqsm_store_postgres::{PostgresOptions, PostgresStore};
//!
//! let mut options = PostgresOptions::new("postgresql://lqsm@db1:5432/lqsm");
//! options.password_file = Some("/etc/lqsm/pg-password".into());
//! let store = PostgresStore::open(&options)?;
//! # Ok::<(), lqsm_store_postgres::PostgresError>(())
//! ```
//!
//! The design, its measurements and its limits are in this crate's README.md.

mod commit;
mod config;
mod migrations;
mod pool;

pub use config::{DEFAULT_SCHEMA, PostgresOptions, SslMode};
pub use migrations::SCHEMA_VERSION;

use std::collections::HashMap;
use std::time::Duration;

use lqsm_store::{
    Epoch, JobCount, JobFilter, JobKey, JobPage, JobQuery, Lease, Order, ServerInfo, Snapshot,
    Store, StoreError, Term, WriteBatch,
};
use postgres::Transaction;
use postgres::types::{FromSql, ToSql};
use uuid::Uuid;

use crate::pool::Pool;

/// Why the store could not be opened. Each message says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum PostgresError {
    /// The options cannot be used as they are.
    #[error("PostgreSQL store configuration: {0}")]
    Config(String),
    /// PostgreSQL did not accept a connection.
    #[error(
        "cannot connect to PostgreSQL at {target}: {detail}; check that PostgreSQL runs and \
         accepts connections from this host, and the user, password and sslmode"
    )]
    Connect {
        /// Host, port, database and user (never the password).
        target: String,
        /// The driver's error with its causes.
        detail: String,
        /// The driver's error.
        source: postgres::Error,
    },
    /// The database holds a schema written by a newer LQSM that this one cannot use.
    #[error(
        "the LQSM schema `{schema}` is at version {found}, written by a newer LQSM, which \
         needs servers of schema version {compatible_from} or later; this server knows \
         version {known}. Upgrade this server (or point it at another schema)"
    )]
    SchemaTooNew {
        /// The schema.
        schema: String,
        /// Its version.
        found: i32,
        /// The oldest version its newest migration accepts.
        compatible_from: i32,
        /// The newest version this build knows.
        known: i32,
    },
    /// A migration failed; the transaction was rolled back, so the schema is as it was.
    #[error(
        "the schema migration to version {version} failed: {detail}; the schema was left as it \
         was. Check that the user may create tables in the schema"
    )]
    Migration {
        /// The migration that failed.
        version: i32,
        /// The database's error with its causes.
        detail: String,
        /// The database's error.
        source: postgres::Error,
    },
    /// Another statement failed while opening.
    #[error("{action} failed: {detail}")]
    Sql {
        /// What was being done.
        action: &'static str,
        /// The database's error with its causes.
        detail: String,
        /// The database's error.
        source: postgres::Error,
    },
}

impl From<PostgresError> for StoreError {
    fn from(err: PostgresError) -> Self {
        StoreError::Engine(err.to_string())
    }
}

/// The [`Store`] on PostgreSQL.
///
/// Every commit is one transaction, committed with the database's own durability
/// (`synchronous_commit`, on by default) before `commit` returns. It locks the lease row
/// first and checks the batch's epoch against it, so commits are serialised with each
/// other and with lease changes across every server sharing the database: a commit either
/// lands before a new epoch is granted or is refused after.
pub struct PostgresStore {
    pool: Pool,
    /// Connections of their own for the lease and the servers table: however busy the
    /// reads and commits keep the main pool, a leader's renewal never waits behind them
    /// (it would lose the lease to a busy afternoon).
    lease_pool: Pool,
    schema: String,
}

/// Connections of the lease pool: a renewal (clock, then renewal) and an announcement.
const LEASE_CONNECTIONS: usize = 2;

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connects, creates the schema if needed and brings it to [`SCHEMA_VERSION`]. Password,
    /// TLS mode and user come from the URL, then `options`, then the environment
    /// (`PGPASSWORD`, `PGSSLMODE`, `PGUSER`).
    ///
    /// Fails with [`PostgresError::SchemaTooNew`] when a newer LQSM migrated the schema
    /// beyond what this one can use.
    pub fn open(options: &PostgresOptions) -> Result<Self, PostgresError> {
        let resolved = options.resolve(&|name| std::env::var(name).ok())?;
        let lease_pool = Pool::new(
            resolved.clone(),
            options.ssl_root_cert.as_deref(),
            LEASE_CONNECTIONS,
        )?;
        let pool = Pool::new(
            resolved,
            options.ssl_root_cert.as_deref(),
            options.max_connections,
        )?;
        {
            let mut connection = pool.get()?;
            migrations::migrate(
                &mut connection.client,
                &options.schema,
                migrations::MIGRATIONS,
            )?;
        }
        Ok(Self {
            pool,
            lease_pool,
            schema: options.schema.clone(),
        })
    }

    /// [`open`](Self::open) with the default options for `url`.
    pub fn connect(url: &str) -> Result<Self, PostgresError> {
        Self::open(&PostgresOptions::new(url))
    }

    /// The schema this store keeps its tables in.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// The database's clock, in milliseconds since the Unix epoch. Servers sharing the
    /// database pass it as `now_ms` to the lease calls, so that every lease is judged by
    /// one clock whatever their own clocks say (the reading is a round trip old when used,
    /// which a lease's time to live of seconds absorbs).
    pub fn database_now_ms(&self) -> Result<u64, StoreError> {
        let mut connection = self.lease_connection()?;
        let row = connection
            .client
            .query_one(
                "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint",
                &[],
            )
            .map_err(sql("reading the database's clock"))?;
        unsigned(column(&row, 0)?, "database clock")
    }

    fn connection(&self) -> Result<pool::Lent<'_>, StoreError> {
        self.pool.get().map_err(StoreError::from)
    }

    fn lease_connection(&self) -> Result<pool::Lent<'_>, StoreError> {
        self.lease_pool.get().map_err(StoreError::from)
    }

    /// Runs `work` in one transaction on a connection of the lease pool and commits it.
    fn in_lease_transaction<T>(
        &self,
        work: impl FnOnce(&mut Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut connection = self.lease_connection()?;
        let mut tx = connection
            .client
            .transaction()
            .map_err(sql("starting a transaction"))?;
        let value = work(&mut tx)?;
        tx.commit().map_err(sql("committing"))?;
        Ok(value)
    }
}

/// Reads the lease row and locks it until the transaction ends.
pub(crate) const LOCK_LEASE: &str =
    "SELECT epoch, holder, expires_at_ms FROM lqsm_lease FOR UPDATE";

/// Reads the lease row without locking it.
const READ_LEASE: &str = "SELECT epoch, holder, expires_at_ms FROM lqsm_lease";

/// Reads the lease row, locking it until the transaction ends when `lock`.
pub(crate) fn read_term(
    client: &mut impl postgres::GenericClient,
    lock: bool,
) -> Result<Term, StoreError> {
    read_term_with(client, if lock { LOCK_LEASE } else { READ_LEASE })
}

/// Reads the lease row with `query` (one of [`LOCK_LEASE`] and [`READ_LEASE`], as text or
/// prepared).
pub(crate) fn read_term_with<Q: postgres::ToStatement + ?Sized>(
    client: &mut impl postgres::GenericClient,
    query: &Q,
) -> Result<Term, StoreError> {
    let row = client
        .query_opt(query, &[])
        .map_err(sql("reading the lease"))?
        .ok_or_else(|| StoreError::Corrupt {
            what: "the lease row is missing from lqsm_lease".to_string(),
        })?;
    let epoch = unsigned(column::<i64>(&row, 0)?, "epoch")?;
    let holder: Option<String> = column(&row, 1)?;
    let expires: Option<i64> = column(&row, 2)?;
    let lease = match (holder, expires) {
        (Some(holder), Some(expires)) => Some(Lease {
            holder,
            epoch,
            expires_at_ms: unsigned(expires, "lease expiry")?,
        }),
        _ => None,
    };
    Ok(Term { epoch, lease })
}

fn write_term(tx: &mut Transaction<'_>, term: &Term) -> Result<(), StoreError> {
    let holder = term.lease.as_ref().map(|l| l.holder.as_str());
    let expires = term.lease.as_ref().map(|l| signed(l.expires_at_ms));
    tx.execute(
        "UPDATE lqsm_lease SET epoch = $1, holder = $2, expires_at_ms = $3",
        &[&signed(term.epoch), &holder, &expires],
    )
    .map_err(sql("writing the lease"))?;
    Ok(())
}

/// A u64 in a bigint column; values over `i64::MAX` (none in practice: epochs count
/// acquisitions, times are milliseconds) are clamped.
pub(crate) fn signed(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn unsigned(value: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Corrupt {
        what: format!("the stored {what} is negative ({value})"),
    })
}

/// A column of a row, with a type mismatch reported as a damaged schema instead of a panic.
pub(crate) fn column<'a, T: FromSql<'a>>(
    row: &'a postgres::Row,
    index: usize,
) -> Result<T, StoreError> {
    row.try_get(index).map_err(|e| StoreError::Corrupt {
        what: format!("a column of the LQSM schema has an unexpected type ({e})"),
    })
}

fn job_key(row: &postgres::Row, index: usize) -> Result<JobKey, StoreError> {
    Ok(column::<Uuid>(row, index)?.into_bytes())
}

/// Maps the driver's errors onto what an operator can act on.
pub(crate) fn sql(action: &'static str) -> impl Fn(postgres::Error) -> StoreError {
    move |err| {
        if err.is_closed() {
            return StoreError::Engine(format!(
                "the connection to PostgreSQL closed while {action}; check that PostgreSQL \
                 runs and is reachable (a commit cut off this way may or may not have landed)"
            ));
        }
        StoreError::Engine(format!(
            "PostgreSQL failed while {action}: {}",
            with_causes(&err)
        ))
    }
}

/// An error and its causes, "outer: inner: innermost" (the driver's own message is often
/// only "db error", with PostgreSQL's words in its cause).
pub(crate) fn with_causes(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(inner) = cause {
        let inner_text = inner.to_string();
        if !text.contains(&inner_text) {
            text.push_str(": ");
            text.push_str(&inner_text);
        }
        cause = inner.source();
    }
    text
}

impl Store for PostgresStore {
    fn clock_ms(&self) -> Result<Option<u64>, StoreError> {
        self.database_now_ms().map(Some)
    }

    fn commit(&self, batch: &WriteBatch) -> Result<(), StoreError> {
        batch.check_limits()?;
        let mut connection = self.connection()?;
        if batch.is_empty() {
            // Nothing to write, but a stale writer must still hear that it is fenced.
            let term = read_term(&mut connection.client, false)?;
            return term.check_writer(batch.epoch);
        }
        commit::commit(&mut connection, batch)
    }

    fn load(&self) -> Result<Snapshot, StoreError> {
        let mut connection = self.connection()?;
        // One point in time for all three, even while other servers commit.
        let mut tx = connection
            .client
            .build_transaction()
            .isolation_level(postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .map_err(sql("starting the load"))?;
        let mut jobs = Vec::new();
        let mut rows = tx
            .query_raw(
                "SELECT key, record FROM lqsm_jobs ORDER BY key",
                std::iter::empty::<&(dyn ToSql + Sync)>(),
            )
            .map_err(sql("loading the jobs"))?;
        while let Some(row) = postgres::fallible_iterator::FallibleIterator::next(&mut rows)
            .map_err(sql("loading the jobs"))?
        {
            jobs.push((job_key(&row, 0)?, column::<Vec<u8>>(&row, 1)?));
        }
        drop(rows);
        let named = |tx: &mut Transaction<'_>, query: &str| -> Result<_, StoreError> {
            tx.query(query, &[])
                .map_err(sql("loading queues and meta"))?
                .iter()
                .map(|row| Ok((column::<String>(row, 0)?, column::<Vec<u8>>(row, 1)?)))
                .collect::<Result<Vec<_>, StoreError>>()
        };
        let queues = named(
            &mut tx,
            "SELECT path, record FROM lqsm_queues ORDER BY path",
        )?;
        let meta = named(&mut tx, "SELECT name, value FROM lqsm_meta ORDER BY name")?;
        tx.commit().map_err(sql("ending the load"))?;
        Ok(Snapshot { jobs, queues, meta })
    }

    fn payloads(&self, jobs: &[JobKey]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        self.bytes_by_keys(
            "SELECT key, payload FROM lqsm_payloads WHERE key = ANY($1)",
            jobs,
            "reading payloads",
        )
    }

    fn results(&self, jobs: &[JobKey]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        self.bytes_by_keys(
            "SELECT key, result FROM lqsm_results WHERE key = ANY($1)",
            jobs,
            "reading results",
        )
    }

    fn logs(&self, job: &JobKey) -> Result<Option<Vec<u8>>, StoreError> {
        self.by_key(
            "SELECT logs FROM lqsm_logs WHERE key = $1",
            job,
            "reading logs",
        )
    }

    fn job(&self, key: &JobKey) -> Result<Option<Vec<u8>>, StoreError> {
        self.by_key(
            "SELECT record FROM lqsm_jobs WHERE key = $1",
            key,
            "reading a job",
        )
    }

    fn jobs(&self, query: &JobQuery) -> Result<JobPage, StoreError> {
        let limit = query.limit.max(1);
        let (text, name) = listing_sql(query);
        let after = query.after.map(Uuid::from_bytes);
        // One more than a page, to tell whether there is a next page.
        let fetch = i64::try_from(limit).unwrap_or(i64::MAX).saturating_add(1);
        let mut params: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(3);
        if let Some(name) = &name {
            params.push(name);
        }
        if let Some(after) = &after {
            params.push(after);
        }
        params.push(&fetch);
        let mut connection = self.connection()?;
        let statement = connection.statement(&text).map_err(sql("listing jobs"))?;
        let rows = connection
            .client
            .query(&statement, &params)
            .map_err(sql("listing jobs"))?;
        let mut page = JobPage::default();
        for row in rows.iter().take(limit) {
            page.jobs
                .push((job_key(row, 0)?, column::<Vec<u8>>(row, 1)?));
        }
        if rows.len() > limit {
            page.next = page.jobs.last().map(|(key, _)| *key);
        }
        Ok(page)
    }

    fn counts(&self) -> Result<Vec<JobCount>, StoreError> {
        let mut connection = self.connection()?;
        let rows = connection
            .client
            .query(
                "SELECT queue, state, jobs FROM lqsm_job_counts WHERE jobs > 0
                 ORDER BY queue, state",
                &[],
            )
            .map_err(sql("reading job counts"))?;
        rows.iter()
            .map(|row| {
                Ok(JobCount {
                    queue: column(row, 0)?,
                    state: column(row, 1)?,
                    count: unsigned(column(row, 2)?, "job count")?,
                })
            })
            .collect()
    }

    fn epoch(&self) -> Result<Epoch, StoreError> {
        let mut connection = self.lease_connection()?;
        Ok(read_term(&mut connection.client, false)?.epoch)
    }

    fn lease(&self) -> Result<Option<Lease>, StoreError> {
        let mut connection = self.lease_connection()?;
        Ok(read_term(&mut connection.client, false)?.lease)
    }

    fn acquire_lease(&self, holder: &str, ttl: Duration, now_ms: u64) -> Result<Lease, StoreError> {
        self.in_lease_transaction(|tx| {
            // A would-be leader does not queue behind a stuck session's lock: it tries again.
            tx.batch_execute("SET LOCAL lock_timeout = '1s'")
                .map_err(sql("limiting the wait for the lease"))?;
            let term = read_term(tx, true)?.acquired(holder, ttl, now_ms)?;
            write_term(tx, &term)?;
            Ok(term.lease.expect("an acquired term has a lease"))
        })
    }

    fn renew_lease(&self, lease: &Lease, ttl: Duration, now_ms: u64) -> Result<Lease, StoreError> {
        self.in_lease_transaction(|tx| {
            let term = read_term(tx, true)?.renewed(lease, ttl, now_ms)?;
            write_term(tx, &term)?;
            Ok(term.lease.expect("a renewed term has a lease"))
        })
    }

    fn resign_lease(&self, lease: &Lease) -> Result<(), StoreError> {
        self.in_lease_transaction(|tx| {
            let term = read_term(tx, true)?.resigned(lease)?;
            write_term(tx, &term)
        })
    }

    fn announce(&self, server: &ServerInfo) -> Result<(), StoreError> {
        let mut connection = self.lease_connection()?;
        connection
            .client
            .execute(
                "INSERT INTO lqsm_servers (node, address, seen_at_ms) VALUES ($1, $2, $3)
                 ON CONFLICT (node) DO UPDATE
                 SET address = excluded.address, seen_at_ms = excluded.seen_at_ms",
                &[&server.node, &server.address, &signed(server.seen_at_ms)],
            )
            .map_err(sql("announcing this server"))?;
        // Servers gone for a day are forgotten (renamed or removed for good).
        connection
            .client
            .execute(
                "DELETE FROM lqsm_servers WHERE seen_at_ms < $1",
                &[&signed(
                    server.seen_at_ms.saturating_sub(FORGET_SERVERS_AFTER_MS),
                )],
            )
            .map_err(sql("forgetting servers long gone"))?;
        Ok(())
    }

    fn servers(&self) -> Result<Vec<ServerInfo>, StoreError> {
        let mut connection = self.lease_connection()?;
        let rows = connection
            .client
            .query(
                "SELECT node, address, seen_at_ms FROM lqsm_servers ORDER BY node",
                &[],
            )
            .map_err(sql("listing the servers"))?;
        rows.iter()
            .map(|row| {
                Ok(ServerInfo {
                    node: column(row, 0)?,
                    address: column(row, 1)?,
                    seen_at_ms: unsigned(column(row, 2)?, "server seen time")?,
                })
            })
            .collect()
    }
}

/// How long a server that stopped announcing itself stays listed.
const FORGET_SERVERS_AFTER_MS: u64 = 24 * 3600 * 1000;

impl PostgresStore {
    /// One bytea column of the row with key `key`.
    fn by_key(
        &self,
        query: &str,
        key: &JobKey,
        action: &'static str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let mut connection = self.connection()?;
        let statement = connection.statement(query).map_err(sql(action))?;
        let row = connection
            .client
            .query_opt(&statement, &[&Uuid::from_bytes(*key)])
            .map_err(sql(action))?;
        row.map(|row| column::<Vec<u8>>(&row, 0)).transpose()
    }

    /// The bytea column of the rows with these keys, in the order asked (None for a key
    /// without a row), in one query: `query` selects the key, then the bytes.
    fn bytes_by_keys(
        &self,
        query: &str,
        jobs: &[JobKey],
        action: &'static str,
    ) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<Uuid> = jobs.iter().map(|k| Uuid::from_bytes(*k)).collect();
        let mut connection = self.connection()?;
        let statement = connection.statement(query).map_err(sql(action))?;
        let rows = connection
            .client
            .query(&statement, &[&keys])
            .map_err(sql(action))?;
        let mut found = HashMap::with_capacity(rows.len());
        for row in &rows {
            found.insert(job_key(row, 0)?, column::<Vec<u8>>(row, 1)?);
        }
        Ok(jobs.iter().map(|k| found.get(k).cloned()).collect())
    }
}

/// The SQL of a listing and the name its filter compares with. Parameters, in order: the
/// name (unless listing all), the cursor (if any), the row limit.
fn listing_sql(query: &JobQuery) -> (String, Option<String>) {
    let (from, key, name, filter) = match &query.filter {
        JobFilter::All => ("lqsm_jobs j", "j.key", None, None),
        JobFilter::Queue(name) => ("lqsm_jobs j", "j.key", Some(name), Some("j.queue")),
        JobFilter::State(name) => ("lqsm_jobs j", "j.key", Some(name), Some("j.state")),
        JobFilter::Tag(name) => (
            "lqsm_job_tags t JOIN lqsm_jobs j ON j.key = t.key",
            "t.key",
            Some(name),
            Some("t.tag"),
        ),
    };
    let mut conditions = Vec::with_capacity(2);
    let mut next_param = 1;
    if let Some(column) = filter {
        conditions.push(format!("{column} = ${next_param}"));
        next_param += 1;
    }
    let (direction, beyond) = match query.order {
        Order::OldestFirst => ("ASC", ">"),
        Order::NewestFirst => ("DESC", "<"),
    };
    if query.after.is_some() {
        conditions.push(format!("{key} {beyond} ${next_param}"));
        next_param += 1;
    }
    let condition = if conditions.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", conditions.join(" AND "))
    };
    let text = format!(
        "SELECT j.key, j.record FROM {from} {condition} ORDER BY {key} {direction} LIMIT ${next_param}"
    );
    (text, name.cloned())
}

//! The schema, as numbered migrations applied at open.
//!
//! `lqsm_schema_version` has one row per applied migration: its number and
//! `compatible_from`, the oldest schema version a server may know and still use a database
//! at this version. A server applies the migrations it has beyond the database's version,
//! all in one transaction under an advisory lock (two servers starting at once do not both
//! migrate). It refuses a database newer than itself unless the newest migration says that
//! this server's version is still compatible (e.g. a migration that only adds an index).

use postgres::Client;

use crate::PostgresError;

/// One step of the schema.
pub(crate) struct Migration {
    /// Its number: 1, 2, ... with no gaps.
    pub(crate) version: i32,
    /// The oldest schema version a server may know and still work with this one.
    pub(crate) compatible_from: i32,
    /// What it does, stored next to its number for whoever reads the table.
    pub(crate) description: &'static str,
    /// The SQL, run in the migrating transaction.
    pub(crate) sql: &'static str,
}

/// Every migration this build knows, in order.
pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        compatible_from: 1,
        description: "jobs with queue, state and tag indexes and counts; payloads, logs, queues, meta; the lease",
        sql: r#"
CREATE TABLE lqsm_lease (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    epoch bigint NOT NULL,
    holder text,
    expires_at_ms bigint
);
INSERT INTO lqsm_lease (epoch) VALUES (0);

CREATE TABLE lqsm_jobs (
    key uuid PRIMARY KEY,
    queue text COLLATE "C" NOT NULL,
    state text COLLATE "C" NOT NULL,
    record bytea NOT NULL
);
CREATE INDEX lqsm_jobs_by_queue ON lqsm_jobs (queue, key);
CREATE INDEX lqsm_jobs_by_state ON lqsm_jobs (state, key);

CREATE TABLE lqsm_job_tags (
    tag text COLLATE "C" NOT NULL,
    key uuid NOT NULL,
    PRIMARY KEY (tag, key)
);
CREATE INDEX lqsm_job_tags_by_job ON lqsm_job_tags (key);

CREATE TABLE lqsm_job_counts (
    queue text COLLATE "C" NOT NULL,
    state text COLLATE "C" NOT NULL,
    jobs bigint NOT NULL,
    PRIMARY KEY (queue, state)
);

CREATE TABLE lqsm_payloads (key uuid PRIMARY KEY, payload bytea NOT NULL);
CREATE TABLE lqsm_logs (key uuid PRIMARY KEY, logs bytea NOT NULL);
CREATE TABLE lqsm_queues (path text COLLATE "C" PRIMARY KEY, record bytea NOT NULL);
CREATE TABLE lqsm_meta (name text COLLATE "C" PRIMARY KEY, value bytea NOT NULL);
"#,
    },
    Migration {
        version: 2,
        // Only adds a table: a server of version 1 works on as before.
        compatible_from: 1,
        description: "the servers sharing the database, with their addresses",
        sql: r#"
CREATE TABLE lqsm_servers (
    node text COLLATE "C" PRIMARY KEY,
    address text NOT NULL,
    seen_at_ms bigint NOT NULL
);
"#,
    },
    Migration {
        version: 3,
        // Only adds a table: a server of an older version works on (it keeps no result
        // apart, and leaves a deleted job's kept result behind, which costs only space).
        compatible_from: 1,
        description: "job results too large to keep in the server's memory",
        sql: r#"
CREATE TABLE lqsm_results (key uuid PRIMARY KEY, result bytea NOT NULL);
"#,
    },
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i32 = 3;

/// Brings the schema `schema` up to [`SCHEMA_VERSION`], or checks that a newer one is
/// marked compatible with it.
pub(crate) fn migrate(
    client: &mut Client,
    schema: &str,
    migrations: &[Migration],
) -> Result<(), PostgresError> {
    let ours = migrations.last().map_or(0, |m| m.version);
    let sql = |action: &'static str| {
        move |source: postgres::Error| PostgresError::Sql {
            action,
            detail: crate::with_causes(&source),
            source,
        }
    };
    let mut tx = client
        .transaction()
        .map_err(sql("starting the schema migration"))?;
    // The schema name was checked to be a plain identifier (config::check_schema_name).
    tx.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
        .map_err(sql("creating the schema"))?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext('lqsm schema ' || $1::text))",
        &[&schema],
    )
    .map_err(sql("waiting for other servers' migrations"))?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS lqsm_schema_version (
            version integer PRIMARY KEY,
            compatible_from integer NOT NULL,
            description text NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now()
        )",
    )
    .map_err(sql("creating the schema version table"))?;
    let newest = tx
        .query_opt(
            "SELECT version, compatible_from FROM lqsm_schema_version
             ORDER BY version DESC LIMIT 1",
            &[],
        )
        .map_err(sql("reading the schema version"))?;
    let (current, compatible_from) = match &newest {
        Some(row) => (row.get::<_, i32>(0), row.get::<_, i32>(1)),
        None => (0, 0),
    };
    if current > ours {
        if compatible_from <= ours {
            return tx.commit().map_err(sql("ending the schema check"));
        }
        return Err(PostgresError::SchemaTooNew {
            schema: schema.to_string(),
            found: current,
            compatible_from,
            known: ours,
        });
    }
    for migration in migrations.iter().filter(|m| m.version > current) {
        tx.batch_execute(migration.sql)
            .map_err(|source| PostgresError::Migration {
                version: migration.version,
                detail: crate::with_causes(&source),
                source,
            })?;
        tx.execute(
            "INSERT INTO lqsm_schema_version (version, compatible_from, description)
             VALUES ($1, $2, $3)",
            &[
                &migration.version,
                &migration.compatible_from,
                &migration.description,
            ],
        )
        .map_err(sql("recording a migration"))?;
    }
    tx.commit().map_err(sql("committing the schema migration"))
}

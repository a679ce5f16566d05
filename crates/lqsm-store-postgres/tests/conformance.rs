//! The store's contract against a real PostgreSQL: the whole conformance kit, fencing
//! between two servers sharing one database, and the schema version checks.
//!
//! Needs PostgreSQL at `LQSM_TEST_POSTGRES_URL` (default
//! `postgresql://postgres@127.0.0.1:5432/test`, trust auth). Each test works in a schema of
//! its own, dropped at its end. When PostgreSQL does not answer, the tests fail saying so.

#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use lqsm_store::testsuite::{Model, job_key, job_write};
use lqsm_store::{JobKey, ServerInfo, Store, StoreError, WriteBatch};
use lqsm_store_postgres::{PostgresError, PostgresOptions, PostgresStore, SslMode};

fn url() -> String {
    std::env::var("LQSM_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgresql://postgres@127.0.0.1:5432/test".to_string())
}

/// A schema of its own for one test, dropped when the test ends (also when it fails).
struct Schema {
    name: String,
}

impl Schema {
    fn new() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!(
            "lqsm_test_{}_{}_{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        Self { name }
    }

    fn options(&self) -> PostgresOptions {
        let mut options = PostgresOptions::new(url()).with_schema(&self.name);
        options.ssl_mode = Some(SslMode::Disable);
        options
    }

    fn open(&self) -> PostgresStore {
        PostgresStore::open(&self.options()).unwrap_or_else(|e| {
            panic!(
                "{e}\nThese tests need PostgreSQL at {} (trust auth, database `test`); start \
                 it, or point LQSM_TEST_POSTGRES_URL at one",
                url()
            )
        })
    }

    /// Runs SQL in this schema on a connection of its own.
    fn execute(&self, sql: &str) {
        let mut client = postgres::Client::connect(&url(), postgres::NoTls).unwrap();
        client
            .batch_execute(&format!("SET search_path = {}; {sql}", self.name))
            .unwrap();
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        if let Ok(mut client) = postgres::Client::connect(&url(), postgres::NoTls) {
            let _ = client.batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name));
        }
    }
}

/// A store in its own schema (connections close before the schema is dropped).
type TestStore = lqsm_store::testsuite::Guarded<PostgresStore, Schema>;

fn fresh() -> TestStore {
    let schema = Schema::new();
    TestStore {
        store: schema.open(),
        guard: schema,
    }
}

fn reopen(test: TestStore) -> TestStore {
    let TestStore {
        store,
        guard: schema,
    } = test;
    drop(store);
    TestStore {
        store: schema.open(),
        guard: schema,
    }
}

lqsm_store::store_testsuite!(new_store: fresh, reopen: reopen);

#[test]
fn commit_failing_half_way_through_its_transaction_applies_nothing() {
    // A meta name with a NUL byte is refused by PostgreSQL (text cannot hold one) when its
    // statement runs, after the jobs, payloads and queues of the batch were written inside
    // the transaction: the rollback must take all of them back.
    lqsm_store::testsuite::failed_commit_applies_nothing(fresh, |test, batch| {
        let mut failing = batch.clone();
        failing.meta.push(("bad\0name".to_string(), b"x".to_vec()));
        test.store.commit(&failing)
    });
}

#[test]
fn a_commit_at_the_old_epoch_is_refused_after_another_server_takes_the_lease() {
    const TTL: Duration = Duration::from_secs(10);
    let schema = Schema::new();
    let server_a = schema.open();
    let server_b = schema.open();
    let mut model = Model::new();

    let lease_a = server_a.acquire_lease("server-a", TTL, 1_000).unwrap();
    let mut batch = WriteBatch::new();
    batch.epoch = lease_a.epoch;
    batch.jobs.push(job_write(1, b"from a".to_vec()));
    batch.meta.push(("next_token".to_string(), b"1".to_vec()));
    server_a.commit(&batch).unwrap();
    model.apply(&batch);

    // a's lease lapses; b takes over through its own connections.
    let lease_b = server_b.acquire_lease("server-b", TTL, 20_000).unwrap();
    assert_eq!(lease_b.epoch, lease_a.epoch + 1);

    let mut stale = WriteBatch::new();
    stale.epoch = lease_a.epoch;
    stale.jobs.push(job_write(1, b"overwritten by a".to_vec()));
    stale.jobs.push(job_write(2, b"new from a".to_vec()));
    stale.payloads.push((job_key(2), b"payload".to_vec()));
    stale.queues.push(("root.a".to_string(), b"q".to_vec()));
    stale.meta.push(("next_token".to_string(), b"2".to_vec()));
    stale.deleted_jobs.push(lqsm_store::testsuite::deletion(1));
    match server_a.commit(&stale) {
        Err(StoreError::Fenced {
            writer,
            current,
            holder,
        }) => {
            assert_eq!((writer, current), (lease_a.epoch, lease_b.epoch));
            assert_eq!(holder, "server-b");
        }
        other => panic!("a's commit at its old epoch must be fenced, got {other:?}"),
    }
    assert!(matches!(
        server_a.renew_lease(&lease_a, TTL, 20_001),
        Err(StoreError::LeaseLost { .. })
    ));

    // Nothing of a's refused batch landed, as either server reads it.
    for server in [&server_a, &server_b] {
        assert_eq!(server.load().unwrap(), model.snapshot());
        assert_eq!(server.payloads(&[job_key(2)]).unwrap(), vec![None]);
        assert_eq!(server.counts().unwrap(), model.counts());
    }
    let mut from_b = WriteBatch::new();
    from_b.epoch = lease_b.epoch;
    from_b.jobs.push(job_write(3, b"from b".to_vec()));
    server_b.commit(&from_b).unwrap();
    model.apply(&from_b);
    assert_eq!(server_a.load().unwrap(), model.snapshot());
}

#[test]
fn commits_racing_a_lease_change_either_land_before_it_or_are_fenced() {
    // Server a commits as fast as it can while b takes the lease: every commit a was told
    // succeeded is stored, and none of those a was told were fenced.
    const TTL: Duration = Duration::from_secs(10);
    let schema = Schema::new();
    let server_a = schema.open();
    let server_b = schema.open();
    let lease_a = server_a.acquire_lease("server-a", TTL, 0).unwrap();
    let committed = AtomicU64::new(0);
    let outcomes = std::thread::scope(|scope| {
        let writer = scope.spawn(|| {
            let mut outcomes = Vec::new();
            // Until fenced: b takes the lease while a is still writing.
            for n in 0..1_000_000u64 {
                let mut batch = WriteBatch::new();
                batch.epoch = lease_a.epoch;
                batch.jobs.push(job_write(n, n.to_be_bytes().to_vec()));
                let fenced = match server_a.commit(&batch) {
                    Ok(()) => false,
                    Err(StoreError::Fenced { .. }) => true,
                    Err(e) => panic!("commit {n} failed: {e}"),
                };
                outcomes.push((n, fenced));
                if fenced {
                    break;
                }
                committed.fetch_add(1, Ordering::Relaxed);
            }
            outcomes
        });
        // b takes over once a is well under way.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while committed.load(Ordering::Relaxed) < 10 {
            assert!(
                std::time::Instant::now() < deadline,
                "a did not commit 10 batches in 30 s"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        server_b.acquire_lease("server-b", TTL, 60_000).unwrap();
        writer.join().unwrap()
    });
    let stored: Vec<JobKey> = server_b
        .load()
        .unwrap()
        .jobs
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    let landed: Vec<JobKey> = outcomes
        .iter()
        .filter(|(_, fenced)| !fenced)
        .map(|(n, _)| job_key(*n))
        .collect();
    assert_eq!(
        outcomes.last().map(|(_, fenced)| *fenced),
        Some(true),
        "a's last commit was fenced"
    );
    assert!(!landed.is_empty(), "a committed before b took over");
    assert_eq!(
        stored, landed,
        "exactly the acknowledged commits are stored"
    );
}

#[test]
fn reopening_applies_no_migration_twice() {
    let schema = Schema::new();
    drop(schema.open());
    drop(schema.open());
    let mut client = postgres::Client::connect(&url(), postgres::NoTls).unwrap();
    let rows = client
        .query(
            &format!(
                "SELECT version FROM {}.lqsm_schema_version ORDER BY version",
                schema.name
            ),
            &[],
        )
        .unwrap();
    let versions: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(
        versions,
        (1..=lqsm_store_postgres::SCHEMA_VERSION).collect::<Vec<_>>()
    );
}

/// Stores one named value in `schema` and closes the store; returns the batch that did.
fn store_one_meta_value(schema: &Schema) -> WriteBatch {
    let store = schema.open();
    let mut batch = WriteBatch::new();
    batch.meta.push(("next_token".to_string(), b"7".to_vec()));
    store.commit(&batch).unwrap();
    batch
}

#[test]
fn a_newer_schema_marked_compatible_is_used() {
    let schema = Schema::new();
    let batch = store_one_meta_value(&schema);
    let ours = lqsm_store_postgres::SCHEMA_VERSION;
    schema.execute(&format!(
        "CREATE INDEX lqsm_meta_by_value ON lqsm_meta (value);
         INSERT INTO lqsm_schema_version (version, compatible_from, description)
         VALUES ({}, {ours}, 'an index only: older servers may go on')",
        ours + 1
    ));

    let store = schema.open();
    assert_eq!(store.load().unwrap().meta.len(), 1);
    store.commit(&batch).unwrap();
}

#[test]
fn a_newer_schema_not_marked_compatible_is_refused() {
    let schema = Schema::new();
    drop(schema.open());
    let ours = lqsm_store_postgres::SCHEMA_VERSION;
    schema.execute(&format!(
        "INSERT INTO lqsm_schema_version (version, compatible_from, description)
         VALUES ({}, {}, 'a new layout older servers would corrupt')",
        ours + 1,
        ours + 1
    ));
    match PostgresStore::open(&schema.options()) {
        Err(PostgresError::SchemaTooNew {
            found,
            compatible_from,
            known,
            ..
        }) => {
            assert_eq!((found, compatible_from, known), (ours + 1, ours + 1, ours));
        }
        other => panic!("a schema newer than this server must be refused, got {other:?}"),
    }
    let message = PostgresStore::open(&schema.options())
        .err()
        .unwrap()
        .to_string();
    assert!(message.contains("Upgrade this server"), "{message}");
}

#[test]
fn an_unreachable_database_is_named_in_the_error() {
    // Port 1 on loopback: nothing listens there.
    let mut options = PostgresOptions::new("postgresql://lqsm@127.0.0.1:1/lqsm");
    options.ssl_mode = Some(SslMode::Disable);
    let message = PostgresStore::open(&options).err().unwrap().to_string();
    assert!(
        message.contains("cannot connect to PostgreSQL at 127.0.0.1:1/lqsm as `lqsm`"),
        "{message}"
    );
}

#[test]
fn sslmode_require_connects_encrypted() {
    // The test server has TLS on (`ssl = on`) with a certificate no authority here signed:
    // `require` without a root certificate encrypts without authenticating, as libpq does.
    let schema = Schema::new();
    let mut options = schema.options();
    options.ssl_mode = Some(SslMode::Require);
    let store = PostgresStore::open(&options).unwrap();
    let mut batch = WriteBatch::new();
    batch.meta.push(("over".to_string(), b"tls".to_vec()));
    store.commit(&batch).unwrap();
    let mut client = postgres::Client::connect(&url(), postgres::NoTls).unwrap();
    let encrypted: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
             WHERE a.application_name = 'lqsm' AND s.ssl",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(encrypted >= 1, "the store's connection is encrypted");
    assert_eq!(store.load().unwrap().meta.len(), 1);
}

#[test]
fn leases_judged_by_the_database_clock_hold_against_another_server() {
    const TTL: Duration = Duration::from_secs(60);
    let schema = Schema::new();
    let server_a = schema.open();
    let server_b = schema.open();
    // What servers read through the trait is the database's clock.
    let before = server_a
        .clock_ms()
        .unwrap()
        .expect("the database has a clock");
    let lease = server_a.acquire_lease("server-a", TTL, before).unwrap();
    let now = server_b.database_now_ms().unwrap();
    assert!(now >= before, "the database's clock does not go back");
    match server_b.acquire_lease("server-b", TTL, now) {
        Err(StoreError::LeaseHeld {
            holder,
            remaining_ms,
            ..
        }) => {
            assert_eq!(holder, "server-a");
            assert_eq!(remaining_ms, lease.expires_at_ms - now);
        }
        other => panic!("b must wait for a's lease by the database's clock, got {other:?}"),
    }
}

#[test]
fn a_database_of_the_previous_schema_is_upgraded_keeping_its_data() {
    let schema = Schema::new();
    store_one_meta_value(&schema);
    // Back to version 1: the servers table is the only thing version 2 added, the
    // results table the only thing version 3 added.
    schema.execute(
        "DROP TABLE lqsm_servers;
         DROP TABLE lqsm_results;
         DELETE FROM lqsm_schema_version WHERE version IN (2, 3)",
    );

    let store = schema.open();
    assert_eq!(store.load().unwrap().meta.len(), 1, "the data is kept");
    let server = ServerInfo {
        node: "a".into(),
        address: "http://127.0.0.1:1".into(),
        seen_at_ms: 1,
    };
    store.announce(&server).expect("version 2's table is there");
    assert_eq!(
        store
            .results(&[[7; 16]])
            .expect("version 3's table is there"),
        vec![None]
    );
}

#[test]
fn servers_announce_themselves_and_are_listed_with_their_last_address() {
    let schema = Schema::new();
    let store = schema.open();
    let now = store.database_now_ms().unwrap();
    let announce = |node: &str, address: &str, seen_at_ms: u64| {
        store
            .announce(&ServerInfo {
                node: node.into(),
                address: address.into(),
                seen_at_ms,
            })
            .unwrap();
    };
    announce("b", "http://127.0.0.1:2", now);
    announce("a", "http://127.0.0.1:1", now);
    announce("b", "http://127.0.0.1:3", now + 1);
    let listed: Vec<(String, String, u64)> = store
        .servers()
        .unwrap()
        .into_iter()
        .map(|s| (s.node, s.address, s.seen_at_ms))
        .collect();
    assert_eq!(
        listed,
        vec![
            ("a".into(), "http://127.0.0.1:1".into(), now),
            ("b".into(), "http://127.0.0.1:3".into(), now + 1),
        ]
    );
    // A server silent for more than a day is forgotten at the next announcement.
    announce("c", "http://127.0.0.1:4", now + 25 * 3600 * 1000);
    let nodes: Vec<String> = store
        .servers()
        .unwrap()
        .into_iter()
        .map(|s| s.node)
        .collect();
    assert_eq!(nodes, vec!["c".to_string()]);
}

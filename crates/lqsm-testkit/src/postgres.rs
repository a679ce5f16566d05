//! The local PostgreSQL the tests of the PostgreSQL store use, and a schema of a test's own.

use std::sync::atomic::{AtomicU64, Ordering};

/// The database: `LQSM_TEST_POSTGRES_URL`, or the local PostgreSQL's `test` database
/// (127.0.0.1:5432, trust auth).
pub fn url() -> String {
    std::env::var("LQSM_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgresql://postgres@127.0.0.1:5432/test".to_owned())
}

/// A connection to [`url`]; panics saying that PostgreSQL must run when it does not.
pub fn connect() -> postgres::Client {
    postgres::Client::connect(&url(), postgres::NoTls)
        .unwrap_or_else(|e| panic!("this test needs PostgreSQL at {} ({e}); start it", url()))
}

/// A schema of the test's own (named after `prefix`, the process and a counter), dropped
/// when it ends, also when the test fails.
pub struct TestSchema {
    /// Its name, a plain identifier.
    pub name: String,
}

impl TestSchema {
    /// A fresh name; the schema itself is created by whoever opens a store on it.
    pub fn new(prefix: &str) -> TestSchema {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        TestSchema {
            name: format!(
                "{prefix}_{}_{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ),
        }
    }

    /// `SELECT count(*) FROM <schema>.<from_where>`, e.g. `lqsm_jobs WHERE ...`.
    pub fn count(&self, from_where: &str) -> i64 {
        let row = connect()
            .query_one(
                &format!("SELECT count(*) FROM {}.{from_where}", self.name),
                &[],
            )
            .unwrap_or_else(|e| panic!("counting {from_where}: {e}"));
        row.get(0)
    }
}

impl Drop for TestSchema {
    fn drop(&mut self) {
        if let Ok(mut client) = postgres::Client::connect(&url(), postgres::NoTls) {
            let _ = client.batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name));
        }
    }
}

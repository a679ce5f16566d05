//! The server on the PostgreSQL store (`[store] backend = "postgres"`): jobs, their
//! results and the reads survive a restart, and live in the database. Needs PostgreSQL at
//! 127.0.0.1:5432 (trust auth, database `test`), or `LQSM_TEST_POSTGRES_URL`; without it the
//! test fails saying so.
#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

use lqsm_api as api;
use lqsm_server::config::StoreBackend;
use lqsm_testkit::{BlockingTestServer, SimWorker, function_job};
use std::sync::atomic::{AtomicU64, Ordering};

fn url() -> String {
    std::env::var("LQSM_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgresql://postgres@127.0.0.1:5432/test".to_owned())
}

/// A schema of the test's own, dropped when it ends (also when it fails).
struct Schema(String);

impl Schema {
    fn new() -> Schema {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        Schema(format!(
            "lqsm_server_test_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ))
    }

    fn rows(&self, table: &str) -> i64 {
        let mut client = postgres::Client::connect(&url(), postgres::NoTls)
            .unwrap_or_else(|e| panic!("this test needs PostgreSQL at {} ({e}); start it", url()));
        let row = client
            .query_one(&format!("SELECT count(*) FROM {}.{table}", self.0), &[])
            .unwrap();
        row.get(0)
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        if let Ok(mut client) = postgres::Client::connect(&url(), postgres::NoTls) {
            let _ = client.batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.0));
        }
    }
}

#[test]
fn a_server_on_postgres_keeps_jobs_results_and_reads_across_a_restart() {
    let schema = Schema::new();
    let name = schema.0.clone();
    let mut server = BlockingTestServer::start_with(move |config| {
        config.store.backend = StoreBackend::Postgres;
        config.store.url = Some(url());
        config.store.schema = Some(name);
        config.store.sslmode = Some("disable".to_owned());
    });
    let api = server.api();
    let done = api.submit(&function_job("root.default", "pg.echo"));
    let mut worker = SimWorker::register(&api, "pg.echo");
    let assignment = worker.next_assignment();
    assert_eq!(assignment.job, done);
    worker.succeed(&assignment, serde_json::json!({"stored": "in postgres"}));
    api.wait_for_state(done, api::JobState::Succeeded);
    let waiting = api.submit(&function_job("root.default", "pg.nobody"));
    assert_eq!(
        schema.rows("lqsm_jobs"),
        2,
        "both jobs are rows of the schema"
    );

    server.restart();
    let api = server.api();
    let finished = api.job(done);
    assert_eq!(finished.state, api::JobState::Succeeded);
    assert!(
        serde_json::to_string(&finished.result)
            .unwrap()
            .contains("in postgres"),
        "{:?}",
        finished.result
    );
    assert_eq!(api.job(waiting).state, api::JobState::Pending);
    let pending: api::JobList = api.get("/v1/jobs?state=pending").expect(200);
    let ids: Vec<_> = pending.jobs.iter().map(|j| j.id).collect();
    assert_eq!(ids, vec![waiting], "listed from the database's index");
    let cluster: api::ClusterSummary = api.get("/v1/cluster").expect(200);
    let store = cluster.store.as_ref().expect("the store and its writer");
    assert_eq!(store.backend, "postgres");
    assert_eq!(store.epoch, 2, "a new epoch at the restart");
    assert_eq!(
        cluster.jobs.get(&api::JobState::Pending),
        Some(&1),
        "{:?}",
        cluster.jobs
    );
}

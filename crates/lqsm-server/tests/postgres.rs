//! The server on the PostgreSQL store (`[store] backend = "postgres"`): jobs, their
//! results and the reads survive a restart, and live in the database. Needs PostgreSQL at
//! 127.0.0.1:5432 (trust auth, database `test`), or `LQSM_TEST_POSTGRES_URL`; without it the
//! test fails saying so.
#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

use lqsm_api as api;
use lqsm_server::config::StoreBackend;
use lqsm_testkit::{BlockingTestServer, SimWorker, function_job};

use lqsm_testkit::postgres::{TestSchema, url};

#[test]
fn a_server_on_postgres_keeps_jobs_results_and_reads_across_a_restart() {
    let schema = TestSchema::new("lqsm_server_test");
    let name = schema.name.clone();
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
        schema.count("lqsm_jobs"),
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

//! Periodic schedules through the HTTP API: created, fired once per fire time, kept
//! across a restart, paused, resumed, deleted; bad requests name their field.
#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

use lqsm_api as api;
use lqsm_testkit::wait::eventually;
use lqsm_testkit::{Api, BlockingTestServer, function_job};
use serde_json::json;
use std::collections::BTreeMap;

fn every_second(name: &str) -> serde_json::Value {
    json!({
        "name": name,
        "every_ms": 1000,
        "job": {"queue": "root.default", "kind": {"type": "function", "handler": "tick", "args": {}}},
    })
}

/// The schedule's jobs, counted by id (each fire names its own).
fn fired_jobs(api: &Api, name: &str) -> BTreeMap<uuid::Uuid, usize> {
    let page: api::JobList = api
        .get(&format!("/v1/jobs?tag=schedule:{name}&limit=1000"))
        .expect(200);
    let mut ids = BTreeMap::new();
    for job in page.jobs {
        *ids.entry(job.id).or_insert(0) += 1;
    }
    ids
}

#[test]
fn a_schedule_fires_once_per_time_across_a_restart_and_until_deleted() {
    let mut server = BlockingTestServer::start();
    let api = server.api();
    let created: api::ScheduleView = api.post("/v1/schedules", &every_second("tick")).expect(201);
    assert_eq!(created.every_ms, Some(1000));
    assert_eq!(created.misfire, "run_once");
    assert!(created.next_fire_ms.is_some());
    eventually("two fires", || {
        (fired_jobs(&api, "tick").len() >= 2).then_some(())
    });
    let view: api::ScheduleView = api.get("/v1/schedules/tick").expect(200);
    assert!(view.fired >= 2, "{view:?}");
    assert!(view.last_job.is_some() && view.last_fire_ms.is_some());

    // Across a restart the schedule goes on, and no fire time makes a second job.
    server.restart();
    let api = server.api();
    let before = fired_jobs(&api, "tick").len();
    eventually("a fire after the restart", || {
        (fired_jobs(&api, "tick").len() > before).then_some(())
    });
    assert!(fired_jobs(&api, "tick").values().all(|n| *n == 1));
    let listed: Vec<api::ScheduleView> = api.get("/v1/schedules").expect(200);
    assert_eq!(listed.len(), 1);

    // Paused: nothing fires; resumed: it goes on.
    let paused: api::ScheduleView = api.post("/v1/schedules/tick/pause", &json!({})).expect(200);
    assert!(paused.paused && paused.next_fire_ms.is_none());
    let at_pause = fired_jobs(&api, "tick").len();
    let resumed: api::ScheduleView = api
        .post("/v1/schedules/tick/resume", &json!({}))
        .expect(200);
    assert!(!resumed.paused);
    assert!(fired_jobs(&api, "tick").len() <= at_pause + 1);
    eventually("a fire after resuming", || {
        (fired_jobs(&api, "tick").len() > at_pause).then_some(())
    });

    api.delete("/v1/schedules/tick").expect_status(204);
    api.get("/v1/schedules/tick").expect_error(404);
    server.restart();
    let api = server.api();
    let listed: Vec<api::ScheduleView> = api.get("/v1/schedules").expect(200);
    assert!(
        listed.is_empty(),
        "a deleted schedule stays deleted: {listed:?}"
    );
    // The jobs it made stay.
    assert!(!fired_jobs(&api, "tick").is_empty());
}

#[test]
fn bad_schedules_are_refused_naming_the_field() {
    let server = BlockingTestServer::start();
    let api = server.api();
    let field = |body: serde_json::Value| api.post("/v1/schedules", &body).expect_error(400).field;
    let mut cron = every_second("c");
    cron["every_ms"] = json!(null);
    cron["cron"] = json!("61 * * * *");
    assert_eq!(field(cron.clone()).as_deref(), Some("cron"));
    cron["cron"] = json!("0 3 * * *");
    cron["timezone"] = json!("Mars/Olympus");
    assert_eq!(field(cron.clone()).as_deref(), Some("timezone"));
    let mut both = every_second("b");
    both["cron"] = json!("* * * * *");
    assert_eq!(field(both).as_deref(), Some("cron"));
    let mut fast = every_second("f");
    fast["every_ms"] = json!(10);
    assert_eq!(field(fast).as_deref(), Some("every_ms"));
    let mut nowhere = every_second("n");
    nowhere["job"]["queue"] = json!("root.nowhere");
    assert_eq!(field(nowhere).as_deref(), Some("job.queue"));
    let mut named = every_second("bad name");
    named["name"] = json!("bad name");
    assert_eq!(field(named).as_deref(), Some("name"));
    let mut delayed = every_second("d");
    delayed["job"]["delay_ms"] = json!(100);
    assert_eq!(field(delayed).as_deref(), Some("job.delay_ms"));
    let mut misfire = every_second("m");
    misfire["misfire"] = json!("sometimes");
    assert_eq!(field(misfire).as_deref(), Some("misfire"));
    api.post("/v1/schedules", &every_second("twice"))
        .expect_status(201);
    let again = api
        .post("/v1/schedules", &every_second("twice"))
        .expect_error(409);
    assert_eq!(again.field.as_deref(), Some("name"));
    api.get("/v1/schedules/none").expect_error(404);
    // Nothing refused was kept.
    let listed: Vec<api::ScheduleView> = api.get("/v1/schedules").expect(200);
    assert_eq!(listed.len(), 1);
    // Still serving.
    api.submit(&function_job("root.default", "after"));
}

#[test]
fn an_update_changes_the_trigger_and_keeps_the_history() {
    let server = BlockingTestServer::start();
    let api = server.api();
    api.post("/v1/schedules", &every_second("tick"))
        .expect_status(201);
    eventually("a fire", || {
        (!fired_jobs(&api, "tick").is_empty()).then_some(())
    });
    let updated: api::ScheduleView = api
        .patch(
            "/v1/schedules/tick",
            &json!({"cron": "0 3 * * *", "timezone": "Europe/Paris", "overlap": "skip"}),
        )
        .expect(200);
    assert_eq!(updated.cron.as_deref(), Some("0 3 * * *"));
    assert_eq!(updated.every_ms, None);
    assert_eq!(updated.overlap, "skip");
    assert_eq!(
        updated.misfire, "run_once",
        "what the patch leaves out is kept"
    );
    assert!(updated.fired >= 1, "what it did is kept: {updated:?}");
    let next = updated.next_fire_ms.unwrap();
    assert!(
        next > lqsm_api::epoch_ms() + 60_000,
        "next at 03:00 Paris time, not in a second"
    );
    let fired = fired_jobs(&api, "tick").len();
    // A time zone alone changes the cron's zone; on an interval it is refused.
    let paris_utc: api::ScheduleView = api
        .patch("/v1/schedules/tick", &json!({"timezone": "UTC"}))
        .expect(200);
    assert_eq!(paris_utc.timezone.as_deref(), Some("UTC"));
    api.patch("/v1/schedules/tick", &json!({"every_ms": 60_000}))
        .expect_status(200);
    let err = api
        .patch("/v1/schedules/tick", &json!({"timezone": "UTC"}))
        .expect_error(400);
    assert_eq!(err.field.as_deref(), Some("timezone"));
    let err = api
        .patch("/v1/schedules/tick", &json!({"every": 5}))
        .expect_error(400);
    assert_eq!(err.field.as_deref(), Some("every"));
    api.patch("/v1/schedules/none", &json!({}))
        .expect_error(404);
    assert!(fired_jobs(&api, "tick").len() <= fired + 1);
}

#[test]
fn a_schedule_declared_in_the_config_is_created_once_and_kept_as_changed() {
    let declared: api::CreateSchedule = serde_json::from_value(every_second("declared")).unwrap();
    let mut server = BlockingTestServer::start_with(move |c| c.schedules = vec![declared]);
    let api = server.api();
    let listed: Vec<api::ScheduleView> = api.get("/v1/schedules").expect(200);
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].name, "declared");
    eventually("a fire", || {
        (!fired_jobs(&api, "declared").is_empty()).then_some(())
    });
    // Changed through the API: a restart with the same declaration keeps the change.
    api.patch("/v1/schedules/declared", &json!({"every_ms": 60_000}))
        .expect_status(200);
    server.restart();
    let api = server.api();
    let view: api::ScheduleView = api.get("/v1/schedules/declared").expect(200);
    assert_eq!(view.every_ms, Some(60_000));
    let job: api::JobView = api
        .get(&format!("/v1/jobs/{}", view.last_job.unwrap()))
        .expect(200);
    assert_eq!(job.submitted_by, "config");
}

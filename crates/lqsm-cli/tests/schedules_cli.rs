//! `lqsm schedule ...` against a real `lqsm server` and `lqsm worker`: a schedule fires
//! jobs tagged `schedule:NAME`, is paused, resumed and deleted, and bad input is refused
//! naming the flag at fault.
#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

mod e2e_support;

use e2e_support::{Cluster, finished};
use lqsm_api as api;

/// The schedule named `name` in `lqsm schedule list -o json`.
fn listed(c: &Cluster, name: &str) -> Option<api::ScheduleView> {
    c.cli
        .json::<Vec<api::ScheduleView>>(&["schedule", "list"])
        .into_iter()
        .find(|s| s.name == name)
}

/// The jobs of a schedule, by its tag.
fn jobs_of(c: &Cluster, name: &str) -> Vec<api::JobView> {
    let tag = format!("schedule:{name}");
    c.cli
        .json::<api::JobList>(&["job", "list", "--all", "--tag", &tag])
        .jobs
}

#[test]
fn a_schedule_fires_tagged_jobs_and_is_paused_resumed_and_deleted() {
    let c = Cluster::start(&[], &[("w1", 1)]);

    let created: api::ScheduleView = c.cli.json(&[
        "schedule",
        "create",
        "tick",
        "--every",
        "1s",
        "--overlap",
        "allow",
        "--",
        "true",
    ]);
    assert_eq!(created.name, "tick");
    assert_eq!(created.every_ms, Some(1000));
    assert_eq!(created.queue, "root.default");
    assert!(
        !created.paused && created.next_fire_ms.is_some(),
        "{created:?}"
    );

    let fired = c.eventually("schedule tick to fire", || {
        listed(&c, "tick").filter(|s| s.fired >= 1)
    });
    assert!(!fired.paused);
    // Its jobs carry its tag and run.
    c.eventually("a job of schedule tick to succeed", || {
        jobs_of(&c, "tick")
            .into_iter()
            .find(|j| finished(j) && j.state == api::JobState::Succeeded)
    });
    let human = c.cli.run(&["schedule", "list"]).success().stdout.clone();
    assert!(
        human.contains("tick") && human.contains("every 1s") && human.contains("active"),
        "{human}"
    );

    let paused: api::ScheduleView = c.cli.json(&["schedule", "pause", "tick"]);
    assert!(paused.paused && paused.next_fire_ms.is_none(), "{paused:?}");
    let at_pause = paused.fired;
    let human = c.cli.run(&["schedule", "list"]).success().stdout.clone();
    assert!(human.contains("paused"), "{human}");

    let resumed: api::ScheduleView = c.cli.json(&["schedule", "resume", "tick"]);
    assert!(
        !resumed.paused && resumed.next_fire_ms.is_some(),
        "{resumed:?}"
    );
    c.eventually("schedule tick to fire again after resuming", || {
        listed(&c, "tick").filter(|s| s.fired > at_pause)
    });

    let updated: api::ScheduleView = c.cli.json(&[
        "schedule",
        "update",
        "tick",
        "--every",
        "2s",
        "--overlap",
        "skip",
    ]);
    assert_eq!(updated.every_ms, Some(2000), "{updated:?}");
    assert_eq!(updated.overlap, "skip");
    assert!(updated.fired > at_pause, "what it did is kept: {updated:?}");
    let got: api::ScheduleView = c.cli.json(&["schedule", "get", "tick"]);
    assert!(got.last_job.is_some(), "{got:?}");
    let deleted: serde_json::Value = c.cli.json(&["schedule", "delete", "tick"]);
    assert_eq!(deleted["deleted"], "tick");
    assert!(listed(&c, "tick").is_none());
    let gone = c.cli.run(&["schedule", "get", "tick"]);
    assert!(!gone.status.success());
    assert!(
        gone.stderr.contains("no schedule named `tick`"),
        "{gone:#?}"
    );
    // The jobs it made stay.
    assert!(!jobs_of(&c, "tick").is_empty());
}

#[test]
fn bad_schedules_are_refused_naming_the_flag() {
    let c = Cluster::start(&[], &[]);
    let refused = |args: &[&str], names: &[&str]| {
        let mut all = vec!["schedule", "create", "bad"];
        all.extend_from_slice(args);
        let ran = c.cli.run(&all);
        assert!(!ran.status.success(), "{ran:#?}");
        for name in names {
            assert!(ran.stderr.contains(name), "expected `{name}` in: {ran:#?}");
        }
        assert!(!ran.stderr.contains("panicked"), "{ran:#?}");
    };
    // Refused by the server: the message names the flag and the expression.
    refused(
        &["--cron", "61 * * * *", "--", "true"],
        &["--cron", "61 * * * *"],
    );
    refused(
        &["--cron", "0 3 * * *", "--tz", "Mars/Base", "--", "true"],
        &["--tz", "Mars/Base"],
    );
    refused(
        &["--every", "5m", "--queue", "root.nope", "--", "true"],
        &["--queue", "root.nope"],
    );
    // Refused by the command line.
    refused(&["--every", "500ms", "--", "true"], &["--every", "1s"]);
    refused(&["--every", "soon", "--", "true"], &["--every", "soon"]);
    refused(&["--", "true"], &["--cron"]);
    refused(
        &["--cron", "* * * * *", "--every", "1m", "--", "true"],
        &["--every", "--cron"],
    );
    refused(
        &["--every", "1m", "--misfire", "later", "--", "true"],
        &["--misfire"],
    );
    refused(
        &["--every", "1m", "--catch-up-max", "3", "--", "true"],
        &["--catch-up-max", "--misfire catch-up"],
    );
    refused(&["--every", "1m"], &["nothing to run"]);
    assert!(
        c.cli
            .json::<Vec<api::ScheduleView>>(&["schedule", "list"])
            .is_empty()
    );
}

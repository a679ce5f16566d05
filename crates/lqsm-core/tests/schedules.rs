//! Periodic schedules, driven through the core with a manual clock: exactly one job per
//! fire time, across a restart and a clock that goes back; misfire and overlap policies;
//! pause and resume.
#![allow(clippy::unwrap_used)]

mod support;

use lqsm_core::schedules::{Misfire, Overlap, ScheduleError, ScheduleSpec, Trigger, fire_job_id};
use lqsm_core::*;
use std::collections::BTreeMap;
use std::time::Duration;
use support::*;

fn every_second(name: &str, sim: &mut Sim) -> ScheduleSpec {
    let template = sim.request("root.etl", one_core());
    ScheduleSpec {
        name: name.into(),
        trigger: Trigger::Every { interval_ms: 1000 },
        job: template,
        misfire: Misfire::RunOnce,
        overlap: Overlap::Allow,
    }
}

fn sim() -> Sim {
    let mut sim = Sim::new(Config::default());
    sim.queue("root.etl", 100.0, 100.0);
    sim
}

/// Jobs the schedule made, by fire time (the time in their ids).
fn jobs_by_fire(sim: &Sim, name: &str) -> BTreeMap<u64, usize> {
    let tag = format!("schedule:{name}");
    let mut by_fire = BTreeMap::new();
    for job in sim.rm.jobs() {
        if job.spec.tags().contains(&tag) {
            let (secs, nanos) = job.id.0.get_timestamp().unwrap().to_unix();
            *by_fire
                .entry(secs * 1000 + u64::from(nanos) / 1_000_000)
                .or_insert(0) += 1;
        }
    }
    by_fire
}

#[test]
fn each_fire_time_makes_exactly_one_job() {
    let mut sim = sim();
    let created = sim.now;
    let spec = every_second("tick", &mut sim);
    sim.rm.create_schedule(spec, sim.now).unwrap();
    // Ticks at uneven moments, some late, some twice at the same instant.
    for step_ms in [300, 700, 0, 1000, 250, 1750, 0, 1000] {
        sim.advance(Duration::from_millis(step_ms));
        sim.pass();
    }
    let fires = jobs_by_fire(&sim, "tick");
    let expected: Vec<u64> = (1..=5).map(|k| created.0 + k * 1000).collect();
    assert_eq!(fires.keys().copied().collect::<Vec<_>>(), expected);
    assert!(fires.values().all(|n| *n == 1), "{fires:?}");
    let record = sim.rm.schedule_named("tick").unwrap();
    assert_eq!(record.fired, 5);
    assert_eq!(record.last_fire, Some(Timestamp(created.0 + 5000)));
    assert_eq!(record.next_fire, Some(Timestamp(created.0 + 6000)));
    assert_eq!(
        record.last_job,
        Some(fire_job_id("tick", Timestamp(created.0 + 5000)))
    );
}

#[test]
fn a_restored_schedule_fires_missed_times_by_its_policy_and_never_twice() {
    for (misfire, made_up) in [
        (Misfire::Skip, 0),
        (Misfire::RunOnce, 1),
        (Misfire::CatchUp { max: 3 }, 3),
    ] {
        let mut sim = sim();
        let created = sim.now.0;
        let mut spec = every_second("nightly", &mut sim);
        spec.trigger = Trigger::Every { interval_ms: 5000 };
        spec.misfire = misfire;
        sim.rm.create_schedule(spec, sim.now).unwrap();
        sim.advance(Duration::from_millis(5000));
        sim.pass();
        assert_eq!(jobs_by_fire(&sim, "nightly").len(), 1);

        // Stored, then no server for 23.5 s: the fires at +10, +15, +20 and +25 s are
        // missed (the last of them 3.5 s late by the time a server restores).
        let input = sim.stored(None);
        sim.advance(Duration::from_millis(23_500));
        let (rm, _) = ResourceManager::restore(
            Config::default(),
            Policies::default(),
            7,
            input,
            sim.now,
            Duration::from_secs(30),
        )
        .unwrap();
        sim.rm = rm;
        sim.pass();
        sim.pass();
        let fires = jobs_by_fire(&sim, "nightly");
        let expected: Vec<u64> = [5000, 10_000, 15_000, 20_000, 25_000][..]
            .iter()
            .enumerate()
            .filter(|(i, _)| *i == 0 || *i >= 5 - made_up)
            .map(|(_, ms)| created + ms)
            .collect();
        assert_eq!(
            fires.keys().copied().collect::<Vec<_>>(),
            expected,
            "{misfire:?}"
        );
        assert!(fires.values().all(|n| *n == 1));
        // It carries on at the next time after now, never back in the past.
        sim.advance(Duration::from_millis(1500));
        sim.pass();
        let fires = jobs_by_fire(&sim, "nightly");
        assert_eq!(fires.len(), expected.len() + 1);
        assert!(fires.contains_key(&(created + 30_000)));
    }
}

#[test]
fn a_clock_that_goes_back_never_fires_a_time_twice() {
    let mut sim = sim();
    let spec = every_second("tick", &mut sim);
    sim.rm.create_schedule(spec, sim.now).unwrap();
    sim.advance(Duration::from_millis(3000));
    sim.pass();
    let before = jobs_by_fire(&sim, "tick");
    // The wall clock jumps back two seconds, then forward again.
    sim.now = Timestamp(sim.now.0 - 2000);
    sim.pass();
    sim.advance(Duration::from_millis(2000));
    sim.pass();
    let after = jobs_by_fire(&sim, "tick");
    assert!(after.values().all(|n| *n == 1), "{after:?}");
    assert_eq!(
        before, after,
        "nothing new until the clock passes the last fire"
    );
}

#[test]
fn overlap_skip_leaves_out_fires_while_the_previous_run_runs() {
    let mut sim = sim();
    let worker = sim.worker("w", 8, 8192);
    let mut spec = every_second("slow", &mut sim);
    spec.overlap = Overlap::Skip;
    sim.rm.create_schedule(spec, sim.now).unwrap();
    sim.advance(Duration::from_millis(1000));
    sim.pass();
    let first = sim.poll_running(worker);
    assert_eq!(first.len(), 1);
    // Two fire times pass while it runs: skipped, with the reason shown.
    for _ in 0..2 {
        sim.advance(Duration::from_millis(1000));
        sim.pass();
    }
    assert_eq!(jobs_by_fire(&sim, "slow").len(), 1);
    let record = sim.rm.schedule_named("slow").unwrap();
    assert!(
        record
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("still running")),
        "{record:?}"
    );
    sim.succeed(worker, first[0].job);
    sim.advance(Duration::from_millis(1000));
    sim.pass();
    assert_eq!(jobs_by_fire(&sim, "slow").len(), 2);
    assert_eq!(sim.rm.schedule_named("slow").unwrap().last_error, None);
}

#[test]
fn a_paused_schedule_fires_nothing_and_resumes_at_its_next_time() {
    let mut sim = sim();
    let spec = every_second("tick", &mut sim);
    sim.rm.create_schedule(spec, sim.now).unwrap();
    sim.rm.pause_schedule("tick", true, sim.now).unwrap();
    sim.advance(Duration::from_millis(5000));
    sim.pass();
    assert!(jobs_by_fire(&sim, "tick").is_empty());
    sim.rm.pause_schedule("tick", false, sim.now).unwrap();
    sim.pass();
    assert!(
        jobs_by_fire(&sim, "tick").is_empty(),
        "what came due while paused is not made up"
    );
    sim.advance(Duration::from_millis(1000));
    sim.pass();
    assert_eq!(jobs_by_fire(&sim, "tick").len(), 1);
    sim.rm.delete_schedule("tick").unwrap();
    sim.advance(Duration::from_millis(5000));
    sim.pass();
    assert_eq!(
        jobs_by_fire(&sim, "tick").len(),
        1,
        "a deleted schedule fires no more"
    );
    assert!(matches!(
        sim.rm.delete_schedule("tick"),
        Err(ScheduleError::NotFound(_))
    ));
}

#[test]
fn bad_schedules_are_refused_naming_the_field() {
    let mut sim = sim();
    let field = |r: Result<&lqsm_core::schedules::ScheduleRecord, ScheduleError>| match r {
        Err(ScheduleError::InvalidField { field, .. }) => field,
        other => panic!("{other:?}"),
    };
    let mut spec = every_second("bad name!", &mut sim);
    assert_eq!(field(sim.rm.create_schedule(spec.clone(), sim.now)), "name");
    spec.name = "ok".into();
    spec.job.queue = "root.nowhere".into();
    assert_eq!(
        field(sim.rm.create_schedule(spec.clone(), sim.now)),
        "job.queue"
    );
    spec.job.queue = "root".into();
    assert_eq!(
        field(sim.rm.create_schedule(spec.clone(), sim.now)),
        "job.queue"
    );
    spec.job.queue = "root.etl".into();
    spec.job.not_before = Some(sim.now);
    assert_eq!(
        field(sim.rm.create_schedule(spec.clone(), sim.now)),
        "job.not_before_ms"
    );
    spec.job.not_before = None;
    sim.rm.create_schedule(spec.clone(), sim.now).unwrap();
    assert!(matches!(
        sim.rm.create_schedule(spec, sim.now),
        Err(ScheduleError::Exists(_))
    ));
    assert!(sim.log.records.is_empty() || sim.rm.schedules().count() == 1);
}

#[test]
fn an_updated_schedule_keeps_its_history_and_fires_on_its_new_trigger() {
    let mut sim = sim();
    let created = sim.now.0;
    let spec = every_second("tick", &mut sim);
    sim.rm.create_schedule(spec.clone(), sim.now).unwrap();
    sim.advance(Duration::from_millis(2000));
    sim.pass();
    assert_eq!(jobs_by_fire(&sim, "tick").len(), 2);
    let mut slower = spec;
    slower.trigger = Trigger::Every { interval_ms: 5000 };
    let updated = sim.rm.update_schedule(slower, sim.now).unwrap();
    assert_eq!(updated.fired, 2, "what it did is kept");
    // Still counted from the creation: the next multiple of 5 s after now.
    assert_eq!(updated.next_fire, Some(Timestamp(created + 5000)));
    for _ in 0..10 {
        sim.advance(Duration::from_millis(1000));
        sim.pass();
    }
    let fires: Vec<u64> = jobs_by_fire(&sim, "tick")
        .keys()
        .map(|t| t - created)
        .collect();
    assert_eq!(fires, vec![1000, 2000, 5000, 10_000]);
    let mut missing = every_second("none", &mut sim);
    missing.name = "none".into();
    assert!(matches!(
        sim.rm.update_schedule(missing, sim.now),
        Err(ScheduleError::NotFound(_))
    ));
}

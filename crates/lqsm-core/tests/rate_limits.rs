//! Rate limits held by the scheduler: a queue's own, per job key and per handler; what
//! a held job says; retries spend tokens; limits hold across a restart; per-key buckets
//! stay bounded; the checks of bad settings.
#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

mod support;

use lqsm_core::*;
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::time::Duration;
use support::{Sim, one_core};

fn limit(rate: &str, burst: u32) -> RateLimit {
    RateLimit::new(Rate::parse(rate).unwrap(), burst)
}

/// Workers are never lost in these tests, however long the clock runs.
fn config() -> Config {
    Config {
        heartbeat_timeout: Duration::from_secs(24 * 3600),
        ..Config::default()
    }
}

fn sim_with(queue: &str, settings: QueueConfig) -> Sim {
    let mut sim = Sim::new(config());
    sim.rm.create_queue(queue, settings).unwrap();
    sim.worker("big", 100_000, 100_000_000);
    sim
}

fn limited(rate: &str, burst: u32) -> QueueConfig {
    QueueConfig {
        rate_limit: Some(limit(rate, burst)),
        ..QueueConfig::with_capacity(100.0, 100.0)
    }
}

fn scheduled(sim: &Sim, jobs: &[JobId]) -> usize {
    jobs.iter()
        .filter(|j| sim.state(**j) == JobState::Scheduled)
        .count()
}

fn keyed(sim: &mut Sim, queue: &str, key: &str, value: &str) -> JobId {
    let mut req = sim.request(queue, one_core());
    req.keys = BTreeMap::from([(key.to_owned(), value.to_owned())]);
    sim.submit(req).unwrap().id()
}

#[test]
fn a_queue_limit_lets_a_burst_through_then_one_job_per_interval() {
    let mut sim = sim_with("root.q", limited("10/s", 2));
    let jobs = sim.submit_n("root.q", 5, one_core());
    let start = sim.now;
    sim.pass();
    assert_eq!(scheduled(&sim, &jobs), 2, "the burst");
    // The next job is held, says until when, and a timer is armed for that instant.
    let until = start.after(Duration::from_millis(100));
    assert_eq!(sim.rm.rate_limited_until(jobs[2]), Some(until));
    assert_eq!(sim.state(jobs[2]), JobState::Pending);
    assert_eq!(
        sim.rm.queue("root.q").unwrap().rate_limited_until(),
        Some(until)
    );
    assert_eq!(sim.rm.next_timer(), Some(until));
    // Nothing to do before the timer: no pass runs, the scheduler does not spin.
    assert!(!sim.rm.needs_pass());
    sim.advance(Duration::from_millis(99));
    assert!(!sim.pass().ran);
    sim.advance(Duration::from_millis(1));
    sim.pass();
    assert_eq!(scheduled(&sim, &jobs), 3);
    assert_eq!(sim.rm.rate_limited_until(jobs[2]), None);
    sim.advance(Duration::from_millis(100));
    sim.pass();
    sim.advance(Duration::from_millis(100));
    sim.pass();
    assert_eq!(scheduled(&sim, &jobs), 5);
    sim.check();
}

#[test]
fn a_retry_spends_a_token_like_a_first_attempt() {
    let mut sim = sim_with("root.q", limited("1/s", 1));
    let w = sim.rm.workers().next().unwrap().id;
    let mut req = sim.request("root.q", one_core());
    req.retry = Some(RetryPolicy {
        max_attempts: 2,
        backoff_base: Duration::from_millis(10),
        backoff_cap: Duration::from_millis(10),
        jitter: 0.0,
    });
    let id = sim.submit(req).unwrap().id();
    sim.pass();
    sim.poll_running(w);
    sim.report(
        w,
        id,
        ReportedResult::Failed {
            exit_code: Some(1),
            message: "boom".into(),
            retry: true,
        },
    );
    sim.advance(Duration::from_millis(10));
    sim.pass();
    assert_eq!(
        sim.state(id),
        JobState::Pending,
        "the retry waits for a token"
    );
    sim.advance(Duration::from_millis(990));
    sim.pass();
    assert_eq!(sim.state(id), JobState::Scheduled);
    assert_eq!(sim.rm.job(id).unwrap().attempts.len(), 2);
}

fn per_customer(rate: &str, burst: u32) -> QueueConfig {
    QueueConfig {
        key_limits: BTreeMap::from([("customer".to_owned(), limit(rate, burst))]),
        ..QueueConfig::with_capacity(100.0, 100.0)
    }
}

#[test]
fn each_key_value_has_its_own_bucket_and_a_held_customer_does_not_delay_the_others() {
    let mut sim = sim_with("root.q", per_customer("1/s", 1));
    let acme = keyed(&mut sim, "root.q", "customer", "acme");
    let acme_again = keyed(&mut sim, "root.q", "customer", "acme");
    let globex = keyed(&mut sim, "root.q", "customer", "globex");
    let free = sim.submit_n("root.q", 1, one_core())[0];
    let other_key = keyed(&mut sim, "root.q", "region", "eu");
    sim.pass();
    assert_eq!(scheduled(&sim, &[acme, globex, free, other_key]), 4);
    assert_eq!(sim.state(acme_again), JobState::Pending);
    let until = sim.now.after(Duration::from_secs(1));
    assert_eq!(sim.rm.rate_limited_until(acme_again), Some(until));
    assert_eq!(sim.rm.next_timer(), Some(until));
    assert!(!sim.rm.needs_pass(), "nothing to do before the timer");
    sim.check();
    sim.advance(Duration::from_secs(1));
    sim.pass();
    assert_eq!(sim.state(acme_again), JobState::Scheduled);
    assert_eq!(sim.rm.rate_limited_until(acme_again), None);
    assert_eq!(sim.rm.rate_limited_job_count(), 0);
    sim.check();
}

#[test]
fn a_customers_jobs_start_in_their_order_one_token_at_a_time() {
    let mut sim = sim_with("root.q", per_customer("2/s", 1));
    let jobs: Vec<JobId> = (0..4)
        .map(|_| keyed(&mut sim, "root.q", "customer", "acme"))
        .collect();
    // A later job of the same customer waits behind the held ones, even submitted
    // when the bucket would allow it.
    sim.pass();
    for (n, id) in jobs.iter().enumerate() {
        assert_eq!(
            scheduled(&sim, &jobs),
            n + 1,
            "after {n} intervals: {:?}",
            jobs.iter().map(|j| sim.state(*j)).collect::<Vec<_>>()
        );
        assert_eq!(sim.state(*id), JobState::Scheduled);
        sim.advance(Duration::from_millis(500));
        sim.pass();
    }
    let starts: Vec<u64> = jobs
        .iter()
        .map(|j| sim.rm.job(*j).unwrap().attempts[0].scheduled_at.0)
        .collect();
    assert!(starts.windows(2).all(|w| w[1] - w[0] == 500), "{starts:?}");
    sim.check();
}

#[test]
fn a_cancelled_held_job_does_not_stop_the_ones_behind_it() {
    let mut sim = Sim::new(config());
    sim.rm
        .create_queue("root.q", per_customer("1/s", 1))
        .unwrap();
    let acme = keyed(&mut sim, "root.q", "customer", "acme");
    let second = keyed(&mut sim, "root.q", "customer", "acme");
    let third = keyed(&mut sim, "root.q", "customer", "acme");
    // No worker yet: the first job is given its token only when it starts.
    sim.pass();
    sim.worker("w", 1, 1000);
    sim.pass();
    assert_eq!(sim.state(acme), JobState::Scheduled);
    // The limit gives the second job back after a second; it cannot start (the worker
    // is full) and is cancelled: the limit gives the third back at once.
    sim.advance(Duration::from_secs(1));
    sim.pass();
    assert_eq!(sim.state(second), JobState::Pending);
    assert_eq!(sim.rm.rate_limited_until(second), None, "given back");
    sim.rm.cancel(second, "changed my mind", sim.now).unwrap();
    sim.pass();
    assert_eq!(sim.rm.rate_limited_until(third), None, "given back in turn");
    sim.rm.cancel(acme, "done", sim.now).unwrap();
    sim.pass();
    assert_eq!(sim.state(third), JobState::Scheduled);
    sim.check();
}

#[test]
fn removing_a_key_limit_gives_its_held_jobs_back_in_order() {
    let mut sim = sim_with("root.q", per_customer("1/m", 1));
    let jobs: Vec<JobId> = (0..3)
        .map(|_| keyed(&mut sim, "root.q", "customer", "acme"))
        .collect();
    sim.pass();
    assert_eq!(scheduled(&sim, &jobs), 1);
    assert_eq!(sim.rm.rate_limited_job_count(), 2);
    sim.rm
        .update_queue(
            "root.q",
            &QueueUpdate {
                key_limits: Some(BTreeMap::new()),
                ..QueueUpdate::default()
            },
        )
        .unwrap();
    sim.pass();
    assert_eq!(scheduled(&sim, &jobs), 3);
    assert_eq!(sim.rm.rate_limited_job_count(), 0);
    sim.check();
}

#[test]
fn a_handler_limit_holds_across_queues() {
    let mut config = config();
    config
        .handler_rate_limits
        .insert("billing.invoice".into(), limit("2/m", 1));
    let mut sim = Sim::new(config);
    sim.queue("root.a", 50.0, 100.0);
    sim.queue("root.b", 50.0, 100.0);
    sim.worker("big", 100, 100_000);
    let invoice = |sim: &mut Sim, queue: &str| {
        let id = job_id_for(sim);
        let req = SubmitRequest::function(id, queue, "billing.invoice", serde_json::json!({}));
        sim.submit(req).unwrap().id()
    };
    let a = invoice(&mut sim, "root.a");
    let b = invoice(&mut sim, "root.b");
    let other = sim.submit_n("root.b", 1, one_core())[0];
    sim.pass();
    assert_eq!(
        scheduled(&sim, &[a, b]),
        1,
        "one invoice per 30 s, cluster-wide"
    );
    let held = if sim.state(a) == JobState::Scheduled {
        b
    } else {
        a
    };
    assert!(sim.rm.rate_limited_until(held).is_some());
    sim.advance(Duration::from_secs(30));
    sim.pass();
    assert_eq!(scheduled(&sim, &[a, b, other]), 3);
}

fn job_id_for(sim: &mut Sim) -> JobId {
    support::job_id(sim.fresh_id())
}

/// What a store would hold, through JSON as a store would keep it, restored `after`.
fn restart(sim: &mut Sim, after: Duration, grace: Duration) -> Sim {
    let queues: Vec<QueueRecord> = sim
        .rm
        .queues()
        .iter()
        .map(|q| sim.rm.queue_record(q.id()).unwrap())
        .collect();
    let jobs: Vec<JobRecord> = sim
        .rm
        .jobs()
        .map(|j| sim.rm.job_record(j.id).unwrap())
        .collect();
    let input = RestoreInput {
        queues: serde_json::from_str(&serde_json::to_string(&queues).unwrap()).unwrap(),
        jobs: serde_json::from_str(&serde_json::to_string(&jobs).unwrap()).unwrap(),
        next_token: sim.rm.next_token(),
        schedules: Vec::new(),
        broadcasts: Vec::new(),
    };
    let mut next = Sim::new(sim.rm.config().clone());
    // Ids keep growing across the restart, as UUIDv7s do.
    let last_id = sim.fresh_id();
    while next.fresh_id() < last_id {}
    next.now = sim.now.after(after);
    next.rm = ResourceManager::restore(
        sim.rm.config().clone(),
        Policies::default(),
        9,
        input,
        next.now,
        grace,
    )
    .unwrap()
    .0;
    next
}

#[test]
fn after_a_restart_every_bucket_starts_empty() {
    let mut sim = sim_with("root.q", limited("10/s", 5));
    let jobs = sim.submit_n("root.q", 10, one_core());
    sim.pass();
    assert_eq!(scheduled(&sim, &jobs), 5);
    let mut sim = restart(
        &mut sim,
        Duration::from_millis(1),
        Duration::from_secs(3600),
    );
    sim.worker("back", 1000, 1_000_000);
    let restored_at = sim.now;
    sim.pass();
    let next = jobs[5];
    assert_eq!(sim.state(next), JobState::Pending);
    assert_eq!(
        sim.rm.rate_limited_until(next),
        Some(restored_at.after(Duration::from_millis(100)))
    );
    sim.advance(Duration::from_millis(100));
    sim.pass();
    assert_eq!(sim.state(next), JobState::Scheduled);
}

#[test]
fn per_key_buckets_are_dropped_once_full_so_memory_stays_bounded() {
    let settings = QueueConfig {
        key_limits: BTreeMap::from([("customer".to_owned(), limit("10/s", 1))]),
        ..QueueConfig::with_capacity(100.0, 100.0)
    };
    let mut sim = sim_with("root.q", settings);
    let leaf = sim.rm.queue("root.q").unwrap().id();
    let mut most = 0;
    for round in 0..200 {
        for n in 0..10 {
            keyed(&mut sim, "root.q", "customer", &format!("c{round}-{n}"));
        }
        sim.pass();
        most = most.max(sim.rm.key_bucket_count(leaf));
        sim.advance(Duration::from_millis(200));
    }
    assert_eq!(sim.rm.queue("root.q").unwrap().running(), 2000);
    assert!(most <= 128, "{most} buckets held for 2,000 keys");
}

#[test]
fn bad_limits_are_refused_naming_the_field() {
    let mut sim = Sim::new(config());
    let err = sim
        .rm
        .create_queue("root.q", limited("1/s", 0))
        .unwrap_err();
    assert!(err.to_string().contains("rate_limit.burst"), "{err}");
    sim.rm.create_queue("root.p", limited("1/s", 1)).unwrap();
    let err = sim
        .rm
        .create_queue("root.p.child", QueueConfig::default())
        .unwrap_err();
    assert!(
        err.to_string().contains("rate_limit") && err.to_string().contains("leaf"),
        "{err}"
    );
    let bad_key = QueueConfig {
        key_limits: BTreeMap::from([("Customer Id".to_owned(), limit("1/s", 1))]),
        ..QueueConfig::default()
    };
    let err = sim.rm.create_queue("root.k", bad_key).unwrap_err();
    assert!(err.to_string().contains("key_limits"), "{err}");
    sim.queue("root.ok", 0.0, 100.0);
    let mut req = sim.request("root.ok", one_core());
    req.keys = BTreeMap::from([("customer".to_owned(), String::new())]);
    let err = sim.submit(req).unwrap_err();
    assert!(err.to_string().starts_with("keys.customer"), "{err}");
    let mut handler_rate_limits = BTreeMap::new();
    handler_rate_limits.insert("h".to_owned(), limit("1/s", 0));
    let err = ResourceManager::new(
        Config {
            handler_rate_limits,
            ..Config::default()
        },
        Policies::default(),
        1,
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("handler_rate_limits.h.burst"),
        "{err}"
    );
}

#[test]
fn removing_a_limit_releases_a_held_queue_at_once() {
    let mut sim = sim_with("root.q", limited("1/m", 1));
    let jobs = sim.submit_n("root.q", 3, one_core());
    sim.pass();
    assert_eq!(scheduled(&sim, &jobs), 1);
    sim.rm
        .update_queue(
            "root.q",
            &QueueUpdate {
                rate_limit: Some(None),
                ..QueueUpdate::default()
            },
        )
        .unwrap();
    sim.pass();
    assert_eq!(scheduled(&sim, &jobs), 3);
}

/// The starts of one queue's attempts, in time order (ms).
fn starts(sim: &Sim) -> Vec<u64> {
    let mut all: Vec<u64> = sim
        .rm
        .jobs()
        .flat_map(|j| j.attempts.iter().map(|a| a.scheduled_at.0))
        .collect();
    all.sort_unstable();
    all
}

// In every window of length T, the starts under a limit never exceed burst + rate × T,
// a restart in the middle included.
proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn starts_in_any_window_stay_within_burst_plus_rate_times_length(
        count in 1..40u32,
        burst in 1..6u32,
        steps in proptest::collection::vec((0..250u64, 0..4usize), 1..60),
        restart_at in 0..60usize,
        restart_gap in 0..200u64,
    ) {
        let mut sim = sim_with("root.q", limited(&format!("{count}/s"), burst));
        for (i, (gap, submit)) in steps.iter().enumerate() {
            if i == restart_at {
                sim = restart(&mut sim, Duration::from_millis(restart_gap), Duration::from_millis(50));
                sim.worker("back", 1000, 1_000_000);
            }
            sim.advance(Duration::from_millis(*gap));
            sim.submit_n("root.q", *submit, one_core());
            sim.pass();
        }
        for _ in 0..40 {
            sim.advance(Duration::from_millis(100));
            sim.pass();
        }
        let starts = starts(&sim);
        for i in 0..starts.len() {
            for j in i..starts.len() {
                let n = (j - i + 1) as u64;
                let span_ms = starts[j] - starts[i];
                // n ≤ burst + count × span / 1000, in whole numbers.
                prop_assert!(
                    n.saturating_sub(u64::from(burst)) * 1000 <= u64::from(count) * span_ms,
                    "{n} starts within {span_ms} ms under {count}/s burst {burst}: {starts:?}"
                );
            }
        }
    }
}

/// Whether the starts (ms, sorted) keep `n ≤ burst + count × span / 1000` for a limit of
/// `count` per second.
fn within_bound(starts: &[u64], count: u32, burst: u32) -> Result<(), String> {
    for i in 0..starts.len() {
        for j in i..starts.len() {
            let n = (j - i + 1) as u64;
            let span_ms = starts[j] - starts[i];
            if n.saturating_sub(u64::from(burst)) * 1000 > u64::from(count) * span_ms {
                return Err(format!(
                    "{n} starts within {span_ms} ms under {count}/s burst {burst}: {starts:?}"
                ));
            }
        }
    }
    Ok(())
}

// Per queue, per customer and per handler, the starts in any window stay within
// burst + rate × T while held jobs are cancelled and the server restarts on the way, and
// every job that was not cancelled starts in the end.
proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn held_jobs_keep_each_key_and_handler_bound_and_all_start_in_the_end(
        key_count in 1..20u32,
        key_burst in 1..4u32,
        handler_count in 1..30u32,
        steps in proptest::collection::vec(
            (0..200u64, proptest::collection::vec((0..3usize, any::<bool>()), 0..4), proptest::option::of(0..8usize)),
            1..40,
        ),
        restart_at in 0..40usize,
        queue_count in proptest::option::of(1..60u32),
    ) {
        let mut config = config();
        config
            .handler_rate_limits
            .insert("h1".into(), limit(&format!("{handler_count}/s"), 2));
        let mut sim = Sim::new(config);
        let settings = QueueConfig {
            rate_limit: queue_count.map(|count| limit(&format!("{count}/s"), 3)),
            ..per_customer(&format!("{key_count}/s"), key_burst)
        };
        sim.rm.create_queue("root.q", settings).unwrap();
        sim.worker("big", 100_000, 100_000_000);
        let mut cancelled = Vec::new();
        for (i, (gap, submits, cancel)) in steps.iter().enumerate() {
            if i == restart_at {
                sim = restart(&mut sim, Duration::from_millis(*gap), Duration::from_millis(50));
                sim.worker("back", 100_000, 100_000_000);
            }
            sim.advance(Duration::from_millis(*gap));
            for (customer, first_handler) in submits {
                let id = support::job_id(sim.fresh_id());
                let handler = if *first_handler { "h1" } else { "h2" };
                let mut req = SubmitRequest::function(id, "root.q", handler, serde_json::json!({}));
                req.request = Some(one_core());
                req.keys = BTreeMap::from([("customer".to_owned(), format!("c{customer}"))]);
                sim.submit(req).unwrap();
            }
            if let Some(nth) = cancel {
                let pending: Vec<JobId> = sim
                    .rm
                    .jobs()
                    .filter(|j| j.state == JobState::Pending)
                    .map(|j| j.id)
                    .collect();
                if let Some(id) = pending.get(*nth) {
                    sim.rm.cancel(*id, "test", sim.now).unwrap();
                    cancelled.push(*id);
                }
            }
            sim.pass();
            sim.check();
        }
        for _ in 0..600 {
            sim.advance(Duration::from_millis(100));
            sim.pass();
        }
        let mut all = starts(&sim);
        if let Some(count) = queue_count {
            all.sort_unstable();
            prop_assert!(within_bound(&all, count, 3).is_ok(), "{:?}", within_bound(&all, count, 3));
        }
        let mut by_customer: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        let mut h1 = Vec::new();
        for job in sim.rm.jobs() {
            if !cancelled.contains(&job.id) {
                prop_assert!(!job.attempts.is_empty(), "job {} never started: {:?}", job.id, job);
            }
            let customer = job.spec.keys().get("customer").unwrap().to_owned();
            let is_h1 = job.spec.kind.handler() == Some("h1");
            for a in &job.attempts {
                by_customer.entry(customer.clone()).or_default().push(a.scheduled_at.0);
                if is_h1 {
                    h1.push(a.scheduled_at.0);
                }
            }
        }
        for starts in by_customer.values_mut() {
            starts.sort_unstable();
            prop_assert!(within_bound(starts, key_count, key_burst).is_ok(), "{:?}", within_bound(starts, key_count, key_burst));
        }
        h1.sort_unstable();
        prop_assert!(within_bound(&h1, handler_count, 2).is_ok(), "{:?}", within_bound(&h1, handler_count, 2));
        prop_assert_eq!(sim.rm.rate_limited_job_count(), 0);
    }
}

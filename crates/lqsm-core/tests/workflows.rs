//! Jobs that wait for others, and workflows: dependents are released the moment their
//! parents end, cancelled when a parent fails, kept across a restart; a dependent never
//! starts before its parents end (property test).
#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

mod support;

use lqsm_core::*;
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::time::Duration;
use support::{Sim, one_core};

fn setup() -> (Sim, WorkerId) {
    let mut sim = Sim::new(Config::default());
    sim.queue("root.q", 100.0, 100.0);
    let w = sim.worker("w", 64, 64_000);
    (sim, w)
}

/// A workflow node named `name` waiting for `parents`.
fn node(sim: &mut Sim, workflow: uuid::Uuid, name: &str, parents: &[JobId]) -> SubmitRequest {
    let mut req = sim.request("root.q", one_core());
    req.workflow = Some(WorkflowNode {
        workflow,
        name: name.into(),
    });
    if !parents.is_empty() {
        req.depends = Some(Dependencies {
            parents: parents.to_vec(),
            run_when: RunWhen::AllSucceeded,
            pass_results: false,
        });
    }
    req
}

/// Waiting for `parents` until they all succeed, receiving their results or not.
fn waits_for(parents: Vec<JobId>, pass_results: bool) -> Option<Dependencies> {
    Some(Dependencies {
        parents,
        run_when: RunWhen::AllSucceeded,
        pass_results,
    })
}

fn started(sim: &mut Sim, w: WorkerId) -> Vec<JobId> {
    sim.pass();
    sim.poll_running(w).iter().map(|a| a.job).collect()
}

fn fail(sim: &mut Sim, w: WorkerId, job: JobId) {
    sim.report(
        w,
        job,
        ReportedResult::Failed {
            exit_code: Some(1),
            message: "boom".into(),
            retry: true,
        },
    );
}

fn reason(sim: &Sim, job: JobId) -> String {
    match sim.rm.job(job).unwrap().termination.as_deref() {
        Some(Termination::Cancelled { reason }) => reason.clone(),
        other => panic!("job {job} not cancelled: {other:?}"),
    }
}

#[test]
fn a_chain_runs_one_link_at_a_time_in_order() {
    let (mut sim, w) = setup();
    let wf = uuid::Uuid::from_u128(77);
    let a = node(&mut sim, wf, "a", &[]);
    let b = node(&mut sim, wf, "b", &[a.id]);
    let c = node(&mut sim, wf, "c", &[b.id]);
    // Submitted children first: the core takes them parents first all the same.
    let ids = sim
        .rm
        .submit_workflow(vec![c.clone(), b.clone(), a.clone()], sim.now)
        .unwrap();
    assert_eq!(ids, vec![c.id, b.id, a.id]);
    sim.check();
    assert_eq!(sim.rm.waiting_for_parents(c.id), Some(1));
    for link in [a.id, b.id, c.id] {
        assert_eq!(started(&mut sim, w), vec![link]);
        sim.check();
        sim.succeed(w, link);
        sim.check();
    }
    assert_eq!(started(&mut sim, w), Vec::<JobId>::new());
    assert!(
        [a.id, b.id, c.id]
            .iter()
            .all(|j| sim.state(*j) == JobState::Succeeded)
    );
    let tag = WorkflowNode::tag_of(wf);
    assert!(sim.rm.job(c.id).unwrap().spec.tags().contains(&tag));
}

#[test]
fn a_failed_parent_cancels_its_dependents_transitively_naming_it_after_its_retries() {
    let (mut sim, w) = setup();
    let wf = uuid::Uuid::from_u128(78);
    let mut a = node(&mut sim, wf, "a", &[]);
    a.retry = Some(RetryPolicy {
        max_attempts: 2,
        backoff_base: Duration::ZERO,
        backoff_cap: Duration::ZERO,
        jitter: 0.0,
    });
    let b = node(&mut sim, wf, "b", &[a.id]);
    let c = node(&mut sim, wf, "c", &[b.id]);
    let mut d = node(&mut sim, wf, "d", &[a.id]);
    d.depends.as_mut().unwrap().run_when = RunWhen::AllFinished;
    sim.rm
        .submit_workflow(vec![a.clone(), b.clone(), c.clone(), d.clone()], sim.now)
        .unwrap();
    assert_eq!(started(&mut sim, w), vec![a.id]);
    fail(&mut sim, w, a.id);
    // A retry is not an end: nothing is cancelled yet.
    assert_eq!(sim.state(b.id), JobState::Pending);
    assert_eq!(started(&mut sim, w), vec![a.id]);
    fail(&mut sim, w, a.id);
    sim.check();
    assert_eq!(sim.state(a.id), JobState::Failed);
    assert_eq!(
        reason(&sim, b.id),
        format!("dependency_failed: parent job {} failed", a.id)
    );
    assert_eq!(
        reason(&sim, c.id),
        format!("dependency_failed: parent job {} cancelled", b.id)
    );
    // `all_finished` runs anyway.
    assert_eq!(started(&mut sim, w), vec![d.id]);
}

#[test]
fn a_chord_callback_waits_for_every_member_of_its_group() {
    let (mut sim, w) = setup();
    let wf = uuid::Uuid::from_u128(79);
    let members: Vec<SubmitRequest> = (0..5)
        .map(|i| node(&mut sim, wf, &format!("m{i}"), &[]))
        .collect();
    let ids: Vec<JobId> = members.iter().map(|m| m.id).collect();
    let mut callback = node(&mut sim, wf, "sum", &ids);
    callback.depends.as_mut().unwrap().pass_results = true;
    let mut all = members.clone();
    all.push(callback.clone());
    sim.rm.submit_workflow(all, sim.now).unwrap();
    let mut first = started(&mut sim, w);
    first.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(first, expected);
    for (i, m) in ids.iter().enumerate() {
        assert_eq!(sim.rm.waiting_for_parents(callback.id), Some(5 - i as u32));
        sim.succeed(w, *m);
        sim.check();
    }
    assert_eq!(started(&mut sim, w), vec![callback.id]);
}

#[test]
fn a_graph_is_refused_whole_naming_the_node() {
    let (mut sim, _) = setup();
    let wf = uuid::Uuid::from_u128(80);
    let a = node(&mut sim, wf, "a", &[]);
    let b = node(&mut sim, wf, "b", &[a.id]);
    let mut a_again = a.clone();
    a_again.depends = waits_for(vec![b.id], false);
    let err = sim
        .rm
        .submit_workflow(vec![a_again, b.clone()], sim.now)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "nodes[0].after: `a` waits for itself through a -> b -> a"
    );
    let unknown = node(&mut sim, wf, "x", &[support::job_id(999_999)]);
    let err = sim
        .rm
        .submit_workflow(vec![a.clone(), unknown], sim.now)
        .unwrap_err();
    assert_eq!(err.index(), Some(1));
    assert!(err.to_string().contains("does not exist"), "{err}");
    let mut bad = node(&mut sim, wf, "bad", &[a.id]);
    bad.queue = "root.nope".into();
    let err = sim
        .rm
        .submit_workflow(vec![a.clone(), bad], sim.now)
        .unwrap_err();
    assert_eq!(err.index(), Some(1));
    let same_name = node(&mut sim, wf, "a", &[]);
    let err = sim
        .rm
        .submit_workflow(vec![a.clone(), same_name], sim.now)
        .unwrap_err();
    assert!(err.to_string().contains("names two nodes"), "{err}");
    assert!(matches!(
        sim.rm.submit_workflow(vec![], sim.now),
        Err(WorkflowError::Size(0))
    ));
    // Nothing of any refused graph was taken.
    assert_eq!(sim.rm.job_count(), 0);
}

#[test]
fn a_job_may_wait_for_an_existing_job_even_one_already_ended() {
    let (mut sim, w) = setup();
    let parent = sim.request("root.q", one_core());
    let parent_id = sim.submit(parent).unwrap().id();
    let mut child = sim.request("root.q", one_core());
    child.depends = waits_for(vec![parent_id], true);
    let child_id = sim.submit(child).unwrap().id();
    assert_eq!(started(&mut sim, w), vec![parent_id]);
    sim.succeed(w, parent_id);
    assert_eq!(started(&mut sim, w), vec![child_id]);
    sim.succeed(w, child_id);
    // After a parent that already succeeded: ready at once.
    let mut late = sim.request("root.q", one_core());
    late.depends = waits_for(vec![parent_id], false);
    let late_id = sim.submit(late).unwrap().id();
    assert_eq!(started(&mut sim, w), vec![late_id]);
    // After one that failed: cancelled at once, naming it.
    let doomed = sim.request("root.q", one_core());
    let doomed_id = sim.submit(doomed).unwrap().id();
    sim.rm.cancel(doomed_id, "by hand", sim.now).unwrap();
    let mut after_doomed = sim.request("root.q", one_core());
    after_doomed.depends = waits_for(vec![doomed_id], false);
    let id = sim.submit(after_doomed).unwrap().id();
    assert_eq!(
        reason(&sim, id),
        format!("dependency_failed: parent job {doomed_id} cancelled")
    );
    // An unknown parent is refused, naming the field.
    let mut orphan = sim.request("root.q", one_core());
    orphan.depends = waits_for(vec![support::job_id(424_242)], false);
    assert!(matches!(
        sim.submit(orphan),
        Err(SubmitError::InvalidField { field, .. }) if field == "after"
    ));
    sim.check();
}

#[test]
fn cancelling_a_workflow_by_its_tag_cancels_every_unfinished_node() {
    let (mut sim, w) = setup();
    let wf = uuid::Uuid::from_u128(81);
    let a = node(&mut sim, wf, "a", &[]);
    let b = node(&mut sim, wf, "b", &[a.id]);
    let c = node(&mut sim, wf, "c", &[b.id]);
    sim.rm
        .submit_workflow(vec![a.clone(), b.clone(), c.clone()], sim.now)
        .unwrap();
    assert_eq!(started(&mut sim, w), vec![a.id]);
    let selection = JobSelection {
        tag: Some(WorkflowNode::tag_of(wf)),
        ..JobSelection::default()
    };
    let cancelled = sim
        .rm
        .cancel_selected(&selection, "workflow cancelled", sim.now)
        .unwrap();
    sim.drain_effects();
    sim.check();
    assert!(cancelled.contains(&a.id));
    for j in [a.id, b.id, c.id] {
        assert_eq!(sim.state(j), JobState::Cancelled);
    }
}

#[test]
fn a_parent_is_kept_past_its_retention_while_a_dependent_waits() {
    let config = Config {
        retention: Duration::from_secs(60),
        // The worker stays silent for longer than that.
        heartbeat_timeout: Duration::from_secs(3600),
        ..Config::default()
    };
    let mut sim = Sim::new(config);
    sim.queue("root.q", 100.0, 100.0);
    let w = sim.worker("w", 1, 1000);
    let parent = sim.request("root.q", one_core());
    let parent_id = sim.submit(parent).unwrap().id();
    let mut child = sim.request("root.q", one_core());
    child.depends = waits_for(vec![parent_id], true);
    // The child waits behind a delay far past the parent's retention.
    child.not_before = Some(sim.now.after(Duration::from_secs(600)));
    let child_id = sim.submit(child).unwrap().id();
    assert_eq!(started(&mut sim, w), vec![parent_id]);
    sim.succeed(w, parent_id);
    sim.advance(Duration::from_secs(300));
    sim.pass();
    assert!(sim.rm.job(parent_id).is_some(), "kept for its dependent");
    sim.advance(Duration::from_secs(301));
    assert_eq!(started(&mut sim, w), vec![child_id]);
    sim.succeed(w, child_id);
    sim.pass();
    assert!(sim.rm.job(parent_id).is_none(), "purged once not needed");
    sim.check();
}

#[test]
fn a_workflow_survives_a_restart_midway() {
    let (mut sim, w) = setup();
    let wf = uuid::Uuid::from_u128(82);
    let a = node(&mut sim, wf, "a", &[]);
    let b = node(&mut sim, wf, "b", &[a.id]);
    let c = node(&mut sim, wf, "c", &[a.id]);
    let d = node(&mut sim, wf, "d", &[b.id, c.id]);
    sim.rm
        .submit_workflow(vec![a.clone(), b.clone(), c.clone(), d.clone()], sim.now)
        .unwrap();
    assert_eq!(started(&mut sim, w), vec![a.id]);
    sim.succeed(w, a.id);
    let mut running = started(&mut sim, w);
    running.sort();
    let mut expected = vec![b.id, c.id];
    expected.sort();
    assert_eq!(running, expected);
    sim.succeed(w, b.id);
    // Restart: c is running on w, d waits for c only.
    sim.restart(Duration::from_secs(30));
    sim.check();
    assert_eq!(sim.rm.waiting_for_parents(d.id), Some(1));
    sim.worker_back(w, 64);
    sim.poll_running(w);
    sim.succeed(w, c.id);
    sim.check();
    assert_eq!(started(&mut sim, w), vec![d.id]);
}

// ----- property: a dependent never starts before its parents end --------------------

#[derive(Clone, Debug)]
enum Step {
    /// The worker finishes the attempt it was handed `pick`-th, in success or failure.
    Finish { pick: usize, succeed: bool },
    /// A job is cancelled.
    Cancel { pick: usize },
    /// The state is rebuilt from its records.
    Restart,
    /// Time passes (retries' backoff, delays).
    Advance { secs: u64 },
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(
        prop_oneof![
            6 => (0usize..16, prop::bool::weighted(0.7))
                .prop_map(|(pick, succeed)| Step::Finish { pick, succeed }),
            1 => (0usize..40).prop_map(|pick| Step::Cancel { pick }),
            1 => Just(Step::Restart),
            2 => (1u64..5).prop_map(|secs| Step::Advance { secs }),
        ],
        1..60,
    )
}

/// A random graph of `n` nodes: each waits for up to three earlier ones, under either
/// condition, so the graph has no cycle.
fn graphs() -> impl Strategy<Value = Vec<(Vec<usize>, bool)>> {
    (2usize..25).prop_flat_map(|n| {
        (0..n)
            .map(|i| {
                (
                    prop::collection::btree_set(0..i.max(1), 0..=i.min(3)),
                    prop::bool::weighted(0.3),
                )
                    .prop_map(move |(parents, all_finished)| {
                        (
                            parents.into_iter().filter(|p| *p < i).collect::<Vec<_>>(),
                            all_finished,
                        )
                    })
            })
            .collect::<Vec<_>>()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn a_dependent_never_starts_before_its_parents_end(graph in graphs(), steps in steps()) {
        let (mut sim, w) = setup();
        let wf = uuid::Uuid::from_u128(5);
        let mut requests = Vec::new();
        for (i, (parents, all_finished)) in graph.iter().enumerate() {
            let ids: Vec<JobId> = parents.iter().map(|p| requests.iter().map(|r: &SubmitRequest| r.id).nth(*p).unwrap()).collect();
            let mut req = node(&mut sim, wf, &format!("n{i}"), &ids);
            req.retry = Some(RetryPolicy { max_attempts: 2, backoff_base: Duration::from_secs(1), backoff_cap: Duration::from_secs(1), jitter: 0.0 });
            if let Some(d) = &mut req.depends && *all_finished {
                d.run_when = RunWhen::AllFinished;
            }
            requests.push(req);
        }
        let ids: Vec<JobId> = requests.iter().map(|r| r.id).collect();
        let parents_of: BTreeMap<JobId, (Vec<JobId>, bool)> = requests.iter().map(|r| {
            let d = r.depends.as_ref();
            (r.id, (d.map(|d| d.parents.clone()).unwrap_or_default(), d.is_some_and(|d| d.run_when == RunWhen::AllFinished)))
        }).collect();
        sim.rm.submit_workflow(requests, sim.now).unwrap();
        let mut handed: Vec<JobId> = Vec::new();
        let check_starts = |sim: &Sim, new: &[JobId]| {
            for job in new {
                let (parents, all_finished) = &parents_of[job];
                for p in parents {
                    let parent = sim.rm.job(*p).expect("a parent is kept while its dependent runs");
                    prop_assert!(parent.state.is_terminal(), "{job} started before parent {p} ended");
                    if !all_finished {
                        prop_assert_eq!(parent.state, JobState::Succeeded);
                    }
                }
            }
            Ok(())
        };
        for step in steps {
            let new = started(&mut sim, w);
            check_starts(&sim, &new)?;
            handed.extend(new);
            match step {
                Step::Finish { pick, succeed } => {
                    let live: Vec<JobId> = handed.iter().copied().filter(|j| sim.rm.job(*j).is_some_and(|x| x.state.is_active())).collect();
                    if let Some(job) = live.get(pick % live.len().max(1)) {
                        if succeed { sim.succeed(w, *job); } else { fail(&mut sim, w, *job); }
                    }
                }
                Step::Cancel { pick } => {
                    let _ = sim.rm.cancel(ids[pick % ids.len()], "test", sim.now);
                    sim.drain_effects();
                }
                Step::Restart => {
                    sim.restart(Duration::ZERO);
                    sim.worker_back(w, 64);
                    sim.received.clear();
                    sim.drain_effects();
                }
                Step::Advance { secs } => sim.advance(Duration::from_secs(secs)),
            }
            if let Err(e) = sim.rm.check_consistency() {
                prop_assert!(false, "inconsistent: {}", e);
            }
        }
        // Run everything out: every node ends, and every dependent of a failed parent
        // under `all_succeeded` was cancelled, never run.
        for _ in 0..200 {
            sim.advance(Duration::from_secs(2));
            let new = started(&mut sim, w);
            check_starts(&sim, &new)?;
            handed.extend(new.iter().copied());
            let live: Vec<JobId> = ids.iter().copied().filter(|j| sim.rm.job(*j).is_some_and(|x| x.state.is_active())).collect();
            for job in live {
                sim.succeed(w, job);
            }
            if ids.iter().all(|j| sim.state(*j).is_terminal()) {
                break;
            }
        }
        for j in &ids {
            prop_assert!(sim.state(*j).is_terminal(), "{} never ended", j);
        }
    }
}

// ----- broadcast -----------------------------------------------------------------------

#[test]
fn a_broadcast_runs_once_on_each_matching_worker_and_only_there() {
    let mut sim = Sim::new(Config::default());
    sim.queue("root.q", 100.0, 100.0);
    let gpu1 = sim.worker_with("gpu1", Resources::cores(4, 4000), &[("gpu", "yes")]);
    let gpu2 = sim.worker_with("gpu2", Resources::cores(4, 4000), &[("gpu", "yes")]);
    let cpu = sim.worker_with("cpu", Resources::cores(64, 64_000), &[]);
    let mut template = sim.request("root.q", one_core());
    template.selector = [("gpu".to_string(), "yes".to_string())].into();
    let broadcast = uuid::Uuid::from_u128(500);
    let jobs = sim
        .rm
        .submit_broadcast(template.clone(), broadcast, sim.now)
        .unwrap();
    let mut on: Vec<WorkerId> = jobs.iter().map(|b| b.worker).collect();
    on.sort();
    let mut expected = vec![gpu1, gpu2];
    expected.sort();
    assert_eq!(on, expected);
    sim.check();
    sim.pass();
    // The idle large worker gets none of them; each goes to its own worker.
    assert!(sim.poll_running(cpu).is_empty());
    for b in &jobs {
        let got: Vec<JobId> = sim.poll_running(b.worker).iter().map(|a| a.job).collect();
        assert_eq!(got, vec![b.job]);
        let view = sim.rm.job(b.job).unwrap();
        assert_eq!(view.spec.pinned(), Some(b.worker));
        assert!(view.spec.tags().contains(&WorkflowNode::tag_of(broadcast)));
    }
    sim.succeed(gpu1, jobs.iter().find(|b| b.worker == gpu1).unwrap().job);
    // The same broadcast id names the same jobs: sent again, it is refused whole.
    assert!(
        sim.rm
            .submit_broadcast(template.clone(), broadcast, sim.now)
            .is_err()
    );
    // No worker matches: refused naming the selector.
    template.selector = [("gpu".to_string(), "tpu".to_string())].into();
    let err = sim
        .rm
        .submit_broadcast(template, uuid::Uuid::from_u128(501), sim.now)
        .unwrap_err();
    assert!(
        err.to_string().contains("no active worker matches"),
        "{err}"
    );
    sim.check();
}

#[test]
fn a_broadcast_attempt_on_a_lost_worker_is_cancelled_naming_it() {
    let mut sim = Sim::new(Config::default());
    sim.queue("root.q", 100.0, 100.0);
    let a = sim.worker("a", 4, 4000);
    let b = sim.worker("b", 4, 4000);
    let mut template = sim.request("root.q", one_core());
    // With attempts left, a lost attempt would go back to pending: pinned to a worker
    // that is gone, it is cancelled instead.
    template.retry = Some(RetryPolicy {
        max_attempts: 3,
        ..RetryPolicy::default()
    });
    let jobs = sim
        .rm
        .submit_broadcast(template, uuid::Uuid::from_u128(502), sim.now)
        .unwrap();
    sim.pass();
    sim.poll_running(a);
    // b never polls: it is lost, and its broadcast attempt with it.
    sim.advance(Duration::from_secs(11));
    sim.poll_running(a);
    sim.pass();
    let on_b = jobs.iter().find(|j| j.worker == b).unwrap().job;
    assert_eq!(reason(&sim, on_b), "its worker b was lost");
    let on_a = jobs.iter().find(|j| j.worker == a).unwrap().job;
    assert_eq!(sim.state(on_a), JobState::Running);
    sim.check();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// A broadcast makes one job per active matching worker, and each runs there only.
    #[test]
    fn one_broadcast_attempt_per_matching_worker(
        workers in prop::collection::vec((0u8..3, 1u64..4, prop::bool::weighted(0.2)), 1..12),
        wanted in 0u8..4,
    ) {
        let mut sim = Sim::new(Config::default());
        sim.queue("root.q", 100.0, 100.0);
        let mut matching = Vec::new();
        let mut ids = Vec::new();
        for (i, (zone, cores, drained)) in workers.iter().enumerate() {
            let zone = zone.to_string();
            let id = sim.worker_with(&format!("w{i}"), Resources::cores(*cores, 4000), &[("zone", zone.as_str())]);
            if *drained {
                sim.rm.drain_worker(id).unwrap();
            } else if zone == wanted.to_string() {
                matching.push(id);
            }
            ids.push(id);
        }
        let mut template = sim.request("root.q", one_core());
        template.selector = [("zone".to_string(), wanted.to_string())].into();
        let result = sim.rm.submit_broadcast(template, uuid::Uuid::from_u128(9), sim.now);
        if matching.is_empty() {
            prop_assert!(result.is_err());
            return Ok(());
        }
        let jobs = result.unwrap();
        let mut on: Vec<WorkerId> = jobs.iter().map(|b| b.worker).collect();
        on.sort();
        matching.sort();
        prop_assert_eq!(&on, &matching);
        sim.pass();
        for id in &ids {
            let got: Vec<JobId> = sim.poll_running(*id).iter().map(|a| a.job).collect();
            let expected: Vec<JobId> = jobs.iter().filter(|b| b.worker == *id).map(|b| b.job).collect();
            prop_assert_eq!(got, expected);
        }
        if let Err(e) = sim.rm.check_consistency() {
            prop_assert!(false, "inconsistent: {}", e);
        }
    }
}

#[test]
fn a_broadcast_job_waiting_for_its_busy_worker_blocks_nothing_else() {
    let mut sim = Sim::new(Config::default());
    sim.queue("root.q", 100.0, 100.0);
    let busy = sim.worker("busy", 1, 1000);
    let idle = sim.worker("idle", 1, 1000);
    // Fill `busy` (the only job, placed on one of the two; then pin the rest).
    let filler = sim.request("root.q", one_core());
    let filler = sim.submit(filler).unwrap().id();
    sim.pass();
    let on = sim
        .rm
        .job(filler)
        .unwrap()
        .current_attempt()
        .unwrap()
        .worker;
    let (busy, idle) = if on == busy {
        (busy, idle)
    } else {
        (idle, busy)
    };
    sim.poll_running(busy);
    let template = sim.request("root.q", one_core());
    let jobs = sim
        .rm
        .submit_broadcast(template, uuid::Uuid::from_u128(600), sim.now)
        .unwrap();
    let later = sim.request("root.q", one_core());
    let later = sim.submit(later).unwrap().id();
    let for_busy = jobs.iter().find(|b| b.worker == busy).unwrap().job;
    let for_idle = jobs.iter().find(|b| b.worker == idle).unwrap().job;
    sim.pass();
    let got: Vec<JobId> = sim.poll_running(idle).iter().map(|a| a.job).collect();
    assert_eq!(got, vec![for_idle]);
    sim.check();
    sim.succeed(idle, for_idle);
    sim.pass();
    let got: Vec<JobId> = sim.poll_running(idle).iter().map(|a| a.job).collect();
    assert_eq!(got, vec![later], "the job behind the held one ran");
    // The busy worker frees up: its broadcast job runs there.
    sim.succeed(busy, filler);
    sim.pass();
    let got: Vec<JobId> = sim.poll_running(busy).iter().map(|a| a.job).collect();
    assert_eq!(got, vec![for_busy]);
    sim.check();
}

#[test]
fn force_deleting_a_queue_ends_each_of_its_jobs_once() {
    let (mut sim, _) = setup();
    let wf = uuid::Uuid::from_u128(601);
    let a = node(&mut sim, wf, "a", &[]);
    let b = node(&mut sim, wf, "b", &[a.id]);
    sim.rm
        .submit_workflow(vec![a.clone(), b.clone()], sim.now)
        .unwrap();
    sim.rm.delete_queue("root.q", true, sim.now).unwrap();
    sim.drain_effects();
    sim.check();
    let ended: Vec<JobId> = sim.log.finished.clone();
    assert_eq!(ended.iter().filter(|j| **j == b.id).count(), 1);
}

#[test]
fn two_nodes_may_not_share_an_idempotency_key() {
    let (mut sim, _) = setup();
    let wf = uuid::Uuid::from_u128(602);
    let mut a = node(&mut sim, wf, "a", &[]);
    let mut b = node(&mut sim, wf, "b", &[]);
    a.idempotency_key = Some("k".into());
    b.idempotency_key = Some("k".into());
    let err = sim.rm.submit_workflow(vec![a, b], sim.now).unwrap_err();
    assert_eq!(err.index(), Some(1));
    assert!(err.to_string().contains("idempotency_key"), "{err}");
}

#[test]
fn a_broadcast_open_to_new_workers_reaches_them_once_until_cancelled() {
    let mut sim = Sim::new(Config::default());
    sim.queue("root.q", 100.0, 100.0);
    let first = sim.worker("first", 4, 4000);
    let template = sim.request("root.q", one_core());
    let id = uuid::Uuid::from_u128(700);
    let jobs = sim.rm.broadcast(template, id, true, sim.now).unwrap();
    assert_eq!(jobs.len(), 1);
    assert!(sim.rm.open_broadcast(id).is_some());
    // A worker that joins later gets its job; registering again gets no second one.
    let late = sim.worker("late", 4, 4000);
    let tag = WorkflowNode::tag_of(id);
    let count = |sim: &Sim| {
        sim.rm
            .jobs()
            .filter(|j| j.spec.tags().contains(&tag))
            .count()
    };
    assert_eq!(count(&sim), 2);
    sim.worker_back(late, 4);
    assert_eq!(count(&sim), 2);
    sim.pass();
    let got: Vec<JobId> = sim.poll_running(late).iter().map(|a| a.job).collect();
    assert_eq!(got.len(), 1);
    assert_eq!(sim.rm.job(got[0]).unwrap().spec.pinned(), Some(late));
    sim.check();
    // Across a restart it stays open, and remembers whom it reached.
    sim.restart(Duration::from_secs(30));
    sim.worker_back(first, 4);
    sim.worker_back(late, 4);
    assert_eq!(count(&sim), 2);
    let third = sim.worker("third", 4, 4000);
    assert_eq!(count(&sim), 3);
    // Cancelling it closes it.
    let selection = JobSelection {
        tag: Some(tag.clone()),
        ..JobSelection::default()
    };
    sim.rm.cancel_selected(&selection, "done", sim.now).unwrap();
    assert!(sim.rm.open_broadcast(id).is_none());
    sim.worker("fourth", 4, 4000);
    assert_eq!(count(&sim), 3);
    let _ = third;
    sim.check();
}

#[test]
fn a_pinned_job_whose_worker_no_longer_matches_or_was_lost_is_cancelled_saying_so() {
    let mut sim = Sim::new(Config::default());
    sim.queue("root.q", 100.0, 100.0);
    let w = sim.worker_with("w", Resources::cores(1, 1000), &[("zone", "a")]);
    let filler = sim.request("root.q", one_core());
    let filler = sim.submit(filler).unwrap().id();
    sim.pass();
    sim.poll_running(w);
    let mut template = sim.request("root.q", one_core());
    template.selector = [("zone".to_string(), "a".to_string())].into();
    let jobs = sim
        .rm
        .submit_broadcast(template, uuid::Uuid::from_u128(800), sim.now)
        .unwrap();
    sim.pass();
    sim.check();
    // The worker comes back with other labels: its held job can never run there.
    sim.rm
        .register_worker(
            WorkerRegistration {
                id: w,
                name: "w".into(),
                capacity: Resources::cores(1, 1000),
                labels: [("zone".to_string(), "b".to_string())].into(),
                serves_commands: true,
                queues: Default::default(),
                handlers: ["*".to_string()].into(),
            },
            sim.now,
        )
        .unwrap();
    sim.pass();
    assert_eq!(
        reason(&sim, jobs[0].job),
        "its worker w no longer matches it"
    );
    let _ = filler;
    sim.check();
}

#[test]
fn an_open_broadcast_closes_at_its_expiry_and_with_its_queue() {
    let mut sim = Sim::new(Config::default());
    sim.queue("root.q", 100.0, 100.0);
    sim.queue("root.r", 0.0, 100.0);
    sim.worker("w", 4, 4000);
    let mut template = sim.request("root.q", one_core());
    template.expires_at = Some(sim.now.after(Duration::from_secs(60)));
    let expiring = uuid::Uuid::from_u128(801);
    sim.rm.broadcast(template, expiring, true, sim.now).unwrap();
    let in_r = sim.request("root.r", one_core());
    let doomed = uuid::Uuid::from_u128(802);
    sim.rm.broadcast(in_r, doomed, true, sim.now).unwrap();
    sim.advance(Duration::from_secs(61));
    sim.pass();
    assert!(sim.rm.open_broadcast(expiring).is_none());
    assert!(sim.rm.open_broadcast(doomed).is_some());
    sim.rm.delete_queue("root.r", true, sim.now).unwrap();
    assert!(sim.rm.open_broadcast(doomed).is_none());
    sim.check();
}

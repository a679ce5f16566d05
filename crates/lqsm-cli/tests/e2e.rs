//! End to end: the real `lqsm server`, `lqsm worker` and `lqsm standalone` processes
//! on loopback ports with temporary data directories, driven through the `lqsm` CLI
//! the way a person would drive them.
#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

mod e2e_support;

use e2e_support::{Cli, Cluster, finished};
use lqsm_testkit::{DEADLINE, Ran, ServerProcess, eventually_explained, process_gone, run_lqsm};
use std::collections::BTreeMap;
use std::time::Duration;
use uuid::Uuid;

/// The ids `lqsm submit --count N -o json` printed.
fn submit_many(cli: &Cli, args: &[&str]) -> Vec<Uuid> {
    let mut all = vec!["submit"];
    all.extend_from_slice(args);
    let printed: serde_json::Value = cli.json(&all);
    printed["ids"]
        .as_array()
        .unwrap_or_else(|| panic!("`lqsm submit --count` printed no ids: {printed}"))
        .iter()
        .map(|id| id.as_str().unwrap().parse().unwrap())
        .collect()
}

#[test]
fn submit_wait_returns_the_command_exit_code_and_logs_keep_both_streams() {
    let c = Cluster::start(&[], &[("w1", 1), ("w2", 1)]);

    let ran = c.cli.run(&[
        "-o",
        "json",
        "submit",
        "--wait",
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 0",
    ]);
    assert_eq!(ran.code(), Some(0), "{ran:#?}\n{}", c.logs());
    let job: lqsm_api::JobView = ran.json();
    assert_eq!(job.state, lqsm_api::JobState::Succeeded, "{job:#?}");

    let logs = c.cli.run(&["job", "logs", &job.id.to_string()]);
    logs.success();
    let lines: Vec<&str> = logs.stdout.lines().map(str::trim).collect();
    assert!(lines.contains(&"out"), "stdout line missing: {logs:#?}");
    assert!(lines.contains(&"err"), "stderr line missing: {logs:#?}");

    let ran = c
        .cli
        .run(&["-o", "json", "submit", "--wait", "--", "sh", "-c", "exit 3"]);
    assert_eq!(ran.code(), Some(3), "{ran:#?}\n{}", c.logs());
    let failed_id = ran.json::<lqsm_api::JobView>().id;
    let job = c.cli.job(failed_id);
    assert_eq!(job.state, lqsm_api::JobState::Failed, "{job:#?}");
    assert_eq!(job.exit_code, Some(3), "{job:#?}");
}

/// Kills the process on drop if it is still the `sleep 300` the job left behind, so
/// a failing test leaves nothing running.
struct Orphan(u32);

impl Drop for Orphan {
    fn drop(&mut self) {
        if !process_gone(self.0, ORPHAN_CMDLINE) {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &self.0.to_string()])
                .status();
        }
    }
}

const ORPHAN_CMDLINE: &str = "sleep\x00300\x00";

#[test]
fn a_timeout_kills_the_whole_process_group_leaving_no_orphan() {
    let c = Cluster::start(&[], &[("w1", 1)]);
    let pidfile = c.path("grandchild.pid");
    let script = format!("sleep 300 & echo $! > '{}'; wait", pidfile.display());

    // 3 s: room for a loaded machine to start the shell and its grandchild before the
    // timeout (the timeout's own length is not what this test measures).
    let id = c
        .cli
        .submit(&["--timeout", "3s", "--", "sh", "-c", &script]);
    let pid: u32 = c.eventually("the job to start its grandchild and write its pid", || {
        let text = std::fs::read_to_string(&pidfile).ok()?;
        text.ends_with('\n').then(|| text.trim().parse().ok())?
    });
    let _orphan = Orphan(pid);
    let job = c.wait_finished(id);
    assert_eq!(job.state, lqsm_api::JobState::Failed, "{job:#?}");
    assert_eq!(job.attempts.len(), 1, "{job:#?}");
    assert_eq!(
        job.attempts[0].outcome,
        Some(lqsm_api::AttemptOutcome::TimedOut),
        "{job:#?}"
    );
    // The attempt may be recorded as timed out a moment before its process group is
    // gone (on a loaded machine, more than a moment): wait for it, with a deadline far
    // below the grandchild's 300 s.
    eventually_explained(
        &format!("the grandchild `sleep 300` (pid {pid}) of the timed-out job to be gone"),
        Duration::from_secs(10),
        || c.logs(),
        || process_gone(pid, ORPHAN_CMDLINE).then_some(()),
    );
}

/// The most attempts that ran at the same time, from the jobs' own timestamps
/// (an attempt holds its resources from its start to its end).
fn most_at_once(jobs: &[lqsm_api::JobView]) -> usize {
    let mut edges: Vec<(u64, i32)> = Vec::new();
    for a in jobs.iter().flat_map(|j| &j.attempts) {
        let start = a.started_at_ms.unwrap_or(a.scheduled_at_ms);
        let end = a.finished_at_ms.expect("a finished job's attempts ended");
        edges.push((start, 1));
        edges.push((end, -1));
    }
    // An end and a start at the same millisecond do not overlap.
    edges.sort();
    let (mut now, mut most) = (0i32, 0i32);
    for (_, step) in edges {
        now += step;
        most = most.max(now);
    }
    most as usize
}

#[test]
fn a_worker_never_runs_more_than_its_cpus_allow() {
    let c = Cluster::start(&[], &[("w1", 2)]);
    let ids = submit_many(&c.cli, &["--count", "6", "--cpus", "1", "--", "sleep", "1"]);
    assert_eq!(ids.len(), 6);

    let mut busy_samples = 0;
    let jobs = c.eventually("the six jobs to finish", || {
        let w1 = c.worker_view("w1").expect("w1 is listed");
        assert!(
            w1.used.cpu <= 2.0 + 1e-9,
            "w1 holds more cpu than it has: {w1:#?}"
        );
        assert!(
            w1.attempts <= 2,
            "w1 runs more attempts than it has cpus: {w1:#?}"
        );
        if w1.attempts > 0 {
            busy_samples += 1;
        }
        let jobs = c.cli.jobs();
        (jobs.len() == 6 && jobs.iter().all(finished)).then_some(jobs)
    });
    assert!(busy_samples > 0, "no sample saw the worker busy");
    for job in &jobs {
        assert_eq!(
            job.state,
            lqsm_api::JobState::Succeeded,
            "{job:#?}\n{}",
            c.logs()
        );
        assert_eq!(job.attempts.len(), 1, "{job:#?}");
    }
    assert_eq!(most_at_once(&jobs), 2, "{jobs:#?}");
}

#[test]
fn a_job_on_a_killed_worker_is_retried_on_another() {
    // 10 s: the surviving worker stops its attempts (self-fencing) 8 s after its last
    // answered poll, and polls at least every 2 s; a shorter timeout (it was 6 s) lets
    // a loaded machine's slow answer fence the survivor and stop the retry too. The
    // test does not measure the timeout, only waits for it once.
    let mut c = Cluster::start(
        &["--heartbeat-timeout-ms", "10000"],
        &[("w1", 1), ("w2", 1)],
    );
    let id = c.cli.submit(&["--retries", "1", "--", "sleep", "2"]);
    let running = c.wait_state(id, lqsm_api::JobState::Running);
    let first_worker = running.attempts[0].worker;
    let victim = c.worker_name(first_worker);

    c.worker(&victim).kill_9();
    let job = c.wait_finished(id);

    assert_eq!(
        job.state,
        lqsm_api::JobState::Succeeded,
        "{job:#?}\n{}",
        c.logs()
    );
    assert_eq!(job.attempts.len(), 2, "{job:#?}");
    assert_eq!(job.attempts[0].worker, first_worker, "{job:#?}");
    assert_eq!(
        job.attempts[0].outcome,
        Some(lqsm_api::AttemptOutcome::Lost),
        "{job:#?}"
    );
    assert_ne!(job.attempts[1].worker, first_worker, "{job:#?}");
    assert_eq!(
        job.attempts[1].outcome,
        Some(lqsm_api::AttemptOutcome::Succeeded),
        "{job:#?}"
    );
    let killed = c.worker_view(&victim).expect("the killed worker is listed");
    assert_eq!(killed.state, lqsm_api::WorkerState::Lost, "{killed:#?}");
}

#[test]
fn running_jobs_survive_a_server_restart_and_are_recorded_once() {
    let mut c = Cluster::start(&[], &[("w1", 2), ("w2", 2)]);
    // 8 s: all four must be seen running at once, and still run when the server stops;
    // on a loaded machine their starts can be seconds apart (it was 2 s).
    let ids = submit_many(&c.cli, &["--count", "4", "--", "sleep", "8"]);
    assert_eq!(ids.len(), 4);
    c.eventually("the four jobs to run", || {
        let jobs = c.cli.jobs();
        (jobs.len() == 4 && jobs.iter().all(|j| j.state == lqsm_api::JobState::Running))
            .then_some(())
    });

    let status = c.server.terminate();
    assert_eq!(
        status.code(),
        Some(0),
        "the server should exit with 0 after SIGTERM; its log:\n{}",
        c.server.log_tail()
    );
    c.server.restart();

    let jobs = c.eventually("the four jobs to finish after the restart", || {
        let jobs = c.cli.jobs();
        (jobs.len() == 4 && jobs.iter().all(finished)).then_some(jobs)
    });
    for job in &jobs {
        assert_eq!(
            job.state,
            lqsm_api::JobState::Succeeded,
            "{job:#?}\n{}",
            c.logs()
        );
        assert_eq!(job.attempts.len(), 1, "{job:#?}");
        assert_eq!(
            job.attempts[0].outcome,
            Some(lqsm_api::AttemptOutcome::Succeeded),
            "{job:#?}"
        );
    }
    let held = jobs_by_state(&c.cli);
    assert_eq!(
        held,
        BTreeMap::from([(lqsm_api::JobState::Succeeded, 4)]),
        "jobs by state"
    );
    let counts = queue_counts(&c.cli, "root.default");
    assert_eq!(counts.succeeded, 4, "{counts:#?}");
    assert_eq!(counts.failed, 0, "{counts:#?}");
    for name in ["w1", "w2"] {
        let w = c.worker_view(name).expect("the worker is listed");
        assert_eq!(w.state, lqsm_api::WorkerState::Active, "{w:#?}");
    }
}

/// The lifetime counters of a queue (`lqsm queue show PATH -o json`).
fn queue_counts(cli: &Cli, path: &str) -> lqsm_api::QueueCounts {
    cli.json::<lqsm_api::QueueView>(&["queue", "show", path])
        .counts
}

#[test]
fn queue_counters_survive_a_server_restart() {
    let mut c = Cluster::start(&[], &[("w1", 1)]);
    c.cli.run(&["submit", "--wait", "--", "true"]).success();
    let before = queue_counts(&c.cli, "root.default");
    assert_eq!((before.submitted, before.succeeded), (1, 1), "{before:#?}");

    let status = c.server.terminate();
    assert_eq!(status.code(), Some(0), "{}", c.server.log_tail());
    c.server.restart();

    let after = queue_counts(&c.cli, "root.default");
    assert_eq!(
        (after.submitted, after.succeeded),
        (before.submitted, before.succeeded),
        "the lifetime counters of root.default changed across a restart: {after:#?}"
    );
}

#[test]
fn a_declared_queue_changed_through_the_api_does_not_stop_a_restart() {
    let config_dir = tempfile::TempDir::with_prefix("lqsm-config-").unwrap();
    let config = config_dir.path().join("lqsm.toml");
    std::fs::write(
        &config,
        "[[queues]]\npath = \"root.etl\"\ncapacity = 60.0\nmax_capacity = 100.0\n",
    )
    .unwrap();
    let mut c = Cluster::start(&["--config", config.to_str().unwrap()], &[]);
    let declared: lqsm_api::QueueView = c.cli.json(&["queue", "show", "root.etl"]);
    assert_eq!(declared.capacity, 60.0, "{declared:#?}");

    c.cli
        .run(&["queue", "update", "root.etl", "--capacity", "40"])
        .success();
    let status = c.server.terminate();
    assert_eq!(status.code(), Some(0), "{}", c.server.log_tail());
    c.server.restart();

    let kept: lqsm_api::QueueView = c.cli.json(&["queue", "show", "root.etl"]);
    assert_eq!(
        kept.capacity, 40.0,
        "the API's change must survive the restart: {kept:#?}"
    );
    let log = c.server.log_tail();
    assert!(
        log.contains("capacity: config 60.0, stored 40.0"),
        "the server must warn about the difference: {log}"
    );
}

#[test]
fn queue_import_creates_a_file_of_queues_once_and_reports_the_bad_ones() {
    let c = Cluster::start(&[], &[]);
    c.cli
        .run(&["queue", "update", "root.default", "--capacity", "10"])
        .success();
    let mut toml = String::from("[[queues]]\npath = \"root.users\"\ncapacity = 90.0\n");
    for i in 0..300 {
        toml.push_str(&format!(
            "[[queues]]\npath = \"root.users.u{i}\"\ncapacity = 0.25\n"
        ));
    }
    let good = c.path("queues.toml");
    std::fs::write(&good, &toml).unwrap();
    let first = c.cli.run(&["queue", "import", good.to_str().unwrap()]);
    first.success();
    assert!(
        first.stdout.contains("created 301, unchanged 0, refused 0"),
        "{first:#?}"
    );
    let u299: lqsm_api::QueueView = c.cli.json(&["queue", "show", "root.users.u299"]);
    assert_eq!(u299.capacity, 0.25, "{u299:#?}");

    let again = c.cli.run(&["queue", "import", good.to_str().unwrap()]);
    again.success();
    assert!(
        again.stdout.contains("created 0, unchanged 301, refused 0"),
        "{again:#?}"
    );

    let bad = c.path("bad.json");
    std::fs::write(
        &bad,
        r#"{"queues": [{"path": "root.users.extra"}, {"path": "root.users.over", "capacity": 150}]}"#,
    )
    .unwrap();
    let refused = c.cli.run(&["queue", "import", bad.to_str().unwrap()]);
    assert_eq!(refused.code(), Some(1), "{refused:#?}");
    assert!(
        refused.stdout.contains("created 1, unchanged 0, refused 1")
            && refused.stdout.contains("root.users.over"),
        "{refused:#?}"
    );
}

/// Jobs the cluster holds by state, without zero counts (`lqsm cluster -o json`).
fn jobs_by_state(cli: &Cli) -> BTreeMap<lqsm_api::JobState, u64> {
    let mut jobs = cli.cluster().jobs;
    jobs.retain(|_, n| *n > 0);
    jobs
}

#[test]
fn a_drained_worker_takes_no_new_jobs_until_undrained() {
    let c = Cluster::start(&[], &[("w1", 1), ("w2", 1)]);
    let w1 = c.worker_view("w1").unwrap();
    let w2 = c.worker_view("w2").unwrap();

    let drained: lqsm_api::WorkerView = c.cli.json(&["workers", "drain", &w1.id.to_string()]);
    assert_eq!(
        drained.state,
        lqsm_api::WorkerState::Draining,
        "{drained:#?}"
    );
    assert_eq!(
        c.worker_view("w1").unwrap().state,
        lqsm_api::WorkerState::Draining
    );

    let ids = submit_many(&c.cli, &["--count", "3", "--", "true"]);
    for id in ids {
        let job = c.wait_finished(id);
        assert_eq!(job.state, lqsm_api::JobState::Succeeded, "{job:#?}");
        assert!(
            job.attempts.iter().all(|a| a.worker == w2.id),
            "a job ran on the drained worker: {job:#?}"
        );
    }
    assert_eq!(
        c.worker_view("w1").unwrap().state,
        lqsm_api::WorkerState::Draining
    );

    let back: lqsm_api::WorkerView = c.cli.json(&["workers", "undrain", &w1.id.to_string()]);
    assert_eq!(back.state, lqsm_api::WorkerState::Active, "{back:#?}");
    // With w2 drained in turn, the next job can only go to w1.
    c.cli
        .run(&["workers", "drain", &w2.id.to_string()])
        .success();
    let after = c.cli.submit(&["--", "true"]);
    let job = c.wait_finished(after);
    assert_eq!(job.state, lqsm_api::JobState::Succeeded, "{job:#?}");
    assert!(
        job.attempts.iter().all(|a| a.worker == w1.id),
        "the undrained worker must take work again: {job:#?}"
    );
}

#[test]
fn sigterm_lets_a_worker_finish_its_job_then_exit_0() {
    let mut c = Cluster::start(&[], &[("w1", 1)]);
    // Long enough to be seen running (each look starts a CLI process) with SIGTERM
    // sent before it ends, on a loaded machine (it was 2 s).
    let id = c.cli.submit(&["--", "sleep", "5"]);
    c.wait_state(id, lqsm_api::JobState::Running);

    c.worker("w1").sigterm();
    let status = c.worker("w1").wait_exit(DEADLINE);
    assert_eq!(
        status.code(),
        Some(0),
        "the worker should exit with 0 after SIGTERM; its log:\n{}",
        c.logs()
    );

    // The worker reports before it exits.
    let job = c.cli.job(id);
    assert_eq!(
        job.state,
        lqsm_api::JobState::Succeeded,
        "{job:#?}\n{}",
        c.logs()
    );
    assert_eq!(job.attempts.len(), 1, "{job:#?}");
}

#[test]
fn cli_prints_trees_and_json_and_refuses_bad_input_with_a_reason() {
    let c = Cluster::start(&[], &[]);

    c.cli
        .run(&["queue", "create", "root.etl", "--capacity", "30"])
        .success();

    let tree = c.cli.run(&["queue", "list"]);
    tree.success();
    assert!(
        tree.stdout.lines().any(|l| l.starts_with("root ")),
        "no root line: {tree:#?}"
    );
    assert!(
        tree.stdout.lines().any(|l| l.contains("└─ etl")),
        "root.etl is not drawn as the last child of root: {tree:#?}"
    );

    let root: lqsm_api::QueueView = c.cli.json(&["queue", "list"]);
    let etl = root
        .children
        .iter()
        .find(|q| q.path == "root.etl")
        .unwrap_or_else(|| panic!("root.etl missing from the JSON tree: {root:#?}"));
    assert_eq!(etl.capacity, 30.0, "{etl:#?}");

    let unknown = c.cli.run(&["submit", "--queue", "root.nope", "--", "true"]);
    assert_refused(&unknown, "root.nope");

    let unreachable = run_lqsm(
        &["--server", "http://127.0.0.1:9", "submit", "--", "true"],
        DEADLINE,
    );
    assert_refused(&unreachable, "cannot reach");

    let bad_size = c.cli.run(&["submit", "--memory", "8X", "--", "true"]);
    assert_refused(&bad_size, "8X");
    assert!(bad_size.stderr.contains("size"), "{bad_size:#?}");

    let printed: serde_json::Value = c.cli.json(&["submit", "--", "true"]);
    let id = printed["id"].as_str().unwrap_or_default();
    assert!(
        id.parse::<Uuid>().is_ok(),
        "`lqsm submit -o json` printed no job id: {printed}"
    );

    // `job get` says who submitted it and names states as the API does.
    let shown = c.cli.run(&["job", "get", id]);
    shown.success();
    assert!(
        shown.stdout.contains(" by anonymous"),
        "no submitter in: {shown:#?}"
    );
    let bad_state = c.cli.run(&["job", "list", "--state", "done"]);
    assert_refused(&bad_state, "`done` is not a job state");
}

#[test]
fn job_list_shows_the_newest_first_and_says_how_to_see_more() {
    let c = Cluster::start(&[], &[]);
    // No worker: the jobs stay pending, so the listing is stable.
    let ids: Vec<Uuid> = (0..5).map(|_| c.cli.submit(&["--", "true"])).collect();
    let newest_first: Vec<Uuid> = ids.iter().rev().copied().collect();

    let first_page = c.cli.run(&["job", "list", "--limit", "2"]);
    first_page.success();
    let shown: Vec<&str> = first_page
        .stdout
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(
        shown,
        [newest_first[0].to_string(), newest_first[1].to_string()],
        "the first page must hold the two newest jobs: {first_page:#?}"
    );
    assert!(
        first_page.stderr.contains("--cursor") && first_page.stderr.contains("--all"),
        "a partial listing must say how to see more: {first_page:#?}"
    );

    let page: lqsm_api::JobList = c.cli.json(&["job", "list", "--limit", "2"]);
    let cursor = page.next_cursor.expect("three more jobs match");
    let second: lqsm_api::JobList =
        c.cli
            .json(&["job", "list", "--limit", "2", "--cursor", cursor.as_str()]);
    let second_ids: Vec<Uuid> = second.jobs.iter().map(|j| j.id).collect();
    assert_eq!(second_ids, newest_first[2..4], "{second:#?}");

    let all: lqsm_api::JobList = c.cli.json(&["job", "list", "--limit", "2", "--all"]);
    let all_ids: Vec<Uuid> = all.jobs.iter().map(|j| j.id).collect();
    assert_eq!(all_ids, newest_first, "{all:#?}");
    assert_eq!(all.next_cursor, None);

    let oldest: lqsm_api::JobList = c.cli.json(&["job", "list", "--oldest", "--limit", "1"]);
    assert_eq!(oldest.jobs.first().map(|j| j.id), Some(ids[0]));

    let everything = c.cli.run(&["job", "list"]);
    everything.success();
    assert!(
        !everything.stderr.contains("--cursor"),
        "a complete listing must not promise more: {everything:#?}"
    );
}

#[test]
fn submit_asks_for_custom_resources_that_only_a_worker_offering_them_fits() {
    let mut c = Cluster::start(&[], &[("plain", 2)]);
    let id = c.cli.submit(&["--resource", "licence=1", "--", "true"]);
    let job = c.cli.job(id);
    assert_eq!(
        job.resources.custom.get("licence"),
        Some(&1),
        "the request must carry the custom resource: {job:#?}"
    );
    assert_eq!(
        job.state,
        lqsm_api::JobState::Pending,
        "no worker offers a licence: {job:#?}"
    );

    let bad = c
        .cli
        .run(&["submit", "--resource", "licence=two", "--", "true"]);
    assert_refused(&bad, "licence=two");

    c.add_worker_with("licensed", &["--cpus", "2", "--resource", "licence=1"]);
    let done = c.wait_finished(id);
    assert_eq!(done.state, lqsm_api::JobState::Succeeded, "{done:#?}");
    assert_eq!(
        done.attempts.last().map(|a| c.worker_name(a.worker)),
        Some("licensed".to_owned()),
        "{done:#?}"
    );
}

/// Asserts the command failed, said `needle` on stderr, and did not panic.
fn assert_refused(ran: &Ran, needle: &str) {
    assert!(
        !ran.status.success(),
        "`{}` should fail: {ran:#?}",
        ran.command
    );
    assert!(ran.stderr.contains(needle), "expected `{needle}`: {ran:#?}");
    assert!(!ran.stderr.contains("panicked"), "{ran:#?}");
    assert!(!ran.stderr.contains("backtrace"), "{ran:#?}");
}

#[test]
fn bench_with_its_own_worker_completes_every_job() {
    let c = Cluster::start(&[], &[]);
    let ran = c.cli.run(&[
        "-o",
        "json",
        "bench",
        "-n",
        "500",
        "--batch",
        "100",
        "--workers",
        "1",
        "--timeout-s",
        "25",
    ]);
    assert_eq!(ran.code(), Some(0), "{ran:#?}\n{}", c.logs());
    let report: serde_json::Value = ran.json();
    assert_eq!(report["completed"], 500, "{report:#}");
    assert_eq!(report["failed"], 0, "{report:#}");
    for rate in ["submit_rate", "completion_rate"] {
        let value = report[rate].as_f64().unwrap_or_default();
        assert!(value > 0.0, "{rate} should be positive: {report:#}");
    }
}

#[test]
fn standalone_alone_runs_a_command_job() {
    let mut standalone = ServerProcess::builder().standalone().start();
    let cli = Cli::new(&standalone.url());

    let ran = cli.run(&[
        "-o",
        "json",
        "submit",
        "--wait",
        "--",
        "sh",
        "-c",
        "echo standalone-ok",
    ]);
    assert_eq!(ran.code(), Some(0), "{ran:#?}\n{}", standalone.log_tail());
    let job: lqsm_api::JobView = ran.json();
    assert_eq!(job.state, lqsm_api::JobState::Succeeded, "{job:#?}");
    let logs = cli.run(&["job", "logs", &job.id.to_string()]);
    assert!(logs.success().stdout.contains("standalone-ok"), "{logs:#?}");

    let status = standalone.terminate();
    assert_eq!(
        status.code(),
        Some(0),
        "standalone should exit with 0 after SIGTERM; its log:\n{}",
        standalone.log_tail()
    );
}

#[test]
fn queue_rate_limits_are_set_and_shown_and_a_held_job_says_until_when() {
    // The CLI against an in-process server, and a worker played by the test: nothing
    // here needs a server or worker process.
    let server = lqsm_testkit::BlockingTestServer::start();
    let cli = Cli::new(server.url());
    cli.run(&[
        "queue",
        "create",
        "root.limited",
        "--rate-limit",
        "1/m",
        "--burst",
        "1",
        "--key-limit",
        "customer=5/s:2",
    ])
    .success();
    let shown = cli.run(&["queue", "show", "root.limited"]);
    shown.success();
    assert!(
        shown.stdout.contains("rate limit:   1/m (burst 1)"),
        "{shown:#?}"
    );
    assert!(
        shown
            .stdout
            .contains("key limits:   customer 5/s (burst 2) (per value)"),
        "{shown:#?}"
    );
    let updated: lqsm_api::QueueView =
        cli.json(&["queue", "update", "root.limited", "--rate-limit", "2/m"]);
    let limit = updated.settings.rate_limit.unwrap();
    assert_eq!((limit.rate.as_str(), limit.burst), ("2/m", Some(1)));
    assert_refused(
        &cli.run(&["queue", "update", "root.limited", "--rate-limit", "10/d"]),
        "100/s",
    );

    let mut worker = lqsm_testkit::SimWorker::register(&server.api(), "limited");
    let submit = || {
        cli.submit(&[
            "--queue",
            "root.limited",
            "--function",
            "limited",
            "--key",
            "customer=acme",
        ])
    };
    let first = submit();
    assert_eq!(worker.next_assignment().job, first);
    let second = submit();
    let held = cli.run(&["job", "get", &second.to_string()]);
    held.success();
    assert!(
        held.stdout.contains("waiting:    rate limited until "),
        "{held:#?}"
    );
    assert!(
        held.stdout.contains("keys:       customer=acme"),
        "{held:#?}"
    );
    let queue = cli.run(&["queue", "show", "root.limited"]);
    assert!(
        queue
            .stdout
            .contains("waiting:      next job rate limited until "),
        "{queue:#?}"
    );
}

#[test]
fn job_cancel_takes_one_job_or_every_job_of_a_tag() {
    let c = Cluster::start(&[], &[]);
    // No worker: the jobs stay pending.
    let tagged: Vec<Uuid> = (0..3)
        .map(|_| c.cli.submit(&["--tag", "nightly", "--", "true"]))
        .collect();
    let other = c.cli.submit(&["--", "true"]);

    let bulk = c
        .cli
        .run(&["job", "cancel", "--tag", "nightly", "--reason", "bad input"]);
    bulk.success();
    assert!(bulk.stdout.contains("cancelled 3 jobs"), "{bulk:#?}");
    for id in &tagged {
        assert_eq!(c.cli.job(*id).state, lqsm_api::JobState::Cancelled);
    }
    assert_eq!(c.cli.job(other).state, lqsm_api::JobState::Pending);

    // Naming a job and a selection at once is refused before anything is sent.
    let both = c
        .cli
        .run(&["job", "cancel", &other.to_string(), "--tag", "nightly"]);
    assert_ne!(both.code(), Some(0), "{both:#?}");
    let one = c.cli.run(&["job", "cancel", &other.to_string()]);
    one.success();
    assert_eq!(c.cli.job(other).state, lqsm_api::JobState::Cancelled);

    // A cancelled job runs again as a new job, linked to it.
    let again: lqsm_api::Submitted = c.cli.json(&["job", "retry", &other.to_string()]);
    assert_ne!(again.id, other);
    let shown = c.cli.run(&["job", "get", &again.id.to_string()]);
    shown.success();
    assert!(
        shown.stdout.contains(&format!("retry of:   {other}")),
        "{shown:#?}"
    );
    assert_eq!(c.cli.job(other).state, lqsm_api::JobState::Cancelled);
}

#[test]
fn job_logs_follow_prints_a_running_commands_output_to_its_end() {
    let c = Cluster::start(&[], &[("w1", 1)]);
    let id = c.cli.submit(&[
        "--",
        "sh",
        "-c",
        "for i in 1 2 3 4 5 6 7 8 9 10; do echo \"line $i\"; sleep 0.2; done",
    ]);
    // Started while the job waits or runs; ends once it has finished, having printed
    // all of its output once.
    let followed = c.cli.run(&["job", "logs", &id.to_string(), "--follow"]);
    followed.success();
    let all: String = (1..=10).map(|i| format!("line {i}\n")).collect();
    assert_eq!(followed.stdout, all, "{followed:#?}\n{}", c.logs());
    assert!(c.cli.job(id).state.is_terminal());
}

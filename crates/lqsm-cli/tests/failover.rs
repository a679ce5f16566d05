//! High availability on PostgreSQL, with real `lqsm server` and `lqsm worker` processes
//! sharing one database: one leads, the others follow and pass calls on; a killed,
//! paused or disconnected leader is replaced, and nothing acknowledged is lost or run
//! twice.
//!
//! Needs PostgreSQL at 127.0.0.1:5432 (trust auth, database `test`), or
//! `LQSM_TEST_POSTGRES_URL`. Each test works in a schema of its own, dropped at its end.
#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.
#![allow(clippy::print_stdout)] // Each run prints its acknowledged, lost and twice-run counts.

mod e2e_support;

use lqsm_api as api;
use lqsm_testkit::wait::{eventually_explained, eventually_within};
use lqsm_testkit::{ServerProcess, WorkerProcess};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tempfile::TempDir;
use uuid::Uuid;

use lqsm_testkit::postgres::{TestSchema, connect, url};

/// Cuts every database connection of the servers using `schema` (they name their
/// connections after it).
fn terminate_connections(schema: &TestSchema) -> i64 {
    let row = connect()
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
             WHERE application_name = $1",
            &[&schema.name],
        )
        .unwrap();
    row.get(0)
}

/// Several servers on one schema; server `i` is node `s{i}`.
struct Servers {
    servers: Vec<Option<ServerProcess>>,
    workers: Vec<WorkerProcess>,
    schema: TestSchema,
    /// Marks written by the jobs themselves; last, so removed after the processes stop.
    dir: TempDir,
}

impl Servers {
    /// Starts `n` servers one after the other: the first leads.
    fn start(n: usize) -> Servers {
        let schema = TestSchema::new("lqsm_failover");
        let mut servers = Servers {
            servers: Vec::new(),
            workers: Vec::new(),
            schema,
            dir: TempDir::with_prefix("lqsm-failover-").unwrap(),
        };
        for i in 0..n {
            let server = ServerProcess::builder().config(&servers.config(i)).start();
            servers.servers.push(Some(server));
        }
        servers.wait_for_leader(Duration::from_secs(30));
        servers
    }

    fn config(&self, i: usize) -> String {
        format!(
            "[store]\nbackend = \"postgres\"\nurl = \"{}?application_name={}\"\nschema = \"{}\"\nsslmode = \"disable\"\nnode = \"s{i}\"\n",
            url(),
            self.schema.name,
            self.schema.name
        )
    }

    fn server(&self, i: usize) -> &ServerProcess {
        self.servers[i].as_ref().expect("this server runs")
    }

    fn running(&self) -> impl Iterator<Item = (usize, &ServerProcess)> {
        self.servers
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|s| (i, s)))
    }

    /// Every running server's URL, comma-separated (as workers and clients take them).
    fn urls(&self) -> String {
        self.servers
            .iter()
            .flatten()
            .map(ServerProcess::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    fn logs(&self) -> String {
        let mut text = String::new();
        for (i, server) in self.running() {
            text.push_str(&format!("--- server s{i}:\n{}\n", server.log_tail()));
        }
        for worker in &self.workers {
            text.push_str(&format!(
                "--- worker {}:\n{}\n",
                worker.name(),
                worker.log_tail()
            ));
        }
        text
    }

    /// The store as server `i` reports it: who leads, at which epoch, which servers.
    fn store_seen_by(&self, i: usize) -> Option<api::StoreSummary> {
        let reply = self.server(i).api().try_get("/v1/cluster").ok()?;
        if reply.status != 200 {
            return None;
        }
        reply.json::<api::ClusterSummary>().store
    }

    /// Waits until every running server agrees on a live leader among them; returns its
    /// index and epoch.
    fn wait_for_leader(&self, deadline: Duration) -> (usize, u64) {
        eventually_explained(
            "every server to agree on one running leader",
            deadline,
            || self.logs(),
            || {
                let seen: Vec<api::StoreSummary> = self
                    .running()
                    .map(|(i, _)| self.store_seen_by(i))
                    .collect::<Option<_>>()?;
                let first = seen.first()?;
                let leader: usize = first.leader.strip_prefix('s')?.parse().ok()?;
                let agreed = seen
                    .iter()
                    .all(|s| s.leader == first.leader && s.epoch == first.epoch);
                (agreed && self.servers.get(leader)?.is_some()).then_some((leader, first.epoch))
            },
        )
    }

    fn start_worker(&mut self, name: &str) {
        let worker = WorkerProcess::start(&self.urls(), name, &["--cpus", "4", "--memory", "1G"]);
        self.workers.push(worker);
    }

    fn marks(&self) -> std::path::PathBuf {
        self.dir.path().join("completed")
    }

    /// A command job with a client-chosen id that appends its id to the marks file.
    fn marking_job(&self, id: Uuid) -> api::SubmitJob {
        e2e_support::marking_job(id, &self.marks(), "")
    }

    /// Submits `job` to the servers in turn starting at `first`, the same job (same id)
    /// again after a refusal or a connection error, until one acknowledges it.
    fn submit_until_acknowledged(&self, job: &api::SubmitJob, first: usize) -> usize {
        let started = Instant::now();
        let n = self.servers.len();
        for attempt in 0.. {
            let i = (first + attempt) % n;
            if let Some(server) = &self.servers[i]
                && let Ok(reply) = server.api().try_post("/v1/jobs", job)
                && (reply.status == 200 || reply.status == 201)
            {
                return i;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "no server acknowledged a job for a minute:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        unreachable!()
    }

    /// A job's state as any running server answers it.
    fn job_state(&self, id: Uuid) -> Option<api::JobState> {
        self.running().find_map(|(_, server)| {
            let reply = server.api().try_get(&format!("/v1/jobs/{id}")).ok()?;
            (reply.status == 200).then(|| reply.json::<api::JobView>().state)
        })
    }

    /// How many times each job's command ran to completion.
    fn completions(&self) -> HashMap<Uuid, usize> {
        e2e_support::completions(&self.marks())
    }

    /// Waits until every acknowledged job succeeded, then checks that each ran to
    /// completion exactly once and that nothing else ran.
    fn assert_each_completed_once(&self, acknowledged: &[Uuid]) {
        eventually_explained(
            "every acknowledged job to succeed",
            Duration::from_secs(120),
            || {
                let unfinished: Vec<_> = acknowledged
                    .iter()
                    .map(|id| (id, self.job_state(*id)))
                    .filter(|(_, state)| *state != Some(api::JobState::Succeeded))
                    .collect();
                format!("not succeeded: {unfinished:?}\n{}", self.logs())
            },
            || {
                acknowledged
                    .iter()
                    .all(|id| self.job_state(*id) == Some(api::JobState::Succeeded))
                    .then_some(())
            },
        );
        let completions = self.completions();
        let twice: Vec<_> = completions.iter().filter(|(_, n)| **n > 1).collect();
        let missing: Vec<_> = acknowledged
            .iter()
            .filter(|id| !completions.contains_key(id))
            .collect();
        println!(
            "acknowledged {}, lost {}, completed twice {}",
            acknowledged.len(),
            missing.len(),
            twice.len()
        );
        assert!(twice.is_empty(), "jobs completed twice: {twice:?}");
        assert!(
            missing.is_empty(),
            "acknowledged jobs never run: {missing:?}"
        );
        assert_eq!(completions.len(), acknowledged.len());
    }

    fn signal(&self, i: usize, signal: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.server(i).pid().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }
}

/// Whether a connection to `port` holds bytes its (paused) server has not read yet.
fn bytes_waiting(port: u16) -> bool {
    let out = std::process::Command::new("ss")
        .args([
            "-tnH",
            "state",
            "established",
            &format!("( sport = :{port} )"),
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|line| line.split_whitespace().next().is_some_and(|q| q != "0"))
}

#[test]
fn kill_9_of_the_leader_under_load_loses_nothing_and_runs_nothing_twice() {
    let mut servers = Servers::start(3);
    let (leader, epoch) = servers.wait_for_leader(Duration::from_secs(30));
    servers.start_worker("w1");
    servers.start_worker("w2");
    let mut acknowledged = Vec::new();
    let mut killed_at = None;
    for n in 0..150 {
        let id = Uuid::now_v7();
        let job = servers.marking_job(id);
        servers.submit_until_acknowledged(&job, n);
        acknowledged.push(id);
        if n == 50 {
            servers.servers[leader].as_mut().unwrap().kill_9();
            servers.servers[leader] = None;
            killed_at = Some(Instant::now());
        }
    }
    let (new_leader, new_epoch) = servers.wait_for_leader(Duration::from_secs(30));
    println!(
        "new leader s{new_leader} at epoch {new_epoch}, {:?} after the kill",
        killed_at.map(|t| t.elapsed())
    );
    assert_ne!(new_leader, leader);
    assert!(new_epoch > epoch);
    servers.assert_each_completed_once(&acknowledged);

    // The killed server comes back as a follower, and every server lists all three.
    let server = ServerProcess::builder()
        .config(&servers.config(leader))
        .start();
    servers.servers[leader] = Some(server);
    let (leader_now, _) = servers.wait_for_leader(Duration::from_secs(30));
    assert_eq!(
        leader_now, new_leader,
        "a restarted server does not take over"
    );
    let store = servers.store_seen_by(leader).unwrap();
    let nodes: Vec<(&str, bool)> = store
        .servers
        .iter()
        .map(|s| (s.node.as_str(), s.leader))
        .collect();
    assert_eq!(nodes.len(), 3, "{nodes:?}");
    assert_eq!(nodes.iter().filter(|(_, leads)| *leads).count(), 1);
    // `lqsm cluster`, given every server, shows them with the one leading.
    let shown = lqsm_testkit::run_lqsm(
        &["cluster", "--server", &servers.urls()],
        Duration::from_secs(30),
    );
    let text = &shown.success().stdout;
    for i in 0..3 {
        assert!(text.contains(&format!("server:    s{i} at ")), "{text}");
    }
    assert!(
        text.contains(&format!(
            "s{new_leader} at {}, leading",
            servers.server(new_leader).url()
        )),
        "{text}"
    );
    // The new leader counted its takeover.
    let metrics = servers.server(new_leader).api().get("/metrics").body;
    assert!(metrics.contains("lqsm_failovers_total 1"), "{metrics}");
}

#[test]
fn a_paused_leader_is_fenced_when_it_wakes_and_none_of_its_writes_land() {
    let servers = Servers::start(2);
    let (old, _) = servers.wait_for_leader(Duration::from_secs(30));
    let other = 1 - old;
    servers.signal(old, "STOP");
    // (Asked of the follower's own figures: its other reads would go to the paused leader.)
    eventually_within("the follower to take over", Duration::from_secs(30), || {
        let reply = servers.server(other).api().try_get("/metrics").ok()?;
        reply.body.contains("lqsm_leader 1").then_some(())
    });
    let new = other;
    let epoch = servers.store_seen_by(other).unwrap().epoch;

    // A submission sent to the paused leader waits in its socket; it wakes still
    // believing it leads, and its commit is refused.
    let id = Uuid::now_v7();
    let job = servers.marking_job(id);
    let paused = servers.server(old).api();
    let sent = std::thread::spawn(move || paused.try_post("/v1/jobs", &job).map(|r| r.status));
    let port = servers.server(old).addr().port();
    eventually_within(
        "the request to wait in the paused server's socket",
        Duration::from_secs(10),
        || bytes_waiting(port).then_some(()),
    );
    servers.signal(old, "CONT");
    let status = sent.join().unwrap().expect("an answer");
    assert_eq!(status, 503, "{}", servers.logs());
    assert_eq!(
        servers
            .schema
            .count(&format!("lqsm_jobs WHERE key = '{id}'")),
        0,
        "the deposed leader's write did not land"
    );
    let (leader, epoch_now) = servers.wait_for_leader(Duration::from_secs(30));
    assert_eq!((leader, epoch_now), (new, epoch), "the new leader stays");

    // Through the old leader, now a follower, the same job is acknowledged by the new.
    let job = servers.marking_job(id);
    let reply = servers.server(old).api().post("/v1/jobs", &job);
    assert!(reply.status == 200 || reply.status == 201, "{}", reply.body);
    assert_eq!(
        servers
            .schema
            .count(&format!("lqsm_jobs WHERE key = '{id}'")),
        1
    );
    let metrics = servers.server(old).api().get("/metrics").body;
    assert!(metrics.contains("lqsm_leader 0"), "{metrics}");
}

#[test]
fn cut_database_connections_are_reopened_and_lose_nothing_acknowledged() {
    let mut servers = Servers::start(2);
    servers.start_worker("w1");
    let mut acknowledged = Vec::new();
    for n in 0..60 {
        let id = Uuid::now_v7();
        servers.submit_until_acknowledged(&servers.marking_job(id), n);
        acknowledged.push(id);
        if n % 20 == 10 {
            assert!(terminate_connections(&servers.schema) > 0);
        }
    }
    servers.wait_for_leader(Duration::from_secs(30));
    servers.assert_each_completed_once(&acknowledged);
}

#[test]
fn one_leader_under_steady_load_and_every_server_restarted_at_once_keeps_the_state() {
    let mut servers = Servers::start(2);
    let (_, epoch) = servers.wait_for_leader(Duration::from_secs(30));
    servers.start_worker("w1");
    let mut acknowledged = Vec::new();
    let started = Instant::now();
    let mut n = 0;
    // Steady load through both servers for a while: the lease never changes hands.
    while started.elapsed() < Duration::from_secs(8) {
        let id = Uuid::now_v7();
        servers.submit_until_acknowledged(&servers.marking_job(id), n);
        acknowledged.push(id);
        n += 1;
    }
    for i in 0..2 {
        let store = servers.store_seen_by(i).unwrap();
        assert_eq!(
            store.epoch, epoch,
            "the lease changed hands under steady load"
        );
        // Every server answers the reads of the leader's view (a follower from a snapshot
        // of the leader's answer).
        let workers: Vec<api::WorkerView> = servers.server(i).api().get("/v1/workers").expect(200);
        assert_eq!(workers.len(), 1);
        let queue: api::QueueView = servers
            .server(i)
            .api()
            .get("/v1/queues/root.default")
            .expect(200);
        assert_eq!(queue.path, "root.default");
    }
    servers.assert_each_completed_once(&acknowledged);

    // Every server killed at once, then restarted: the state is intact.
    for server in servers.servers.iter_mut().flatten() {
        server.kill_9();
    }
    for server in servers.servers.iter_mut().flatten() {
        server.restart();
    }
    servers.wait_for_leader(Duration::from_secs(30));
    for id in &acknowledged {
        assert_eq!(servers.job_state(*id), Some(api::JobState::Succeeded));
    }
    assert_eq!(servers.schema.count("lqsm_jobs"), acknowledged.len() as i64);
}

#[test]
fn a_server_that_cannot_reach_postgres_answers_503_to_writes_and_recovers() {
    let schema = TestSchema::new("lqsm_failover");
    let database: std::net::SocketAddr = "127.0.0.1:5432".parse().unwrap();
    let proxy = lqsm_testkit::FaultProxy::start(database);
    let through_proxy = url().replace("127.0.0.1:5432", &proxy.addr().to_string());
    let server = ServerProcess::builder()
        .config(&format!(
            "[store]\nbackend = \"postgres\"\nurl = \"{through_proxy}\"\nschema = \"{}\"\nsslmode = \"disable\"\nnode = \"s0\"\n",
            schema.name
        ))
        .start();
    let api = server.api();
    let job = |id: Uuid| {
        let mut job = api::SubmitJob::function("root.default", "pg.nobody", serde_json::json!({}));
        job.id = Some(id);
        job
    };
    let before = Uuid::now_v7();
    api.post("/v1/jobs", &job(before)).expect_status(201);

    // PostgreSQL unreachable: connections reset, new ones refused.
    let proxy_addr = proxy.addr();
    drop(proxy);
    let refused: Vec<Uuid> = (0..5)
        .map(|_| {
            let id = Uuid::now_v7();
            let reply = api.post("/v1/jobs", &job(id));
            assert_eq!(
                reply.status, 503,
                "a write is never acknowledged: {}",
                reply.body
            );
            id
        })
        .collect();

    // Reachable again: the server leads again and acknowledges; what it refused is absent,
    // what it acknowledged before is there.
    let _proxy = lqsm_testkit::FaultProxy::start_at(proxy_addr, database);
    let after = Uuid::now_v7();
    eventually_within(
        "writes to be acknowledged again",
        Duration::from_secs(30),
        || {
            let reply = api.try_post("/v1/jobs", &job(after)).ok()?;
            (reply.status == 201).then_some(())
        },
    );
    assert_eq!(api.job(before).state, api::JobState::Pending);
    for id in refused {
        api.get(&format!("/v1/jobs/{id}")).expect_status(404);
    }
    assert_eq!(schema.count("lqsm_jobs"), 2);
}

#[test]
fn a_queue_rate_limit_holds_across_a_failover() {
    let mut servers = Servers::start(2);
    let (leader, _) = servers.wait_for_leader(Duration::from_secs(30));
    let (rate, burst) = (4.0, 2.0);
    servers
        .server(1 - leader)
        .api()
        .post(
            "/v1/queues",
            &serde_json::json!({
                "path": "root.limited",
                "capacity": 0.0,
                "max_capacity": 100.0,
                "rate_limit": {"rate": "4/s", "burst": 2},
            }),
        )
        .expect_status(201);
    servers.start_worker("w1");
    let mut acknowledged = Vec::new();
    for n in 0..24 {
        let id = Uuid::now_v7();
        let mut job = servers.marking_job(id);
        job.queue = "root.limited".into();
        servers.submit_until_acknowledged(&job, n);
        acknowledged.push(id);
    }
    // Kill the leader while the limit spaces the jobs out.
    eventually_within("a few jobs to start", Duration::from_secs(30), || {
        (servers.completions().len() >= 6).then_some(())
    });
    servers.servers[leader].as_mut().unwrap().kill_9();
    servers.servers[leader] = None;
    servers.assert_each_completed_once(&acknowledged);

    // Dispatch times as the leaders recorded them: in any window of length T, at most
    // burst + rate × T attempts started, before, across and after the failover.
    let mut dispatched: Vec<u64> = acknowledged
        .iter()
        .map(|id| {
            let view: api::JobView = servers
                .server(1 - leader)
                .api()
                .get(&format!("/v1/jobs/{id}"))
                .expect(200);
            view.attempts.last().unwrap().scheduled_at_ms
        })
        .collect();
    dispatched.sort_unstable();
    for i in 0..dispatched.len() {
        for j in i..dispatched.len() {
            let window_s = (dispatched[j] - dispatched[i]) as f64 / 1000.0;
            let starts = (j - i + 1) as f64;
            assert!(
                starts <= burst + rate * window_s + 1e-9,
                "{starts} starts within {window_s} s exceed {burst} + {rate}/s: {dispatched:?}"
            );
        }
    }
}

/// The fire times of a schedule's jobs (the time of each job's UUIDv7), as any server
/// lists them.
fn fire_times(servers: &Servers, name: &str) -> Vec<u64> {
    let list: api::JobList = servers
        .running()
        .find_map(|(_, s)| {
            let reply = s
                .api()
                .try_get(&format!("/v1/jobs?tag=schedule:{name}&limit=1000"))
                .ok()?;
            (reply.status == 200).then(|| reply.json())
        })
        .unwrap_or_else(|| panic!("no server lists the jobs:\n{}", servers.logs()));
    let mut times: Vec<u64> = list
        .jobs
        .iter()
        .map(|job| {
            let (secs, nanos) = job.id.get_timestamp().unwrap().to_unix();
            secs * 1000 + u64::from(nanos) / 1_000_000
        })
        .collect();
    times.sort_unstable();
    times
}

#[test]
fn a_schedule_fires_every_time_exactly_once_across_a_failover() {
    let mut servers = Servers::start(2);
    let (leader, _) = servers.wait_for_leader(Duration::from_secs(30));
    // Created through the follower; missed fires are all made up (catch up), so that a
    // lost fire time would show as a gap.
    servers
        .server(1 - leader)
        .api()
        .post(
            "/v1/schedules",
            &serde_json::json!({
                "name": "beat",
                "every_ms": 1000,
                "misfire": "catch_up",
                "catch_up_max": 100,
                "job": {"queue": "root.default", "kind": {"type": "function", "handler": "beat.noop", "args": {}}},
            }),
        )
        .expect_status(201);
    eventually_within("three fires", Duration::from_secs(30), || {
        (fire_times(&servers, "beat").len() >= 3).then_some(())
    });
    servers.servers[leader].as_mut().unwrap().kill_9();
    servers.servers[leader] = None;
    let at_kill = fire_times(&servers, "beat").len();
    servers.wait_for_leader(Duration::from_secs(30));
    eventually_within("fires after the failover", Duration::from_secs(30), || {
        (fire_times(&servers, "beat").len() >= at_kill + 8).then_some(())
    });
    let times = fire_times(&servers, "beat");
    let gaps: Vec<u64> = times.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps.iter().all(|g| *g == 1000),
        "every second once, none lost or doubled across the failover: gaps {gaps:?}"
    );
}

#[test]
fn a_workflow_runs_through_a_failover_each_node_once_and_in_order() {
    let mut servers = Servers::start(2);
    let (leader, _) = servers.wait_for_leader(Duration::from_secs(30));
    servers.start_worker("wf-w1");
    let ids: Vec<Uuid> = (0..6).map(|_| Uuid::now_v7()).collect();
    let nodes: Vec<api::SubmitJob> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let node = e2e_support::marking_job(*id, &servers.marks(), "sleep 0.3")
                .named(&format!("step{i}"));
            if i == 0 {
                node
            } else {
                node.after([format!("step{}", i - 1)])
            }
        })
        .collect();
    // Submitted through the follower, which passes it to the leader.
    let submitted: api::WorkflowSubmitted = servers
        .server(1 - leader)
        .api()
        .post("/v1/workflows", &api::SubmitWorkflow { nodes })
        .expect(201);
    eventually_explained(
        "two steps to complete",
        Duration::from_secs(60),
        || servers.logs(),
        || (servers.completions().len() >= 2).then_some(()),
    );
    servers.servers[leader].as_mut().unwrap().kill_9();
    servers.servers[leader] = None;
    servers.wait_for_leader(Duration::from_secs(30));
    servers.assert_each_completed_once(&ids);
    // One after the other, in the chain's order.
    let order: Vec<Uuid> = std::fs::read_to_string(servers.marks())
        .unwrap()
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    assert_eq!(order, ids);
    let view: api::WorkflowView = servers
        .server(1 - leader)
        .api()
        .get(&format!("/v1/workflows/{}", submitted.id))
        .expect(200);
    assert_eq!(view.state, api::WorkflowState::Succeeded);
}

#[test]
fn a_broadcast_open_to_new_workers_stays_open_across_a_failover() {
    let mut servers = Servers::start(2);
    let (leader, _) = servers.wait_for_leader(Duration::from_secs(30));
    servers.start_worker("bc-w1");
    eventually_within("the first worker", Duration::from_secs(30), || {
        let reply = servers.server(leader).api().try_get("/v1/workers").ok()?;
        (reply.status == 200 && reply.json::<Vec<api::WorkerView>>().len() == 1).then_some(())
    });
    let job = api::SubmitJob::new(
        "root.default",
        api::JobKind::Command {
            argv: vec!["true".into()],
            env: Default::default(),
            cwd: None,
        },
    );
    let submitted: api::WorkflowSubmitted = servers
        .server(1 - leader)
        .api()
        .post("/v1/broadcasts?new_workers=true", &job)
        .expect(201);
    assert_eq!(submitted.nodes.len(), 1);
    servers.servers[leader].as_mut().unwrap().kill_9();
    servers.servers[leader] = None;
    let (new_leader, _) = servers.wait_for_leader(Duration::from_secs(30));
    servers.start_worker("bc-w2");
    let view = eventually_explained(
        "the broadcast to reach the worker that joined after the failover",
        Duration::from_secs(60),
        || servers.logs(),
        || {
            let reply = servers
                .server(new_leader)
                .api()
                .try_get(&format!("/v1/workflows/{}", submitted.id))
                .ok()?;
            let view: api::WorkflowView = (reply.status == 200).then(|| reply.json())?;
            (view.nodes.len() == 2 && view.state == api::WorkflowState::Succeeded).then_some(view)
        },
    );
    let mut on: Vec<Uuid> = view.nodes.iter().filter_map(|n| n.pinned_worker).collect();
    on.sort();
    on.dedup();
    assert_eq!(on.len(), 2, "one job on each worker");
}

#[test]
fn a_follower_answers_a_running_jobs_output_from_the_leader() {
    let mut servers = Servers::start(2);
    let (leader, _) = servers.wait_for_leader(Duration::from_secs(30));
    servers.start_worker("live-w1");
    let follower = servers.server(1 - leader).api();
    let mut job = api::SubmitJob::new(
        "root.default",
        api::JobKind::Command {
            argv: vec![
                "sh".into(),
                "-c".into(),
                "for i in 1 2 3 4 5 6 7 8 9 10; do echo \"line $i\"; sleep 0.2; done".into(),
            ],
            env: Default::default(),
            cwd: None,
        },
    );
    job.id = Some(Uuid::now_v7());
    let id = job.id.unwrap();
    servers.submit_until_acknowledged(&job, leader);
    // The running output lives in the leader's memory: the follower passes the read on.
    let live: api::JobLogs = eventually_explained(
        "the follower to show the running job's output",
        Duration::from_secs(30),
        || servers.logs(),
        || {
            let read: api::JobLogs = follower
                .get(&format!("/v1/jobs/{id}/logs?offset=0"))
                .expect(200);
            (read.running && read.text.starts_with("line 1\n")).then_some(read)
        },
    );
    assert_eq!(live.attempt, Some(1));
    eventually_explained(
        "the job to finish",
        Duration::from_secs(30),
        || servers.logs(),
        || (servers.job_state(id) == Some(api::JobState::Succeeded)).then_some(()),
    );
    let all: String = (1..=10).map(|i| format!("line {i}\n")).collect();
    assert_eq!(follower.get(&format!("/v1/jobs/{id}/logs")).body, all);
}

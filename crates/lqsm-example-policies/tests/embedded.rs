//! The example program end to end: the real `lqsm-custom-server` binary, a queue that
//! selects `deadline-first` by name through the API and another through the config
//! file, jobs dispatched earliest deadline first to a worker, a policy name neither
//! LQSM nor the program knows refused naming the field, and two worker pools, the
//! dearer one on `spill-over`, sized cheapest first.
#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

use lqsm_api as api;
use lqsm_testkit::{Api, SimWorker, announced_url, eventually, function_job};
use serde_json::json;
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};

/// The program, killed when dropped.
struct Server {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(extra_config: &str) -> Server {
    start_with_args(extra_config, &[])
}

fn start_with_args(extra_config: &str, args: &[&str]) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("lqsm.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n{extra_config}",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_lqsm-custom-server"))
        .arg(&config)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let url = match announced_url(&mut child, "lqsm-custom-server listening on ") {
        Ok(url) => url,
        Err(first) => {
            let _ = child.kill();
            panic!("the program did not announce its address: {first}");
        }
    };
    let server = Server {
        child,
        url,
        _dir: dir,
    };
    let api = Api::new(&server.url, None);
    eventually("the server is ready", || {
        (api.try_get("/readyz").ok()?.status == 200).then_some(())
    });
    server
}

fn with_deadline(queue: &str, handler: &str, deadline: &str) -> api::SubmitJob {
    let mut job = function_job(queue, handler);
    job.keys = [("deadline".to_owned(), deadline.to_owned())].into();
    job
}

/// Submits jobs with deadlines 300, 100, none and 200, in that order, before any
/// worker is there; a worker that takes one job at a time gets them 100, 200, 300,
/// then the one without.
fn dispatched_earliest_deadline_first(api: &Api, queue: &str, handler: &str) {
    let late = api.submit(&with_deadline(queue, handler, "300"));
    let early = api.submit(&with_deadline(queue, handler, "100"));
    let none = api.submit(&function_job(queue, handler));
    let middle = api.submit(&with_deadline(queue, handler, "200"));
    let mut worker = SimWorker::register(api, handler);
    let mut order = Vec::new();
    // The poll that reports one job done may bring the next.
    let mut handed = vec![worker.next_assignment()];
    while let Some(assignment) = handed.pop() {
        order.push(assignment.job);
        handed.extend(worker.succeed(&assignment, json!(null)).assignments);
        if handed.is_empty() && order.len() < 4 {
            handed.push(worker.next_assignment());
        }
    }
    assert_eq!(order, [early, middle, late, none]);
}

#[test]
fn queues_select_the_programs_own_ordering_by_name() {
    let server = start(
        "[[queues]]\npath = \"root.from_config\"\nordering = \"deadline-first\"\nmax_running = 1\n",
    );
    let api = Api::new(&server.url, None);

    // Through the API, exactly as a built-in is selected.
    api.post(
        "/v1/queues",
        &json!({"path": "root.by_api", "ordering": "deadline-first", "max_running": 1}),
    )
    .expect::<serde_json::Value>(201);
    let queue: serde_json::Value = api.get("/v1/queues/root.by_api").expect(200);
    assert_eq!(queue["settings"]["ordering"], "deadline-first", "{queue}");
    dispatched_earliest_deadline_first(&api, "root.by_api", "api");

    // Through the config file.
    dispatched_earliest_deadline_first(&api, "root.from_config", "config");

    // A name nobody registered is refused, naming the field and the known names.
    let err = api
        .post(
            "/v1/queues",
            &json!({"path": "root.bad", "ordering": "latest-first"}),
        )
        .expect_error(400);
    assert_eq!(err.field.as_deref(), Some("ordering"), "{err:?}");
    assert!(err.message.contains("deadline-first"), "{}", err.message);
}

/// An `exec` pool whose command (`script`) appends `pool desired` to a file.
fn exec_pool(name: &str, policy: &str, max: u32, script: &std::path::Path) -> String {
    format!(
        r#"
[[autoscale.pools]]
name = "{name}"
policy = "{policy}"
provider = "exec"
command = "{}"
min = 0
max = {max}
target_backlog_per_worker = 1.0
scale_up_cooldown_ms = 0
"#,
        script.display()
    )
}

#[test]
fn the_dearer_pool_starts_workers_only_for_what_the_cheaper_cannot_take() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("scaled");
    let script = dir.path().join("scale.sh");
    std::fs::write(
        &script,
        format!("#!/bin/sh\necho \"$1 $2\" >> {}\n", log.display()),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = format!(
        "[autoscale]\nenabled = true\ninterval_ms = 200\n{}{}",
        exec_pool("spot", "target-backlog", 2, &script),
        exec_pool("on-demand", "spill-over", 10, &script),
    );
    let server = start_with_args(&config, &["--cheaper-pool-max", "2"]);
    let api = Api::new(&server.url, None);
    // Five jobs either pool could run, in one batch so one evaluation sees them all.
    let batch = api::SubmitBatch {
        jobs: vec![function_job("root.default", "nobody.runs.this"); 5],
    };
    api.post("/v1/jobs/batch", &batch).expect_status(200);
    // Spot takes two (its max), on-demand the other three, not all five.
    let lines = eventually("both pools scaled", || {
        let text = std::fs::read_to_string(&log).ok()?;
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        (lines.iter().any(|l| l.starts_with("spot "))
            && lines.iter().any(|l| l.starts_with("on-demand ")))
        .then_some(lines)
    });
    assert!(lines.contains(&"spot 2".to_owned()), "{lines:?}");
    assert!(lines.contains(&"on-demand 3".to_owned()), "{lines:?}");
    let view: api::AutoscaleView = api.get("/v1/autoscale").expect(200);
    let on_demand = view.pools.iter().find(|p| p.name == "on-demand").unwrap();
    assert_eq!(on_demand.policy, "spill-over", "{on_demand:?}");
}

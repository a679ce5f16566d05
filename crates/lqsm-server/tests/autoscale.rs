//! The worker autoscaler through the real server: settings refused at start naming the
//! field, `GET /v1/autoscale` and who may read it, the `exec` provider called with the
//! pool, the counts and the workers to let go, and a failing command recorded as an
//! event rather than stopping anything.
#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

use lqsm_api as api;
use lqsm_server::config::ServerConfig;
use lqsm_testkit::{BlockingTestServer, eventually, function_job, toml_settings};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use uuid::Uuid;

/// Starts a server with `config` and returns why it refused to start.
fn refusal(config: ServerConfig) -> String {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = config;
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.data_dir = dir.path().join("data");
    let ran = runtime.block_on(async {
        tokio::time::timeout(
            lqsm_testkit::DEADLINE,
            lqsm_server::serve(config, std::future::pending(), |_| {}),
        )
        .await
    });
    match ran {
        Ok(Err(e)) => e.to_string(),
        Ok(Ok(())) => panic!("the server stopped without an error"),
        Err(_) => panic!("the server started"),
    }
}

fn settings(text: &str) -> ServerConfig {
    ServerConfig::from_toml(text).unwrap_or_else(|e| panic!("valid settings: {e}\n{text}"))
}

#[test]
fn settings_only_the_start_can_check_are_refused_naming_the_field() {
    let err = refusal(settings(
        "[autoscale]\nenabled = true\n[[autoscale.pools]]\nname = \"a\"\nprovider = \"local\"\nmax = 2\npolicy = \"largest-first\"\n",
    ));
    assert!(
        err.contains("autoscale.pools[0].policy: unknown policy `largest-first`"),
        "{err}"
    );
    let err = refusal(settings(
        "[autoscale]\nenabled = true\n[[autoscale.pools]]\nname = \"a\"\nprovider = \"local\"\nmax = 2\n[[autoscale.pools]]\nname = \"b\"\nprovider = \"local\"\nmax = 2\ntoken_env = \"LQSM_TEST_AUTOSCALE_NO_SUCH_VARIABLE\"\n",
    ));
    assert!(
        err.contains("autoscale.pools[1].token_env: the environment variable LQSM_TEST_AUTOSCALE_NO_SUCH_VARIABLE is unset"),
        "{err}"
    );
    // A server with tokens: the workers it starts need one.
    let err = refusal(settings(
        "[[tokens]]\nname = \"admin\"\ntoken = \"secret-admin\"\nrole = \"admin\"\n[autoscale]\nenabled = true\n[[autoscale.pools]]\nname = \"a\"\nprovider = \"local\"\nmax = 2\n",
    ));
    assert!(err.contains("autoscale.pools[0].token_env"), "{err}");
    // The file's own checks name the field too.
    let err = ServerConfig::from_toml(
        "[autoscale]\n[[autoscale.pools]]\nname = \"a\"\nprovider = \"exec\"\nmax = 2\n",
    )
    .unwrap_err();
    assert!(err.starts_with("autoscale.pools[0].command"), "{err}");
}

#[test]
fn the_autoscale_view_is_for_those_who_see_the_whole_cluster() {
    let server = BlockingTestServer::start_with(toml_settings(
        r#"
[[tokens]]
name = "admin"
token = "t-admin"
role = "admin"
[[tokens]]
name = "everything-reader"
token = "t-reader-all"
role = "reader"
queues = ["*"]
[[tokens]]
name = "etl-reader"
token = "t-reader-etl"
role = "reader"
queues = ["root.etl.*"]
[[tokens]]
name = "worker"
token = "t-worker"
role = "worker"
"#,
    ));
    let view: api::AutoscaleView = server.api_as("t-admin").get("/v1/autoscale").expect(200);
    assert!(!view.enabled, "off unless enabled: {view:?}");
    assert!(view.pools.is_empty() && view.events.is_empty(), "{view:?}");
    let _: api::AutoscaleView = server
        .api_as("t-reader-all")
        .get("/v1/autoscale")
        .expect(200);
    for token in ["t-reader-etl", "t-worker"] {
        let err = server.api_as(token).get("/v1/autoscale").expect_error(403);
        assert_eq!(err.code, api::ErrorCode::Forbidden, "{err:?}");
    }
    let err = server.api().get("/v1/autoscale").expect_error(401);
    assert_eq!(err.code, api::ErrorCode::Unauthorized, "{err:?}");
    let err = server
        .api_as("t-admin")
        .raw("POST", "/v1/autoscale", "{}")
        .expect_error(405);
    assert_eq!(err.code, api::ErrorCode::MethodNotAllowed, "{err:?}");
}

/// A script recording its arguments and the variables the provider sets, one line
/// per call, then doing `tail`.
fn script(dir: &Path, name: &str, tail: &str) -> (PathBuf, PathBuf) {
    let calls = dir.join(format!("{name}.calls"));
    let path = dir.join(format!("{name}.sh"));
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\necho \"args=$* pool=$LQSM_POOL desired=$LQSM_DESIRED current=$LQSM_CURRENT drain=$LQSM_DRAIN_WORKERS names=$LQSM_DRAIN_WORKER_NAMES labels=$LQSM_WORKER_LABELS token=${{LQSM_TOKEN:-none}}\" >> {}\n{tail}\n",
            calls.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    (path, calls)
}

fn calls(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn exec_pool(name: &str, command: &Path, extra: &str) -> String {
    format!(
        r#"
[autoscale]
enabled = true
interval_ms = 200
[[autoscale.pools]]
name = "{name}"
provider = "exec"
command = "{}"
labels = {{ zone = "z1" }}
min = 0
max = 3
worker_capacity = {{ cpu = 4, memory_mib = 4096 }}
target_backlog_per_worker = 1.0
scale_up_cooldown_ms = 0
scale_down_cooldown_ms = 0
idle_before_scale_down_ms = 0
{extra}
"#,
        command.display()
    )
}

fn autoscale(server: &BlockingTestServer) -> api::AutoscaleView {
    server.api().get("/v1/autoscale").expect(200)
}

#[test]
fn the_exec_provider_is_told_the_pool_the_counts_and_the_workers_to_let_go() {
    let dir = tempfile::tempdir().unwrap();
    let (command, log) = script(dir.path(), "scale", "exit 0");
    let token_file = dir.path().join("worker-token");
    std::fs::write(&token_file, "t-exec-worker\n").unwrap();
    let server = BlockingTestServer::start_with(toml_settings(&exec_pool(
        "batch",
        &command,
        &format!("token_file = \"{}\"\n", token_file.display()),
    )));
    let api = server.api();
    // In one batch, so that one evaluation sees both.
    let batch = api::SubmitBatch {
        jobs: vec![function_job("root.default", "autoscale.nobody"); 2],
    };
    api.post("/v1/jobs/batch", &batch).expect_status(200);
    let first = eventually("the command called for the backlog", || {
        calls(&log).into_iter().next()
    });
    assert_eq!(
        first,
        "args=batch 2 pool=batch desired=2 current=0 drain= names= labels=lqsm.pool=batch,zone=z1 token=t-exec-worker"
    );
    let view = eventually("the scale-up shown with its reason", || {
        let view = autoscale(&server);
        (view.pools.first()?.pending == 2).then_some(view)
    });
    assert!(view.enabled);
    let pool = &view.pools[0];
    assert_eq!(
        (
            pool.name.as_str(),
            pool.provider.as_str(),
            pool.min,
            pool.max
        ),
        ("batch", "exec", 0, 3)
    );
    assert_eq!((pool.desired, pool.backlog, pool.current), (Some(2), 2, 0));
    let up = view
        .events
        .iter()
        .find(|e| e.kind == "scale_up")
        .unwrap_or_else(|| panic!("a scale_up event: {view:#?}"));
    assert_eq!((up.from, up.to), (0, 2));
    assert!(
        up.reason.starts_with("2 jobs wait, 1 per worker wanted"),
        "{up:?}"
    );
    assert!(
        view.events.iter().any(|e| e.kind == "exec_done"),
        "{view:#?}"
    );
    // Asked for and counted: no second call while they register.
    assert_eq!(calls(&log).len(), 1, "{:?}", calls(&log));

    // A worker of the pool registers and idles; the jobs go away: it is drained and the
    // command told to let it go.
    let listed: api::JobList = api.get("/v1/jobs").expect(200);
    for job in listed.jobs {
        api.raw("POST", &format!("/v1/jobs/{}/cancel", job.id), "")
            .expect_status(200);
    }
    let id = Uuid::now_v7();
    let registration = api::RegisterWorker {
        id,
        name: "batch-node-1".into(),
        capacity: api::Resources {
            cpu: Some(4.0),
            memory_mib: Some(4096),
            ..api::Resources::default()
        },
        labels: [("lqsm.pool", "batch"), ("zone", "z1")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        serves_commands: false,
        queues: Vec::new(),
        handlers: vec!["autoscale.nobody".into()],
        protocol: api::WORKER_PROTOCOL,
    };
    let _: api::WorkerView = api.post("/v1/workers", &registration).expect(200);
    let drain = eventually("the command told to let the idle worker go", || {
        calls(&log)
            .into_iter()
            .find(|c| c.contains(&format!("drain={id}")))
    });
    // The starts asked for earlier still count until they register or time out, so
    // the size told is what is left once this worker goes.
    let field = |name: &str| -> u32 {
        drain
            .split_whitespace()
            .find_map(|f| f.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} in {drain}"))
    };
    assert_eq!(field("desired") + 1, field("current"), "{drain}");
    assert!(
        drain.starts_with(&format!("args=batch {} pool=batch", field("desired"))),
        "{drain}"
    );
    assert!(
        drain.ends_with("names=batch-node-1 labels=lqsm.pool=batch,zone=z1 token=t-exec-worker"),
        "{drain}"
    );
    let workers: Vec<api::WorkerView> = api.get("/v1/workers").expect(200);
    let worker = workers.iter().find(|w| w.id == id).unwrap();
    assert_eq!(worker.state, api::WorkerState::Draining);
    let view = autoscale(&server);
    let down = view
        .events
        .iter()
        .find(|e| e.kind == "scale_down")
        .unwrap_or_else(|| panic!("a scale_down event: {view:#?}"));
    assert!(down.reason.contains("draining 1 worker idle"), "{down:?}");
    assert_eq!(view.pools[0].draining, 1, "{view:#?}");
}

#[test]
fn a_failing_exec_command_becomes_an_event_with_its_stderr_and_nothing_stops() {
    let dir = tempfile::tempdir().unwrap();
    let (command, log) = script(
        dir.path(),
        "broken",
        "echo 'quota exceeded in region z1' >&2\nexit 3",
    );
    let settings = exec_pool("flaky", &command, "")
        .replace("scale_up_cooldown_ms = 0", "scale_up_cooldown_ms = 500");
    let server = BlockingTestServer::start_with(toml_settings(&settings));
    let api = server.api();
    let job = api.submit(&function_job("root.default", "autoscale.nobody"));
    let failed = eventually("a provider_failed event", || {
        autoscale(&server)
            .events
            .into_iter()
            .find(|e| e.kind == "provider_failed")
    });
    assert_eq!(failed.pool, "flaky");
    assert!(
        failed.reason.contains("quota exceeded in region z1"),
        "{failed:?}"
    );
    assert!(failed.reason.contains("exit status: 3"), "{failed:?}");
    // Nothing was counted as started, so it is asked again after the cooldown; the
    // server keeps serving.
    eventually("a second attempt", || {
        (calls(&log).len() >= 2).then_some(())
    });
    let view = autoscale(&server);
    assert_eq!(view.pools[0].pending, 0, "{view:#?}");
    assert_eq!(api.job(job).state, api::JobState::Pending);
}

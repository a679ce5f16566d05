//! Who a command job runs as, and what its secrets look like from outside, through a
//! real `lqsm server` and `lqsm worker`: `--run-as USER` on a worker running as root runs
//! commands as that user; a root worker without it says so; an unknown user stops the
//! worker at start. Under `--run-as`, a job's environment (even `LD_PRELOAD`) reaches its
//! command but no process running as root. `lqsm submit --secret-env` reaches the command
//! and shows as `***`.
#![allow(clippy::unwrap_used, clippy::print_stdout)] // A panic is the failure report; a skip says why.

use lqsm_testkit::{ServerProcess, WorkerProcess, run_lqsm, wait};
use std::time::Duration;

const RUN: Duration = Duration::from_secs(60);

/// `lqsm --server URL -o json ARGS...`, which must succeed.
fn lqsm_json<T: serde::de::DeserializeOwned>(url: &str, args: &[&str]) -> T {
    let mut all = vec!["--server", url, "-o", "json"];
    all.extend_from_slice(args);
    let ran = run_lqsm(&all, RUN);
    assert_eq!(ran.code(), Some(0), "{ran:#?}");
    ran.json()
}

/// The output a finished job's command captured.
fn logs_of(url: &str, id: &str) -> String {
    let logs: serde_json::Value = lqsm_json(url, &["job", "logs", id]);
    logs["logs"].as_str().unwrap().to_owned()
}

/// Whether this test runs as root; prints why the test is skipped when it does not.
fn running_as_root(test: &str) -> bool {
    let root = nix::unistd::geteuid().is_root();
    if !root {
        println!(
            "{test}: skipped: only a worker running as root may run commands as another user, and these tests run as uid {}",
            nix::unistd::geteuid()
        );
    }
    root
}

#[test]
fn a_root_worker_with_run_as_runs_commands_as_that_user_without_its_groups() {
    if !running_as_root("a_root_worker_with_run_as_runs_commands_as_that_user") {
        return;
    }
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    let server = ServerProcess::start();
    let url = server.url();
    let worker = WorkerProcess::start(&url, "run-as", &["--run-as", "nobody", "--cpus", "1"]);
    let job: lqsm_api::JobView = lqsm_json(
        &url,
        &[
            "submit",
            "--wait",
            "--",
            "sh",
            "-c",
            // Progress is reported through a file the command, as nobody, must write.
            "id -u; id -g; id -G; echo \"user=$USER\"; echo '{\"step\": 1}' > \"$LQSM_PROGRESS_FILE\" && echo progress-written",
        ],
    );
    assert_eq!(
        job.state,
        lqsm_api::JobState::Succeeded,
        "{job:#?}\n{}",
        worker.log_tail()
    );
    let logs = logs_of(&url, &job.id.to_string());
    let lines: Vec<&str> = logs.lines().collect();
    let uid = nobody.uid.to_string();
    let gid = nobody.gid.to_string();
    assert_eq!(
        lines,
        [
            uid.as_str(),
            gid.as_str(),
            gid.as_str(),
            "user=nobody",
            "progress-written"
        ],
        "{logs}"
    );
    assert!(
        worker.log_tail().contains("command jobs run as this user"),
        "{}",
        worker.log_tail()
    );
}

#[test]
fn a_root_worker_without_run_as_warns_and_an_unknown_user_stops_a_worker_at_start() {
    let server = ServerProcess::start();
    let url = server.url();
    let ran = run_lqsm(
        &[
            "worker",
            "--server",
            &url,
            "--run-as",
            "lqsm-surely-no-such-user",
        ],
        RUN,
    );
    assert_eq!(ran.code(), Some(1), "{ran:#?}");
    assert!(
        ran.stderr
            .contains("--run-as: no user `lqsm-surely-no-such-user` on this machine"),
        "{ran:#?}"
    );
    if !running_as_root("a_root_worker_without_run_as_warns") {
        return;
    }
    let worker = WorkerProcess::start(&url, "as-root", &["--cpus", "1"]);
    wait::eventually("the warning about running commands as root", || {
        worker
            .log_tail()
            .contains("its command jobs: start it with `--run-as USER`")
            .then_some(())
    });
}

#[test]
fn a_secret_env_variable_reaches_the_command_and_shows_as_stars() {
    let server = ServerProcess::start();
    let url = server.url();
    let _worker = WorkerProcess::start(&url, "secrets", &["--cpus", "1"]);
    let job: lqsm_api::JobView = lqsm_json(
        &url,
        &[
            "submit",
            "--wait",
            "--env",
            "MODE=fast",
            "--secret-env",
            "TOKEN=hunter2-correct-horse",
            "--",
            "sh",
            "-c",
            "echo \"mode=$MODE token=$TOKEN\"",
        ],
    );
    assert_eq!(job.state, lqsm_api::JobState::Succeeded, "{job:#?}");
    let id = job.id.to_string();
    assert_eq!(logs_of(&url, &id), "mode=fast token=***\n");
    let ran = run_lqsm(&["--server", &url, "-o", "json", "job", "get", &id], RUN);
    assert!(ran.stdout.contains(r#""TOKEN": "***""#), "{ran:#?}");
    assert!(!ran.stdout.contains("hunter2"), "{ran:#?}");
    let human = run_lqsm(&["--server", &url, "job", "get", &id], RUN);
    assert!(!human.stdout.contains("hunter2"), "{human:#?}");
    // A malformed secret is refused without being repeated.
    let ran = run_lqsm(
        &[
            "--server",
            &url,
            "submit",
            "--secret-env",
            "hunter2-alone",
            "--",
            "true",
        ],
        RUN,
    );
    assert_eq!(ran.code(), Some(1), "{ran:#?}");
    assert!(
        ran.stderr.contains("--secret-env must be NAME=VALUE"),
        "{ran:#?}"
    );
    assert!(!ran.stderr.contains("hunter2"), "{ran:#?}");
}

/// The processes running as root (real uid 0) whose environment holds `entry`.
fn root_processes_with(entry: &str) -> Vec<i32> {
    let mut found = Vec::new();
    for dir in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = dir.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let as_root = status
            .lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"));
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        if as_root && environ.split(|b| *b == 0).any(|e| e == entry.as_bytes()) {
            found.push(pid);
        }
    }
    found
}

#[test]
fn under_run_as_a_jobs_environment_reaches_its_command_and_no_root_process() {
    if !running_as_root("under_run_as_a_jobs_environment_reaches_its_command") {
        return;
    }
    let server = ServerProcess::start();
    let url = server.url();
    let worker = WorkerProcess::start(&url, "run-as-env", &["--run-as", "nobody", "--cpus", "1"]);
    // Where the command (as nobody) and this test meet, and a "library" that is garbage.
    let meeting = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        meeting.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let bad_library = meeting.path().join("evil.so");
    std::fs::write(&bad_library, b"not a shared object").unwrap();
    let parent_file = meeting.path().join("parent");
    let go = meeting.path().join("go");
    let script = format!(
        "echo $PPID > '{parent}'; i=0; while [ ! -e '{go}' ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done; \
         echo \"preload=$LD_PRELOAD secret=$TOKEN\"",
        parent = parent_file.display(),
        go = go.display(),
    );
    let preload = format!("LD_PRELOAD={}", bad_library.display());
    let submit_url = url.clone();
    let submit_args = [
        "--env".to_owned(),
        preload.clone(),
        "--secret-env".to_owned(),
        "TOKEN=s3cret-run-as".to_owned(),
        "--".to_owned(),
        "sh".to_owned(),
        "-c".to_owned(),
        script,
    ];
    let submitted = std::thread::spawn(move || {
        let mut args = vec!["submit", "--wait"];
        args.extend(submit_args.iter().map(String::as_str));
        lqsm_json::<lqsm_api::JobView>(&submit_url, &args)
    });
    let supervisor: i32 = wait::eventually("the command to write its parent's pid", || {
        std::fs::read_to_string(&parent_file)
            .ok()
            .filter(|t| t.ends_with('\n'))
            .and_then(|t| t.trim().parse().ok())
    });
    let cmdline = std::fs::read(format!("/proc/{supervisor}/cmdline")).unwrap();
    assert!(
        String::from_utf8_lossy(&cmdline).contains("__lqsm-attempt-supervisor"),
        "the command's parent {supervisor} is not its supervisor: {:?}",
        String::from_utf8_lossy(&cmdline)
    );
    assert_eq!(root_processes_with(&preload), Vec::<i32>::new());
    assert_eq!(
        root_processes_with("TOKEN=s3cret-run-as"),
        Vec::<i32>::new()
    );
    std::fs::write(&go, b"").unwrap();
    let job = submitted.join().unwrap();
    assert_eq!(
        job.state,
        lqsm_api::JobState::Succeeded,
        "{job:#?}\n{}",
        worker.log_tail()
    );
    // The command's own loader (nobody's) may complain about the garbage; the
    // variables did reach it.
    let logs = logs_of(&url, &job.id.to_string());
    assert!(
        logs.lines()
            .any(|l| l == format!("preload={} secret=***", bad_library.display())),
        "{logs}"
    );
}

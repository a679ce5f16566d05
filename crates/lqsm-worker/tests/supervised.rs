//! The executor's promises, kept when commands run under the attempt supervisor
//! (this test binary, started again with the hidden argument), plus what only the
//! supervisor can do: kill processes that left the command's process group.
//!
//! `harness = false`: `main` must call `supervisor::run_if_asked()` before anything.
#![allow(clippy::unwrap_used, clippy::print_stdout, missing_docs)]

use lqsm_worker::executor::{CommandOutcome, CommandSpec, Ending, ExecOptions, Stop, run_command};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// A test: builds the future that runs it.
type TestFn = fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>;

fn main() {
    lqsm_worker::supervisor::run_if_asked();
    let tests: Vec<(&str, TestFn)> = vec![
        (
            "exit_codes_signals_and_output_come_through_the_supervisor",
            || Box::pin(exit_codes_signals_and_output_come_through_the_supervisor()),
        ),
        (
            "a_missing_program_or_directory_is_a_spawn_failure_naming_it",
            || Box::pin(a_missing_program_or_directory_is_a_spawn_failure_naming_it()),
        ),
        ("environment_and_working_directory_are_the_jobs", || {
            Box::pin(environment_and_working_directory_are_the_jobs())
        }),
        (
            "timeout_kills_the_whole_group_even_processes_ignoring_sigterm",
            || Box::pin(timeout_kills_the_whole_group_even_processes_ignoring_sigterm()),
        ),
        (
            "processes_that_left_the_group_die_when_the_command_exits",
            || Box::pin(processes_that_left_the_group_die_when_the_command_exits()),
        ),
        (
            "a_graceful_stop_lets_the_command_clean_up_and_a_kill_ends_escapees",
            || Box::pin(a_graceful_stop_lets_the_command_clean_up_and_a_kill_ends_escapees()),
        ),
        ("dropping_the_attempt_kills_every_process_of_it", || {
            Box::pin(dropping_the_attempt_kills_every_process_of_it())
        }),
        (
            "the_soft_time_limit_signals_the_command_before_the_timeout",
            || Box::pin(the_soft_time_limit_signals_the_command_before_the_timeout()),
        ),
        (
            "a_command_runs_as_the_run_as_user_without_the_workers_groups",
            || Box::pin(a_command_runs_as_the_run_as_user_without_the_workers_groups()),
        ),
        (
            "under_run_as_the_jobs_environment_reaches_the_command_and_no_root_process",
            || {
                Box::pin(
                    under_run_as_the_jobs_environment_reaches_the_command_and_no_root_process(),
                )
            },
        ),
        (
            "under_run_as_a_directory_the_user_cannot_enter_fails_the_attempt",
            || Box::pin(under_run_as_a_directory_the_user_cannot_enter_fails_the_attempt()),
        ),
        ("the_peak_memory_of_a_command_is_measured", || {
            Box::pin(the_peak_memory_of_a_command_is_measured())
        }),
        ("the_memory_of_processes_running_together_is_summed", || {
            Box::pin(the_memory_of_processes_running_together_is_summed())
        }),
        ("the_cpu_time_of_every_process_is_counted", || {
            Box::pin(the_cpu_time_of_every_process_is_counted())
        }),
        (
            "the_memory_check_kills_an_attempt_over_its_limit_and_spares_one_within",
            || Box::pin(the_memory_check_kills_an_attempt_over_its_limit_and_spares_one_within()),
        ),
        (
            "a_worker_reports_a_memory_check_kill_and_usage_to_the_server",
            || Box::pin(a_worker_reports_a_memory_check_kill_and_usage_to_the_server()),
        ),
    ];
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut ran = 0;
    for (name, test) in tests {
        if !filter.is_empty() && !filter.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        print!("test {name} ... ");
        runtime.block_on(test());
        println!("ok");
        ran += 1;
    }
    println!("\ntest result: ok. {ran} passed");
}

fn supervised() -> ExecOptions {
    ExecOptions {
        timeout: Some(Duration::from_secs(20)),
        soft_timeout: None,
        grace: Duration::from_millis(300),
        log_cap: 1024 * 1024,
        supervisor: Some(PathBuf::from("/proc/self/exe")),
        run_as: None,
        memory_check_mib: None,
        live: None,
    }
}

fn sh(script: &str) -> CommandSpec {
    CommandSpec {
        argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
        ..CommandSpec::default()
    }
}

async fn run(spec: CommandSpec, opts: &ExecOptions) -> CommandOutcome {
    let (_tx, rx) = watch::channel(Stop::Run);
    run_command(spec, opts, rx, None).await
}

/// Whether a live process has this pid (zombies count as gone).
fn alive(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat[stat.rfind(')').unwrap() + 1..]
        .split_whitespace()
        .next();
    !matches!(state, Some("Z" | "X") | None)
}

fn pids_in(output: &str) -> Vec<i32> {
    output
        .lines()
        .filter_map(|l| l.strip_prefix("pid "))
        .map(|p| p.trim().parse().unwrap())
        .collect()
}

/// Waits until `file` holds `n` pids, one a line.
async fn pids_from(file: &Path, n: usize) -> Vec<i32> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        let pids: Vec<i32> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
        if pids.len() >= n && text.ends_with('\n') {
            return pids;
        }
        assert!(
            Instant::now() < deadline,
            "only {pids:?} in {}",
            file.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn all_gone(pids: &[i32]) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while pids.iter().any(|&p| alive(p)) {
        let left: Vec<i32> = pids.iter().copied().filter(|&p| alive(p)).collect();
        assert!(Instant::now() < deadline, "still alive: {left:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A script that leaves behind a background child and a `setsid` process (a new
/// session, out of the command's process group) that ignores SIGTERM, each writing
/// its pid to `pids`, then does `rest`.
fn escaping_script(pids: &Path, rest: &str) -> String {
    let pids = pids.display();
    format!(
        "sleep 300 & echo $! >> '{pids}'; \
         setsid sh -c 'trap \"\" TERM; echo $$ >> \"$0\"; sleep 300 & echo $! >> \"$0\"; wait' '{pids}' & \
         {rest}"
    )
}

async fn exit_codes_signals_and_output_come_through_the_supervisor() {
    let ok = run(sh("echo one; echo two >&2; echo three"), &supervised()).await;
    assert_eq!(ok.ending, Ending::Exited(0));
    assert_eq!(ok.output, "one\ntwo\nthree\n");
    let failed = run(sh("echo 'it broke' >&2; exit 3"), &supervised()).await;
    assert_eq!(failed.ending, Ending::Exited(3));
    assert_eq!(failed.last_line(), "it broke");
    let killed = run(sh("kill -KILL $$"), &supervised()).await;
    assert_eq!(killed.ending, Ending::Signalled(9));
}

async fn a_missing_program_or_directory_is_a_spawn_failure_naming_it() {
    let spec = CommandSpec {
        argv: vec!["/nonexistent/lqsm-test-program".into()],
        ..CommandSpec::default()
    };
    let out = run(spec, &supervised()).await;
    match out.ending {
        Ending::SpawnFailed(m) => assert!(m.contains("/nonexistent/lqsm-test-program"), "{m}"),
        other => panic!("expected a spawn failure, got {other:?}"),
    }
    let mut spec = sh("true");
    spec.cwd = Some("/nonexistent/lqsm-dir".into());
    match run(spec, &supervised()).await.ending {
        Ending::SpawnFailed(m) => assert!(m.contains("/nonexistent/lqsm-dir"), "{m}"),
        other => panic!("expected a spawn failure, got {other:?}"),
    }
}

async fn environment_and_working_directory_are_the_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = sh("echo \"$GREETING\"; pwd; echo \"token=${LQSM_TOKEN:-none}\"");
    spec.env = vec![("GREETING".into(), "hello there".into())];
    spec.cwd = Some(dir.path().to_str().unwrap().into());
    let out = run(spec, &supervised()).await;
    let canonical = dir.path().canonicalize().unwrap();
    assert_eq!(
        out.output,
        format!("hello there\n{}\ntoken=none\n", canonical.display())
    );
}

async fn timeout_kills_the_whole_group_even_processes_ignoring_sigterm() {
    let opts = ExecOptions {
        timeout: Some(Duration::from_millis(300)),
        ..supervised()
    };
    let out = run(
        sh("trap '' TERM; sleep 30 & echo pid $!; sleep 30 & echo pid $!; wait"),
        &opts,
    )
    .await;
    assert_eq!(out.ending, Ending::TimedOut);
    let pids = pids_in(&out.output);
    assert_eq!(pids.len(), 2, "{}", out.output);
    all_gone(&pids).await;
}

async fn processes_that_left_the_group_die_when_the_command_exits() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pids");
    let script = escaping_script(
        &file,
        &format!(
            "while [ $(wc -l < '{}') -lt 3 ]; do sleep 0.02; done; exit 0",
            file.display()
        ),
    );
    let out = run(sh(&script), &supervised()).await;
    assert_eq!(out.ending, Ending::Exited(0), "{}", out.output);
    // The outcome comes once everything is gone: no waiting needed, but allow the
    // kernel a moment to update /proc.
    all_gone(&pids_from(&file, 3).await).await;
}

async fn a_graceful_stop_lets_the_command_clean_up_and_a_kill_ends_escapees() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pids");
    let script = escaping_script(
        &file,
        "trap 'echo cleaning up; exit 7' TERM; while :; do sleep 0.05; done",
    );
    let (tx, rx) = watch::channel(Stop::Run);
    let opts = ExecOptions {
        grace: Duration::from_secs(10),
        ..supervised()
    };
    let task = tokio::spawn(async move { run_command(sh(&script), &opts, rx, None).await });
    let pids = pids_from(&file, 3).await;
    tx.send_replace(Stop::Graceful("cancelled".into()));
    let out = tokio::time::timeout(Duration::from_secs(8), task)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out.ending, Ending::Stopped("cancelled".into()));
    assert!(out.output.contains("cleaning up"), "{}", out.output);
    all_gone(&pids).await;
}

async fn dropping_the_attempt_kills_every_process_of_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pids");
    let script = escaping_script(&file, "trap '' TERM; sleep 300");
    let (_tx, rx) = watch::channel(Stop::Run);
    let opts = supervised();
    let task = tokio::spawn(async move { run_command(sh(&script), &opts, rx, None).await });
    let pids = pids_from(&file, 3).await;
    task.abort();
    let _ = task.await;
    all_gone(&pids).await;
}

/// At its soft time limit the command gets the signal (through the supervisor) and can
/// save its work and end well before the hard timeout.
async fn the_soft_time_limit_signals_the_command_before_the_timeout() {
    let opts = ExecOptions {
        soft_timeout: Some((
            Duration::from_millis(200),
            nix::sys::signal::Signal::SIGUSR1,
        )),
        ..supervised()
    };
    let started = Instant::now();
    let out = run(
        sh("trap 'echo saved; exit 0' USR1; echo working; while :; do sleep 0.05; done"),
        &opts,
    )
    .await;
    assert_eq!(out.ending, Ending::Exited(0), "{out:?}");
    assert!(
        out.output.contains("working") && out.output.contains("saved"),
        "{out:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// Whether this test runs as root; prints why the test is skipped when it does not.
fn running_as_root() -> bool {
    let root = nix::unistd::geteuid().is_root();
    if !root {
        print!(
            "skipped: only root may run a command as another user, and this test runs as uid {} ... ",
            nix::unistd::geteuid()
        );
    }
    root
}

/// `nobody` and options that run commands as it, or `None` (printing why) unless this
/// test runs as root.
fn as_nobody() -> Option<(lqsm_worker::RunAs, ExecOptions)> {
    if !running_as_root() {
        return None;
    }
    let nobody = lqsm_worker::RunAs::lookup("nobody").unwrap();
    let opts = ExecOptions {
        run_as: Some(nobody.clone()),
        ..supervised()
    };
    Some((nobody, opts))
}

/// A temporary directory with these permission bits.
fn dir_with_mode(mode: u32) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(mode),
    )
    .unwrap();
    dir
}

async fn a_command_runs_as_the_run_as_user_without_the_workers_groups() {
    let Some((nobody, opts)) = as_nobody() else {
        return;
    };
    let out = run(
        sh("id -u; id -g; id -G; echo \"home=$HOME user=$USER\"; sleep 30 & echo pid $!; touch /root/lqsm-run-as-probe && echo wrote-as-root"),
        &opts,
    )
    .await;
    assert_eq!(out.ending, Ending::Exited(1), "{}", out.output);
    let lines: Vec<&str> = out.output.lines().collect();
    assert_eq!(lines[0], nobody.uid.to_string(), "{}", out.output);
    assert_eq!(lines[1], nobody.gid.to_string(), "{}", out.output);
    // Its primary group only: none of root's supplementary groups.
    assert_eq!(lines[2], nobody.gid.to_string(), "{}", out.output);
    assert_eq!(
        lines[3],
        format!("home={} user=nobody", nobody.home.display()),
        "{}",
        out.output
    );
    assert!(
        !out.output.contains("wrote-as-root"),
        "the command could write where only root may: {}",
        out.output
    );
    // Processes running as another user still end with the attempt.
    all_gone(&pids_in(&out.output)).await;
}

/// The NUL-separated `NAME=value` entries of a process's environment.
fn environ_of(pid: i32) -> Vec<String> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    raw.split(|b| *b == 0)
        .filter(|e| !e.is_empty())
        .map(|e| String::from_utf8_lossy(e).into_owned())
        .collect()
}

async fn under_run_as_the_jobs_environment_reaches_the_command_and_no_root_process() {
    let Some((_, opts)) = as_nobody() else {
        return;
    };
    // A shared place for the command (as nobody) and this test to meet, and a
    // "library" that is garbage: a root process whose loader saw it would complain.
    let meeting = dir_with_mode(0o777);
    let bad_library = meeting.path().join("evil.so");
    std::fs::write(&bad_library, b"not a shared object").unwrap();
    let supervisor_file = meeting.path().join("supervisor");
    let go = meeting.path().join("go");
    let script = format!(
        "echo $PPID > '{sup}'; i=0; while [ ! -e '{go}' ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done; \
         echo \"preload=$LD_PRELOAD greeting=$GREETING\"; pwd",
        sup = supervisor_file.display(),
        go = go.display(),
    );
    let mut spec = sh(&script);
    spec.env = vec![
        ("LD_PRELOAD".into(), bad_library.display().to_string()),
        ("GREETING".into(), "hello there".into()),
    ];
    spec.cwd = Some(meeting.path().to_str().unwrap().into());
    let check = async {
        let supervisor = pids_from(&supervisor_file, 1).await[0];
        let cmdline = std::fs::read(format!("/proc/{supervisor}/cmdline")).unwrap();
        assert!(
            String::from_utf8_lossy(&cmdline).contains(lqsm_worker::supervisor::SUPERVISOR_ARG),
            "the command's parent {supervisor} is not the supervisor"
        );
        let status = std::fs::read_to_string(format!("/proc/{supervisor}/status")).unwrap();
        assert!(
            status
                .lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0")),
            "the supervisor does not run as root:\n{status}"
        );
        let environ = environ_of(supervisor);
        assert!(
            !environ
                .iter()
                .any(|e| e.starts_with("LD_PRELOAD=") || e.starts_with("GREETING=")),
            "the root supervisor got the job's environment: {environ:?}"
        );
        // The root-only file that carried the job's settings is gone once read (other
        // attempts' files, of tests running at the same time, do not name our library).
        let ours = bad_library.display().to_string();
        let stage_files: Vec<PathBuf> = std::fs::read_dir(std::env::temp_dir())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("lqsm-run-as-"))
            .map(|e| e.path())
            .filter(|p| std::fs::read_to_string(p).is_ok_and(|t| t.contains(&ours)))
            .collect();
        assert_eq!(stage_files, Vec::<PathBuf>::new());
        // Its directory is not the job's either: it entered nothing as root.
        let supervisor_cwd = std::fs::read_link(format!("/proc/{supervisor}/cwd")).unwrap();
        assert_ne!(supervisor_cwd, meeting.path().canonicalize().unwrap());
        std::fs::write(&go, b"").unwrap();
    };
    let (out, ()) = tokio::join!(run(spec, &opts), check);
    assert_eq!(out.ending, Ending::Exited(0), "{}", out.output);
    let lines: Vec<&str> = out.output.lines().collect();
    let canonical = meeting.path().canonicalize().unwrap();
    // The command's own loader (nobody's, its own business) may complain about the
    // garbage on its output; the variable and the directory did reach it.
    assert!(
        lines.contains(&format!("preload={} greeting=hello there", bad_library.display()).as_str()),
        "{}",
        out.output
    );
    assert!(
        lines.contains(&canonical.to_str().unwrap()),
        "{}",
        out.output
    );
}

async fn under_run_as_a_directory_the_user_cannot_enter_fails_the_attempt() {
    let Some((nobody, opts)) = as_nobody() else {
        return;
    };
    let root_only = dir_with_mode(0o700);
    let mut spec = sh("echo ran-in; pwd");
    spec.cwd = Some(root_only.path().to_str().unwrap().into());
    let out = run(spec, &opts).await;
    assert_eq!(out.ending, Ending::Exited(126), "{}", out.output);
    assert!(!out.output.contains("ran-in"), "{}", out.output);
    assert!(
        out.output.contains(&format!(
            "cannot enter the working directory `{}` as uid {}",
            root_only.path().display(),
            nobody.uid
        )) && out.output.contains("Permission denied"),
        "{}",
        out.output
    );
}

/// A command of Python that holds `mib` MiB (written, so resident) for `seconds`.
fn python_holding(mib: u64, seconds: f64) -> String {
    format!("python3 -c 'b = bytearray({mib} << 20); import time; time.sleep({seconds})'")
}

async fn the_peak_memory_of_a_command_is_measured() {
    let out = run(sh(&python_holding(80, 0.5)), &supervised()).await;
    assert_eq!(out.ending, Ending::Exited(0), "{}", out.output);
    let usage = out.usage.expect("a supervised command is measured");
    let peak = usage.peak_memory_mib();
    print!("[peak {peak} MiB, cpu {} ms] ", usage.cpu_ms);
    assert!((80..200).contains(&peak), "peak {peak} MiB: {usage:?}");
    assert!(!out.memory_exceeded);
}

/// Two processes of 50 MiB at once: more than either alone (`ru_maxrss`, the largest
/// single process, would say about 60), so the sampled sum counts.
async fn the_memory_of_processes_running_together_is_summed() {
    let script = format!(
        "{one} & {two} & wait",
        one = python_holding(50, 1.0),
        two = python_holding(50, 1.0)
    );
    let out = run(sh(&script), &supervised()).await;
    assert_eq!(out.ending, Ending::Exited(0), "{}", out.output);
    let usage = out.usage.expect("a supervised command is measured");
    let peak = usage.peak_memory_mib();
    print!("[peak {peak} MiB] ");
    assert!((100..300).contains(&peak), "peak {peak} MiB: {usage:?}");
}

/// Two processes each burning 0.2 s of CPU below a shell: their CPU time counts, as
/// the shell's children.
async fn the_cpu_time_of_every_process_is_counted() {
    let burn = "python3 -c 'import time\nwhile time.process_time() < 0.2: pass'";
    let out = run(sh(&format!("{burn} & {burn} & wait")), &supervised()).await;
    assert_eq!(out.ending, Ending::Exited(0), "{}", out.output);
    let usage = out.usage.expect("a supervised command is measured");
    print!("[cpu {} ms] ", usage.cpu_ms);
    assert!(usage.cpu_ms >= 400, "{usage:?}");
    // A sleeping command uses almost none.
    let idle = run(sh("sleep 0.3"), &supervised()).await;
    let usage = idle.usage.expect("a supervised command is measured");
    assert!(usage.cpu_ms < 100, "{usage:?}");
}

async fn the_memory_check_kills_an_attempt_over_its_limit_and_spares_one_within() {
    let checked = ExecOptions {
        memory_check_mib: Some(50),
        ..supervised()
    };
    let started = Instant::now();
    // It would hold the memory for 20 s: the check ends it long before.
    let out = run(sh(&python_holding(80, 20.0)), &checked).await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(out.ending, Ending::Signalled(9), "{}", out.output);
    assert!(out.memory_exceeded && out.memory_check, "{out:?}");
    assert!(
        out.output.contains("above its limit of 50 MiB"),
        "{}",
        out.output
    );
    let peak = out.usage.expect("measured").peak_memory_mib();
    print!("[killed after {:?} at {peak} MiB] ", started.elapsed());
    assert!(peak > 50, "peak {peak} MiB");
    // Within its limit, a command runs as without the check.
    let out = run(sh(&python_holding(10, 0.3)), &checked).await;
    assert_eq!(out.ending, Ending::Exited(0), "{}", out.output);
    assert!(!out.memory_exceeded && !out.memory_check, "{out:?}");
}

/// A whole worker with the memory check, against a server: a job over its memory
/// request fails naming its limit, one within it succeeds (the server takes the
/// reports' `usage` and `memory_exceeded`, protocol 7).
async fn a_worker_reports_a_memory_check_kill_and_usage_to_the_server() {
    use lqsm_api as api;
    let server = lqsm_testkit::TestServer::start().await;
    let client = server.client();
    let mut config = lqsm_worker::WorkerConfig::new(server.url());
    config.capacity = lqsm_worker::Capacity {
        cpus: 2.0,
        memory_mib: 1024,
        ..lqsm_worker::Capacity::default()
    };
    // The memory check, whatever this machine's cgroups.
    config.memory_limits = false;
    config.memory_check = true;
    config.kill_grace = Duration::from_millis(300);
    config.poll_wait = Duration::from_millis(1000);
    let worker = lqsm_worker::WorkerBuilder::new(config).build().unwrap();
    assert!(worker.memory_enforced());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(worker.run(async move {
        let _ = stopped.await;
    }));
    let job = |script: String, memory_mib: u64| {
        let mut job = api::SubmitJob::new(
            "root.default",
            api::JobKind::Command {
                argv: vec!["/bin/sh".into(), "-c".into(), script],
                env: Default::default(),
                cwd: None,
            },
        );
        job.resources = Some(api::Resources {
            cpu: Some(0.1),
            memory_mib: Some(memory_mib),
            ..Default::default()
        });
        job.retry = Some(api::RetrySpec {
            max_attempts: Some(1),
            ..Default::default()
        });
        job
    };
    let over = client
        .submit(&job(python_holding(80, 20.0), 50))
        .await
        .unwrap()
        .id;
    let within = client
        .submit(&job(python_holding(80, 0.2), 200))
        .await
        .unwrap()
        .id;
    let deadline = Instant::now() + lqsm_testkit::DEADLINE;
    let first_attempt_of = |view: &api::JobView| {
        view.attempts
            .first()
            .filter(|a| a.outcome.is_some())
            .cloned()
    };
    let (over_attempt, within_view) = loop {
        let over_view = client.job(over).await.unwrap();
        let within_view = client.job(within).await.unwrap();
        if let Some(attempt) = first_attempt_of(&over_view)
            && within_view.state.is_terminal()
        {
            break (attempt, within_view);
        }
        assert!(
            Instant::now() < deadline,
            "the jobs did not end: {over_view:?} {within_view:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // The server's core took the kill as too small a request: the job runs again with
    // twice the memory, and that attempt spent none of its single allowed attempt.
    assert_eq!(
        over_attempt.message.as_deref(),
        Some(
            "killed for exceeding its memory limit of 50 MiB; runs again with 100 MiB, \
             not counted against its retries"
        ),
        "{over_attempt:?}"
    );
    let over_view = client.job(over).await.unwrap();
    assert_eq!(over_view.resources.memory_mib, 100, "{over_view:?}");
    assert!(!over_view.state.is_terminal(), "{over_view:?}");
    assert_eq!(
        within_view.state,
        api::JobState::Succeeded,
        "{within_view:?}"
    );
    let _ = stop.send(());
    tokio::time::timeout(lqsm_testkit::DEADLINE, task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

//! What a job does from inside, through a real `lqsm server` and `lqsm worker`: it
//! reports its progress (shown by `lqsm job get`), hears its soft time limit as a signal
//! before the hard timeout, and asks to be run again with exit code 75.
#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

mod e2e_support;

use e2e_support::Cluster;
use lqsm_api as api;

#[test]
fn a_command_reports_progress_hears_its_soft_limit_and_asks_for_a_retry() {
    let c = Cluster::start(&[], &[("w1", 1)]);
    let gate = c.path("go");
    // Reports progress, waits for the test's go, then for its soft limit's signal, on which
    // it saves and asks to be run again; the second attempt succeeds.
    let script = format!(
        "if [ \"$LQSM_ATTEMPT\" = 2 ]; then echo second; exit 0; fi; \
         trap 'echo saved; exit 75' USR1; \
         echo '{{\"step\": \"downloading\"}}' > \"$LQSM_PROGRESS_FILE\"; \
         while [ ! -e '{gate}' ]; do sleep 0.05; done; \
         while :; do sleep 0.05; done",
        gate = gate.display()
    );
    // A soft limit of 10 s (it was 3 s): the test must see the first attempt's progress
    // before the signal ends it, and each look starts a CLI process on a loaded machine.
    let id = c.cli.submit(&[
        "--retries",
        "1",
        "--soft-timeout",
        "10s",
        "--timeout",
        "60s",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    let job = c.eventually("the job's progress", || {
        Some(c.cli.job(id)).filter(|j| j.progress.is_some())
    });
    assert_eq!(
        job.progress,
        Some(serde_json::json!({"step": "downloading"}))
    );
    assert_eq!(job.soft_timeout_ms, Some(10_000));
    let human = c
        .cli
        .run(&["job", "get", &id.to_string()])
        .success()
        .stdout
        .clone();
    assert!(
        human.contains(r#"progress:   {"step":"downloading"}"#),
        "{human}"
    );
    std::fs::write(&gate, "").unwrap();
    let done = c.wait_finished(id);
    assert_eq!(done.state, api::JobState::Succeeded, "{done:#?}");
    assert_eq!(done.attempts.len(), 2);
    assert_eq!(
        done.attempts[0].outcome,
        Some(api::AttemptOutcome::RetryRequested)
    );
    assert_eq!(
        done.attempts[0].message.as_deref(),
        Some("exit code 75: saved")
    );
}

//! Two minutes of the soak (`lqsm bench soak`, crates/lqsm-cli/src/soak.rs): the same
//! code as the documented hour (docs/BENCHMARKS.md, "Soak"), with the same load and
//! worker churn against a real `lqsm server` and real `lqsm worker`s, shortened, with
//! margins fit for a short run on a shared machine.
//!
//! The hour's criteria are memory at the end within 10% of minutes 8–12 and p99 latency
//! within 1.5×. Two minutes cannot hold those margins honestly:
//! - Memory: the run's server keeps finished jobs for 10 s here (5 minutes in the hour),
//!   so its job state is steady well before the baseline window (30–50 s); what grows
//!   after that is the allocator's and the storage engine's working set settling, a few
//!   MiB on a server of a few tens of MiB. 25% is four times what settling took in the
//!   runs behind this test (see the notes of docs/BENCHMARKS.md) and still far below
//!   what a leak of a few KiB per request or per job would add in 70 s of this load.
//!   Medians of 10 samples a window, not single samples, so one sample taken while a
//!   batch is decoded does not decide.
//! - Latency: 20 s windows hold about 230 requests each, so their p99 is the 2nd–3rd
//!   slowest request; on two cores shared with compilers one descheduled request moves
//!   it by tens of ms. The ratio is 3× here, and a final p99 within 100 ms of the
//!   baseline's passes whatever the ratio: what this catches is the server getting
//!   slower by orders of magnitude (a listing that scans every job ever submitted, a
//!   lock held across a commit), not a few ms of noise.
//! - Lost jobs, errors, and jobs completed twice other than through a killed worker's
//!   at-least-once window are held to 0, as in the hour: they are not noise.
#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.
#![allow(clippy::print_stdout)] // The run's figures are printed for the CI log.

use lqsm_testkit::run_lqsm;
use std::time::Duration;

#[test]
fn two_minutes_of_mixed_load_with_workers_joining_and_leaving_keep_memory_and_latency_steady() {
    let ran = run_lqsm(
        &[
            "-o",
            "json",
            "bench",
            "soak",
            "--duration",
            "2m",
            "--report-every",
            "10s",
            "--retention",
            "10s",
            "--churn-every",
            "20s",
            "--baseline-window",
            "30s..50s",
            "--final-window",
            "100s..120s",
            "--max-rss-growth",
            "0.25",
            "--max-p99-ratio",
            "3",
            "--p99-slack-ms",
            "100",
        ],
        // 2 minutes of load, at most 150 s of drain, and the starts and stops.
        Duration::from_secs(420),
    );
    println!("{}", ran.stderr);
    println!("{}", ran.stdout);
    let report: serde_json::Value = ran.json();
    let totals = &report["totals"];
    let criteria = &report["criteria"];
    let count = |v: &serde_json::Value| v.as_u64().unwrap();

    // The load was there: jobs ran, workers came and went both ways.
    assert!(
        count(&totals["jobs_completed"]) >= 300,
        "too few jobs completed for the run to mean anything: {totals}"
    );
    assert!(count(&totals["jobs_cancelled"]) >= 30, "{totals}");
    assert!(count(&totals["workers_killed"]) >= 2, "{totals}");
    assert!(count(&totals["workers_stopped"]) >= 2, "{totals}");
    assert!(
        report["intervals"].as_array().unwrap().len() == 12,
        "one interval per 10 s"
    );

    assert_eq!(count(&totals["errors"]), 0, "failed requests: {totals}");
    assert_eq!(count(&totals["jobs_lost"]), 0, "lost jobs: {totals}");
    assert_eq!(
        count(&totals["completed_twice_otherwise"]),
        0,
        "jobs completed twice without a killed worker: {totals}"
    );
    assert_eq!(
        count(&totals["unexpected_runs"]),
        0,
        "cancelled jobs ran: {totals}"
    );
    assert_eq!(count(&totals["workers_stop_timeouts"]), 0, "{totals}");
    assert!(
        criteria["rss_ok"].as_bool().unwrap(),
        "the server's memory grew: {criteria}"
    );
    assert!(
        criteria["p99_ok"].as_bool().unwrap(),
        "latency grew: {criteria}"
    );
    assert!(report["passed"].as_bool().unwrap(), "{}", ran.stdout);
    assert_eq!(ran.code(), Some(0), "a passing soak exits with 0");
}

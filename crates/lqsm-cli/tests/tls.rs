//! HTTPS end to end: `lqsm server --tls-cert --tls-key` with the test CA's certificate
//! (`lqsm_testkit::tls`), the CLI and a worker trusting that CA with `--ca-file`, and
//! what a client that does not trust it, or speaks plain HTTP, gets.
#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

use lqsm_testkit::process::run_lqsm_with_env;
use lqsm_testkit::{ServerProcess, WorkerProcess, run_lqsm, tls};
use std::time::Duration;

const RUN: Duration = Duration::from_secs(60);

/// `lqsm --ca-file <test CA> -o json submit --wait -- COMMAND...` against `url`.
fn submit_wait_trusting_the_ca(url: &str, command: &[&str]) -> lqsm_testkit::Ran {
    let mut args = vec![
        "--server",
        url,
        "--ca-file",
        tls::CA,
        "-o",
        "json",
        "submit",
        "--wait",
        "--",
    ];
    args.extend_from_slice(command);
    run_lqsm(&args, RUN)
}

fn tls_server() -> ServerProcess {
    ServerProcess::builder()
        .args(&["--tls-cert", tls::CERT, "--tls-key", tls::KEY])
        .start()
}

#[test]
fn the_cli_and_a_worker_trusting_the_ca_work_over_https() {
    let server = tls_server();
    let url = server.url();
    assert!(url.starts_with("https://"), "{url}");
    let _worker = WorkerProcess::start(&url, "tls-worker", &["--ca-file", tls::CA, "--cpus", "1"]);
    let ran = submit_wait_trusting_the_ca(&url, &["sh", "-c", "exit 0"]);
    assert_eq!(ran.code(), Some(0), "{ran:#?}\n{}", server.log_tail());
    let job: lqsm_api::JobView = ran.json();
    assert_eq!(job.state, lqsm_api::JobState::Succeeded, "{job:#?}");
    // The same CA from the environment.
    let ran = run_lqsm_with_env(
        &["--server", &url, "cluster"],
        &[("LQSM_CA_FILE", tls::CA)],
        RUN,
    );
    assert_eq!(ran.code(), Some(0), "{ran:#?}");
}

#[test]
fn a_client_that_does_not_trust_the_ca_or_speaks_plain_http_is_refused() {
    let server = tls_server();
    let url = server.url();
    let ran = run_lqsm(&["--server", &url, "cluster"], RUN);
    assert_eq!(ran.code(), Some(1), "{ran:#?}");
    assert!(
        ran.stderr.contains("invalid peer certificate") && ran.stderr.contains("--ca-file"),
        "the refusal names the certificate and what to do: {ran:#?}"
    );
    let plain = url.replacen("https://", "http://", 1);
    let ran = run_lqsm(&["--server", &plain, "cluster"], RUN);
    assert_eq!(ran.code(), Some(1), "{ran:#?}");
    assert!(ran.stderr.contains("use https://"), "{ran:#?}");
    // A CA file that is not one is refused before any call, naming it.
    let ran = run_lqsm(&["--server", &url, "--ca-file", tls::KEY, "cluster"], RUN);
    assert_eq!(ran.code(), Some(1), "{ran:#?}");
    assert!(ran.stderr.contains(tls::KEY), "{ran:#?}");
    // The server is still serving those that trust it.
    let ran = run_lqsm(&["--server", &url, "--ca-file", tls::CA, "cluster"], RUN);
    assert_eq!(ran.code(), Some(0), "{ran:#?}");
}

#[test]
fn half_a_tls_setting_or_an_unreadable_certificate_stops_the_server_with_the_reason() {
    let listen = "127.0.0.1:0".parse().unwrap();
    let ran = ServerProcess::builder()
        .config(&format!("[tls]\ncert_file = \"{}\"\n", tls::CERT))
        .start_expecting_refusal(listen);
    assert_ne!(ran.code(), Some(0), "{ran:#?}");
    assert!(ran.stderr.contains("tls.key_file"), "{ran:#?}");
    let ran = ServerProcess::builder()
        .args(&["--tls-cert", tls::KEY, "--tls-key", tls::KEY])
        .start_expecting_refusal(listen);
    assert_ne!(ran.code(), Some(0), "{ran:#?}");
    assert!(ran.stderr.contains("tls.cert_file"), "{ran:#?}");
}

#[test]
fn standalone_serves_https_and_its_own_worker_trusts_the_ca_given() {
    let server = ServerProcess::builder()
        .standalone()
        .args(&[
            "--tls-cert",
            tls::CERT,
            "--tls-key",
            tls::KEY,
            "--ca-file",
            tls::CA,
        ])
        .start();
    let url = server.url();
    assert!(url.starts_with("https://"), "{url}");
    let ran = submit_wait_trusting_the_ca(&url, &["true"]);
    assert_eq!(ran.code(), Some(0), "{ran:#?}\n{}", server.log_tail());
}

//! The `lqsm` binary as a person runs it.
#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

use std::process::Command;

/// The binary as it is, environment included (`lqsm_testkit::process::lqsm_command`
/// would clear `LQSM_*` and set the log level).
fn lqsm() -> Command {
    Command::new(lqsm_testkit::lqsm_binary())
}

#[test]
fn help_lists_the_server_command() {
    let out = lqsm().arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("server"), "{text}");
}

#[test]
fn a_bad_config_file_is_refused_naming_the_key_without_a_backtrace() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("lqsm.toml");
    std::fs::write(&config, "listen = \"127.0.0.1:0\"\nlisten_port = 7\n").unwrap();
    let out = lqsm()
        .args(["server", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("listen_port"), "{err}");
    assert!(!err.contains("stack backtrace"), "{err}");
}

#[test]
fn a_missing_config_file_says_which() {
    let out = lqsm()
        .args(["server", "--config", "/nonexistent/lqsm.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/lqsm.toml"), "{err}");
}

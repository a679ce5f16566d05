//! `lqsm top --once` against a real `lqsm standalone`: one frame, as plain text, with
//! the queue `root.default` and the standalone's own worker in it.
#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

mod e2e_support;

use e2e_support::Cli;
use lqsm_testkit::{DEADLINE, ServerProcess, eventually_explained};

#[test]
fn top_once_prints_one_frame_with_the_queues_and_the_worker() {
    let standalone = ServerProcess::builder()
        .standalone()
        .args(&["--name", "top-test-worker", "--label", "zone=here"])
        .start();
    let cli = Cli::new(&standalone.url());
    // The server is ready before its worker has registered.
    eventually_explained(
        "the standalone's worker to register",
        DEADLINE,
        || standalone.log_tail(),
        || {
            cli.workers()
                .into_iter()
                .find(|w| w.name == "top-test-worker")
        },
    );

    let ran = cli.run(&["top", "--once"]);
    assert_eq!(ran.code(), Some(0), "{ran:#?}\n{}", standalone.log_tail());
    let frame = &ran.stdout;
    // The tree shows the leaf indented under the root, not its whole path.
    let default_row = frame
        .lines()
        .find(|l| l.contains("  default "))
        .unwrap_or_else(|| panic!("no row for root.default in:\n{frame}"));
    assert!(default_row.contains("running"), "{frame}");
    let worker_row = frame
        .lines()
        .find(|l| l.contains("top-test-worker"))
        .unwrap_or_else(|| panic!("no row for the worker in:\n{frame}"));
    assert!(
        worker_row.contains("active") && worker_row.contains("zone=here"),
        "{frame}"
    );
    assert!(frame.contains(&standalone.url()), "{frame}");
    assert!(frame.contains("1 active"), "{frame}");
    // Plain text: no escape sequences of a terminal.
    assert!(!frame.contains('\u{1b}'), "{frame:?}");

    // With `-o json` it prints what the frame is drawn from.
    let json: serde_json::Value = cli.json(&["top", "--once"]);
    let children = json["queues"]["children"].as_array().unwrap();
    assert!(
        children.iter().any(|q| q["path"] == "root.default"),
        "{json}"
    );
    assert_eq!(json["workers"][0]["name"], "top-test-worker", "{json}");
}

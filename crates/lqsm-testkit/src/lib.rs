//! One harness for LQSM's integration tests.
//!
//! - In-process servers ([`in_process`]): a real server through [`lqsm_server::serve`]
//!   on a random loopback port with a temporary data directory: [`TestServer`] for async
//!   tests, [`BlockingTestServer`] (its own runtime) for tests that talk to it with the
//!   blocking [`Api`]. Most tests need nothing more: no binary to build first, nothing
//!   skipped.
//! - The real `lqsm` binary ([`process`]), only where the process itself is under test:
//!   it must die (kill -9), its exit code or stderr is checked, its `/metrics` (one
//!   recorder per process) is read, several servers and workers run together, or the
//!   CLI is driven. [`ServerProcess`] (`lqsm server` or `lqsm standalone`),
//!   [`WorkerProcess`] and [`run_lqsm`] start it; [`FaultProxy`] delays, drops, resets
//!   and cuts the network between processes. The binary is found one way,
//!   [`lqsm_binary`], which fails the test, saying what to run, when the binary is
//!   missing or older than the sources it was built from: nothing is tested against old
//!   code, nothing is skipped, and no crate's tests rely on another crate's tests to
//!   build it.
//! - Talking HTTP without the typed client ([`http`]): the blocking [`Api`] with its
//!   [`Reply`], and [`SimWorker`], a worker played by the test through the poll protocol.
//! - Waiting ([`wait`]): one deadline policy. [`eventually`] polls every [`POLL_EVERY`]
//!   for at most [`DEADLINE`]; [`eventually_within`] and [`eventually_explained`] take
//!   an explicit deadline, for the few waits that by design take longer. Never a bare
//!   sleep.
//!
//! `cargo test --workspace` builds the binary before any test runs (cargo builds a
//! package's binaries for its integration tests, and `lqsm-cli` has some). Testing one
//! crate alone needs it built first: `cargo build -p lqsm-cli && cargo test -p
//! lqsm-server`.
#![allow(clippy::expect_used, clippy::unwrap_used)] // A panic is a test's failure report.

pub mod binary;
pub mod fault_proxy;
pub mod http;
pub mod in_process;
pub mod postgres;
pub mod process;
pub mod wait;

/// TLS fixtures (`scripts/make-test-certs.sh` made them): a CA, and a certificate it
/// signed for `localhost` and `127.0.0.1` with its key, all valid until 2126.
pub mod tls {
    /// The test CA's certificate (PEM).
    pub const CA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tls/ca.pem");
    /// The server certificate the test CA signed (PEM).
    pub const CERT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tls/server.pem");
    /// Its private key (PEM, PKCS#8).
    pub const KEY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tls/server.key");
}

pub use binary::lqsm_binary;
pub use fault_proxy::{FaultProxy, FaultStats};
pub use http::{Api, Reply, SimWorker, finished_attempt, function_job};
pub use in_process::{BlockingTestServer, ServerOnStore, TestServer, toml_settings};
pub use process::{Ran, ServerProcess, WorkerProcess, announced_url, process_gone, run_lqsm};
pub use wait::{
    DEADLINE, POLL_EVERY, eventually, eventually_async, eventually_async_within,
    eventually_explained, eventually_within,
};

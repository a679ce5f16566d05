//! One harness for LQSM's integration tests.
//!
//! - [`TestServer`]: a real server, in-process through [`lqsm_server::serve`], on a random
//!   loopback port with a temporary data directory. Most tests need nothing more: no
//!   binary to build first, nothing skipped.
//! - [`lqsm_binary`]: the real `lqsm` binary, for tests where a process must die
//!   (kill -9) or several servers run together. It is found one way and checked to be
//!   newer than every source file, so a missing or stale binary fails the test instead
//!   of testing old code. Tests inside `lqsm-cli` use `env!("CARGO_BIN_EXE_lqsm")`,
//!   which cargo builds for them.
//! - [`DEADLINE`], [`eventually`] and [`eventually_async`]: one way to wait, polling
//!   with a deadline (never a bare sleep).
#![allow(clippy::expect_used, clippy::unwrap_used)] // A panic is a test's failure report.

use lqsm_client::Client;
use lqsm_server::config::{RoleName, ServerConfig, TokenConfig};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The longest any test waits for something that should happen: generous, because the
/// machines that run the tests are shared and loaded.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// How often a waiting test looks again.
pub const POLL_EVERY: Duration = Duration::from_millis(20);

/// Polls `f` until it answers `Some`, at most [`DEADLINE`]; panics naming `what` after.
pub fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {DEADLINE:?} waiting for {what}"
        );
        std::thread::sleep(POLL_EVERY);
    }
}

/// [`eventually`] for async checks.
pub async fn eventually_async<T, F>(what: &str, mut f: impl FnMut() -> F) -> T
where
    F: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {DEADLINE:?} waiting for {what}"
        );
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// A server running in this process, stopped when dropped.
pub struct TestServer {
    config: ServerConfig,
    url: String,
    running: Option<Running>,
    // Last, so the directory goes after the server has stopped; held only to keep it.
    _dir: tempfile::TempDir,
}

struct Running {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), lqsm_server::ServerError>>,
}

impl TestServer {
    /// A server with default settings, ready (`/readyz` answered 200).
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    /// A server whose settings `adjust` changes first (listen address and data directory
    /// are the harness's).
    pub async fn start_with(adjust: impl FnOnce(&mut ServerConfig)) -> TestServer {
        let dir = tempfile::TempDir::with_prefix("lqsm-test-").expect("a temporary directory");
        let mut config = ServerConfig::default();
        adjust(&mut config);
        config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.data_dir = dir.path().join("data");
        let mut server = TestServer {
            config,
            url: String::new(),
            running: None,
            _dir: dir,
        };
        server.launch().await;
        server
    }

    /// A server that knows one admin token.
    pub async fn with_admin_token(token: &str) -> TestServer {
        Self::start_with(|c| {
            c.tokens.push(TokenConfig {
                name: Some("test-admin".to_owned()),
                token: token.to_owned(),
                role: RoleName::Admin,
                queues: Vec::new(),
            })
        })
        .await
    }

    /// Its base URL (`http://127.0.0.1:PORT`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A client of it without a token.
    pub fn client(&self) -> Client {
        Client::new(&self.url, None).expect("the server's own URL is valid")
    }

    /// Its data directory.
    pub fn data_dir(&self) -> &Path {
        &self.config.data_dir
    }

    /// Stops it gracefully (requests in flight finish, the commit in flight lands) and
    /// waits until it has let go of its data directory.
    pub async fn stop(&mut self) {
        let Some(running) = self.running.take() else {
            return;
        };
        let _ = running.stop.send(());
        match tokio::time::timeout(DEADLINE, running.task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => panic!("the server stopped with an error: {e}"),
            Ok(Err(e)) => panic!("the server task failed: {e}"),
            Err(_) => panic!("the server did not stop within {DEADLINE:?}"),
        }
    }

    /// Stops it and starts it again on the same address and data directory.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.launch().await;
    }

    async fn launch(&mut self) {
        assert!(self.running.is_none(), "the server already runs");
        if let Some(addr) = self.url.strip_prefix("http://") {
            self.config.listen = addr.parse().expect("the harness's own address");
        }
        let (stop, stopped) = oneshot::channel::<()>();
        let (bound, listening) = oneshot::channel();
        let config = self.config.clone();
        let task = tokio::spawn(async move {
            lqsm_server::serve(
                config,
                async move {
                    let _ = stopped.await;
                },
                move |addr| {
                    let _ = bound.send(addr);
                },
            )
            .await
        });
        let addr = match tokio::time::timeout(DEADLINE, listening).await {
            Ok(Ok(addr)) => addr,
            _ => {
                let outcome = if task.is_finished() {
                    format!("{:?}", task.await)
                } else {
                    "still starting".to_owned()
                };
                panic!("the server did not start listening within {DEADLINE:?}: {outcome}");
            }
        };
        self.url = format!("http://{addr}");
        self.running = Some(Running { stop, task });
        let client = self.client();
        eventually_async("the server to be ready", || {
            let client = client.clone();
            async move { client.ready().await.ok().filter(|ready| *ready) }
        })
        .await;
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            let _ = running.stop.send(());
            running.task.abort();
        }
    }
}

/// The `lqsm` binary built by `cargo build -p lqsm-cli`, for crates whose tests cannot
/// name it with `CARGO_BIN_EXE_lqsm`. `LQSM_TEST_BIN` overrides the lookup. Panics,
/// saying what to run, when it is missing or older than any source file of the
/// workspace (it would test old code).
pub fn lqsm_binary() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(locate_binary).clone()
}

fn locate_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("LQSM_TEST_BIN") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "LQSM_TEST_BIN names {}, which is not a file",
            path.display()
        );
        return path;
    }
    let exe = std::env::current_exe().expect("the test knows its own path");
    // <target>/<profile>/deps/<test-binary>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executables live in <target>/<profile>/deps");
    let bin = profile_dir.join(format!("lqsm{}", std::env::consts::EXE_SUFFIX));
    let built = std::fs::metadata(&bin)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| {
            panic!(
                "the lqsm binary {} does not exist: run `cargo build -p lqsm-cli` first (same \
                 CARGO_TARGET_DIR and profile; `cargo test --workspace` builds it), or set \
                 LQSM_TEST_BIN",
                bin.display()
            )
        });
    let crates = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the testkit lives in crates/");
    if let Some(newer) = newest_source(crates).filter(|(t, _)| *t > built) {
        panic!(
            "the lqsm binary {} is older than {}: run `cargo build -p lqsm-cli` (or \
             `cargo test --workspace`) so the tests run today's code",
            bin.display(),
            newer.1.display()
        );
    }
    bin
}

/// The most recently changed `.rs` file under the `src/` of every crate the `lqsm`
/// binary is built from (all of them but this one): a changed test, example or benchmark
/// does not make the binary stale.
fn newest_source(crates: &Path) -> Option<(SystemTime, PathBuf)> {
    let mut newest: Option<(SystemTime, PathBuf)> = None;
    let mut stack: Vec<PathBuf> = std::fs::read_dir(crates)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|krate| krate.file_name() != "lqsm-testkit")
        .map(|krate| krate.path().join("src"))
        .collect();
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let Ok(modified) = entry.metadata().and_then(|m| m.modified()) else {
                continue;
            };
            if newest.as_ref().is_none_or(|(t, _)| modified > *t) {
                newest = Some((modified, path));
            }
        }
    }
    newest
}

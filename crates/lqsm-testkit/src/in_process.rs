//! Servers inside the test process, through [`lqsm_server::serve`]: the same server as
//! the binary's, without a binary to build or a process to manage. [`ServerOnStore`] runs
//! one on a store the test built, to make that store fail or its machine crash.

use crate::http::Api;
use crate::wait::{DEADLINE, POLL_EVERY, eventually_async};
use lqsm_client::Client;
use lqsm_server::config::{RoleName, ServerConfig, TokenConfig};
use lqsm_store::Store;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Settings read from TOML text as `lqsm server --config` reads its file, for
/// [`TestServer::start_with`] and [`BlockingTestServer::start_with`]. Panics when the
/// text is not valid settings.
pub fn toml_settings(text: &str) -> impl FnOnce(&mut ServerConfig) + use<> {
    let settings = ServerConfig::from_toml(text)
        .unwrap_or_else(|e| panic!("the test's settings are not valid: {e}\n{text}"));
    move |config| *config = settings
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
                token_file: None,
                token_env: None,
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

    /// Stops it gracefully if it runs, at most [`DEADLINE`], whatever the outcome: for
    /// teardown, which must not panic (it may run while a failed test unwinds).
    async fn stop_quietly(&mut self) {
        if let Some(running) = self.running.take() {
            let _ = running.stop.send(());
            let _ = tokio::time::timeout(DEADLINE, running.task).await;
        }
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

/// A [`TestServer`] on a runtime of its own, for tests without one: they talk to it
/// with the blocking [`Api`] (which must not run inside a runtime). Stopped gracefully
/// when dropped, before its data directory goes.
pub struct BlockingTestServer {
    // An `Option` only so that `drop` can stop it on `runtime`.
    server: Option<TestServer>,
    runtime: tokio::runtime::Runtime,
}

impl BlockingTestServer {
    /// A server with default settings, ready.
    pub fn start() -> BlockingTestServer {
        Self::start_with(|_| {})
    }

    /// A server whose settings `adjust` changes first (see [`TestServer::start_with`];
    /// [`toml_settings`] reads a settings file's text).
    pub fn start_with(adjust: impl FnOnce(&mut ServerConfig)) -> BlockingTestServer {
        // Worker threads of its own: the server answers while the test blocks.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime for the server");
        let server = runtime.block_on(TestServer::start_with(adjust));
        BlockingTestServer {
            server: Some(server),
            runtime,
        }
    }

    fn server(&self) -> &TestServer {
        self.server.as_ref().expect("the server is kept until drop")
    }

    /// Its base URL (`http://127.0.0.1:PORT`).
    pub fn url(&self) -> &str {
        self.server().url()
    }

    /// A blocking client of it without a token.
    pub fn api(&self) -> Api {
        Api::new(self.url(), None)
    }

    /// A blocking client sending `Authorization: Bearer <token>`.
    pub fn api_as(&self, token: &str) -> Api {
        Api::new(self.url(), Some(token))
    }

    /// Its data directory.
    pub fn data_dir(&self) -> &Path {
        self.server().data_dir()
    }

    /// Stops it gracefully and starts it again on the same address and data directory.
    pub fn restart(&mut self) {
        let server = self.server.as_mut().expect("the server is kept until drop");
        self.runtime.block_on(server.restart());
    }
}

impl Drop for BlockingTestServer {
    fn drop(&mut self) {
        if let Some(mut server) = self.server.take() {
            self.runtime.block_on(server.stop_quietly());
        }
    }
}

/// A server in this process on a store the test built (`lqsm_store::faults`), on a
/// runtime of its own, for tests of what a failing store does: it may stop by itself
/// ([`wait_stopped`](Self::wait_stopped)), be started again on the same address with
/// another store ([`start_again`](Self::start_again)), or lose power at once
/// ([`power_off`](Self::power_off)), as its machine would. Workers and clients find each
/// new server where the last one was.
pub struct ServerOnStore {
    config: ServerConfig,
    running: Option<Machine>,
    // Last, so the directory goes after the server has stopped; held only to keep it.
    _dir: tempfile::TempDir,
}

/// One life of the server: its runtime and its `serve` task.
struct Machine {
    runtime: tokio::runtime::Runtime,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), lqsm_server::ServerError>>,
}

impl ServerOnStore {
    /// A server on `store` whose settings `adjust` changes first (the listen address is
    /// the harness's), ready (`/readyz` answered 200). Panics when it does not start.
    pub fn start(store: Arc<dyn Store>, adjust: impl FnOnce(&mut ServerConfig)) -> ServerOnStore {
        let dir = tempfile::TempDir::with_prefix("lqsm-test-").expect("a temporary directory");
        let mut config = ServerConfig::default();
        adjust(&mut config);
        config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        // Not used by the given store; set so that nothing the server writes beside it
        // lands in the working directory.
        config.data_dir = dir.path().join("data");
        let mut server = ServerOnStore {
            config,
            running: None,
            _dir: dir,
        };
        if let Err(e) = server.start_again(store) {
            panic!("the server did not start: {e}");
        }
        server
    }

    /// Its base URL (`http://127.0.0.1:PORT`), the same across restarts.
    pub fn url(&self) -> String {
        format!("http://{}", self.config.listen)
    }

    /// A blocking client of it without a token.
    pub fn api(&self) -> Api {
        Api::new(&self.url(), None)
    }

    /// Whether its last life is still running (it stops by itself when its store fails).
    pub fn is_running(&self) -> bool {
        self.running
            .as_ref()
            .is_some_and(|machine| !machine.task.is_finished())
    }

    /// Starts it (again) on `store`, on the same address, and waits until it is ready.
    /// `Err` with the server's own error when it stopped before it got ready (its store
    /// refused to start it, say).
    pub fn start_again(&mut self, store: Arc<dyn Store>) -> Result<(), String> {
        assert!(!self.is_running(), "the server already runs");
        if let Some(ended) = self.running.take() {
            // Not a plain drop: that would wait for its blocking threads (a held commit).
            ended.runtime.shutdown_background();
        }
        // A port its last life held may take a moment to be let go after a power-off.
        let give_up = Instant::now() + DEADLINE;
        loop {
            match self.launch(store.clone()) {
                Launched::Listening(machine) => {
                    self.running = Some(machine);
                    break;
                }
                Launched::Refused(why) if why.contains("Address already in use") => {
                    assert!(
                        Instant::now() < give_up,
                        "{} stayed in use for {DEADLINE:?}",
                        self.config.listen
                    );
                    std::thread::sleep(POLL_EVERY);
                }
                Launched::Refused(why) => return Err(why),
            }
        }
        let api = self.api();
        loop {
            if api
                .try_get("/readyz")
                .is_ok_and(|reply| reply.status == 200)
            {
                return Ok(());
            }
            if !self.is_running() {
                return Err(match self.wait_stopped(DEADLINE) {
                    Ok(()) => "it stopped before it was ready, without an error".to_owned(),
                    Err(e) => e.to_string(),
                });
            }
            assert!(
                Instant::now() < give_up,
                "the server was not ready within {DEADLINE:?}"
            );
            std::thread::sleep(POLL_EVERY);
        }
    }

    fn launch(&mut self, store: Arc<dyn Store>) -> Launched {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime for the server");
        let (stop, stopped) = oneshot::channel::<()>();
        let (bound, listening) = oneshot::channel();
        let config = self.config.clone();
        let task = runtime.spawn(async move {
            lqsm_server::serve_on_store(
                config,
                store,
                async move {
                    let _ = stopped.await;
                },
                move |addr| {
                    let _ = bound.send(addr);
                },
            )
            .await
        });
        let heard = runtime.block_on(async { tokio::time::timeout(DEADLINE, listening).await });
        match heard {
            Ok(Ok(addr)) => {
                self.config.listen = addr;
                Launched::Listening(Machine {
                    runtime,
                    stop: Some(stop),
                    task,
                })
            }
            Ok(Err(_)) => {
                // It ended before it listened: its outcome says why.
                let outcome =
                    runtime.block_on(async { tokio::time::timeout(DEADLINE, task).await });
                Launched::Refused(match outcome {
                    Ok(Ok(Err(e))) => e.to_string(),
                    other => format!("it stopped before it listened: {other:?}"),
                })
            }
            Err(_) => panic!("the server did not start listening within {DEADLINE:?}"),
        }
    }

    /// Waits for its life to end by itself (its store failed) and returns how it ended;
    /// panics when it still runs after `within`.
    pub fn wait_stopped(&mut self, within: Duration) -> Result<(), lqsm_server::ServerError> {
        let mut machine = self.running.take().expect("the server was started");
        let ended = machine
            .runtime
            .block_on(async { tokio::time::timeout(within, &mut machine.task).await });
        let outcome = match ended {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(e)) => panic!("the server task failed: {e}"),
            Err(_) => {
                self.running = Some(machine);
                panic!("the server still runs after {within:?}");
            }
        };
        machine.runtime.shutdown_background();
        outcome
    }

    /// Its machine loses power: every task of the server ends where it is, nothing is
    /// answered any more and its connections drop. (Make its store crash first, with
    /// `FaultyStore::crash`, so that nothing it still writes lands.)
    pub fn power_off(&mut self) {
        if let Some(machine) = self.running.take() {
            machine.runtime.shutdown_background();
        }
    }

    /// Stops it gracefully (requests in flight finish, the commit in flight lands) and
    /// returns how it ended.
    pub fn stop(&mut self) -> Result<(), lqsm_server::ServerError> {
        let Some(machine) = self.running.as_mut() else {
            return Ok(());
        };
        if let Some(stop) = machine.stop.take() {
            let _ = stop.send(());
        }
        self.wait_stopped(DEADLINE)
    }
}

/// How one attempt to start went.
enum Launched {
    Listening(Machine),
    Refused(String),
}

impl Drop for ServerOnStore {
    fn drop(&mut self) {
        if let Some(mut machine) = self.running.take() {
            if let Some(stop) = machine.stop.take() {
                let _ = stop.send(());
            }
            let _ = machine
                .runtime
                .block_on(async { tokio::time::timeout(DEADLINE, &mut machine.task).await });
            machine.runtime.shutdown_background();
        }
    }
}

//! Servers inside the test process, through [`lqsm_server::serve`]: the same server as
//! the binary's, without a binary to build or a process to manage.

use crate::http::Api;
use crate::wait::{DEADLINE, eventually_async};
use lqsm_client::Client;
use lqsm_server::config::{RoleName, ServerConfig, TokenConfig};
use std::net::SocketAddr;
use std::path::Path;
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

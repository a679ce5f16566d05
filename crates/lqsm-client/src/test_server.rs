//! For integration tests only (feature `test-server`): starts the real `lqsm` binary on
//! a random loopback port with a temporary data directory, and stops it on drop.
//!
//! The binary comes from crate `lqsm-cli`: build it first with
//! `cargo build -p lqsm-cli` (same target directory and profile). It is looked up next
//! to the test executable's directory (`<target>/<profile>/lqsm` for
//! `<target>/<profile>/deps/<test>` and `<target>/<profile>/examples/<example>`), or
//! taken from `LQSM_TEST_BIN`. When it is missing, [`TestServer::start`] answers
//! `None` after saying so on stderr, so the test can skip; with
//! `LQSM_REQUIRE_SERVER=1` it panics instead.

use crate::Client;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long the server may take to print its address and become ready.
const START_DEADLINE: Duration = Duration::from_secs(20);

/// A running `lqsm server`, killed when dropped.
#[derive(Debug)]
pub struct TestServer {
    child: Child,
    url: String,
    binary: PathBuf,
    dir: tempfile::TempDir,
    args: Vec<String>,
}

/// The `lqsm` binary, or why there is none.
pub fn binary() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("LQSM_TEST_BIN") {
        let path = PathBuf::from(path);
        if path.is_file() {
            return Ok(path);
        }
        return Err(format!(
            "LQSM_TEST_BIN names {}, which is not a file",
            path.display()
        ));
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot locate this test: {e}"))?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| format!("{} has no grandparent directory", exe.display()))?;
    let bin = profile_dir.join(format!("lqsm{}", std::env::consts::EXE_SUFFIX));
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(format!(
            "the server binary {} does not exist: run `cargo build -p lqsm-cli` first (same \
             CARGO_TARGET_DIR and profile), or set LQSM_TEST_BIN",
            bin.display()
        ))
    }
}

impl TestServer {
    /// Starts `lqsm server` with a fresh data directory and waits until it is ready.
    /// `None` when the binary is missing (the test should return: it is skipped).
    pub async fn start() -> Option<Self> {
        Self::start_with(&[]).await
    }

    /// Like [`start`](Self::start), with extra command-line arguments.
    pub async fn start_with(extra: &[&str]) -> Option<Self> {
        let binary = match binary() {
            Ok(binary) => binary,
            Err(why) => {
                if std::env::var("LQSM_REQUIRE_SERVER").as_deref() == Ok("1") {
                    panic!("LQSM_REQUIRE_SERVER=1 but {why}");
                }
                eprintln!("SKIPPED (no server to test against): {why}");
                return None;
            }
        };
        let dir = tempfile::tempdir().expect("a temporary directory");
        let args: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
        let (child, url) = launch(&binary, dir.path(), "127.0.0.1:0", &args).await;
        Some(Self {
            child,
            url,
            binary,
            dir,
            args,
        })
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
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Stops it (SIGKILL, as a crash would) and waits until it has exited.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same address and data directory, and waits until ready.
    pub async fn restart(&mut self) {
        self.kill();
        let addr = self
            .url
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        let (child, url) = launch(&self.binary, self.dir.path(), &addr, &self.args).await;
        self.child = child;
        self.url = url;
    }

    /// The tail of its log (stderr), for failure messages.
    pub fn log_tail(&self) -> String {
        log_tail(self.dir.path())
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("--- server log (tail) ---\n{}", self.log_tail());
        }
    }
}

fn log_tail(dir: &Path) -> String {
    let Ok(mut file) = std::fs::File::open(dir.join("server.log")) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(4000)));
    let mut text = String::new();
    let _ = file.read_to_string(&mut text);
    text
}

/// Starts the process, reads its announced address and waits for `/readyz`.
async fn launch(binary: &Path, dir: &Path, listen: &str, extra: &[String]) -> (Child, String) {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("server.log"))
        .expect("a log file in the temporary directory");
    let mut child = Command::new(binary)
        .arg("server")
        .arg("--listen")
        .arg(listen)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
    let stdout = child.stdout.take().expect("stdout is piped");
    // The first line names the address; the reader then keeps draining stdout so the
    // server never blocks on a full pipe.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let first = lines.next();
        let _ = tx.send(first);
        for _ in lines {}
    });
    let line = tokio::task::spawn_blocking(move || rx.recv_timeout(START_DEADLINE))
        .await
        .expect("the reader task runs");
    let line = match line {
        Ok(Some(Ok(line))) => line,
        other => {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the server did not announce its address ({other:?}); its log:\n{}",
                log_tail(dir)
            );
        }
    };
    let url = line
        .strip_prefix("lqsm server listening on ")
        .unwrap_or_else(|| panic!("unexpected first line from the server: {line:?}"))
        .trim()
        .to_owned();
    let client = Client::new(&url, None).expect("the announced URL is valid");
    let deadline = Instant::now() + START_DEADLINE;
    loop {
        if let Ok(true) = client.ready().await {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the server at {url} was not ready within {START_DEADLINE:?}; its log:\n{}",
                log_tail(dir)
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (child, url)
}

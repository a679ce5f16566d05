//! The real `lqsm` binary as processes, for tests where the process itself is under
//! test: it is killed with SIGKILL, stopped with SIGTERM and its exit code checked, its
//! stderr read, several run together, or the CLI is driven as a person would.
//!
//! Every process gets its settings from the test alone (no `LQSM_*` variable of the
//! environment reaches it), writes its stderr to a log file in a temporary directory
//! (the end of it goes into every failure message), and is killed when its handle drops.

use crate::binary::lqsm_binary;
use crate::http::Api;
use crate::wait::{DEADLINE, POLL_EVERY};
use serde::de::DeserializeOwned;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// How many lines of a log a failure message shows.
const LOG_TAIL_LINES: usize = 40;

/// The URL a server process announces on the first line of its stdout
/// (`<prefix>http://127.0.0.1:PORT`), waited for up to [`DEADLINE`]; the rest of its
/// stdout is read and dropped so that it never writes into a closed pipe. `Err` holds
/// what came instead. The process's stdout must be piped.
pub fn announced_url(child: &mut Child, prefix: &str) -> Result<String, String> {
    let stdout = child.stdout.take().expect("stdout is piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let _ = tx.send(lines.next());
        for _ in lines {}
    });
    let first = rx.recv_timeout(DEADLINE);
    match &first {
        Ok(Some(Ok(line))) => line.strip_prefix(prefix).map(|url| url.trim().to_owned()),
        _ => None,
    }
    .ok_or_else(|| format!("first line: {first:?}"))
}

/// `lqsm` (found by [`lqsm_binary`]) with settings from the test alone: no `LQSM_*`
/// variable of the environment, no colour, `RUST_LOG=log_filter`, backtraces on (a
/// panic must show as one), stdin closed.
pub fn lqsm_command(log_filter: &str) -> Command {
    let mut cmd = Command::new(lqsm_binary());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("LQSM_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("NO_COLOR", "1")
        .env("RUST_LOG", log_filter)
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null());
    cmd
}

/// Waits for `child` to exit, at most `timeout`.
pub fn wait_with_deadline(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let give_up = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait on our child") {
            return Some(status);
        }
        if Instant::now() >= give_up {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Sends SIGTERM to `pid` (with `kill -TERM`).
pub fn sigterm(pid: u32) {
    let sent = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(sent.success(), "kill -TERM {pid} failed: {sent}");
}

/// Whether process `pid` is gone: no /proc entry, or a zombie, or the pid now
/// belongs to another program than `expected_cmdline` (NUL-separated argv).
pub fn process_gone(pid: u32, expected_cmdline: &str) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return true;
    };
    let state = stat
        .rfind(')')
        .and_then(|end| stat[end + 1..].split_whitespace().next())
        .unwrap_or("");
    if state == "Z" || state == "X" {
        return true;
    }
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    String::from_utf8_lossy(&cmdline) != expected_cmdline
}

/// The last lines of a log file, for failure messages.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}

fn kill_and_reap(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// What a finished `lqsm` command did.
#[derive(Debug)]
pub struct Ran {
    /// The command line, for messages.
    pub command: String,
    /// How it exited.
    pub status: ExitStatus,
    /// All it wrote on stdout.
    pub stdout: String,
    /// All it wrote on stderr.
    pub stderr: String,
}

impl Ran {
    /// Its exit code (`None` when a signal ended it).
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Asserts it exited with 0.
    pub fn success(&self) -> &Ran {
        assert!(
            self.status.success(),
            "`{}` failed: {self:#?}",
            self.command
        );
        self
    }

    /// Its stdout as `T`.
    pub fn json<T: DeserializeOwned>(&self) -> T {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "`{}` did not print a {}: {e}\n{self:#?}",
                self.command,
                std::any::type_name::<T>()
            )
        })
    }
}

/// Runs `lqsm ARGS...` (logging warnings only) to its end, at most `timeout`.
pub fn run_lqsm(args: &[&str], timeout: Duration) -> Ran {
    let mut cmd = lqsm_command("warn");
    cmd.args(args);
    run_to_exit(cmd, format!("lqsm {}", args.join(" ")), timeout)
}

/// Runs `lqsm ARGS...` as [`run_lqsm`] does, with these environment variables set.
pub fn run_lqsm_with_env(args: &[&str], env: &[(&str, &str)], timeout: Duration) -> Ran {
    let mut cmd = lqsm_command("warn");
    cmd.args(args).envs(env.iter().copied());
    run_to_exit(cmd, format!("lqsm {}", args.join(" ")), timeout)
}

/// Runs `cmd` to its end, at most `timeout`, collecting what it writes.
fn run_to_exit(mut cmd: Command, command: String, timeout: Duration) -> Ran {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn lqsm");
    fn read_all(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<String> {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_string(&mut text);
            }
            text
        })
    }
    let stdout = read_all(child.stdout.take());
    let stderr = read_all(child.stderr.take());
    let Some(status) = wait_with_deadline(&mut child, timeout) else {
        kill_and_reap(&mut child);
        panic!("`{command}` did not finish within {timeout:?}");
    };
    Ran {
        command,
        status,
        stdout: stdout.join().expect("the stdout reader ends"),
        stderr: stderr.join().expect("the stderr reader ends"),
    }
}

/// How to start a [`ServerProcess`].
pub struct ServerProcessBuilder {
    subcommand: &'static str,
    args: Vec<String>,
    config: Option<String>,
}

impl ServerProcessBuilder {
    /// `lqsm standalone` (a server and its own worker in one process) instead of
    /// `lqsm server`.
    pub fn standalone(mut self) -> Self {
        self.subcommand = "standalone";
        self
    }

    /// An extra command-line argument after `--listen` and `--data-dir`.
    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.to_owned());
        self
    }

    /// Extra command-line arguments after `--listen` and `--data-dir`.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| (*a).to_owned()));
        self
    }

    /// A TOML settings file, passed with `--config`.
    pub fn config(mut self, toml: &str) -> Self {
        self.config = Some(toml.to_owned());
        self
    }

    fn prepare(self, listen: SocketAddr) -> ServerProcess {
        let dir = TempDir::with_prefix("lqsm-process-").expect("a temporary directory");
        let mut args = self.args;
        if let Some(toml) = &self.config {
            let path = dir.path().join("lqsm.toml");
            std::fs::write(&path, toml).expect("write the config file");
            args.splice(0..0, ["--config".to_owned(), path.display().to_string()]);
        }
        ServerProcess {
            child: None,
            addr: listen,
            subcommand: self.subcommand,
            args,
            starts: 0,
            dir,
            tls: false,
        }
    }

    /// Starts it on a random loopback port and waits until `/readyz` answers 200.
    pub fn start(self) -> ServerProcess {
        let mut server = self.prepare(SocketAddr::from(([127, 0, 0, 1], 0)));
        server.spawn();
        server
    }

    /// Starts it on `listen`, where it is expected to refuse to start, and returns what
    /// it did once it exited (within [`DEADLINE`]).
    pub fn start_expecting_refusal(self, listen: SocketAddr) -> Ran {
        let server = self.prepare(listen);
        let cmd = server.command("info");
        run_to_exit(
            cmd,
            format!("lqsm {} --listen {listen} ...", server.subcommand),
            DEADLINE,
        )
    }
}

/// A running (or stopped) `lqsm server` or `lqsm standalone` process with its own data
/// directory; killed when dropped.
pub struct ServerProcess {
    child: Option<Child>,
    /// Port 0 until the first start; the same address for every later start.
    addr: SocketAddr,
    subcommand: &'static str,
    /// What follows `--listen` and `--data-dir`.
    args: Vec<String>,
    starts: u32,
    /// The data directory, the config file and one stderr log per start.
    dir: TempDir,
    /// Whether it serves HTTPS (as it announced).
    tls: bool,
}

impl ServerProcess {
    /// `lqsm server` with default settings, ready.
    pub fn start() -> ServerProcess {
        ServerProcess::builder().start()
    }

    /// A builder for flags, a config file, or `lqsm standalone`.
    pub fn builder() -> ServerProcessBuilder {
        ServerProcessBuilder {
            subcommand: "server",
            args: Vec::new(),
            config: None,
        }
    }

    /// `http://127.0.0.1:PORT` (`https://` when it serves TLS), the same across restarts.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A blocking client without a token.
    pub fn api(&self) -> Api {
        Api::new(&self.url(), None)
    }

    /// A blocking client sending `Authorization: Bearer <token>`.
    pub fn api_as(&self, token: &str) -> Api {
        Api::new(&self.url(), Some(token))
    }

    /// The process id while it runs.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the server runs").id()
    }

    /// Its data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log(&self) -> PathBuf {
        self.dir
            .path()
            .join(format!("{}-{}.log", self.subcommand, self.starts))
    }

    /// The end of the current (or last) process's stderr.
    pub fn log_tail(&self) -> String {
        tail(&self.log())
    }

    fn command(&self, log_filter: &str) -> Command {
        let mut cmd = lqsm_command(log_filter);
        cmd.arg(self.subcommand)
            .arg("--listen")
            .arg(self.addr.to_string())
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(&self.args);
        cmd
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "the server already runs");
        self.starts += 1;
        let log = self.log();
        let mut cmd = self.command("info");
        cmd.stdout(Stdio::piped())
            .stderr(File::create(&log).expect("create the server's log"));
        let mut child = cmd.spawn().expect("spawn lqsm");
        let first = announced_url(&mut child, "lqsm server listening on ");
        let addr = first.as_ref().ok().and_then(|url| {
            let (scheme, a) = url.split_once("://")?;
            self.tls = scheme == "https";
            a.parse::<SocketAddr>().ok()
        });
        let Some(addr) = addr else {
            kill_and_reap(&mut child);
            panic!(
                "lqsm {} did not announce its address ({first:?}); its log:\n{}",
                self.subcommand,
                tail(&log)
            );
        };
        if self.addr.port() != 0 {
            assert_eq!(addr, self.addr, "the server came back on another address");
        }
        self.addr = addr;
        let api = self.api();
        let give_up = Instant::now() + DEADLINE;
        while api.try_get("/readyz").ok().map(|r| r.status) != Some(200) {
            if let Some(status) = child.try_wait().expect("try_wait on our child") {
                panic!(
                    "lqsm {} exited with {status} before it was ready; its log:\n{}",
                    self.subcommand,
                    tail(&log)
                );
            }
            if Instant::now() >= give_up {
                kill_and_reap(&mut child);
                panic!(
                    "lqsm {} at {addr} did not become ready within {DEADLINE:?}; its log:\n{}",
                    self.subcommand,
                    tail(&log)
                );
            }
            std::thread::sleep(POLL_EVERY);
        }
        self.child = Some(child);
    }

    /// SIGKILL: the process dies at once, mid-whatever.
    pub fn kill_9(&mut self) {
        let mut child = self.child.take().expect("the server runs");
        child.kill().expect("SIGKILL the server");
        child.wait().expect("reap the server");
    }

    /// SIGTERM; waits (at most [`DEADLINE`]) for the process to exit and returns how.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("the server runs");
        sigterm(child.id());
        wait_with_deadline(&mut child, DEADLINE).unwrap_or_else(|| {
            kill_and_reap(&mut child);
            panic!(
                "lqsm {} did not exit within {DEADLINE:?} of SIGTERM; its log:\n{}",
                self.subcommand,
                self.log_tail()
            )
        })
    }

    /// [`terminate`](Self::terminate), asserting the process exited with 0.
    pub fn stop(&mut self) {
        let status = self.terminate();
        assert_eq!(
            status.code(),
            Some(0),
            "lqsm {} should exit with 0 after SIGTERM; its log:\n{}",
            self.subcommand,
            self.log_tail()
        );
    }

    /// Starts a new process on the same address, data directory and flags (after
    /// [`kill_9`](Self::kill_9), [`terminate`](Self::terminate) or
    /// [`stop`](Self::stop)), ready.
    pub fn restart(&mut self) {
        self.spawn();
    }

    /// [`restart`](Self::restart) with `args` added to the flags, for this start and
    /// every later one.
    pub fn restart_with(&mut self, args: &[&str]) {
        self.args.extend(args.iter().map(|a| (*a).to_owned()));
        self.spawn();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_and_reap(&mut child);
        }
    }
}

/// A `lqsm worker` process; killed when dropped.
pub struct WorkerProcess {
    name: String,
    child: Option<Child>,
    /// Its stderr log.
    dir: TempDir,
}

impl WorkerProcess {
    /// Starts `lqsm worker --server URL --name NAME ARGS...`.
    pub fn start(url: &str, name: &str, args: &[&str]) -> WorkerProcess {
        let dir = TempDir::with_prefix("lqsm-worker-").expect("a temporary directory");
        let log = File::create(dir.path().join("worker.log")).expect("create the worker's log");
        let child = lqsm_command("info")
            .arg("worker")
            .arg("--server")
            .arg(url)
            .arg("--name")
            .arg(name)
            .args(args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn lqsm worker");
        WorkerProcess {
            name: name.to_owned(),
            child: Some(child),
            dir,
        }
    }

    /// The name it registered with.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The end of its stderr.
    pub fn log_tail(&self) -> String {
        tail(&self.dir.path().join("worker.log"))
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends SIGTERM; the process keeps running until it chooses to exit (see
    /// [`wait_exit`](Self::wait_exit)).
    pub fn sigterm(&self) {
        sigterm(self.child.as_ref().expect("the worker runs").id());
    }

    /// Waits for the process to exit; panics after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("the worker runs");
        wait_with_deadline(&mut child, timeout).unwrap_or_else(|| {
            kill_and_reap(&mut child);
            panic!(
                "worker {} did not exit within {timeout:?}; its log:\n{}",
                self.name,
                self.log_tail()
            )
        })
    }

    /// SIGKILL: the process dies at once, mid-job.
    pub fn kill_9(&mut self) {
        let mut child = self.child.take().expect("the worker runs");
        child.kill().expect("SIGKILL the worker");
        child.wait().expect("reap the worker");
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_and_reap(&mut child);
        }
    }
}

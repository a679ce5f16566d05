"""A real LQSM for the tests: `lqsm standalone` (server and one worker with the
built-in handlers `lqsm.echo`, `lqsm.fail`, ...) on a free loopback port with a
temporary data directory, started once per session."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, List, Optional

import httpx
import pytest

import lqsm

REPO_ROOT = Path(__file__).resolve().parents[3]
READY_DEADLINE_S = 60.0

#: The test CA (`scripts/make-test-certs.sh`) and the certificate it signed for
#: 127.0.0.1, which `standalone(..., tls=True)` serves.
TLS_DIR = REPO_ROOT / "crates" / "lqsm-testkit" / "tls"
TEST_CA = str(TLS_DIR / "ca.pem")


def http_get(url: str, timeout: float = 5.0) -> httpx.Response:
    """GET with the test CA trusted, for `https://` test servers."""
    verify = ssl.create_default_context(cafile=TEST_CA) if url.startswith("https://") else True
    return httpx.get(url, timeout=timeout, verify=verify)


def lqsm_binary() -> Path:
    """The `lqsm` binary under test: $LQSM_BIN, else the workspace's debug build."""
    binary = Path(os.environ.get("LQSM_BIN", REPO_ROOT / "target" / "debug" / "lqsm"))
    if not binary.is_file():
        pytest.fail(f"{binary} does not exist: build it with `cargo build -p lqsm-cli` (or set LQSM_BIN)")
    return binary


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def standalone(data_dir: Path, *extra_args: str, port: Optional[int] = None, tls: bool = False) -> Iterator[str]:
    """Runs `lqsm standalone` with `extra_args` until the block ends; yields its URL
    once it is ready to serve. The same `data_dir` and `port` again restart it. With
    `tls`, it serves HTTPS with the test CA's certificate (trust `TEST_CA`)."""
    log_path = data_dir / "lqsm-standalone.log"
    port = port or free_loopback_port()
    url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    if tls:
        extra_args = (
            "--tls-cert", str(TLS_DIR / "server.pem"), "--tls-key", str(TLS_DIR / "server.key"),
            "--ca-file", TEST_CA, *extra_args,
        )
    # The server reads LQSM_* settings from the environment: keep the caller's out.
    env = {k: v for k, v in os.environ.items() if not k.startswith("LQSM_")}
    env["RUST_LOG"] = "warn"
    command = [
        str(lqsm_binary()),
        "standalone",
        "--listen", f"127.0.0.1:{port}",
        "--server", url,
        "--data-dir", str(data_dir / "data"),
        "--cpus", "2",
        "--memory", "2G",
        *extra_args,
    ]
    with open(log_path, "ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        _wait_until_ready(url, process, log_path)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture(scope="session")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a running `lqsm standalone` without tokens, shared by the session."""
    with standalone(tmp_path_factory.mktemp("lqsm")) as url:
        yield url


def _wait_until_ready(url: str, process: "subprocess.Popen[bytes]", log_path: Path) -> None:
    deadline = time.monotonic() + READY_DEADLINE_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"lqsm standalone exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            if http_get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    pytest.fail(f"lqsm standalone at {url} not ready after {READY_DEADLINE_S} s:\n{log_path.read_text()[-3000:]}")


@pytest.fixture
def app(server_url: str) -> Iterator[lqsm.App]:
    """An app on the session's server."""
    with lqsm.App(server_url) as app:
        yield app


TESTS_DIR = Path(__file__).resolve().parent
WORKER_READY_DEADLINE_S = 30.0


class PythonWorker:
    """A running `python -m lqsm worker -A worker_tasks:app`."""

    def __init__(self, process: "subprocess.Popen[bytes]", name: str, log_path: Path) -> None:
        self.process = process
        self.name = name
        self.log_path = log_path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


@contextmanager
def python_worker(url: str, records: Path, pool: str = "threads", *extra: str) -> Iterator[PythonWorker]:
    """Runs a Python worker of `tests/worker_tasks.py` for `url` until the block ends
    (then drains it with SIGTERM); yields once the server lists it as active."""
    name = f"pytest-{pool}-{uuid.uuid4().hex[:8]}"
    log_path = records.parent / f"{name}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LQSM_")}
    env.update(
        PYTHONPATH=str(TESTS_DIR),
        LQSM_TEST_SERVER=url,
        LQSM_TEST_RECORDS=str(records),
        PYTHONUNBUFFERED="1",
    )
    command = [sys.executable, "-m", "lqsm", "worker", "-A", "worker_tasks:app", "--server", url]
    command += ["--pool", pool, "--name", name, "--stop-grace", "3", *extra]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=TESTS_DIR)
    worker = PythonWorker(process, name, log_path)
    try:
        wait_for(
            lambda: any(w["name"] == name and w["state"] == "active" for w in http_get(f"{url}/v1/workers").json()),
            WORKER_READY_DEADLINE_S,
            lambda: f"worker {name} not active:\n{worker.log()}",
            process,
        )
        yield worker
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
    # A worker that crashed or gave up during the test fails it (one the test killed
    # itself is its own business).
    if process.returncode not in (0, -signal.SIGKILL):
        pytest.fail(f"worker {name} exited with {process.returncode}:\n{worker.log()}")


def wait_for(
    condition: Callable[[], bool],
    deadline_s: float,
    describe: Callable[[], str],
    process: "Optional[subprocess.Popen[bytes]]" = None,
) -> None:
    """Polls `condition` until it holds; fails with `describe()` after `deadline_s`, or
    at once if `process` exits."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if condition():
            return
        if process is not None and process.poll() is not None:
            pytest.fail(f"exited with {process.returncode}: {describe()}")
        time.sleep(0.05)
    pytest.fail(describe())


def read_records(records: Path) -> List[List[str]]:
    """The lines tasks recorded, split: `[event, job_id, pid]`."""
    if not records.exists():
        return []
    return [line.split() for line in records.read_text().splitlines() if line.strip()]


class FaultProxy:
    """A TCP proxy on a free loopback port in front of `target` (`host:port`), for
    network faults: `partition()` stops every byte both ways (connections stay open,
    new ones are taken and left silent), `heal()` drops what was held and relays again.
    Runs on a thread of its own."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_loopback_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.partitioned = False
        self._writers: "set[asyncio.StreamWriter]" = set()
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fault-proxy", daemon=True)
        self._thread.start()
        self._started.wait(10)

    def _run(self) -> None:

        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())
        self._started.set()
        self._loop.run_forever()

    async def _serve(self) -> None:

        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def _accept(self, reader: "asyncio.StreamReader", writer: "asyncio.StreamWriter") -> None:

        self._writers.add(writer)
        try:
            while self.partitioned:
                await asyncio.sleep(0.05)
            upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
            self._writers.add(upstream_writer)
            await asyncio.gather(
                self._pipe(reader, upstream_writer), self._pipe(upstream_reader, writer), return_exceptions=True
            )
        except OSError:
            pass
        finally:
            writer.close()

    async def _pipe(self, reader: "asyncio.StreamReader", writer: "asyncio.StreamWriter") -> None:

        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                while self.partitioned:
                    # Held, never delivered: the connection is dropped at heal().
                    await asyncio.sleep(0.05)
                    if writer.is_closing():
                        return
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    def partition(self) -> None:
        self.partitioned = True

    def heal(self) -> None:
        def drop_all() -> None:
            for writer in list(self._writers):
                writer.close()
            self._writers.clear()
            self.partitioned = False

        self._loop.call_soon_threadsafe(drop_all)

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)

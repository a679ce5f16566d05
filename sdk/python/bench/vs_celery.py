"""LQSM's Python worker beside Celery 5, on this machine, in one sitting.

The same tasks (`bench_tasks.py`), one submitting thread, one worker with concurrency
2: Celery's prefork pool with RabbitMQ and with Redis, LQSM's processes, threads and
asyncio pools against `lqsm server`. For each, the submit rate (N `.delay()` calls,
until the last is sent: LQSM's are durable by then, Celery's are published) and the
end-to-end rate (N tasks from the first `.delay()` to the last task's end). Two
workloads: a no-op, and a realistic task (JSON in, about 1 ms of cpu, JSON out). Celery
runs with its defaults for a new user, without a result backend (it keeps no results;
LQSM keeps every one).

Usage (scripts/bench-celery.sh sets it up):
    python bench/vs_celery.py --lqsm-bin target/release/lqsm [--tasks 20000] [--runs 3]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Tuple

import httpx

BENCH_DIR = Path(__file__).resolve().parent
RABBITMQ = "amqp://guest:guest@127.0.0.1:5672//"
REDIS = "redis://127.0.0.1:6379/0"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(condition: Callable[[], bool], deadline_s: float, what: str) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise SystemExit(f"timed out waiting for {what}")


def spin_for_one_ms() -> int:
    """Rounds of the realistic task's hashing that take about 1 ms here."""
    digest, rounds = b"x", 20_000
    started = time.perf_counter()
    for _ in range(rounds):
        digest = hashlib.sha256(digest).digest()
    per_round = (time.perf_counter() - started) / rounds
    return max(1, int(0.001 / per_round))


def document(i: int) -> Dict[str, Any]:
    return {"id": i, "customer": f"c{i % 97}", "items": [{"sku": f"s{j}", "qty": j} for j in range(5)]}


def stop(process: "subprocess.Popen[bytes]") -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            # A worker that would not drain: its whole group goes.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


@contextlib.contextmanager
def lqsm_system(binary: str, pool: str, env: Dict[str, str], work: Path) -> Iterator[Tuple[Any, Any]]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server_env = {k: v for k, v in os.environ.items() if not k.startswith("LQSM_")}
    server_env["RUST_LOG"] = "warn"
    server = subprocess.Popen(
        [binary, "server", "--listen", f"127.0.0.1:{port}", "--data-dir", str(work / f"data-{uuid.uuid4().hex}")],
        env=server_env,
        stdout=open(work / "server.log", "ab"),
        stderr=subprocess.STDOUT,
    )
    worker = None
    try:
        wait_until(lambda: _ready(url), 60, "lqsm server")
        env = dict(env, BENCH_LQSM=url)
        name = f"bench-{uuid.uuid4().hex[:6]}"
        worker = subprocess.Popen(
            [sys.executable, "-m", "lqsm", "worker", "-A", "bench_tasks:lqsm_app", "--server", url,
             "--pool", pool, "--concurrency", "2", "--name", name, "--loglevel", "WARNING"],
            env=env,
            cwd=BENCH_DIR,
            stdout=open(work / "worker.log", "ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_until(
            lambda: any(w["name"] == name and w["state"] == "active" for w in httpx.get(f"{url}/v1/workers").json()),
            60,
            "the lqsm worker",
        )
        os.environ["BENCH_LQSM"] = url
        import bench_tasks

        app = bench_tasks.lqsm.App(url)
        noop = app.task(name="bench.noop")(bench_tasks.lqsm_noop.function)
        realistic = app.task(name="bench.realistic")(bench_tasks.lqsm_realistic.function)
        try:
            noop.delay()  # first contact outside the timing
            app.flush()
            yield (noop, realistic), app.flush
        finally:
            app.close()
    finally:
        if worker is not None:
            stop(worker)
        stop(server)


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


@contextlib.contextmanager
def celery_system(broker: str, env: Dict[str, str], work: Path) -> Iterator[Tuple[Any, Any]]:
    queue = f"bench-{uuid.uuid4().hex[:8]}"
    env = dict(env, BENCH_BROKER=broker, BENCH_QUEUE=queue)
    os.environ.update(BENCH_BROKER=broker, BENCH_QUEUE=queue)
    import bench_tasks

    # A client app of its own per run: Celery keeps its broker connection per app.
    app = bench_tasks.Celery("bench-client", broker=broker)
    app.conf.task_default_queue = queue
    noop = app.task(name="bench.noop", ignore_result=True)(bench_tasks.celery_noop.run)
    realistic = app.task(name="bench.realistic", ignore_result=True)(bench_tasks.celery_realistic.run)
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "bench_tasks:celery_app", "worker", "-P", "prefork", "-c", "2",
         "-Q", queue, "--without-gossip", "--without-mingle", "--loglevel", "WARNING", "-n", f"{queue}@%h"],
        env=env,
        cwd=BENCH_DIR,
        stdout=open(work / "celery.log", "ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_until(lambda: bool(app.control.ping(timeout=0.5)), 60, "the celery worker")
        noop.delay()  # connection set up outside the timing
        yield (noop, realistic), lambda: None
    finally:
        stop(worker)
        with contextlib.suppress(Exception):
            with app.connection_for_write() as connection:
                connection.default_channel.queue_delete(queue)
        app.close()


def measure(system: Any, workload: str, n: int, counter: Path) -> Tuple[float, float]:
    """(submit rate, end-to-end rate) of `n` tasks of `workload` through `system`."""
    (noop, realistic), flush = system
    wait_until(lambda: counter.stat().st_size >= 1, 60, "the first contact's task")
    base = counter.stat().st_size
    documents = [document(i) for i in range(n)] if workload == "realistic" else None
    started = time.perf_counter()
    if documents is None:
        for _ in range(n):
            noop.delay()
    else:
        for doc in documents:
            realistic.delay(doc)
    flush()
    submitted = time.perf_counter() - started
    wait_until(lambda: counter.stat().st_size >= base + n, 600, f"{n} tasks to finish")
    finished = time.perf_counter() - started
    return n / submitted, n / finished


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lqsm-bin", required=True)
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", default="", help="comma-separated system names to run")
    args = parser.parse_args()
    sys.path.insert(0, str(BENCH_DIR))
    spin = spin_for_one_ms()
    os.environ["BENCH_SPIN"] = str(spin)
    systems: Dict[str, Callable[[Dict[str, str], Path], Any]] = {
        "celery-prefork-rabbitmq": lambda env, work: celery_system(RABBITMQ, env, work),
        "celery-prefork-redis": lambda env, work: celery_system(REDIS, env, work),
        "lqsm-processes": lambda env, work: lqsm_system(args.lqsm_bin, "processes", env, work),
        "lqsm-threads": lambda env, work: lqsm_system(args.lqsm_bin, "threads", env, work),
        "lqsm-asyncio": lambda env, work: lqsm_system(args.lqsm_bin, "asyncio", env, work),
    }
    chosen = [s for s in args.only.split(",") if s] or list(systems)
    results: Dict[Tuple[str, str], List[Tuple[float, float]]] = {}
    work = Path(tempfile.mkdtemp(prefix="lqsm-vs-celery-"))
    try:
        for run in range(args.runs):
            for name in chosen:
                for workload in ("noop", "realistic"):
                    counter = work / f"counter-{uuid.uuid4().hex}"
                    counter.touch()
                    env = dict(os.environ, BENCH_COUNTER=str(counter), PYTHONPATH=str(BENCH_DIR))
                    os.environ["BENCH_COUNTER"] = str(counter)
                    with systems[name](env, work) as system:
                        rates = measure(system, workload, args.tasks, counter)
                    results.setdefault((name, workload), []).append(rates)
                    print(
                        f"run {run + 1} {name:26} {workload:9} submit {rates[0]:9,.0f}/s  end-to-end {rates[1]:9,.0f}/s",
                        flush=True,
                    )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nmedians of {args.runs} runs, {args.tasks:,} tasks each (1 ms task: {spin} sha256 rounds)")
    print(f"{'system':26} {'workload':9} {'submit/s':>10} {'end-to-end/s':>13}")
    for (name, workload), rates in results.items():
        submit = statistics.median(r[0] for r in rates)
        e2e = statistics.median(r[1] for r in rates)
        print(f"{name:26} {workload:9} {submit:10,.0f} {e2e:13,.0f}")
    print(json.dumps({f"{n}/{w}": [statistics.median(r[0] for r in v), statistics.median(r[1] for r in v)]
                      for (n, w), v in results.items()}))


if __name__ == "__main__":
    main()

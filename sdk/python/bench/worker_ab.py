"""Two versions of the Python SDK's worker side by side, in one sitting: the no-op task
of `vs_celery.py` end to end through one `--pool processes` worker (concurrency 2) and a
release `lqsm server`, runs alternating between the versions, with the CPU each
process spent per task. For measuring a change to the worker before and after:

    git worktree add /tmp/before HEAD~1
    target/bench-venv/bin/python sdk/python/bench/worker_ab.py --lqsm-bin target/release/lqsm \\
        /tmp/before/sdk/python/src sdk/python/src

Each version is a directory holding the `lqsm` package (`sdk/python/src`); the worker
imports it from there (the driver's own client is the installed one, the same for both).
Needs the benchmark's virtual environment (`scripts/bench-celery.sh` makes it).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Dict, List, Tuple

from vs_celery import BENCH_DIR, _ready, free_port, wait_until
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def machine_busy() -> Tuple[int, int]:
    with open("/proc/stat") as stat:
        fields = [int(f) for f in stat.readline().split()[1:9]]
    return fields[3] + fields[4], sum(fields)




def one_run(binary: str, source: str, tasks: int, work: Path) -> Dict[str, float]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    counter = work / f"counter-{uuid.uuid4().hex}"
    counter.touch()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LQSM_")}
    server = subprocess.Popen(
        [binary, "server", "--listen", f"127.0.0.1:{port}", "--data-dir", str(work / uuid.uuid4().hex)],
        env=dict(env, RUST_LOG="warn"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    worker_env = dict(env, BENCH_COUNTER=str(counter), BENCH_LQSM=url, PYTHONPATH=f"{source}:{BENCH_DIR}")
    try:
        wait_until(lambda: _ready(url), 60, "the server")
        worker = subprocess.Popen(
            [sys.executable, "-m", "lqsm", "worker", "-A", "bench_tasks:lqsm_app", "--server", url,
             "--pool", "processes", "--concurrency", "2", "--loglevel", "WARNING"],
            env=worker_env,
            cwd=BENCH_DIR,
        )
        try:
            os.environ.update(BENCH_COUNTER=str(counter), BENCH_LQSM=url)
            import bench_tasks

            app = bench_tasks.lqsm.App(url)
            noop = app.task(name="bench.noop")(bench_tasks.lqsm_noop.function)
            noop.delay()
            app.flush()
            wait_until(lambda: counter.stat().st_size >= 1, 60, "the first task")
            idle0, total0 = machine_busy()
            server0, worker0, own0 = cpu_seconds(server.pid), cpu_seconds(worker.pid), time.process_time()
            started = time.perf_counter()
            for _ in range(tasks):
                noop.delay()
            app.flush()
            wait_until(lambda: counter.stat().st_size >= tasks + 1, 600, f"{tasks} tasks")
            elapsed = time.perf_counter() - started
            idle1, total1 = machine_busy()
            figures = {
                "end_to_end": tasks / elapsed,
                "busy": 1 - (idle1 - idle0) / max(1, total1 - total0),
                "server_us": (cpu_seconds(server.pid) - server0) / tasks * 1e6,
                "worker_us": (cpu_seconds(worker.pid) - worker0) / tasks * 1e6,
                "submitter_us": (time.process_time() - own0) / tasks * 1e6,
            }
            app.close()
            return figures
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(60)
    finally:
        server.terminate()
        server.wait(60)




def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lqsm-bin", required=True)
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("versions", nargs="+", help="directories holding the `lqsm` package")
    args = parser.parse_args()
    sys.path.insert(0, str(BENCH_DIR))
    results: Dict[str, List[Dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="lqsm-worker-ab-") as work:
        for run in range(args.runs):
            for version in args.versions:
                source = str(Path(version).resolve())
                figures = one_run(args.lqsm_bin, source, args.tasks, Path(work))
                results.setdefault(version, []).append(figures)
                print(
                    f"run {run + 1} {version}: end to end {figures['end_to_end']:,.0f}/s, machine busy "
                    f"{figures['busy']:.0%}; CPU per task: server {figures['server_us']:.1f} µs, worker "
                    f"{figures['worker_us']:.1f} µs (children not counted), submitter {figures['submitter_us']:.1f} µs",
                    flush=True,
                )
    print(f"\nmedians of {args.runs} runs, {args.tasks:,} no-op tasks each")
    for version, runs in results.items():
        medians = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        print(
            f"{version}: end to end {medians['end_to_end']:,.0f}/s; server {medians['server_us']:.1f} µs, "
            f"worker {medians['worker_us']:.1f} µs, submitter {medians['submitter_us']:.1f} µs a task"
        )


if __name__ == "__main__":
    main()

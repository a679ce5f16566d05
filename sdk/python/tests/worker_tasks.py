"""Tasks the Python worker runs in the tests: `lqsm-py worker -A worker_tasks:app`.

The app's server is `$LQSM_TEST_SERVER`. Tasks that the tests count record what they
did as lines appended to `$LQSM_TEST_RECORDS` (`EVENT JOB_ID PID`): appends of one
short line are atomic, so workers in several processes may share the file."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any, List

import lqsm

app = lqsm.App(os.environ.get("LQSM_TEST_SERVER", "http://127.0.0.1:9"))


class InvoiceRejected(Exception):
    """An exception the tests import, so that `get()` may raise it."""


def record(event: str, job_id: Any) -> None:
    path = os.environ.get("LQSM_TEST_RECORDS")
    if path:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{event} {job_id} {os.getpid()}\n".encode())
        finally:
            os.close(fd)


@app.task(name="tests.add")
def add(x: int, y: int) -> int:
    return x + y


@app.task(name="tests.total")
def total(values: List[int]) -> int:
    return sum(values)


@app.task(name="tests.reject", bind=True)
def reject(self: "lqsm.Task[None]", reason: str) -> None:
    raise InvoiceRejected(f"{reason} ({self.request.id})")


@app.task(name="tests.flaky", bind=True, retries=3, retry_backoff=0.2)
def flaky(self: "lqsm.Task[int]", fail_times: int) -> int:
    record("attempt", self.request.id)
    if self.request.attempt <= fail_times:
        raise RuntimeError(f"attempt {self.request.attempt} fails")
    return self.request.attempt


@app.task(name="tests.asks_retry", bind=True, retries=2)
def asks_retry(self: "lqsm.Task[int]", countdown: float) -> int:
    record("attempt", self.request.id)
    if self.request.attempt == 1:
        self.retry(countdown=countdown)
    return self.request.attempt


@app.task(name="tests.sleep", bind=True)
def sleep(self: "lqsm.Task[int]", seconds: float) -> int:
    """Records its start and its end; answers its process id."""
    record("start", self.request.id)
    self.update_state(state="SLEEPING", meta={"seconds": seconds})
    # In short naps: a stop raised into a thread lands between two of them.
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
    record("done", self.request.id)
    return os.getpid()


@app.task(name="tests.soft_limited", soft_timeout=0.5, timeout=20)
def soft_limited() -> str:
    try:
        for _ in range(200):
            time.sleep(0.1)
    except lqsm.SoftTimeLimitExceeded:
        return "cleaned up"
    return "never warned"


@app.task(name="tests.pid")
def pid() -> int:
    return os.getpid()


@app.task(name="tests.async_sleep", bind=True)
async def async_sleep(self: "lqsm.Task[float]", seconds: float) -> List[float]:
    started = time.time()
    await asyncio.sleep(seconds)
    return [started, time.time()]


@app.task(name="tests.talks")
def talks() -> str:
    import logging

    print("printed by the task")
    logging.getLogger("tests").warning("logged by the task")
    return "ok"


@app.task(name="tests.counts")
def counts() -> int:
    """A line every 200 ms for 2 s: its output is readable while it runs."""
    for i in range(1, 11):
        print(f"line {i}")
        time.sleep(0.2)
    return 10


@app.task(name="tests.limited", rate_limit="4/s")
def limited() -> float:
    return time.time()


@app.task(name="tests.hog")
def hog(mib: int) -> int:
    """Holds `mib` MiB while it runs (touched, so that it counts); answers its pid."""
    block = bytearray(mib * 1024 * 1024)
    for i in range(0, len(block), 4096):
        block[i] = 1
    return os.getpid()


@app.task(name="tests.picky", bind=True, retries=3, retry_backoff=0.1, autoretry_for=(ConnectionError,))
def picky(self: "lqsm.Task[None]") -> None:
    """Retried for a ConnectionError; its ValueError on the second attempt ends it."""
    if self.request.attempt == 1:
        raise ConnectionError("the gateway hung up")
    raise ValueError("the invoice is malformed")


@app.task(name="tests.huge")
def huge() -> str:
    return "x" * (9 * 1024 * 1024)

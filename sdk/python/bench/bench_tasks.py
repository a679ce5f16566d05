"""The tasks of `vs_celery.py`, declared for Celery and for LQSM alike: the same work,
so that the systems differ only in how a task reaches a worker and its end is recorded.

Every task ends by appending one byte to `$BENCH_COUNTER`, which is how the benchmark
sees the last one finish on both systems."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Dict, Optional

from celery import Celery

import lqsm

_counter_fd: Optional[int] = None

#: Rounds of hashing that make about 1 ms of cpu here (measured by the benchmark).
SPIN = int(os.environ.get("BENCH_SPIN", "1000"))


def tick() -> None:
    global _counter_fd
    if _counter_fd is None:
        _counter_fd = os.open(os.environ["BENCH_COUNTER"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(_counter_fd, b".")


def realistic_work(document: Dict[str, Any]) -> Dict[str, Any]:
    """JSON in, about 1 ms of cpu, JSON out."""
    digest = json.dumps(document, sort_keys=True).encode()
    for _ in range(SPIN):
        digest = hashlib.sha256(digest).digest()
    return {"id": document["id"], "digest": digest.hex(), "items": len(document["items"])}


celery_app = Celery("bench", broker=os.environ.get("BENCH_BROKER", "memory://"))
celery_app.conf.task_default_queue = os.environ.get("BENCH_QUEUE", "bench")


@celery_app.task(name="bench.noop", ignore_result=True)
def celery_noop() -> None:
    tick()


@celery_app.task(name="bench.realistic", ignore_result=True)
def celery_realistic(document: Dict[str, Any]) -> Dict[str, Any]:
    result = realistic_work(document)
    tick()
    return result


lqsm_app = lqsm.App(os.environ.get("BENCH_LQSM", "http://127.0.0.1:9"))


@lqsm_app.task(name="bench.noop")
def lqsm_noop() -> None:
    tick()


@lqsm_app.task(name="bench.realistic")
def lqsm_realistic(document: Dict[str, Any]) -> Dict[str, Any]:
    result = realistic_work(document)
    tick()
    return result

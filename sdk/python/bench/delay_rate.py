"""How fast one thread submits with `.delay()`: unconfirmed (batched) and confirmed (one
request a job), beside the ceiling of the same jobs in one raw batch request (httpx, no
SDK). Jobs go to a handler no worker serves, so only submission is measured; each mode
tags its jobs and cancels them afterwards.

Usage: python bench/delay_rate.py URL [N]      (N jobs per mode, default 10000)"""

from __future__ import annotations

import sys
import time
import uuid
from typing import Any

import httpx

import lqsm


def main() -> None:
    url = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 10_000
    handler = f"bench.nobody_{uuid.uuid4().hex}"
    rates = {}
    for mode in ("unconfirmed", "confirmed"):
        tag = f"bench-{mode}-{uuid.uuid4().hex}"
        count = n if mode == "unconfirmed" else max(1, n // 10)
        with lqsm.App(url, confirm=(mode == "confirmed")) as app:

            @app.task(name=handler, tags=[tag])
            def task(*args: Any) -> None: ...

            task.delay(-1)  # first contact (the version check) outside the timing
            app.flush()
            started = time.perf_counter()
            for i in range(count):
                task.delay(i)
            calls = time.perf_counter() - started
            app.flush()
            total = time.perf_counter() - started
            rates[mode] = count / total
            print(f"{mode}: {count} .delay() in {calls:.3f} s, durable after {total:.3f} s: {count / total:,.0f} jobs/s")
            app._server.request("POST", "/v1/jobs/cancel", json={"tag": tag})
    tag = f"bench-raw-{uuid.uuid4().hex}"
    jobs = [
        {"queue": "root.default", "kind": {"type": "function", "handler": handler,
                                           "args": {"args": [i], "kwargs": {}}}, "tags": [tag]}
        for i in range(n)
    ]
    with httpx.Client(base_url=url, timeout=60) as client:
        started = time.perf_counter()
        for start in range(0, n, 10_000):
            answer = client.post("/v1/jobs/batch", json={"jobs": jobs[start:start + 10_000]})
            answer.raise_for_status()
        total = time.perf_counter() - started
        client.post("/v1/jobs/cancel", json={"tag": tag}).raise_for_status()
    print(f"ceiling: {n} jobs in raw batch requests in {total:.3f} s: {n / total:,.0f} jobs/s")
    print(f"RATES unconfirmed={rates['unconfirmed']:.0f} confirmed={rates['confirmed']:.0f} ceiling={n / total:.0f}")


if __name__ == "__main__":
    main()

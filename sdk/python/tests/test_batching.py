"""Unconfirmed submission: `.delay()` returns at once with an id chosen here, jobs go in
batches, `flush()` raises what the server refused, a result's first use waits for its
job to be sent; `confirm=True` submits one job per request."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

import lqsm
from lqsm._batcher import new_job_id


def test_ids_are_uuid7_and_only_grow() -> None:
    ids = [new_job_id() for _ in range(10_000)]
    assert all(uuid.UUID(i).version == 7 for i in ids)
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


def test_many_delays_go_in_batches_and_every_one_lands(server_url: str) -> None:
    tag = f"batch-{uuid.uuid4().hex}"
    with lqsm.App(server_url, max_batch=500) as app:

        @app.task(name=f"tests.nobody_{uuid.uuid4().hex}", tags=[tag])
        def nobody(*args: Any) -> None: ...

        started = time.monotonic()
        results = [nobody.delay(i) for i in range(2_000)]
        queued = time.monotonic() - started
        app.flush()
        listed = 0
        cursor = ""
        while True:
            page = app._server.request("GET", f"/v1/jobs?tag={tag}&limit=1000{cursor}")
            listed += len(page["jobs"])
            if not page.get("next_cursor"):
                break
            cursor = f"&cursor={page['next_cursor']}"
        assert listed == 2_000
        assert results[0].state == "pending"
        # No round trip per call: 2,000 calls take far less than 2,000 requests would.
        assert queued < 5.0
        app._server.request("POST", "/v1/jobs/cancel", json={"tag": tag})


def test_a_result_waits_for_its_job_to_be_sent(app: lqsm.App) -> None:
    @app.task(name="lqsm.echo")
    def echo(*args: Any, **kwargs: Any) -> Any: ...

    result = echo.delay("now")
    # Read at once: the job is sent first, so the server knows it.
    assert result.get(timeout=30) == {"args": ["now"], "kwargs": {}}


def test_a_confirmed_job_is_on_the_server_when_delay_returns(server_url: str) -> None:
    with lqsm.App(server_url, confirm=True) as app:

        @app.task(name=f"tests.nobody_{uuid.uuid4().hex}")
        def nobody() -> None: ...

        result = nobody.delay()
        # Straight to the server, bypassing the result's wait for sending.
        view = app._server.request("GET", f"/v1/jobs/{result.id}")
        assert view["state"] == "pending"
        result.revoke()


def test_refusals_of_unconfirmed_jobs_come_with_the_flush(app: lqsm.App) -> None:
    @app.task(name="lqsm.echo", queue="root.nowhere")
    def echo() -> None: ...

    first = echo.delay()
    echo.delay()
    with pytest.raises(lqsm.SubmissionError) as raised:
        app.flush()
    assert first.id in raised.value.errors
    assert len(raised.value.errors) == 2
    assert "2" not in str(raised.value) or "more" in str(raised.value)
    # Reported once: the next flush is clean.
    app.flush()


def test_batching_options_are_checked() -> None:
    with pytest.raises(ValueError):
        lqsm.App("http://127.0.0.1:9", max_batch=0)
    with pytest.raises(ValueError):
        lqsm.App("http://127.0.0.1:9", linger=-1)

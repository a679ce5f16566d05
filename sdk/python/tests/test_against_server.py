"""Tasks submitted to a real `lqsm standalone`, run by its worker's built-in handlers:
`lqsm.echo` returns its arguments, `lqsm.fail` fails with them as the message."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from typing import Any

import pytest

import lqsm
from conftest import REPO_ROOT


def nobody_serves(app: lqsm.App) -> "lqsm.Task[Any]":
    """A task no worker serves: its jobs stay pending."""

    @app.task(name=f"tests.nobody_serves_{uuid.uuid4().hex}")
    def task(*args: Any, **kwargs: Any) -> None: ...

    return task


def test_delay_then_get_returns_what_the_handler_returned(app: lqsm.App) -> None:
    @app.task(name="lqsm.echo")
    def echo(*args: Any, **kwargs: Any) -> Any: ...

    result = echo.delay(1, "two", [3.5, None], flag=True, nested={"k": ["v"]})

    value = result.get(timeout=30)
    assert value == {"args": [1, "two", [3.5, None]], "kwargs": {"flag": True, "nested": {"k": ["v"]}}}
    assert result.state == "succeeded"
    assert result.ready() and result.successful() and not result.failed()
    assert result.result == value
    assert re.fullmatch(r"[0-9a-f-]{36}", result.id)


def test_task_options_reach_the_job(app: lqsm.App) -> None:
    @app.task(
        name="lqsm.echo",
        retries=2,
        retry_backoff=1.5,
        timeout=30,
        soft_timeout=20,
        resources={"cpu": 0.5, "memory": "512M"},
        priority=7,
        tags=["sdk-test"],
    )
    def echo(*args: Any, **kwargs: Any) -> Any: ...

    result = echo.delay()
    result.get(timeout=30)
    job = result.fetch()

    assert job["kind"] == {"type": "function", "handler": "lqsm.echo", "args": {"args": [], "kwargs": {}}}
    assert job["resources"]["cpu"] == 0.5 and job["resources"]["memory_mib"] == 512
    assert job["max_attempts"] == 3
    assert job["timeout_ms"] == 30_000
    assert job["soft_timeout_ms"] == 20_000
    assert job["priority"] == 7
    assert job["tags"] == ["sdk-test"]


def test_a_failed_task_raises_task_error_with_its_failure_message(app: lqsm.App) -> None:
    @app.task(name="lqsm.fail")
    def fail(message: str) -> None: ...

    result = fail.delay("the disk is full")

    with pytest.raises(lqsm.TaskError) as raised:
        result.get(timeout=30)
    assert raised.value.state == "failed"
    assert raised.value.job_id == result.id
    # lqsm.fail fails with its arguments, here the whole envelope, as the message.
    assert "the disk is full" in (raised.value.reason or "")
    assert result.ready() and result.failed() and not result.successful()
    assert isinstance(result.result, lqsm.TaskError)


def test_get_times_out_while_no_worker_serves_the_task(app: lqsm.App) -> None:
    result = nobody_serves(app).delay()

    with pytest.raises(TimeoutError) as raised:
        result.get(timeout=0.3)
    assert isinstance(raised.value, lqsm.TimeoutError)
    assert result.state == "pending"
    assert not result.ready()
    assert result.result is None
    result.revoke()


def test_revoke_cancels_a_pending_job_and_get_then_raises(app: lqsm.App) -> None:
    result = nobody_serves(app).delay()

    result.revoke()

    assert result.state == "cancelled"
    with pytest.raises(lqsm.TaskError) as raised:
        result.get(timeout=5)
    assert raised.value.state == "cancelled"
    result.revoke()  # a finished job stays as it is, as in Celery


def test_countdown_and_eta_hold_the_job_back(app: lqsm.App) -> None:
    task = nobody_serves(app)

    counted = task.apply_async(countdown=60)
    eta = dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=5)
    at_eta = task.apply_async(eta=eta)

    counted_job = counted.fetch()
    assert counted_job["not_before_ms"] - counted_job["submitted_at_ms"] == pytest.approx(60_000, abs=1_000)
    assert at_eta.fetch()["not_before_ms"] == pytest.approx(eta.timestamp() * 1000, abs=1)
    counted.revoke()
    at_eta.revoke()


def test_the_same_idempotency_key_gives_the_same_job(app: lqsm.App) -> None:
    task = nobody_serves(app)
    key = f"order-{uuid.uuid4().hex}"

    first = task.apply_async(args=[1], idempotency_key=key)
    again = task.apply_async(args=[1], idempotency_key=key)

    assert first.id == again.id
    first.revoke()


def test_a_queue_that_does_not_exist_raises_api_error(app: lqsm.App) -> None:
    @app.task(name="lqsm.echo", queue="root.does_not_exist")
    def echo() -> None: ...

    # Confirmed: refused at once.
    with pytest.raises(lqsm.ApiError) as raised:
        echo.apply_async(confirm=True)
    assert raised.value.code == "not_found"
    assert raised.value.field == "queue"
    assert raised.value.status == 404
    assert "root.does_not_exist" in raised.value.message
    # Unconfirmed: the same error at the result's first use.
    result = echo.delay()
    with pytest.raises(lqsm.ApiError) as raised:
        result.get(timeout=10)
    assert raised.value.code == "not_found" and raised.value.status == 404
    assert raised.value.field is not None and raised.value.field.endswith("queue")


def test_an_unknown_job_id_raises_api_error_not_found(app: lqsm.App) -> None:
    with pytest.raises(lqsm.ApiError) as raised:
        app.AsyncResult(str(uuid.UUID(int=0))).state
    assert raised.value.code == "not_found"


def test_the_server_version_is_the_workspace_release(app: lqsm.App) -> None:
    cargo_toml = (REPO_ROOT / "Cargo.toml").read_text()
    workspace_version = re.search(r'^version = "([^"]+)"', cargo_toml, re.MULTILINE)
    assert workspace_version is not None
    assert app.server_version() == workspace_version.group(1)

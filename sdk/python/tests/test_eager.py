"""`App(eager=True)`: tasks run in this process at `.delay()`, for users' unit tests.
The app's URL points nowhere: an eager app must never contact a server."""

from __future__ import annotations

import datetime as dt
from typing import Any, Dict, List

import pytest

import lqsm

NOWHERE = "http://127.0.0.1:1"


def test_an_eager_task_runs_in_process_and_returns_its_value() -> None:
    app = lqsm.App(NOWHERE, eager=True)

    @app.task
    def add(x: int, y: int = 0) -> int:
        return x + y

    result = add.delay(2, y=3)

    assert result.get() == 5
    assert result.state == "succeeded" and result.ready() and result.successful()
    assert result.result == 5


def test_an_eager_task_sees_its_arguments_as_a_worker_would() -> None:
    app = lqsm.App(NOWHERE, eager=True)
    seen: List[Any] = []

    @app.task
    def record(items: Any, mapping: Dict[str, Any]) -> None:
        seen.extend([items, mapping])

    record.delay((1, 2), {"a": (3,)})

    assert seen == [[1, 2], {"a": [3]}]


def test_an_eager_task_that_raises_raises_its_own_exception() -> None:
    app = lqsm.App(NOWHERE, eager=True)

    @app.task
    def explode() -> None:
        raise ValueError("bad input")

    result = explode.delay()

    with pytest.raises(ValueError, match="bad input"):
        result.get()
    assert result.failed() and isinstance(result.result, ValueError)
    error = result.fetch()
    assert error["state"] == "failed"
    assert error["reason"].startswith("ValueError: bad input\n\nTraceback (most recent call last):")
    assert 'raise ValueError("bad input")' in error["reason"]


def test_an_eager_bound_task_retries_as_its_retries_allow() -> None:
    app = lqsm.App(NOWHERE, eager=True)
    attempts = []

    @app.task(bind=True, retries=2)
    def flaky(self: "lqsm.Task[int]") -> int:
        attempts.append(self.request.attempt)
        if self.request.attempt < 3:
            self.retry(countdown=5)
        return self.request.retries

    assert flaky.delay().get() == 2
    assert attempts == [1, 2, 3]


def test_an_eager_task_returning_what_json_cannot_carry_fails() -> None:
    app = lqsm.App(NOWHERE, eager=True)

    @app.task
    def give_set() -> Any:
        return {1, 2}

    with pytest.raises(lqsm.TaskError, match="JSON"):
        give_set.delay().get()


def test_eager_apply_async_checks_its_options_as_a_submission_would() -> None:
    app = lqsm.App(NOWHERE, eager=True)

    @app.task
    def noop() -> None: ...

    with pytest.raises(lqsm.UnsupportedOption, match="link"):
        noop.apply_async(link=noop)
    with pytest.raises(ValueError, match="not both"):
        noop.apply_async(countdown=1, eta=dt.datetime.now(dt.timezone.utc))


def test_calling_a_task_directly_runs_the_function() -> None:
    app = lqsm.App(NOWHERE)

    @app.task
    def double(x: int) -> int:
        return 2 * x

    assert double(21) == 42
    assert double.name == "test_eager.double"



def test_an_eager_task_retries_only_what_autoretry_for_names() -> None:
    app = lqsm.App(NOWHERE, eager=True)
    attempts = []

    @app.task(bind=True, retries=3, autoretry_for=(ConnectionError,))
    def picky(self: "lqsm.Task[None]") -> None:
        attempts.append(self.request.attempt)
        if self.request.attempt == 1:
            raise ConnectionError("hung up")
        raise ValueError("malformed")

    with pytest.raises(ValueError):
        picky.delay().get()
    assert attempts == [1, 2]
    with pytest.raises(TypeError, match="autoretry_for takes exception classes"):
        app.task(autoretry_for=("ValueError",))  # type: ignore[arg-type]

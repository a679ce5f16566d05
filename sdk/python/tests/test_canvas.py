"""Canvas on a real `lqsm standalone`: chains, groups and chords carried out by the
server's workflows, run by the built-in `lqsm.echo` (returns what it is given)."""

from __future__ import annotations

from typing import Any

import pytest

import lqsm


def echo_task(app: lqsm.App) -> "lqsm.Task[Any]":
    @app.task(name="lqsm.echo")
    def echo(*args: Any, **kwargs: Any) -> Any: ...

    return echo


def test_a_chain_passes_each_result_to_the_next(app: lqsm.App) -> None:
    echo = echo_task(app)
    result = (echo.s(1) | echo.s(2) | echo.s(3)).apply_async()
    assert result.kind == "chain" and len(result.results) == 3
    last = result.get(timeout=30)
    first = {"args": [1], "kwargs": {}}
    # Each link says how it takes what it receives: "one" result, as Celery's chains.
    second = {"args": {"args": [2], "kwargs": {}, "receive": "one"}, "inputs": [first]}
    assert last == {"args": {"args": [3], "kwargs": {}, "receive": "one"}, "inputs": [second]}
    assert result.state == "succeeded"


def test_a_group_answers_its_results_in_order(app: lqsm.App) -> None:
    echo = echo_task(app)
    result = lqsm.group(*(echo.s(i) for i in range(4))).apply_async()
    assert result.get(timeout=30) == [{"args": [i], "kwargs": {}} for i in range(4)]


def test_a_chord_callback_gets_the_group_results_in_order(app: lqsm.App) -> None:
    echo = echo_task(app)
    result = lqsm.chord([echo.s(i) for i in range(3)], echo.s("total")).apply_async()
    value = result.get(timeout=30)
    assert value["inputs"] == [{"args": [i], "kwargs": {}} for i in range(3)]
    assert value["args"] == {"args": ["total"], "kwargs": {}, "receive": "all"}
    view = result.fetch()
    assert [n["name"] for n in view["nodes"]] == ["0", "1", "2", "callback"]


def test_a_failed_link_cancels_the_rest_and_get_raises(app: lqsm.App) -> None:
    echo = echo_task(app)

    @app.task(name="lqsm.fail")
    def fail(*args: Any, **kwargs: Any) -> Any: ...

    result = lqsm.chain(echo.s(1), fail.s("boom"), echo.s(3)).apply_async()
    with pytest.raises(lqsm.TaskError) as raised:
        result.get(timeout=30)
    assert "dependency_failed" in str(raised.value)
    assert result.state == "failed"


def test_an_eager_canvas_runs_here_passing_results_first() -> None:
    app = lqsm.App("http://127.0.0.1:9", eager=True)

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    @app.task
    def total(values: Any) -> int:
        return sum(values)

    assert (add.s(1, 2) | add.s(10)).apply_async().get() == 13
    assert lqsm.group(add.s(1, 1), add.s(2, 2)).apply_async().get() == [2, 4]
    assert lqsm.chord([add.s(1, 1), add.s(2, 2)], total.s()).apply_async().get() == 6


def test_a_bad_argument_is_refused_when_the_signature_is_made(app: lqsm.App) -> None:
    echo = echo_task(app)
    with pytest.raises(TypeError):
        echo.s(object())

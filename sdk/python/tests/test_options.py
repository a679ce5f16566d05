"""What the SDK checks before anything leaves the process: task and submission
options, resources, and arguments JSON cannot carry. The app's URL points nowhere, so a
check that let a call through would fail with `ServerUnreachable` instead."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

import lqsm
from lqsm.arguments import memory_mib

NOWHERE = "http://127.0.0.1:1"


@pytest.fixture
def app() -> lqsm.App:
    return lqsm.App(NOWHERE)


def test_a_celery_option_lqsm_lacks_is_refused_with_what_to_do(app: lqsm.App) -> None:
    with pytest.raises(lqsm.UnsupportedOption, match="max_retries.*use retries="):
        app.task(max_retries=3)
    with pytest.raises(TypeError, match="acks_late"):
        app.task(acks_late=True)


def test_an_unknown_task_option_is_refused_listing_the_known_ones(app: lqsm.App) -> None:
    with pytest.raises(lqsm.UnsupportedOption, match="quue.*the options are: name, queue"):
        app.task(quue="root.default")


def test_an_unsupported_submission_option_is_refused(app: lqsm.App) -> None:
    @app.task
    def noop() -> None: ...

    with pytest.raises(lqsm.UnsupportedOption, match="task_id.*idempotency_key"):
        noop.apply_async(task_id="mine")


def test_an_unknown_resource_is_refused(app: lqsm.App) -> None:
    with pytest.raises(lqsm.UnsupportedOption, match="disk"):
        app.task(resources={"disk": "10G"})
    with pytest.raises(ValueError, match="cpu"):
        app.task(resources={"cpu": -1})


@pytest.mark.parametrize(
    ("written", "mib"),
    [(512, 512), ("512M", 512), ("2G", 2048), ("1.5Gi", 1536), ("256MiB", 256), ("1K", 1), ("1T", 1024 * 1024)],
)
def test_memory_sizes_are_read_as_binary_units_in_mib(written: Any, mib: int) -> None:
    assert memory_mib(written) == mib


def test_a_memory_size_without_a_number_is_refused() -> None:
    with pytest.raises(ValueError, match="'lots' is not a size"):
        memory_mib("lots")


def test_a_non_json_argument_raises_type_error_at_delay_naming_it(app: lqsm.App) -> None:
    @app.task
    def store(payload: Any, *, when: Any = None) -> None: ...

    with pytest.raises(TypeError, match=r"positional argument 0 of task `.*store` .*args\[0\] is a set"):
        store.delay({1, 2})
    with pytest.raises(TypeError, match=r"keyword argument `when` .*when is a datetime"):
        store.delay([], when=dt.datetime.now())
    with pytest.raises(TypeError, match=r"args\[0\]\['a'\]\[1\] is nan"):
        store.delay({"a": [1, float("nan")]})
    with pytest.raises(TypeError, match=r"has the key 1 \(int\)"):
        store.delay({1: "one"})


def test_a_naive_eta_is_refused(app: lqsm.App) -> None:
    @app.task
    def noop() -> None: ...

    with pytest.raises(ValueError, match="timezone-aware"):
        noop.apply_async(eta=dt.datetime.now())


def test_a_lambda_needs_a_name(app: lqsm.App) -> None:
    with pytest.raises(ValueError, match="name="):
        app.task(lambda: None)
    assert app.task(name="tests.named")(lambda: None).name == "tests.named"


def test_the_default_name_is_module_and_function_name_as_in_celery(app: lqsm.App) -> None:
    @app.task
    def resize() -> None: ...

    assert resize.name == "test_options.resize"

"""The Python worker against a real server: Celery's semantics, each with a test, on
the pools that matter for it. Workers run `tests/worker_tasks.py` in their own
processes (see `conftest.python_worker`)."""

from __future__ import annotations

import datetime as dt
import importlib
import os
import signal
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path
from types import ModuleType
from typing import Any, ContextManager, Iterator, List, Optional

import httpx
import pytest

import lqsm
from conftest import (
    TEST_CA,
    FaultProxy,
    PythonWorker,
    free_loopback_port,
    python_worker,
    read_records,
    standalone,
    wait_for,
)
from lqsm.result import native_exception


@pytest.fixture(scope="session")
def tasks(server_url: str) -> ModuleType:
    """`worker_tasks`, its app on the session's server."""
    os.environ["LQSM_TEST_SERVER"] = server_url
    return importlib.import_module("worker_tasks")


@pytest.fixture
def records(tmp_path: Path) -> Path:
    return tmp_path / "records.log"


@pytest.fixture
def threads_worker(server_url: str, records: Path, tasks: ModuleType) -> Iterator[PythonWorker]:
    with python_worker(server_url, records, "threads", "--concurrency", "4") as worker:
        yield worker


@pytest.fixture
def processes_worker(server_url: str, records: Path, tasks: ModuleType) -> Iterator[PythonWorker]:
    with python_worker(server_url, records, "processes", "--concurrency", "2") as worker:
        yield worker


def attempts_of(result: lqsm.AsyncResult) -> List[Any]:
    return list(result.fetch()["attempts"])


def test_results_and_what_the_task_printed_and_logged(threads_worker: PythonWorker, tasks: ModuleType) -> None:
    assert tasks.add.delay(2, 3).get(timeout=30) == 5

    result = tasks.talks.delay()
    assert result.get(timeout=30) == "ok"
    logs = httpx.get(f"{tasks.app.url}/v1/jobs/{result.id}/logs").text
    assert "printed by the task" in logs
    assert "logged by the task" in logs


def test_a_task_exception_is_raised_with_its_type_and_remote_traceback(
    processes_worker: PythonWorker, tasks: ModuleType
) -> None:
    result = tasks.reject.delay("over budget")

    with pytest.raises(tasks.InvoiceRejected) as raised:
        result.get(timeout=30)
    assert str(raised.value) == f"over budget ({result.id})"
    assert isinstance(raised.value.__cause__, lqsm.TaskError)
    assert isinstance(result.result, tasks.InvoiceRejected)
    traceback = result.traceback or ""
    assert "worker_tasks.py" in traceback and "raise InvoiceRejected" in traceback
    # The SDK's own frames are left out: the traceback starts in the task.
    assert "_execution.py" not in traceback


def test_an_exception_type_not_imported_here_is_never_imported_but_named() -> None:
    reason = "billing.errors.Unknown: no such customer\n\nTraceback (most recent call last):\n  File x\n"
    error = lqsm.TaskError("job", "failed", reason)

    assert native_exception(error, {}) is None
    assert "billing.errors" not in __import__("sys").modules
    assert (error.exc_type, error.exc_message) == ("billing.errors.Unknown", "no such customer")
    assert (error.remote_traceback or "").startswith("Traceback (most recent call last):")

    class Unknown(Exception):
        pass

    Unknown.__module__, Unknown.__qualname__ = "billing.errors", "Unknown"
    app = lqsm.App("http://127.0.0.1:9", exception_types=[Unknown])
    native = native_exception(error, app._server.exception_types)
    assert isinstance(native, Unknown) and str(native) == "no such customer"


def test_failures_are_retried_with_backoff(
    threads_worker: PythonWorker, tasks: ModuleType, records: Path
) -> None:
    result = tasks.flaky.delay(2)

    assert result.get(timeout=30) == 3
    assert [r[0] for r in read_records(records) if r[1] == result.id] == ["attempt"] * 3
    attempts = attempts_of(result)
    assert [a["outcome"] for a in attempts][:2] == ["failed", "failed"]
    # retry_backoff=0.2 with the server's jitter of a fifth: at least 160 ms apart.
    assert attempts[1]["scheduled_at_ms"] - attempts[0]["finished_at_ms"] >= 150


def test_autoretry_for_retries_only_the_listed_exceptions(threads_worker: PythonWorker, tasks: ModuleType) -> None:
    result = tasks.picky.delay()

    with pytest.raises(ValueError, match="malformed"):
        result.get(timeout=30)
    # Three retries were left when the ValueError came: none was spent.
    assert [a["outcome"] for a in attempts_of(result)] == ["retry_requested", "failed"]


def test_self_retry_waits_its_countdown(threads_worker: PythonWorker, tasks: ModuleType) -> None:
    result = tasks.asks_retry.delay(0.6)

    assert result.get(timeout=30) == 2
    first, second = attempts_of(result)
    assert first["outcome"] == "retry_requested"
    assert second["scheduled_at_ms"] - first["finished_at_ms"] >= 590


def test_a_result_larger_than_a_report_may_be_fails_the_task_and_the_worker_serves_on(
    threads_worker: PythonWorker, tasks: ModuleType
) -> None:
    with pytest.raises(lqsm.TaskError, match="more than the 8388608 a result may be"):
        tasks.huge.delay().get(timeout=60)
    assert tasks.add.delay(1, 1).get(timeout=30) == 2


def test_countdown_and_eta_delay_the_start(threads_worker: PythonWorker, tasks: ModuleType) -> None:
    by_countdown = tasks.add.apply_async((1, 1), countdown=1)
    eta = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=1)
    by_eta = tasks.add.apply_async((2, 2), eta=eta)

    assert by_countdown.get(timeout=30) == 2 and by_eta.get(timeout=30) == 4
    view = by_countdown.fetch()
    assert view["attempts"][0]["scheduled_at_ms"] >= view["submitted_at_ms"] + 1000
    assert by_eta.fetch()["attempts"][0]["scheduled_at_ms"] >= int(eta.timestamp() * 1000)


def test_a_job_not_started_before_it_expires_expires(threads_worker: PythonWorker, tasks: ModuleType) -> None:
    # No worker carries the label it selects, so it waits until it expires.
    app: lqsm.App = tasks.app

    @app.task(name="tests.add", selector={"zone": "nowhere"})
    def add(x: int, y: int) -> Any: ...

    result = add.apply_async((1, 1), expires=0.3)

    with pytest.raises(lqsm.TaskError) as raised:
        result.get(timeout=30)
    assert raised.value.state == "expired"
    assert attempts_of(result) == []


def test_get_times_out_then_revoke_stops_the_running_task(
    threads_worker: PythonWorker, tasks: ModuleType, records: Path
) -> None:
    result = tasks.sleep.delay(30)

    with pytest.raises(lqsm.TimeoutError):
        result.get(timeout=0.2)
    wait_for(lambda: ["start", result.id] in [r[:2] for r in read_records(records)], 30, threads_worker.log)
    result.revoke()
    with pytest.raises(lqsm.TaskError) as raised:
        result.get(timeout=30)
    assert raised.value.state == "cancelled"
    # The worker goes on serving.
    assert tasks.add.delay(1, 2).get(timeout=30) == 3
    assert ["done", result.id] not in [r[:2] for r in read_records(records)]


def test_update_state_shows_as_the_jobs_progress(threads_worker: PythonWorker, tasks: ModuleType) -> None:
    result = tasks.sleep.delay(3)

    wait_for(
        lambda: result.fetch().get("progress") == {"state": "SLEEPING", "meta": {"seconds": 3}},
        30,
        lambda: f"progress never shown: {result.fetch()}",
    )
    result.get(timeout=30)


@pytest.mark.parametrize("pool", ["threads", "processes"])
def test_what_a_task_prints_is_readable_while_it_runs_and_the_report_completes_it(
    server_url: str, records: Path, tasks: ModuleType, pool: str
) -> None:
    with python_worker(server_url, records, pool, "--concurrency", "2"):
        result = tasks.counts.delay()
        url = f"{tasks.app.url}/v1/jobs/{result.id}/logs"
        seen: List[Any] = []

        def running_output() -> bool:
            read = httpx.get(url, params={"offset": 0}).json()
            if read["running"] and read["text"].startswith("line 1\n"):
                seen.append(read)
            return bool(seen)

        wait_for(running_output, 30, lambda: f"no output while the task ran: {httpx.get(url).text!r}")
        assert seen[0]["offset"] == 0 and seen[0]["attempt"] == 1
        # Followed from each answer's next offset, to the end.
        followed = seen[0]["text"]
        offset = seen[0]["next_offset"]
        assert result.get(timeout=30) == 10
        rest = httpx.get(url, params={"offset": offset}).json()
        assert not rest["running"] and rest["offset"] == offset, rest
        followed += rest["text"]
        everything = "".join(f"line {i}\n" for i in range(1, 11))
        assert httpx.get(url).text == everything
        # Nothing lost, nothing doubled, between the preview and the report.
        assert followed == everything


def test_canvas_results_flow_between_python_tasks(processes_worker: PythonWorker, tasks: ModuleType) -> None:
    assert (tasks.add.s(1, 2) | tasks.add.s(10) | tasks.add.s(100)).apply_async().get(timeout=30) == 113
    assert lqsm.group(tasks.add.s(1, 1), tasks.add.s(2, 2)).apply_async().get(timeout=30) == [2, 4]
    assert lqsm.chord([tasks.add.s(1, 1), tasks.add.s(2, 2)], tasks.total.s()).apply_async().get(timeout=30) == 6
    # A chord of one still hands its callback a list, as Celery does.
    assert lqsm.chord([tasks.add.s(5, 5)], tasks.total.s()).apply_async().get(timeout=30) == 10


def test_an_idempotency_key_makes_one_job_run_once(
    threads_worker: PythonWorker, tasks: ModuleType, records: Path
) -> None:
    key = f"invoice-{uuid.uuid4()}"
    first = tasks.sleep.apply_async((0,), idempotency_key=key)
    second = tasks.sleep.apply_async((0,), idempotency_key=key)

    assert first.id == second.id
    first.get(timeout=30)
    assert [r[0] for r in read_records(records) if r[1] == first.id] == ["start", "done"]


def test_a_schedule_fires_the_task_and_declaring_it_again_updates_it(
    threads_worker: PythonWorker, tasks: ModuleType
) -> None:
    app: lqsm.App = tasks.app
    name = f"pytest-{uuid.uuid4().hex[:8]}"
    assert app.schedule(name, tasks.add.s(1, 2), every=1)["every_ms"] == 1000
    try:
        view = app.schedule(name, tasks.add.s(2, 3), every=1, overlap="skip")
        assert view["kind"]["args"] == {"args": [2, 3], "kwargs": {}}
        assert view["overlap"] == "skip"

        def results() -> List[Any]:
            jobs = httpx.get(
                f"{app.url}/v1/jobs", params={"tag": f"schedule:{name}", "state": "succeeded"}
            ).json()["jobs"]
            return [job["result"] for job in jobs]

        wait_for(lambda: 5 in results(), 30, lambda: f"the schedule fired {results()}")
        assert set(results()) <= {3, 5}
        # Declared again without `overlap`: back to the default.
        assert app.schedule(name, tasks.add.s(2, 3), every=1)["overlap"] == "allow"
    finally:
        app.unschedule(name)
    app.unschedule(name)  # gone already: nothing to do
    with pytest.raises(ValueError, match="cron= .* or every="):
        app.schedule(name, tasks.add.s(1, 2))


def test_a_rate_limit_spaces_the_starts_on_a_worker(threads_worker: PythonWorker, tasks: ModuleType) -> None:
    results = [tasks.limited.delay() for _ in range(6)]
    starts = sorted(r.get(timeout=30) for r in results)
    # 4/s: one start every 250 ms at most (a little slack for the clocks' reading).
    gaps = [later - earlier for earlier, later in zip(starts, starts[1:])]
    assert min(gaps) >= 0.2, gaps


def test_a_command_job_from_python(app: lqsm.App) -> None:
    # The session's `lqsm standalone` runs commands on its Rust worker.
    result = app.submit_command(["sh", "-c", "echo from-a-command"], timeout=30)
    result.get(timeout=30)
    assert "from-a-command" in httpx.get(f"{app.url}/v1/jobs/{result.id}/logs").text
    with pytest.raises(TypeError, match="argv takes"):
        app.submit_command("echo hi")


def test_a_command_gets_its_secret_env_which_shows_as_stars(app: lqsm.App) -> None:
    result = app.submit_command(
        ["sh", "-c", 'echo "mode=$MODE token=$TOKEN"'],
        env={"MODE": "fast"},
        secret_env={"TOKEN": "hunter2-from-python"},
        timeout=30,
    )
    result.get(timeout=30)
    assert httpx.get(f"{app.url}/v1/jobs/{result.id}/logs").text == "mode=fast token=***\n"
    view = httpx.get(f"{app.url}/v1/jobs/{result.id}").json()
    assert view["kind"]["env"] == {"MODE": "fast", "TOKEN": "***"}
    assert view["secret_env"] == ["TOKEN"]
    with pytest.raises(ValueError, match="both in env and in secret_env"):
        app.submit_command(["true"], env={"A": "1"}, secret_env={"A": "2"})


def test_several_server_urls_fail_over_to_one_that_answers(server_url: str) -> None:
    with lqsm.App(["http://127.0.0.1:9", server_url]) as app:
        assert app.server_version()
        assert app.url == server_url
    with pytest.raises(ValueError, match="url takes"):
        lqsm.App([])


@pytest.mark.parametrize("pool", ["threads", "processes"])
def test_the_soft_time_limit_raises_inside_the_task(
    pool: str, server_url: str, records: Path, tasks: ModuleType
) -> None:
    with python_worker(server_url, records, pool, "--concurrency", "1"):
        assert tasks.soft_limited.delay().get(timeout=30) == "cleaned up"


def test_the_hard_time_limit_kills_the_child_and_fails_the_job(
    processes_worker: PythonWorker, tasks: ModuleType, records: Path
) -> None:
    app: lqsm.App = tasks.app

    @app.task(name="tests.sleep", timeout=1)
    def sleep(seconds: float) -> Any: ...

    result = sleep.delay(60)
    with pytest.raises(lqsm.TaskError) as raised:
        result.get(timeout=30)
    assert "timed" in (raised.value.reason or "")
    started = [r for r in read_records(records) if r[1] == result.id]
    assert [r[0] for r in started] == ["start"]
    child = int(started[0][2])
    wait_for(lambda: not _alive(child), 15, lambda: f"child {child} still runs")
    # Its replacement serves on.
    assert tasks.add.delay(2, 2).get(timeout=30) == 4


def test_max_tasks_per_child_replaces_children(server_url: str, records: Path, tasks: ModuleType) -> None:
    with python_worker(server_url, records, "processes", "--concurrency", "1", "--max-tasks-per-child", "2"):
        pids = [tasks.pid.delay().get(timeout=30) for _ in range(6)]
    assert len(set(pids)) == 3, pids
    assert [pids.count(p) for p in dict.fromkeys(pids)] == [2, 2, 2]


def test_the_asyncio_pool_runs_coroutines_side_by_side(server_url: str, records: Path, tasks: ModuleType) -> None:
    with python_worker(server_url, records, "asyncio", "--concurrency", "20"):
        results = [tasks.async_sleep.delay(0.5) for _ in range(10)]
        spans = [r.get(timeout=30) for r in results]
    # Every run overlaps the first: they ran at once, not one after the other.
    first_end = min(end for _, end in spans)
    assert sum(1 for start, _ in spans if start < first_end) > 1


def test_sigterm_lets_running_tasks_finish(server_url: str, records: Path, tasks: ModuleType) -> None:
    with python_worker(server_url, records, "threads") as worker:
        result = tasks.sleep.delay(1.5)
        wait_for(lambda: ["start", result.id] in [r[:2] for r in read_records(records)], 30, worker.log)
        worker.process.send_signal(signal.SIGTERM)
        assert worker.process.wait(timeout=30) == 0, worker.log()
    assert isinstance(result.get(timeout=5), int)


def test_a_second_signal_stops_the_running_tasks(
    server_url: str, records: Path, tasks: ModuleType
) -> None:
    with python_worker(server_url, records, "processes", "--concurrency", "1") as worker:
        result = tasks.sleep.delay(60)
        wait_for(lambda: ["start", result.id] in [r[:2] for r in read_records(records)], 30, worker.log)
        worker.process.send_signal(signal.SIGTERM)
        wait_for(lambda: "stopping:" in worker.log(), 30, worker.log)
        worker.process.send_signal(signal.SIGTERM)
        assert worker.process.wait(timeout=30) == 0, worker.log()
    with pytest.raises(lqsm.TaskError) as raised:
        result.get(timeout=30)
    assert "its worker was shut down" in (raised.value.reason or "")
    child = int(next(r[2] for r in read_records(records) if r[1] == result.id))
    wait_for(lambda: not _alive(child), 15, lambda: f"child {child} still runs")


def test_max_memory_per_child_replaces_a_child_that_grew(
    server_url: str, records: Path, tasks: ModuleType
) -> None:
    extra = ("--concurrency", "1", "--max-memory-per-child", str(150 * 1024))
    with python_worker(server_url, records, "processes", *extra):
        grown = tasks.hog.delay(200).get(timeout=60)
        after = tasks.pid.delay().get(timeout=60)
        small = tasks.hog.delay(1).get(timeout=60)
        again = tasks.pid.delay().get(timeout=60)
    assert grown != after, "the child that passed the limit was not replaced"
    assert small == again, "a child under the limit was replaced"


def test_a_worker_given_queues_runs_only_their_jobs(tmp_path: Path) -> None:
    """Celery's `worker -Q`: a worker started with `--queues root.emails` takes the jobs
    of root.emails (and of queues under it) and leaves the others to other workers."""
    records = tmp_path / "records.log"
    with standalone(tmp_path) as url:
        created = httpx.post(f"{url}/v1/queues", json={"path": "root.emails", "capacity": 0, "max_capacity": 100})
        assert created.status_code == 201, created.text
        with lqsm.App(url) as app:
            add = app.task(name="tests.add")(lambda x, y: x + y)
            with python_worker(url, records, "threads", "--queues", "root.emails") as emails_worker:
                workers = {w["name"]: w for w in httpx.get(f"{url}/v1/workers").json()}
                assert workers[emails_worker.name]["queues"] == ["root.emails"]
                email = add.apply_async((1, 2), queue="root.emails")
                other = add.apply_async((3, 4), queue="root.default")
                assert email.get(timeout=30) == 3
                with pytest.raises(lqsm.TimeoutError):
                    other.get(timeout=1.5)
                assert other.state == "pending"
                with python_worker(url, records, "threads") as any_worker:
                    assert other.get(timeout=30) == 7
                    workers = {w["name"]: w["id"] for w in httpx.get(f"{url}/v1/workers").json()}
                    assert [a["worker"] for a in other.fetch()["attempts"]] == [workers[any_worker.name]]
                    assert [a["worker"] for a in email.fetch()["attempts"]] == [workers[emails_worker.name]]
        refused = httpx.post(
            f"{url}/v1/workers",
            json={"id": str(uuid.uuid4()), "name": "w", "capacity": {"cpu": 1, "memory_mib": 64},
                  "serves_commands": False, "handlers": ["x"], "protocol": 4, "queues": ["emails"]},
        )
        assert refused.status_code == 400
        assert refused.json()["error"]["field"] == "queues[0]"


def test_the_client_and_a_worker_over_https(tmp_path: Path) -> None:
    """A server serving TLS: the app and the worker trust its CA with `ca_file` /
    `--ca-file`; an app that does not trust it is refused, saying why."""
    records = tmp_path / "records.log"
    with standalone(tmp_path, tls=True) as url:
        assert url.startswith("https://")
        with lqsm.App(url, ca_file=TEST_CA) as app:
            add = app.task(name="tests.add")(lambda x, y: x + y)
            with python_worker(url, records, "processes", "--ca-file", TEST_CA):
                assert add.delay(20, 22).get(timeout=30) == 42
        with lqsm.App(url) as untrusting:
            add = untrusting.task(name="tests.add")(lambda x, y: x + y)
            with pytest.raises(lqsm.ServerUnreachable, match="CERTIFICATE_VERIFY_FAILED"):
                add.apply_async((1, 2), confirm=True)
    with pytest.raises(ValueError, match="ca_file"):
        lqsm.App("https://127.0.0.1:9", ca_file=str(tmp_path / "missing.pem"))


def test_a_worker_rejoins_a_restarted_server_and_its_task_completes_once(tmp_path: Path) -> None:
    records = tmp_path / "records.log"
    port = free_loopback_port()
    server = standalone(tmp_path, port=port)
    url = server.__enter__()
    first: Optional[ContextManager[str]] = server
    try:
        app = lqsm.App(url)

        @app.task(name="tests.sleep")
        def sleep(seconds: float) -> Any: ...

        with python_worker(url, records, "threads") as worker:
            result = sleep.delay(4)
            wait_for(lambda: ["start", result.id] in [r[:2] for r in read_records(records)], 30, worker.log)
            # The server stops while the task runs, and comes back on the same port
            # and data: the worker registers again, the server takes back the running
            # attempt, and its report.
            server.__exit__(None, None, None)
            first = None
            with standalone(tmp_path, port=port):
                assert isinstance(result.get(timeout=60), int)
                assert "registering again" in worker.log()
        assert [r[0] for r in read_records(records) if r[1] == result.id] == ["start", "done"]
        app.close()
    finally:
        if first is not None:
            first.__exit__(None, None, None)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie has ended; only its parent's wait is missing.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_kill_9_of_a_worker_the_task_completes_exactly_once_elsewhere(tmp_path: Path) -> None:
    """Celery's acks_late promise, kept without duplicates: the killed worker's
    children die with it, the server runs their jobs again on the other worker, and
    every job completes once (each records its completions)."""
    records = tmp_path / "records.log"
    with standalone(tmp_path, "--heartbeat-timeout-ms", "3000") as url:
        app = lqsm.App(url)

        @app.task(name="tests.sleep", retries=3, retry_backoff=0.1)
        def sleep(seconds: float) -> Any: ...

        with python_worker(url, records, "processes", "--concurrency", "2") as doomed:
            results = [sleep.delay(4) for _ in range(6)]
            wait_for(
                lambda: sum(1 for r in read_records(records) if r[0] == "start") >= 2,
                30,
                doomed.log,
            )
            doomed.process.send_signal(signal.SIGKILL)
            doomed.process.wait(timeout=10)
            # Killed mid-task: both children had started one, none had finished. (A
            # task that ends in the moment before its worker dies, before its report
            # reaches the server, runs again: that window is at-least-once.)
            before_kill = read_records(records)
            assert [r[0] for r in before_kill] == ["start", "start"], before_kill
            children = {int(r[2]) for r in before_kill}
            assert len(children) == 2
            wait_for(
                lambda: not any(_alive(pid) for pid in children),
                10,
                lambda: f"children {children} outlived their worker",
            )
        with python_worker(url, records, "processes", "--concurrency", "2"):
            for result in results:
                assert isinstance(result.get(timeout=60), int)
        done = Counter(r[1] for r in read_records(records) if r[0] == "done")
        assert sorted(done.values()) == [1] * 6, done
        assert set(done) == {r.id for r in results}
        app.close()


def test_a_worker_cut_off_from_the_server_stops_its_task_before_it_runs_elsewhere(tmp_path: Path) -> None:
    """Self-fencing: partitioned from the server, the worker stops its attempt before
    the server's heartbeat timeout (3 s here) lets it run the job elsewhere; after the
    partition the job runs again and completes once."""
    records = tmp_path / "records.log"
    with standalone(tmp_path, "--heartbeat-timeout-ms", "3000") as url:
        proxy = FaultProxy(int(url.rsplit(":", 1)[1]))
        try:
            app = lqsm.App(url)

            @app.task(name="tests.sleep", retries=2, retry_backoff=0.1)
            def sleep(seconds: float) -> Any: ...

            with python_worker(proxy.url, records, "processes", "--concurrency", "1") as worker:
                result = sleep.delay(8)
                wait_for(lambda: ["start", result.id] in [r[:2] for r in read_records(records)], 30, worker.log)
                proxy.partition()
                first = next(r for r in read_records(records) if r[1] == result.id)
                child = int(first[2])
                # Fenced: the child running it was stopped (and replaced) while cut off.
                wait_for(lambda: not _alive(child), 15, lambda: f"child {child} still runs:\n{worker.log()}")
                assert "no answer from the server" in worker.log()
                # The server, meanwhile, takes the worker for lost.
                wait_for(
                    lambda: any(w["name"] == worker.name and w["state"] == "lost" for w in httpx.get(f"{url}/v1/workers").json()),
                    15,
                    worker.log,
                )
                proxy.heal()
                assert isinstance(result.get(timeout=60), int)
            events = [r[0] for r in read_records(records) if r[1] == result.id]
            assert events == ["start", "start", "done"], events
            app.close()
        finally:
            proxy.close()


def test_a_worker_refuses_an_app_it_cannot_import(server_url: str, tmp_path: Path) -> None:
    finished = subprocess.run(
        [sys.executable, "-m", "lqsm", "worker", "-A", "no_such_module:app", "--server", server_url],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert finished.returncode == 2
    assert "cannot import `no_such_module`" in finished.stderr

"""One attempt of a task, run the same way by every pool: its call decoded from the
job's arguments, the task's context set, its output captured, and its end described
as the protocol's `AttemptResult` (docs/PROTOCOL.md)."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import io
import json
import logging
import sys
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple, TypeVar

from .. import context
from ..app import Task, describe, retried
from ..errors import Retry, format_failure

#: Most bytes of an attempt's captured output uploaded (the last ones), as the Rust
#: worker does.
LOG_CAP_BYTES = 1024 * 1024

#: Largest result a task may return, JSON bytes: a report must fit in a poll, whose
#: body the server takes up to 16 MiB by default.
MAX_RESULT_BYTES = 8 * 1024 * 1024

#: Most characters of a failure's message and traceback reported.
MESSAGE_CAP = 64 * 1024

#: What a pool runs: plain JSON data, so that it crosses to a child process unchanged.
#: Keys: `key` ("job:token"), `job`, `attempt`, `queue`, `handler`, `args`, `inputs`
#: (None, or the parents' results), `soft_deadline` (None, or `time.monotonic()` of
#: the soft time limit: the clock is the machine's, shared by its processes).
Work = Dict[str, Any]

#: An attempt's end: `result` (an `AttemptResult`), `logs`, `started_at_ms`.
Outcome = Dict[str, Any]

T = TypeVar("T")


class AttemptStopped(BaseException):
    """Raised inside a task its worker stops (a kill order, a timeout, a shutdown).
    A `BaseException`, so that a task's `except Exception` does not swallow it."""


class CallError(Exception):
    """The job's arguments are not a task call this worker can make."""


def decode_call(args: Any, inputs: Optional[List[Any]]) -> Tuple[List[Any], Dict[str, Any]]:
    """The positional and keyword arguments of a job's call.

    `args` is the SDK's envelope `{"args": [...], "kwargs": {...}}` (a bare list is
    taken as positional arguments, for jobs submitted from the CLI). Parents' results
    (`inputs`) come first, as Celery passes them: a chain's link (`"receive": "one"`)
    gets its parent's result, a chord's callback (`"all"`) the list of them.
    """
    receive = None
    if isinstance(args, list):
        positional: List[Any] = list(args)
        keywords: Dict[str, Any] = {}
    elif isinstance(args, dict) and set(args) <= {"args", "kwargs", "receive"}:
        positional_raw = args.get("args", [])
        keywords_raw = args.get("kwargs", {})
        receive = args.get("receive")
        if not isinstance(positional_raw, list) or not isinstance(keywords_raw, dict):
            raise CallError('the job\'s args are not a task call: `args` must be a list and `kwargs` an object')
        positional, keywords = list(positional_raw), dict(keywords_raw)
    else:
        raise CallError(
            "the job's args are not a task call: expected {\"args\": [...], \"kwargs\": {...}} "
            "(as the Python SDK submits) or a list of positional arguments"
        )
    if inputs is not None:
        if receive == "all" or (receive is None and len(inputs) != 1):
            positional.insert(0, inputs)
        elif inputs:
            positional.insert(0, inputs[0])
    return positional, keywords


class _Capture:
    """The output of one attempt: captured log records and prints, the last
    `LOG_CAP_BYTES` of them kept. Each piece also goes to `sink`, when there is one,
    for the worker to upload while the attempt runs (protocol 8)."""

    def __init__(self, sink: Optional[Callable[[str], None]] = None) -> None:
        self.parts: List[str] = []
        self.size = 0
        self.sink = sink

    def write(self, text: str) -> None:
        if self.sink is not None:
            self.sink(text)
        self.parts.append(text)
        self.size += len(text)
        if self.size > 2 * LOG_CAP_BYTES:
            joined = "".join(self.parts)[-LOG_CAP_BYTES:]
            self.parts, self.size = [joined], len(joined)

    def text(self) -> str:
        return "".join(self.parts)[-LOG_CAP_BYTES:]


_capture: contextvars.ContextVar[Optional[_Capture]] = contextvars.ContextVar("lqsm_capture", default=None)


class _CapturingStream(io.TextIOBase):
    """`sys.stdout` / `sys.stderr` while a worker runs: what a task prints goes to its
    attempt's output; anything else to the real stream."""

    def __init__(self, real: Any) -> None:
        self.real = real

    def write(self, text: str) -> int:
        capture = _capture.get()
        if capture is None:
            return int(self.real.write(text))
        capture.write(text)
        return len(text)

    def flush(self) -> None:
        if _capture.get() is None:
            self.real.flush()

    def fileno(self) -> int:
        return int(self.real.fileno())

    def isatty(self) -> bool:
        return False


class _CapturingHandler(logging.Handler):
    """Log records made inside an attempt, added to its output."""

    def emit(self, record: logging.LogRecord) -> None:
        capture = _capture.get()
        if capture is not None:
            try:
                capture.write(self.format(record) + "\n")
            except Exception:  # noqa: BLE001 (a record that cannot be formatted)
                self.handleError(record)


_installed = threading.Lock()
_capturing = False


def install_capture() -> None:
    """Routes prints and log records made inside attempts to their output (once per
    process)."""
    global _capturing
    with _installed:
        if _capturing:
            return
        _capturing = True
        sys.stdout = _CapturingStream(sys.stdout)
        sys.stderr = _CapturingStream(sys.stderr)
        handler = _CapturingHandler()
        handler.setFormatter(logging.Formatter("[%(asctime)s %(levelname)s %(name)s] %(message)s"))
        logging.getLogger().addHandler(handler)


def _failed(message: str) -> Dict[str, Any]:
    if len(message) > MESSAGE_CAP:
        # Keep the start (type and message) and the end (where it was raised).
        half = MESSAGE_CAP // 2
        message = message[:half] + "\n[... cut ...]\n" + message[-half:]
    return {"type": "failed", "message": message}


class Prepared:
    """An attempt ready to call: its task, arguments and context."""

    def __init__(
        self,
        task: "Task[Any]",
        args: List[Any],
        kwargs: Dict[str, Any],
        attempt: context.Attempt,
        report_output: Optional[Callable[[str], None]] = None,
    ) -> None:
        self.task = task
        self.args = args
        self.kwargs = kwargs
        self.attempt = attempt
        self.capture = _Capture(report_output)
        self.started_at_ms = int(time.time() * 1000)

    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.task.function)


def prepare(
    tasks: Mapping[str, "Task[Any]"],
    work: Work,
    hostname: str,
    report_progress: Callable[[Dict[str, Any]], None],
    report_output: Optional[Callable[[str], None]] = None,
) -> "Prepared | Outcome":
    """The attempt ready to run, or its outcome already when it cannot run (a task this
    worker does not serve, arguments that are not a call). `report_output` gets what
    the task prints and logs as it comes."""
    started_at_ms = int(time.time() * 1000)
    task = tasks.get(work["handler"])
    if task is None:
        served = ", ".join(sorted(tasks)[:10]) or "none"
        return failed_outcome(
            f"this worker does not serve the task `{work['handler']}` (it serves: {served})", "", started_at_ms
        )
    try:
        args, kwargs = decode_call(work["args"], work.get("inputs"))
    except CallError as e:
        return failed_outcome(str(e), "", started_at_ms)
    request = context.Request(id=work["job"], attempt=work["attempt"], queue=work["queue"], hostname=hostname)
    return Prepared(task, args, kwargs, context.Attempt(request, report_progress), report_output)


def outcome(result: Dict[str, Any], logs: str, started_at_ms: int, result_bytes: int = 0) -> Outcome:
    """An attempt's end; `result_bytes`, the size of a success's JSON value when it was
    measured, lets the worker weigh its report without encoding it again."""
    ended: Outcome = {"result": result, "logs": logs, "started_at_ms": started_at_ms}
    if result_bytes:
        ended["result_bytes"] = result_bytes
    return ended


def failed_outcome(message: str, logs: str = "", started_at_ms: Optional[int] = None) -> Outcome:
    """An attempt that ended failed with `message` (now, unless it started earlier)."""
    return outcome(_failed(message), logs, int(time.time() * 1000) if started_at_ms is None else started_at_ms)


@contextlib.contextmanager
def _inside(prepared: Prepared) -> Iterator[None]:
    """The attempt's context (`task.request`, `update_state`) and output capture, set
    for the task's call."""
    token = context.enter(prepared.attempt)
    capture_token = _capture.set(prepared.capture)
    try:
        yield
    finally:
        _capture.reset(capture_token)
        context.leave(token)


def run(prepared: Prepared, call: Callable[[Prepared], Any]) -> Outcome:
    """Calls the task through `call` with its context and capture set, and describes
    how it ended. `AttemptStopped` passes through: the pool reports a stopped attempt."""
    try:
        with _inside(prepared):
            value = call(prepared)
    except Exception as e:  # noqa: BLE001 (whatever the task raised is its end)
        return _raised(prepared, e)
    return finish(prepared, value)


def _raised(prepared: Prepared, error: Exception) -> Outcome:
    """The end of an attempt whose task raised `error`. `self.retry()` is a retry; any
    other exception a failure, which the server retries unless the task's
    `autoretry_for` leaves its type out (then `retry: false`); a type it names is
    reported as a retry."""
    if isinstance(error, Retry):
        result: Dict[str, Any] = {"type": "retry", "message": error.message}
        if error.countdown is not None:
            result["countdown_ms"] = max(0, int(error.countdown * 1000))
    else:
        message = format_failure(*describe(error))
        options = prepared.task.options
        if options.autoretry_for is None:
            result = _failed(message)
        elif retried(options, error):
            result = {"type": "retry", "message": message[:MESSAGE_CAP]}
        else:
            result = _failed(message)
            result["retry"] = False
    return outcome(result, prepared.capture.text(), prepared.started_at_ms)


async def run_async(prepared: Prepared) -> Outcome:
    """`run` for the asyncio pool: a coroutine task is awaited on the running loop, a
    plain function is called in it."""
    try:
        with _inside(prepared):
            value = prepared.task(*prepared.args, **prepared.kwargs)
            if inspect.isawaitable(value):
                value = await value
    except Exception as e:  # noqa: BLE001 (whatever the task raised is its end)
        return _raised(prepared, e)
    return finish(prepared, value)


def call_blocking(prepared: Prepared) -> Any:
    """Calls the task in this thread; a coroutine task runs on an event loop of its
    own (the threads and processes pools)."""
    value = prepared.task(*prepared.args, **prepared.kwargs)
    if inspect.isawaitable(value):
        return asyncio.run(_awaited(value))
    return value


async def _awaited(value: Any) -> Any:
    return await value


def finish(prepared: Prepared, value: Any) -> Outcome:
    """A task's return value as a success, or a failure if JSON cannot carry it or it
    is larger than a report may be."""
    try:
        size = len(value) if isinstance(value, str) else 0
        if not (value is None or type(value) in (str, int, bool)):
            encoded = json.dumps(value, allow_nan=False)
            size = len(encoded)
            # Plain JSON values from here on (a dict subclass or a tuple becomes a dict
            # or a list): what crosses to the worker and the server is what JSON carries.
            value = json.loads(encoded)
    except (TypeError, ValueError) as e:
        message = (
            f"the task `{prepared.task.name}` returned what JSON cannot carry ({e}): "
            "return None, bool, int, float, str, and lists and dicts of them"
        )
        return failed_outcome(message, prepared.capture.text(), prepared.started_at_ms)
    if size > MAX_RESULT_BYTES:
        message = (
            f"the task `{prepared.task.name}` returned {size} bytes of JSON, more than the "
            f"{MAX_RESULT_BYTES} a result may be: store large data elsewhere and return where it is"
        )
        return failed_outcome(message, prepared.capture.text(), prepared.started_at_ms)
    succeeded = {"type": "succeeded", "result": value}
    return outcome(succeeded, prepared.capture.text(), prepared.started_at_ms, size)

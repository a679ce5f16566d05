"""The exceptions of the SDK. Every one derives from `LqsmError`; those with a
built-in counterpart (`TimeoutError`, `ConnectionError`, `TypeError`) derive from it too,
so code written for plain Python keeps catching them."""

from __future__ import annotations

import builtins
import re
from typing import Optional, Tuple


class LqsmError(Exception):
    """Base of every error this SDK raises."""


class ApiError(LqsmError):
    """The server refused a request: its `{"error": {"code", "message", "field"}}` answer.

    `code` is the server's stable machine-readable code (`not_found`, `invalid_field`,
    `conflict`, ...), `message` says what happened and what to do, `field` names the
    offending field when one is to blame, and `status` is the HTTP status.
    """

    def __init__(self, status: int, code: str, message: str, field: Optional[str] = None) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        where = f" (field `{field}`)" if field else ""
        super().__init__(f"{code}{where}: {message}")


class ServerUnreachable(LqsmError, ConnectionError):
    """No LQSM server answered at the app's URL."""


class IncompatibleServer(LqsmError):
    """The server at the app's URL is not an LQSM server this SDK can talk to."""


class UnsupportedOption(LqsmError, TypeError):
    """A task or submission option this SDK does not know, or that LQSM does not offer
    yet. Raised instead of ignoring the option, so that nothing silently behaves
    differently from what the caller asked."""


class TimeoutError(LqsmError, builtins.TimeoutError):
    """`AsyncResult.get(timeout=...)` gave up before the job finished."""


class TaskError(LqsmError):
    """The job ended without success: it failed, was cancelled (revoked) or expired.

    `state` is the job's final state (`failed`, `cancelled`, `expired`), `reason` the
    server's account of why (for a failed task, the message its last attempt failed
    with), `job_id` the job.

    When a Python worker ran the task, the reason is the exception's type, its message
    and the remote traceback (`exc_type`, `exc_message`, `remote_traceback`; see
    `parse_failure`), and `AsyncResult.get()` raises the task's own exception type when
    it may (see `App`).
    """

    def __init__(self, job_id: str, state: str, reason: Optional[str]) -> None:
        self.job_id = job_id
        self.state = state
        self.reason = reason
        failure = parse_failure(reason) if state == "failed" else None
        self.exc_type: Optional[str] = failure[0] if failure else None
        self.exc_message: Optional[str] = failure[1] if failure else None
        self.remote_traceback: Optional[str] = failure[2] if failure else None
        super().__init__(f"job {job_id} {state}: {reason or 'no reason given'}")


class Retry(LqsmError):
    """Raised by `task.retry()` inside a bound task: the attempt ends, and the job runs
    again after `countdown` seconds (the task's retry backoff when None), using one of
    its retries. Not a failure."""

    def __init__(self, message: str, countdown: Optional[float]) -> None:
        self.message = message
        self.countdown = countdown
        super().__init__(message)


class SoftTimeLimitExceeded(LqsmError):
    """Raised inside a task when its soft time limit (`soft_timeout=`) has passed, so
    that it can clean up before the hard `timeout=` ends it (Celery's exception of the
    same name). On the asyncio pool the task is cancelled instead (it sees
    `asyncio.CancelledError`)."""


#: Where a Python worker's failure message turns into the remote traceback.
TRACEBACK_MARK = "\n\nTraceback (most recent call last):\n"

_TYPE_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")


def format_failure(type_path: str, message: str, traceback_text: str) -> str:
    """A task's exception as a Python worker reports it: `module.Type: message`, then
    the traceback after `TRACEBACK_MARK` (a built-in type goes without `builtins.`)."""
    head = "Traceback (most recent call last):\n"
    body = traceback_text[len(head):] if traceback_text.startswith(head) else traceback_text
    return f"{type_path}: {message}{TRACEBACK_MARK}{body}"


def parse_failure(reason: Optional[str]) -> Optional[Tuple[str, str, str]]:
    """`(type, message, traceback)` of a reason written by `format_failure`; None when
    the reason is not one (a command's failure, a timeout, a Rust handler's message,
    which carry no traceback)."""
    if not reason:
        return None
    head, mark, tail = reason.partition(TRACEBACK_MARK)
    type_path, colon, message = head.partition(": ")
    if not mark or not _TYPE_PATH.fullmatch(type_path):
        return None
    return type_path, message, "Traceback (most recent call last):\n" + tail

"""The exceptions of the SDK. Every one derives from `LqsmError`; those with a
built-in counterpart (`TimeoutError`, `ConnectionError`, `TypeError`) derive from it too,
so code written for plain Python keeps catching them."""

from __future__ import annotations

import builtins

from typing import Optional


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
    """

    def __init__(self, job_id: str, state: str, reason: Optional[str]) -> None:
        self.job_id = job_id
        self.state = state
        self.reason = reason
        super().__init__(f"job {job_id} {state}: {reason or 'no reason given'}")

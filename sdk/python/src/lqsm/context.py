"""What a running task sees of its attempt: `task.request`, and the hooks behind
`task.update_state()`. A worker (or an eager call) sets the context around each call;
it lives in a context variable, so it follows the task into threads' and asyncio's
contexts alike."""

from __future__ import annotations

import contextvars
import json
from typing import Any, Callable, Dict, Optional

#: The largest `update_state` the server keeps (its limit on a running attempt's
#: `progress`), as JSON bytes.
MAX_PROGRESS_BYTES = 4096


class Request:
    """The attempt a task runs in (Celery's `self.request`). Outside a worker every
    field is empty: `id` None, `attempt` 0."""

    __slots__ = ("id", "attempt", "queue", "hostname", "is_eager")

    def __init__(
        self,
        id: Optional[str] = None,
        attempt: int = 0,
        queue: Optional[str] = None,
        hostname: Optional[str] = None,
        is_eager: bool = False,
    ) -> None:
        #: The job's id.
        self.id = id
        #: 1 for the first attempt, 2 for the first retry, ...
        self.attempt = attempt
        #: The leaf queue the job is in.
        self.queue = queue
        #: The worker running it (`name@host`).
        self.hostname = hostname
        #: Whether the call runs in the caller's process (`App(eager=True)`).
        self.is_eager = is_eager

    def __repr__(self) -> str:
        return f"<Request id={self.id} attempt={self.attempt} queue={self.queue}>"

    @property
    def retries(self) -> int:
        """How many attempts ran before this one (Celery's `request.retries`)."""
        return max(0, self.attempt - 1)


class Attempt:
    """The running attempt behind a task call: its `Request` and where its progress
    goes."""

    def __init__(self, request: Request, report_progress: Callable[[Dict[str, Any]], None]) -> None:
        self.request = request
        self.report_progress = report_progress


_current: contextvars.ContextVar[Optional[Attempt]] = contextvars.ContextVar("lqsm_attempt", default=None)


def current_attempt() -> Optional[Attempt]:
    """The attempt this code runs in, if it runs in one."""
    return _current.get()


def enter(attempt: Optional[Attempt]) -> "contextvars.Token[Optional[Attempt]]":
    """Makes `attempt` current until `leave(token)`."""
    return _current.set(attempt)


def leave(token: "contextvars.Token[Optional[Attempt]]") -> None:
    _current.reset(token)


def progress_of(state: Optional[str], meta: Any) -> Dict[str, Any]:
    """`update_state`'s arguments as the attempt's progress: `{"state", "meta"}`, checked
    to be JSON within `MAX_PROGRESS_BYTES`."""
    progress: Dict[str, Any] = {"state": state if state is not None else "PROGRESS"}
    if meta is not None:
        progress["meta"] = meta
    try:
        size = len(json.dumps(progress, allow_nan=False).encode())
    except (TypeError, ValueError) as e:
        raise TypeError(f"update_state: meta must be JSON-encodable ({e})") from e
    if size > MAX_PROGRESS_BYTES:
        raise ValueError(
            f"update_state: the state is {size} bytes of JSON, more than the {MAX_PROGRESS_BYTES} "
            "the server keeps; report a summary (a count, a percentage) and return the rest"
        )
    return progress

"""Handles on submitted jobs: `AsyncResult` asks the server, `EagerResult` holds what
an in-process (eager) call produced."""

from __future__ import annotations

import builtins
import sys
import time
import uuid
from typing import TYPE_CHECKING, Any, Callable, Dict, Mapping, Optional

from .errors import ApiError, TaskError, TimeoutError

if TYPE_CHECKING:
    from ._server import ServerConnection

#: States after which a job never changes.
FINISHED_STATES = frozenset({"succeeded", "failed", "cancelled", "expired"})

#: The longest wait the server grants one `/wait` request (ms); longer waits loop.
_LONGEST_SERVER_WAIT_MS = 300_000


class AsyncResult:
    """A submitted job, by id. Every property asks the server afresh, as Celery's does.

    `state` is LQSM's: `pending`, `scheduled`, `running`, `succeeded`, `failed`,
    `cancelled` (revoked) or `expired`.
    """

    def __init__(
        self,
        job_id: str,
        server: "ServerConnection",
        sent: Optional[Callable[[], None]] = None,
    ) -> None:
        self.id = job_id
        self._server = server
        # For a job submitted without confirmation: waits until it was sent, and raises
        # why the server did not take it.
        self._sent = sent

    def _ensure_sent(self) -> None:
        if self._sent is not None:
            self._sent()
            self._sent = None

    def __repr__(self) -> str:
        return f"<AsyncResult {self.id}>"

    def fetch(self) -> Dict[str, Any]:
        """The job as the server shows it (`JobView` in docs/openapi.json)."""
        self._ensure_sent()
        view: Dict[str, Any] = self._server.request("GET", f"/v1/jobs/{self.id}")
        return view

    @property
    def state(self) -> str:
        """Where the job is in its life."""
        return str(self.fetch()["state"])

    def ready(self) -> bool:
        """Whether the job has finished, in success or not."""
        return self.state in FINISHED_STATES

    def successful(self) -> bool:
        """Whether the job succeeded."""
        return self.state == "succeeded"

    def failed(self) -> bool:
        """Whether the job finished without success (failed, cancelled or expired)."""
        state = self.state
        return state in FINISHED_STATES and state != "succeeded"

    @property
    def result(self) -> Any:
        """The return value once succeeded; the exception once finished otherwise
        (returned, not raised, as Celery does: the task's own type when `get()` would
        raise it, else a `TaskError`); None while unfinished."""
        return _outcome(self.fetch(), raise_error=False, allowed=self._server.exception_types)

    @property
    def traceback(self) -> Optional[str]:
        """The remote traceback of a task that raised on a Python worker; else None."""
        view = self.fetch()
        if view["state"] != "failed":
            return None
        return TaskError(str(view["id"]), "failed", view.get("reason")).remote_traceback

    def __await__(self) -> Any:
        """`await result`: `get()` on a thread, so that the event loop carries on."""
        import asyncio

        return asyncio.get_running_loop().run_in_executor(None, self.get).__await__()

    def get(self, timeout: Optional[float] = None) -> Any:
        """Waits for the job and returns its result; raises `TaskError` if it failed,
        was cancelled or expired, and `lqsm.TimeoutError` (a `TimeoutError`) if it has
        not finished after `timeout` seconds (None: wait as long as it takes). The
        server holds each request until the job finishes, so no polling interval."""
        if timeout is not None and (timeout < 0 or timeout != timeout):
            raise ValueError(f"timeout takes a non-negative number of seconds or None, got {timeout!r}")
        self._ensure_sent()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if deadline is None:
                wait_ms = _LONGEST_SERVER_WAIT_MS
            else:
                wait_ms = min(_LONGEST_SERVER_WAIT_MS, max(0, int((deadline - time.monotonic()) * 1000)))
            view = self._server.request(
                "GET",
                f"/v1/jobs/{self.id}/wait",
                params={"timeout_ms": wait_ms},
                extra_timeout=wait_ms / 1000,
            )
            if view["state"] in FINISHED_STATES:
                return _outcome(view, raise_error=True, allowed=self._server.exception_types)
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(
                    f"job {self.id} is still {view['state']} after {timeout} s; "
                    "call get() again to keep waiting, or revoke() it"
                )

    def revoke(self) -> None:
        """Cancels the job: a pending one never runs, a running attempt is stopped.
        A job that has already finished is left as it is (as Celery does)."""
        self._ensure_sent()
        try:
            self._server.request("POST", f"/v1/jobs/{self.id}/cancel")
        except ApiError as e:
            if e.code != "conflict":
                raise


class EagerResult(AsyncResult):
    """What an eager call (`App(eager=True)`) produced: finished on return, never
    contacts a server."""

    def __init__(self, state: str, value: Any, error: Optional[TaskError]) -> None:
        self.id = str(uuid.uuid4())
        self._state = state
        self._value = value
        self._error = error

    def __repr__(self) -> str:
        return f"<EagerResult {self.id} {self._state}>"

    def fetch(self) -> Dict[str, Any]:
        """The part of a `JobView` an eager call has: id, state, and result or reason."""
        view: Dict[str, Any] = {"id": self.id, "state": self._state}
        if self._error is not None:
            view["reason"] = self._error.reason
        else:
            view["result"] = self._value
        return view

    @property
    def state(self) -> str:
        """`succeeded`, or `failed` if the function raised."""
        return self._state

    @property
    def result(self) -> Any:
        """The return value, or the exception the function raised (a `TaskError` when
        it asked for more retries than it had)."""
        if self._error is None:
            return self._value
        cause = self._error.__cause__
        return cause if isinstance(cause, Exception) else self._error

    def get(self, timeout: Optional[float] = None) -> Any:
        """The return value; raises the function's own exception if it raised (or a
        `TaskError` when it asked for more retries than it had). `timeout` is accepted
        for symmetry."""
        if self._error is not None:
            if isinstance(self._error.__cause__, Exception):
                raise self._error.__cause__
            raise self._error
        return self._value

    def revoke(self) -> None:
        """Nothing to cancel: the call has run."""


def _outcome(view: Dict[str, Any], raise_error: bool, allowed: Mapping[str, type]) -> Any:
    state = view["state"]
    if state == "succeeded":
        return view.get("result")
    if state not in FINISHED_STATES:
        return None
    error = TaskError(str(view["id"]), state, view.get("reason"))
    native = native_exception(error, allowed)
    if native is not None:
        native.__cause__ = error
    raised = native if native is not None else error
    if raise_error:
        raise raised
    return raised


def native_exception(error: TaskError, allowed: Mapping[str, type]) -> Optional[Exception]:
    """The task's own exception, rebuilt from its type and message, when that type is
    in `allowed` or already imported here (its module in `sys.modules`); None when it
    is neither, or cannot be made from a message alone. Never imports anything."""
    if error.exc_type is None:
        return None
    kind = allowed.get(error.exc_type) or _imported(error.exc_type)
    if not (isinstance(kind, type) and issubclass(kind, Exception)):
        return None
    try:
        native = kind(error.exc_message)
    except Exception:  # noqa: BLE001 (a constructor that wants more than a message)
        return None
    return native


def _imported(path: str) -> Any:
    """The object at `path` (`ValueError`, `pkg.mod.Class.Inner`) if its module is
    already imported; None otherwise."""
    parts = path.split(".")
    if len(parts) == 1:
        return getattr(builtins, path, None)
    for split in range(len(parts) - 1, 0, -1):
        module = sys.modules.get(".".join(parts[:split]))
        if module is None:
            continue
        found: Any = module
        for name in parts[split:]:
            found = getattr(found, name, None)
            if found is None:
                return None
        return found
    return None

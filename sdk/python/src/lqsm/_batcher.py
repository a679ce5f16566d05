"""Unconfirmed submission: `.delay()` gives each job its own id (a UUIDv7) and returns at
once; a background thread sends what accumulated in one `POST /v1/jobs/batch` after a
short linger. A batch sent again after a lost answer names the same jobs (the same id
with the same submission is the same job), so a retry never makes a second one.

Errors are not lost: a job the server refused, or could not be sent, is raised by the
next `flush()` (and by the next `.delay()`, and by its result's first use)."""

from __future__ import annotations

import atexit
import os
import secrets
import sys
import threading
import time
from typing import Any, Dict, List, Optional, Set

from ._server import ServerConnection
from .errors import ApiError, LqsmError, ServerUnreachable

#: How many times a batch is sent again after the server could not be reached.
_SEND_ATTEMPTS = 5

#: The HTTP status a single submission would have been refused with, by error code.
_STATUS_OF = {
    "not_found": 404,
    "unauthorized": 401,
    "forbidden": 403,
    "conflict": 409,
    "not_accepting": 409,
    "queue_full": 429,
    "payload_too_large": 413,
    "unavailable": 503,
}


class SubmissionError(LqsmError):
    """Jobs submitted without confirmation that the server did not take: `errors` maps
    each job's id to why."""

    def __init__(self, errors: Dict[str, LqsmError]) -> None:
        self.errors = errors
        first_id, first = next(iter(errors.items()))
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        super().__init__(f"job {first_id} was not submitted: {first}{more}")


_last_ms = 0
_counter = 0
_id_lock = threading.Lock()


def new_job_id() -> str:
    """A UUIDv7: the time in ms, then a counter within the ms and random bits, so the ids
    of one process only grow (listings sort by them)."""
    global _last_ms, _counter
    with _id_lock:
        now = time.time_ns() // 1_000_000
        if now <= _last_ms:
            _counter += 1
            if _counter >= 1 << 12:
                _last_ms += 1
                _counter = 0
            now = _last_ms
        else:
            _counter = 0
        _last_ms = now
        counter = _counter
    value = (now & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76 | counter << 64
    value |= 0b10 << 62 | secrets.randbits(62)
    hexed = f"{value:032x}"
    return f"{hexed[:8]}-{hexed[8:12]}-{hexed[12:16]}-{hexed[16:20]}-{hexed[20:]}"


class Batcher:
    """Collects unconfirmed jobs and sends them in batches from one background thread."""

    def __init__(self, server: ServerConnection, linger: float, max_batch: int) -> None:
        self._server = server
        self._linger = linger
        self._max_batch = max_batch
        self._lock = threading.Condition()
        self._pending: List[Dict[str, Any]] = []
        self._in_flight: Set[str] = set()
        self._errors: Dict[str, LqsmError] = {}
        self._thread: Optional[threading.Thread] = None
        self._pid = os.getpid()
        self._closed = False
        atexit.register(self._flush_at_exit)

    def add(self, job: Dict[str, Any]) -> None:
        """Queues `job` (which carries its `id`); raises the errors of earlier jobs first."""
        with self._lock:
            self._raise_errors()
            if self._closed:
                raise LqsmError("the app is closed: no job can be submitted")
            self._pending.append(job)
            self._start()
            self._lock.notify_all()

    def flush(self, job_id: Optional[str] = None) -> None:
        """Waits until every job queued so far (or just `job_id`) was sent, then raises the
        errors of jobs that were not taken."""
        with self._lock:
            while self._holds(job_id):
                self._start()
                self._lock.notify_all()
                self._lock.wait(0.1)
            self._raise_errors(job_id)

    def close(self) -> None:
        """Sends what is queued and stops the thread."""
        try:
            self.flush()
        finally:
            with self._lock:
                self._closed = True
                self._lock.notify_all()

    def _holds(self, job_id: Optional[str]) -> bool:
        if job_id is None:
            return bool(self._pending or self._in_flight)
        return job_id in self._in_flight or any(j["id"] == job_id for j in self._pending)

    def _raise_errors(self, job_id: Optional[str] = None) -> None:
        if job_id is not None:
            error = self._errors.pop(job_id, None)
            if error is not None:
                # The job's own error, as a confirmed submission would have raised it.
                raise error
            return
        if self._errors:
            errors, self._errors = self._errors, {}
            raise SubmissionError(errors)

    def _start(self) -> None:
        # A forked child has no sender thread: it starts its own.
        if self._thread is None or not self._thread.is_alive() or self._pid != os.getpid():
            self._pid = os.getpid()
            self._thread = threading.Thread(target=self._run, name="lqsm-batcher", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._pending and not self._closed:
                    self._lock.wait()
                if not self._pending:
                    return
                # Linger briefly so a loop of `.delay()` fills the batch.
                deadline = time.monotonic() + self._linger
                while len(self._pending) < self._max_batch and not self._closed:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._lock.wait(left)
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                self._in_flight.update(j["id"] for j in batch)
            errors = self._send(batch)
            with self._lock:
                self._in_flight.difference_update(j["id"] for j in batch)
                self._errors.update(errors)
                self._lock.notify_all()

    def _send(self, batch: List[Dict[str, Any]]) -> Dict[str, LqsmError]:
        last: LqsmError = ServerUnreachable("no attempt was made")
        for attempt in range(_SEND_ATTEMPTS):
            try:
                answer = self._server.request("POST", "/v1/jobs/batch", json={"jobs": batch})
            except ServerUnreachable as e:
                # The same ids again: a batch that did land names the same jobs.
                last = e
                time.sleep(min(2.0, 0.1 * 2**attempt))
                continue
            except ApiError as e:
                if e.status != 503:
                    return {str(j["id"]): e for j in batch}
                # No leader for a moment (a failover), or the server restoring: again.
                last = e
                time.sleep(min(2.0, 0.1 * 2**attempt))
                continue
            except LqsmError as e:
                return {str(j["id"]): e for j in batch}
            errors: Dict[str, LqsmError] = {}
            for job, item in zip(batch, answer["results"]):
                error = item.get("error")
                if error is not None:
                    code = str(error.get("code"))
                    errors[str(job["id"])] = ApiError(
                        _STATUS_OF.get(code, 400), code, str(error.get("message")), error.get("field")
                    )
            return errors
        return {str(j["id"]): last for j in batch}

    def _flush_at_exit(self) -> None:
        try:
            self.flush()
        except LqsmError as e:
            print(f"lqsm: jobs submitted at exit were not taken: {e}", file=sys.stderr)

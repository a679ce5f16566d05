"""A child process of the processes pool: `python -m lqsm.worker._child MODULE:APP`.

It speaks with its worker in messages (`_frames`): on stdin `{"run": [work, ...]}` (attempts to run
in order) and `{"stop": key, "reason": ...}`; on stdout `{"done": key, "outcome": ..., "took": seconds}`
as each attempt ends, `{"progress": key, "state": ...}`, `{"output": key, "text": ...}` (what the
attempt printed and logged since the last one, about twice a second), and `{"exit": why}` before it
leaves on its own (`max_tasks_per_child`, `max_memory_per_child`). It dies with its
worker: the kernel kills it when the worker's process ends (`PR_SET_PDEATHSIG`).
"""

from __future__ import annotations

import ctypes
import logging
import os
import queue
import resource
import signal
import sys
import threading
import time
from types import FrameType
from typing import Any, Dict, List, Optional

from ..errors import SoftTimeLimitExceeded
from . import _execution, _frames
from ._loading import load_app

_PR_SET_PDEATHSIG = 1

#: How often what running tasks printed and logged goes to the worker, which uploads it
#: about once a second.
OUTPUT_EVERY = 0.5


def die_with_parent(parent_pid: int) -> None:
    """Asks the kernel to kill this process when its parent ends, and leaves at once if
    the parent has already gone (the request only covers a parent alive when made)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:
        os._exit(0)


class Child:
    def __init__(self, app_ref: str, hostname: str, max_tasks: int, max_memory_kib: int) -> None:
        self.tasks = load_app(app_ref).tasks
        self.hostname = hostname
        self.max_tasks = max_tasks
        self.max_memory_kib = max_memory_kib
        # The protocol's channel is a private copy of stdout; fd 1 becomes stderr, so
        # that nothing a task writes at the fd level can break a message.
        self.out = os.fdopen(os.dup(1), "wb", buffering=0)
        os.dup2(2, 1)
        self.write_lock = threading.Lock()
        # Batches of attempts, as the worker sent them; None once it closed the pipe.
        self.inbox: "queue.Queue[Optional[List[Dict[str, Any]]]]" = queue.Queue()
        self.stopped: Dict[str, str] = {}
        self.current: Optional[str] = None
        # Re-entrant: the stop signal's handler takes it in the main thread, which may hold it.
        self.state_lock = threading.RLock()
        self.soft_pending = False
        # What the running attempt printed and logged since it was last sent, by key.
        self.output_lock = threading.Lock()
        self.output: Dict[str, List[str]] = {}

    def send(self, message: Dict[str, Any]) -> None:
        data = memoryview(_frames.encode(message))
        with self.write_lock:
            # A pipe write may be cut short (by a signal): the rest follows, so that a
            # message is never broken.
            while data:
                data = data[self.out.write(data) or 0 :]

    def send_output(self) -> None:
        """Sends what tasks printed and logged to the worker every `OUTPUT_EVERY`, one
        message per attempt, instead of one per line."""
        while True:
            time.sleep(OUTPUT_EVERY)
            with self.output_lock:
                pending, self.output = self.output, {}
            for key, parts in pending.items():
                self.send({"output": key, "text": "".join(parts)})

    def read_stdin(self) -> None:
        while True:
            message = _frames.read(sys.stdin.buffer)
            if message is None:
                break
            if "run" in message:
                self.inbox.put(message["run"])
            elif "stop" in message:
                key = message["stop"]
                with self.state_lock:
                    self.stopped[key] = message.get("reason", "stopped")
                    if self.current == key:
                        os.kill(os.getpid(), signal.SIGUSR2)
        # The worker closed the pipe: it is shutting down.
        self.inbox.put(None)

    def on_stop_signal(self, signum: int, frame: Optional[FrameType]) -> None:
        with self.state_lock:
            running_stopped = self.current is not None and self.current in self.stopped
        if running_stopped:
            raise _execution.AttemptStopped()

    def on_soft_limit(self, signum: int, frame: Optional[FrameType]) -> None:
        if self.current is not None and self.soft_pending:
            self.soft_pending = False
            raise SoftTimeLimitExceeded("the task's soft time limit has passed")

    def run(self) -> None:
        signal.signal(signal.SIGUSR2, self.on_stop_signal)
        signal.signal(signal.SIGALRM, self.on_soft_limit)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        _execution.install_capture()
        threading.Thread(target=self.read_stdin, name="lqsm-child-stdin", daemon=True).start()
        threading.Thread(target=self.send_output, name="lqsm-child-output", daemon=True).start()
        self.send({"ready": os.getpid()})
        served = 0
        while True:
            batch = self.inbox.get()
            if batch is None:
                return
            for work in batch:
                key = work["key"]
                started = time.perf_counter()
                outcome, stopped = self.run_one(work)
                took = round(time.perf_counter() - started, 6)
                # Sent before the next task starts: if this process dies during that
                # one, the worker knows this one ended and never runs it again.
                self.send({"done": key, "outcome": outcome, "took": took})
                served += 1
                if stopped:
                    # Whatever the stopped task left running in this process (threads,
                    # say) ends with it; the worker kills the rest of its process group.
                    self.send({"exit": "it ran a task that was stopped"})
                    return
                if self.max_tasks and served >= self.max_tasks:
                    self.send({"exit": f"it ran {served} tasks (max_tasks_per_child)"})
                    return
                if self.max_memory_kib:
                    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                    if peak_kib > self.max_memory_kib:
                        self.send({"exit": f"it used {peak_kib} KiB (max_memory_per_child {self.max_memory_kib})"})
                        return

    def run_one(self, work: Dict[str, Any]) -> "tuple[Dict[str, Any], bool]":
        """The attempt's outcome, and whether it was stopped while it ran."""
        key = work["key"]

        def report_progress(state: Dict[str, Any]) -> None:
            self.send({"progress": key, "state": state})

        def report_output(text: str) -> None:
            with self.output_lock:
                self.output.setdefault(key, []).append(text)

        prepared = _execution.prepare(self.tasks, work, self.hostname, report_progress, report_output)
        if not isinstance(prepared, _execution.Prepared):
            return prepared, False
        started_at_ms = prepared.started_at_ms
        try:
            with self.state_lock:
                reason = self.stopped.pop(key, None)
                if reason is not None:
                    return _execution.failed_outcome(reason, "", started_at_ms), False
                self.current = key
            soft_deadline = work.get("soft_deadline")
            if soft_deadline is not None:
                self.soft_pending = True
                signal.setitimer(signal.ITIMER_REAL, max(0.001, soft_deadline - time.monotonic()))
            return _execution.run(prepared, _execution.call_blocking), False
        except _execution.AttemptStopped:
            message = self.stopped.get(key, "stopped")
            return _execution.failed_outcome(message, prepared.capture.text(), started_at_ms), True
        finally:
            # A stop or soft-limit signal that lands after the task ended is ignored:
            # the handlers raise only for the current task.
            if self.soft_pending:
                signal.setitimer(signal.ITIMER_REAL, 0)
                self.soft_pending = False
            with self.state_lock:
                self.current = None
                self.stopped.pop(key, None)


def main() -> None:
    app_ref, hostname, max_tasks, max_memory_kib, parent_pid = sys.argv[1:6]
    die_with_parent(int(parent_pid))
    Child(app_ref, hostname, int(max_tasks), int(max_memory_kib)).run()
    # Everything was sent (unbuffered); skip the interpreter's shutdown, which would
    # wait on the thread blocked reading stdin.
    logging.shutdown()
    os._exit(0)


if __name__ == "__main__":
    main()

"""Where a worker's attempts run: `threads`, `processes` or `asyncio`, `concurrency`
at a time, the rest waiting in the worker in the order they were assigned.

Every pool takes attempts with `submit`, ends one early with `stop` (a kill order,
a timeout, a shutdown, a fence), and calls `done(key, outcome)` exactly once per
attempt submitted, from any thread. A pool never leaves a stopped attempt running: a
thread or coroutine that does not end within the grace after it was stopped makes the
worker exit (its attempts are then lost to the server and run again, never twice at
once); a child process is killed.
"""

from __future__ import annotations

import asyncio
import collections
import ctypes
import functools
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Deque, Dict, List, Mapping, Optional, Tuple

from ..app import Task
from ..errors import SoftTimeLimitExceeded
from . import _execution, _frames
from ._execution import Outcome, Work

log = logging.getLogger("lqsm.worker")

#: Called with attempts that ended, as (key, outcome) pairs: several at once when they
#: ended together, so that the worker's loop wakes once for them.
Done = Callable[[List[Tuple[str, Outcome]]], None]
Progress = Callable[[str, Dict[str, Any]], None]
#: Called with what a running attempt printed or logged, as (key, text), from any thread.
Output = Callable[[str, str], None]

#: Exit status of a worker that had to leave because a stopped task would not end.
EXIT_STUCK_TASK = 70


def _exit_stuck(key: str, grace: float) -> None:
    log.critical(
        "attempt %s did not end %.0f s after it was stopped: the worker exits so that it never "
        "runs alongside the attempt the server runs in its place",
        key,
        grace,
    )
    logging.shutdown()
    os._exit(EXIT_STUCK_TASK)


class Pool:
    """What the worker's loop needs of a pool."""

    name = "pool"
    broken: Optional[str] = None

    def __init__(self, concurrency: int, stop_grace: float) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency takes 1 or more, got {concurrency}")
        self.concurrency = concurrency
        self.stop_grace = stop_grace
        self.done: Done = lambda ended: None
        self.progress: Progress = lambda key, state: None
        # Set by the worker before `start` when it uploads running attempts' output.
        self.output: Output = lambda key, text: None

    def start(self, tasks: Mapping[str, "Task[Any]"], hostname: str, done: Done, progress: Progress) -> None:
        raise NotImplementedError

    def submit(self, works: List[Work]) -> None:
        """Queues attempts to run, in order."""
        raise NotImplementedError

    def stop(self, key: str, reason: str, at_once: bool = False) -> None:
        """Ends an attempt early: raised inside its task, which has the stop grace to
        end (`at_once`: half a second at most, for a fence) before its process is
        killed."""
        raise NotImplementedError

    def grace(self, at_once: bool) -> float:
        return min(self.stop_grace, 0.5) if at_once else self.stop_grace

    def close(self) -> None:
        """Ends the pool's threads or children; called once nothing runs."""


def _raise_in_thread(ident: int, exception: type) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(exception))


def _clear_raise_in_thread(ident: int) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), None)


class ThreadPool(Pool):
    """`concurrency` threads in the worker's process. A soft time limit, or a stop,
    raises in the task's thread the next time it runs Python code (not while it waits in
    a C call such as `time.sleep`)."""

    name = "threads"

    def __init__(self, concurrency: int, stop_grace: float) -> None:
        super().__init__(concurrency, stop_grace)
        self.lock = threading.Condition()
        self.backlog: Deque[Work] = collections.deque()
        self.running: Dict[int, str] = {}
        self.stop_reasons: Dict[str, str] = {}
        self.closing = False
        self.threads: List[threading.Thread] = []

    def start(self, tasks: Mapping[str, "Task[Any]"], hostname: str, done: Done, progress: Progress) -> None:
        self.tasks, self.hostname, self.done, self.progress = tasks, hostname, done, progress
        for i in range(self.concurrency):
            thread = threading.Thread(target=self._serve, name=f"lqsm-task-{i}", daemon=True)
            thread.start()
            self.threads.append(thread)

    def submit(self, works: List[Work]) -> None:
        with self.lock:
            self.backlog.extend(works)
            self.lock.notify(len(works))

    def stop(self, key: str, reason: str, at_once: bool = False) -> None:
        with self.lock:
            for work in self.backlog:
                if work["key"] == key:
                    self.backlog.remove(work)
                    break
            else:
                for ident, running in self.running.items():
                    if running == key:
                        self.stop_reasons[key] = reason
                        _raise_in_thread(ident, _execution.AttemptStopped)
                        timer = threading.Timer(self.grace(at_once), self._check_ended, (ident, key))
                        timer.daemon = True
                        timer.start()
                return
        self.done([(key, _execution.failed_outcome(reason))])

    def _check_ended(self, ident: int, key: str) -> None:
        with self.lock:
            if self.running.get(ident) == key:
                _exit_stuck(key, self.stop_grace)

    def _soft_limit(self, ident: int, key: str) -> None:
        with self.lock:
            if self.running.get(ident) == key and key not in self.stop_reasons:
                _raise_in_thread(ident, SoftTimeLimitExceeded)

    def _serve(self) -> None:
        ident = threading.get_ident()
        while True:
            with self.lock:
                while not self.backlog and not self.closing:
                    self.lock.wait()
                if self.closing:
                    return
                work = self.backlog.popleft()
                key = work["key"]
                self.running[ident] = key
            timer = None
            outcome: Optional[Outcome] = None
            stopped = False
            try:
                prepared = _execution.prepare(
                    self.tasks,
                    work,
                    self.hostname,
                    functools.partial(self.progress, key),
                    functools.partial(self.output, key),
                )
                if not isinstance(prepared, _execution.Prepared):
                    outcome = prepared
                else:
                    soft_deadline = work.get("soft_deadline")
                    if soft_deadline is not None:
                        timer = threading.Timer(
                            max(0.0, soft_deadline - time.monotonic()), self._soft_limit, (ident, key)
                        )
                        timer.daemon = True
                        timer.start()
                    outcome = _execution.run(prepared, _execution.call_blocking)
            except _execution.AttemptStopped:
                stopped = True
            finally:
                with self.lock:
                    # An exception raised into this thread after the task ended must not
                    # land in the next one (nor in this bookkeeping).
                    _clear_raise_in_thread(ident)
                    del self.running[ident]
                    reason = self.stop_reasons.pop(key, None)
                if timer is not None:
                    timer.cancel()
            # A stop that came as the task ended on its own leaves its end as it was.
            if reason is not None and (stopped or outcome is None):
                outcome = _execution.failed_outcome(reason)
            assert outcome is not None
            self.done([(key, outcome)])

    def close(self) -> None:
        with self.lock:
            self.closing = True
            self.lock.notify_all()


class AsyncioPool(Pool):
    """Coroutines on an event loop of their own thread, `concurrency` at a time. A
    soft time limit, or a stop, cancels the task: it sees `asyncio.CancelledError` at
    its current `await`. A plain (not `async`) task runs on the loop too, blocking it:
    use the threads pool for those."""

    name = "asyncio"

    def __init__(self, concurrency: int, stop_grace: float) -> None:
        super().__init__(concurrency, stop_grace)
        self.loop = asyncio.new_event_loop()
        self.backlog: Deque[Work] = collections.deque()
        self.running: Dict[str, "asyncio.Task[Tuple[Outcome, bool]]"] = {}
        self.stop_reasons: Dict[str, str] = {}
        self.soft_fired: set[str] = set()
        # Ends not yet handed to the worker: handed over together once the loop has
        # run what was ready, so that many short tasks wake the worker once.
        self.ended: List[Tuple[str, Outcome]] = []

    def start(self, tasks: Mapping[str, "Task[Any]"], hostname: str, done: Done, progress: Progress) -> None:
        self.tasks, self.hostname, self.done, self.progress = tasks, hostname, done, progress
        self.thread = threading.Thread(target=self.loop.run_forever, name="lqsm-asyncio-pool", daemon=True)
        self.thread.start()

    def submit(self, works: List[Work]) -> None:
        self.loop.call_soon_threadsafe(self._submit, works)

    def stop(self, key: str, reason: str, at_once: bool = False) -> None:
        self.loop.call_soon_threadsafe(self._stop, key, reason, at_once)

    def _submit(self, works: List[Work]) -> None:
        self.backlog.extend(works)
        self._start_next()

    def _start_next(self) -> None:
        while self.backlog and len(self.running) < self.concurrency:
            work = self.backlog.popleft()
            key = work["key"]
            task = self.loop.create_task(self._run(work))
            self.running[key] = task
            # The bookkeeping is the task's end, however it ends: a task cancelled
            # before its first step never runs its own code at all.
            task.add_done_callback(functools.partial(self._finished, key))
            soft_deadline = work.get("soft_deadline")
            if soft_deadline is not None:
                delay = max(0.0, soft_deadline - time.monotonic())
                self.loop.call_later(delay, self._soft_limit, key, task)

    def _soft_limit(self, key: str, task: "asyncio.Task[Tuple[Outcome, bool]]") -> None:
        if self.running.get(key) is task and key not in self.stop_reasons:
            self.soft_fired.add(key)
            task.cancel("the task's soft time limit has passed")

    def _stop(self, key: str, reason: str, at_once: bool = False) -> None:
        for work in self.backlog:
            if work["key"] == key:
                self.backlog.remove(work)
                self.done([(key, _execution.failed_outcome(reason))])
                return
        task = self.running.get(key)
        if task is not None:
            self.stop_reasons[key] = reason
            task.cancel(reason)
            self.loop.call_later(self.grace(at_once), self._check_ended, key, task)

    def _check_ended(self, key: str, task: "asyncio.Task[Tuple[Outcome, bool]]") -> None:
        if not task.done():
            _exit_stuck(key, self.stop_grace)

    async def _run(self, work: Work) -> Tuple[Outcome, bool]:
        """The attempt's outcome, and whether it was cancelled."""
        key = work["key"]
        prepared = _execution.prepare(
            self.tasks, work, self.hostname, lambda s: self.progress(key, s), lambda t: self.output(key, t)
        )
        if not isinstance(prepared, _execution.Prepared):
            return prepared, False
        try:
            return await _execution.run_async(prepared), False
        except asyncio.CancelledError:
            message = "SoftTimeLimitExceeded: the task's soft time limit has passed (it was cancelled)"
            return _execution.failed_outcome(message, prepared.capture.text(), prepared.started_at_ms), True

    def _finished(self, key: str, task: "asyncio.Task[Tuple[Outcome, bool]]") -> None:
        del self.running[key]
        self.soft_fired.discard(key)
        reason = self.stop_reasons.pop(key, None)
        outcome: Optional[Outcome] = None
        cancelled = True
        if not task.cancelled():
            error = task.exception()
            if error is None:
                outcome, cancelled = task.result()
            else:
                outcome = _execution.failed_outcome(f"the worker could not run it: {type(error).__name__}: {error}")
        if reason is not None and (cancelled or outcome is None):
            outcome = _execution.failed_outcome(reason)
        if outcome is None:
            outcome = _execution.failed_outcome("cancelled")
        if not self.ended:
            self.loop.call_soon(self._hand_over)
        self.ended.append((key, outcome))
        self._start_next()

    def _hand_over(self) -> None:
        ended, self.ended = self.ended, []
        self.done(ended)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)


class _ChildProcess:
    """One child of the processes pool, and what it was given."""

    def __init__(self, process: "subprocess.Popen[bytes]", remaining: Optional[int]) -> None:
        self.process = process
        # Keys sent and not yet done, in order: the child runs them in this order.
        self.inflight: Deque[str] = collections.deque()
        # How many more tasks it may be sent before it is replaced (None: no limit).
        self.remaining = remaining
        self.leaving = False
        self.ready = False
        # What it wrote, up to the end of the last complete message.
        self.messages = _frames.Decoder()


class ProcessPool(Pool):
    """`concurrency` child processes (`python -m lqsm.worker._child`), each running one
    task at a time: what Celery's prefork pool does, with children that die with the
    worker. A soft time limit raises `SoftTimeLimitExceeded` inside the task (a timer
    signal); a stop raises inside it too, and the child's process group is killed if the
    task has not ended within the grace. A child is replaced after `max_tasks_per_child`
    tasks, or once its peak memory passed `max_memory_per_child` KiB."""

    name = "processes"

    #: Most attempts sent to a child at once (fewer when others wait for a child).
    MAX_BATCH = 32

    #: Tasks that take longer than this on average are sent one at a time.
    BATCH_BELOW_SECONDS = 0.002

    def __init__(
        self,
        concurrency: int,
        stop_grace: float,
        app_ref: str,
        max_tasks_per_child: int = 0,
        max_memory_per_child: int = 0,
    ) -> None:
        super().__init__(concurrency, stop_grace)
        self.app_ref = app_ref
        self.max_tasks_per_child = max_tasks_per_child
        self.max_memory_per_child = max_memory_per_child
        self.lock = threading.RLock()
        self.backlog: Deque[Work] = collections.deque()
        self.works: Dict[str, Work] = {}
        self.children: List[_ChildProcess] = []
        self.stop_reasons: Dict[str, str] = {}
        self.closing = False
        # How long a task runs in a child, on average over the recent ones (seconds;
        # None until one has run).
        self.task_seconds: Optional[float] = None
        #: How many children were started, for tests and `lqsm-py` summaries.
        self.children_started = 0
        #: Why the pool cannot run anything (a child that died before it was ready,
        #: such as an app that does not import there); the worker stops.
        self.broken: Optional[str] = None

    def start(self, tasks: Mapping[str, "Task[Any]"], hostname: str, done: Done, progress: Progress) -> None:
        self.hostname, self.done, self.progress = hostname, done, progress
        # The children's pipes are read by the worker's own event loop (it calls this
        # from inside it): no reader threads, no hand-over between threads per message.
        self.loop = asyncio.get_running_loop()
        with self.lock:
            for _ in range(self.concurrency):
                self._spawn()

    def _spawn(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        command = [
            sys.executable,
            "-m",
            "lqsm.worker._child",
            self.app_ref,
            self.hostname,
            str(self.max_tasks_per_child),
            str(self.max_memory_per_child),
            str(os.getpid()),
        ]
        # Each child leads a process group of its own: stopping it reaches whatever
        # its task started, and a terminal's Ctrl-C reaches only the worker.
        process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, start_new_session=True
        )
        child = _ChildProcess(process, self.max_tasks_per_child or None)
        self.children.append(child)
        self.children_started += 1
        assert process.stdout is not None
        os.set_blocking(process.stdout.fileno(), False)
        self.loop.add_reader(process.stdout.fileno(), self._read, child)

    def submit(self, works: List[Work]) -> None:
        with self.lock:
            for work in works:
                self.works[work["key"]] = work
            self.backlog.extend(works)
            self._dispatch()

    def _dispatch(self) -> None:
        idle = [c for c in self.children if c.ready and not c.leaving and not c.inflight and c.remaining != 0]
        # Short tasks travel in batches shared among the idle children (one message for
        # many); tasks that take a while, or of which nothing is known yet, go one at a
        # time, so that none waits behind another in a child while a sibling idles.
        short = self.task_seconds is not None and self.task_seconds < self.BATCH_BELOW_SECONDS
        for child in idle:
            if not self.backlog:
                return
            share = -(-len(self.backlog) // len(idle)) if short else 1
            # A child never gets more than it may run before it is replaced.
            count = min(share, self.MAX_BATCH, len(self.backlog))
            if child.remaining is not None:
                count = min(count, child.remaining)
                child.remaining -= count
            batch = [self.backlog.popleft() for _ in range(count)]
            child.inflight.extend(w["key"] for w in batch)
            self._send(child, {"run": batch})

    def _send(self, child: _ChildProcess, message: Dict[str, Any]) -> None:
        stdin = child.process.stdin
        assert stdin is not None
        try:
            stdin.write(_frames.encode(message))
            stdin.flush()
        except (BrokenPipeError, OSError):
            # The child died; its reader thread accounts for what it held.
            pass

    def stop(self, key: str, reason: str, at_once: bool = False) -> None:
        with self.lock:
            for work in self.backlog:
                if work["key"] == key:
                    self.backlog.remove(work)
                    del self.works[key]
                    break
            else:
                for child in self.children:
                    if key in child.inflight:
                        self.stop_reasons[key] = reason
                        if at_once and child.inflight[0] == key:
                            self._kill(child)
                        else:
                            self._send(child, {"stop": key, "reason": reason})
                            self._arm_check(child, key, self.grace(at_once))
                return
        self.done([(key, _execution.failed_outcome(reason))])

    def _arm_check(self, child: _ChildProcess, key: str, grace: float) -> None:
        timer = threading.Timer(grace, self._check_ended, (child, key, grace))
        timer.daemon = True
        timer.start()

    def _check_ended(self, child: _ChildProcess, key: str, grace: float) -> None:
        with self.lock:
            if key not in child.inflight:
                return
            if child.inflight[0] != key:
                # Still waiting behind another task in that child (which skips it when
                # it gets there): the one running is not to be killed for it.
                self._arm_check(child, key, grace)
                return
            log.warning("attempt %s did not end %.1f s after it was stopped: killing its process", key, grace)
            self._kill(child)

    @staticmethod
    def _kill(child: _ChildProcess) -> None:
        try:
            os.killpg(child.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def _read(self, child: _ChildProcess) -> None:
        """The child's pipe is readable: everything it has written so far is handled at
        once (one lock, one report to the worker for many attempts)."""
        stdout = child.process.stdout
        assert stdout is not None
        fd = stdout.fileno()
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            return
        if chunk:
            messages = child.messages.feed(chunk)
            if messages:
                self._handle(child, messages)
            return
        # The pipe closed: the child is ending. Its exit status is waited for off the
        # loop, then what it held is accounted for.
        self.loop.remove_reader(fd)
        waited = self.loop.run_in_executor(None, child.process.wait)
        waited.add_done_callback(lambda status: self._reaped(child, status.result()))

    def _reaped(self, child: _ChildProcess, status: int) -> None:
        # What the child's tasks started lives in its process group: it ends too.
        self._kill(child)
        self._child_ended(child, status)

    def _handle(self, child: _ChildProcess, messages: List[Dict[str, Any]]) -> None:
        ended: List[Tuple[str, Outcome]] = []
        with self.lock:
            for message in messages:
                if "done" in message:
                    key = message["done"]
                    if child.inflight and child.inflight[0] == key:
                        child.inflight.popleft()
                    else:
                        child.inflight.remove(key)
                    self.works.pop(key, None)
                    # The child says itself when it stopped a task (with the reason); a
                    # stop that came as the task ended on its own leaves its end as it was.
                    self.stop_reasons.pop(key, None)
                    ended.append((key, message["outcome"]))
                    took = float(message.get("took", 0.0))
                    self.task_seconds = took if self.task_seconds is None else 0.8 * self.task_seconds + 0.2 * took
                elif "progress" in message:
                    self.progress(message["progress"], message["state"])
                elif "output" in message:
                    self.output(message["output"], message["text"])
                elif "ready" in message:
                    child.ready = True
                elif "exit" in message:
                    log.info("child %d is replaced: %s", child.process.pid, message["exit"])
                    child.leaving = True
            self._dispatch()
        if ended:
            self.done(ended)

    def _child_ended(self, child: _ChildProcess, status: int) -> None:
        ended: List[tuple[str, str]] = []
        with self.lock:
            self.children.remove(child)
            if not child.ready and not self.closing:
                self.broken = (
                    f"a child process of the processes pool exited with status {status} before it was ready "
                    f"(does `{self.app_ref}` import in a fresh interpreter? its error is above)"
                )
                self.closing = True
            if child.inflight and not child.leaving:
                # The first attempt it held was running, or about to: it ended with the
                # child. The others had not started (none had when the child left on
                # its own, between two tasks).
                head = child.inflight.popleft()
                self.works.pop(head, None)
                reason = self.stop_reasons.pop(head, None)
                if reason is None:
                    how = f"signal {-status}" if status < 0 else f"status {status}"
                    reason = f"the worker's child process running it died ({how})"
                    log.warning("child %d died (%s) while running %s", child.process.pid, how, head)
                ended.append((head, reason))
            # What had not started goes back to the front of the line, in order.
            for key in reversed(child.inflight):
                stopped = self.stop_reasons.pop(key, None)
                if stopped is not None:
                    self.works.pop(key, None)
                    ended.append((key, stopped))
                else:
                    self.backlog.appendleft(self.works[key])
            if not self.closing:
                self._spawn()
            self._dispatch()
        if ended:
            self.done([(key, _execution.failed_outcome(reason)) for key, reason in ended])

    def close(self) -> None:
        with self.lock:
            self.closing = True
            children = list(self.children)
        for child in children:
            if child.process.stdin is not None:
                try:
                    child.process.stdin.close()
                except OSError:
                    pass
        deadline = time.monotonic() + self.stop_grace
        for child in children:
            try:
                child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._kill(child)


def make_pool(
    kind: str,
    concurrency: int,
    stop_grace: float,
    app_ref: str,
    max_tasks_per_child: int = 0,
    max_memory_per_child: int = 0,
) -> Pool:
    """The pool named `kind` (`threads`, `processes` or `asyncio`)."""
    if kind == "threads":
        return ThreadPool(concurrency, stop_grace)
    if kind == "asyncio":
        return AsyncioPool(concurrency, stop_grace)
    if kind == "processes":
        return ProcessPool(concurrency, stop_grace, app_ref, max_tasks_per_child, max_memory_per_child)
    raise ValueError(f"--pool takes threads, processes or asyncio, got {kind!r}")

"""The worker's side of the poll protocol (docs/PROTOCOL.md, version 8): it registers,
then keeps one poll waiting at the server, lists what it runs, reports what ended
until a poll that carried the report is answered, acknowledges numbered answers,
obeys kill orders, and stops its attempts itself when the server has been out of reach
for so long that it may run them elsewhere (self-fencing). About once a second it
uploads what running tasks printed and logged since (`POST /v1/workers/{id}/logs`)."""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import random
import signal
import socket
import threading
import time
import uuid
from typing import Any, Deque, Dict, List, Mapping, Optional, Sequence, Tuple

from .._version import __version__
from ..app import Task
from .._server import api_error, tls_context
from ._execution import LOG_CAP_BYTES, failed_outcome
from ._http import Client, Response, TransportError
from ._pools import Pool

log = logging.getLogger("lqsm.worker")

#: The protocol version this worker speaks: 8 (running tasks' output is uploaded as it
#: grows; polls name their registration, so that one sent before registering again is
#: refused, not read for the new registration; a second reporting poll names the
#: attempts whose reports the first carries, `ending`). It sends nothing of version 7
#: (`usage`: a task runs inside the worker's processes, unmeasured). With an older
#: server it falls back: at 7 and 6 the output goes only with the reports; at 5 its
#: polls name no registration; at 4 it keeps one reporting poll out at a time; at 3 a
#: failure can no longer say it is not to be retried (`autoretry_for`), and is retried
#: like any other.
PROTOCOL = 8

#: The first protocol with `POST /v1/workers/{id}/logs`.
LIVE_LOGS_PROTOCOL = 8

#: How often running tasks' new output is uploaded (one call for all of them).
OUTPUT_UPLOAD_EVERY = 1.0

#: Most bytes of output one upload carries; an attempt that printed more since its
#: last upload sends its end.
OUTPUT_UPLOAD_BYTES = 4 * 1024 * 1024

#: What each fallback gives up, for the warning.
FALLBACKS = {
    7: "running tasks' output reaches the server only with their reports",
    6: "running tasks' output reaches the server only with their reports",
    5: "polls name no registration (a poll delayed past registering again is read for the new one)",
    4: "one reporting poll at a time (slower under load)",
    3: "one reporting poll at a time, and every failure retried up to the task's retries, autoretry_for or not",
}

#: How many attempts the worker remembers having started, beyond those it runs, so
#: that an assignment seen twice never runs twice.
REMEMBERED_ATTEMPTS = 100_000

#: A poll waiting at least this long is replaced by one carrying new reports.
CUT_SHORT_AFTER = 0.025

#: Most polls replaced and not yet answered.
MAX_REPLACED_POLLS = 4

#: A poll carrying reports that has waited this long for its answer gets a second one
#: beside it with the reports that came since: the server works on one while the
#: worker handles the other's answer, instead of each waiting for the other.
PIPELINE_AFTER = 0.002

#: How long reports may take to reach the server once everything has stopped.
FINAL_FLUSH = 5.0

#: Most bytes of reports one poll carries (the server takes bodies of 16 MiB by
#: default); the rest go with the next polls.
POLL_REPORT_BYTES = 8 * 1024 * 1024

#: Longest wait between reconnection attempts.
BACKOFF_CAP = 5.0

#: Why a fenced attempt was stopped; it is not reported (to the server it is lost).
FENCED = "stopped by its worker: the server could not be reached for too long"


def fence_after(heartbeat_timeout: float) -> float:
    """How long after the send time of its last answered poll a worker cut off from
    the server stops its attempts: the server declares it lost no earlier than its
    heartbeat timeout after receiving that poll, so the timeout less a margin (a fifth,
    between 1 and 3 s, at most half) leaves time to kill them first."""
    margin = min(max(heartbeat_timeout / 5, 1.0), 3.0, heartbeat_timeout / 2)
    return heartbeat_timeout - margin


def memory_mib() -> int:
    """This machine's memory, MiB (1 GiB when it cannot be read)."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 1024


class Fatal(Exception):
    """The worker cannot go on (a refused token, an incompatible server)."""


class _Attempt:
    __slots__ = (
        "job",
        "token",
        "progress",
        "deadline",
        "stop",
        "timed_out",
        "listed",
        "output",
        "output_start",
        "uploaded",
        "output_refused",
    )

    def __init__(self, job: str, token: int) -> None:
        self.job = job
        self.token = token
        self.progress: Optional[Dict[str, Any]] = None
        self.deadline: Optional[asyncio.TimerHandle] = None
        # Why it is being stopped: a kill order or a fence (then not reported).
        self.stop: Optional[str] = None
        self.timed_out = False
        # Whether it goes in `running`: not once killed or fenced.
        self.listed = True
        # What it printed and logged (UTF-8), its last LOG_CAP_BYTES, starting at byte
        # `output_start` of its output; the server holds it up to `uploaded`.
        self.output = bytearray()
        self.output_start = 0
        self.uploaded = 0
        # The server refused its output (the attempt is no longer current there).
        self.output_refused = False

    def output_end(self) -> int:
        return self.output_start + len(self.output)

    def add_output(self, text: str) -> None:
        self.output += text.encode("utf-8", "replace")
        excess = len(self.output) - LOG_CAP_BYTES
        if excess > 0:
            del self.output[:excess]
            self.output_start += excess

    def output_since(self, offset: int, most: int) -> Tuple[int, str]:
        """The output from byte `offset` on (from the first kept when it is gone), at
        most its last `most` bytes, starting at a whole character: (its offset, text)."""
        at = max(offset, self.output_start, self.output_end() - most)
        data = bytes(self.output[at - self.output_start :])
        cut = 0
        while cut < min(3, len(data)) and data[cut] & 0xC0 == 0x80:
            cut += 1
        return at + cut, data[cut:].decode("utf-8", "replace")


class Agent:
    def __init__(
        self,
        tasks: Mapping[str, "Task[Any]"],
        pool: Pool,
        urls: Sequence[str],
        token: Optional[str],
        name: str,
        cpu: float,
        memory: int,
        labels: Mapping[str, str],
        queues: Sequence[str] = (),
        ca_file: Optional[str] = None,
        poll_wait: float = 2.0,
        request_timeout: float = 30.0,
    ) -> None:
        if not urls:
            raise ValueError("give at least one server URL")
        self.tasks = tasks
        self.pool = pool
        # Per-worker rate limits by task name (starts a second), the attempts waiting
        # for their turn, when each task may next start, and the timers that wake them.
        self.rates = {name: task.options.rate_limit for name, task in tasks.items() if task.options.rate_limit}
        self.held: Dict[str, Deque[Dict[str, Any]]] = {}
        # Attempts whose parents' results are being read before they run.
        self.fetching: Dict[str, Dict[str, Any]] = {}
        self.next_start: Dict[str, float] = {}
        self.release_timers: Dict[str, asyncio.TimerHandle] = {}
        self.urls = [u.rstrip("/") for u in urls]
        self.url_index = 0
        self.protocol = PROTOCOL
        self.id = str(uuid.uuid4())
        self.name = name
        self.hostname = f"{name}@{socket.gethostname()}"
        self.capacity = {"cpu": cpu, "memory_mib": memory}
        self.labels = dict(labels)
        self.queues = list(queues)
        self.poll_wait = poll_wait
        headers = [("User-Agent", f"lqsm-python-worker/{__version__}")]
        if token is not None:
            headers.append(("Authorization", f"Bearer {token}"))
        self.client = Client(headers, timeout=request_timeout, tls=tls_context(ca_file))
        self.request_timeout = request_timeout
        self.attempts: Dict[str, _Attempt] = {}
        self.reports: Dict[str, Dict[str, Any]] = {}
        # The encoded size of the large reports (a result or output over 64 KiB).
        self.report_sizes: Dict[str, int] = {}
        self.seen: "collections.OrderedDict[str, None]" = collections.OrderedDict()
        # Reports on their way in a poll not yet answered: not carried again meanwhile.
        self.carrying: "set[str]" = set()
        # Registrations made so far: a poll sent under an earlier one brings an answer
        # numbered in the old count, which must not move `ack` nor start anything.
        self.epoch = 0
        # The number the server gave the latest registration, which polls name
        # (protocol 6); None from an older server.
        self.registration: Optional[int] = None
        # The registration under way, which every poll told to register again awaits.
        self.registering: "Optional[asyncio.Task[None]]" = None
        # Polls sent and not yet answered, by number; and the answers' numbers (`seq`)
        # processed but not yet acknowledged, with the polls that were out when each
        # came: one of those may still bring a lower number, and acknowledging the
        # higher one first would make the server count that answer's attempts as lost.
        self.polls_sent = 0
        self.outstanding: "set[int]" = set()
        self.unconfirmed: List[Tuple[int, "frozenset[int]"]] = []
        self.ack = 0
        self.heartbeat_timeout: Optional[float] = None
        self.last_contact: Optional[float] = None
        self.failures = 0
        self.stopping = False
        self.drained = False
        self.draining: Optional[asyncio.Task[None]] = None
        self.killing = False
        # Made in run(), on the loop it belongs to (Python 3.9 binds it at creation).
        self.wake: asyncio.Event
        self.replaced: "set[asyncio.Task[None]]" = set()
        #: Counts for the summary at exit.
        self.summary = collections.Counter[str]()

    # -- HTTP ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        return self.urls[self.url_index]

    def _next_url(self) -> None:
        self.url_index = (self.url_index + 1) % len(self.urls)

    async def _backoff(self) -> None:
        self.failures += 1
        delay = min(BACKOFF_CAP, 0.05 * 2 ** min(self.failures, 10))
        await asyncio.sleep(delay * random.uniform(0.5, 1.0))

    def _check_fatal(self, response: Response) -> None:
        error = api_error(response)
        if response.status_code in (401, 403) or error.code == "incompatible_protocol" or (
            response.status_code == 400 and error.code != "register_again"
        ):
            raise Fatal(f"the server at {self.url} refused this worker: {error}")

    # -- registration -----------------------------------------------------------------

    async def register(self) -> None:
        offered = self.protocol
        body: Dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "capacity": self.capacity,
            "labels": self.labels,
            "serves_commands": False,
            "handlers": sorted(self.tasks),
            "protocol": offered,
        }
        if self.queues:
            body["queues"] = self.queues
        while True:
            try:
                response = await self.client.post(f"{self.url}/v1/workers", body)
            except TransportError as e:
                log.warning("cannot reach %s to register (%s); trying again", self.url, e)
                self._next_url()
                await self._backoff()
                continue
            if response.is_success:
                view = response.json()
                timeout_ms = view.get("heartbeat_timeout_ms")
                self.heartbeat_timeout = timeout_ms / 1000 if timeout_ms else None
                if self.heartbeat_timeout is None:
                    log.warning(
                        "the server does not tell its heartbeat timeout: this worker cannot stop its "
                        "attempts when cut off from it, so a network partition may run a job twice"
                    )
                self.ack = 0
                self.unconfirmed.clear()
                self.registration = view.get("registration")
                self.epoch += 1
                # The backoff restarts with the first poll answered, not here: a
                # registration that refused polls keep undoing must slow down.
                self.last_contact = time.monotonic()
                log.info("registered at %s as %s (%s)", self.url, self.id, self.hostname)
                return
            if offered > 3 and api_error(response).code == "incompatible_protocol":
                # From what this request offered: concurrent refusals step down once each.
                offered -= 1
                self.protocol = min(self.protocol, offered)
                log.warning(
                    "the server speaks an older protocol (%s): this worker falls back to version %d: %s",
                    api_error(response).message,
                    self.protocol,
                    FALLBACKS[self.protocol],
                )
                body["protocol"] = offered
                continue
            self._check_fatal(response)
            log.warning("registration answered %d; trying again", response.status_code)
            await self._backoff()

    # -- the loop -----------------------------------------------------------------------

    def long_poll_wait(self) -> float:
        """The configured wait, at most a quarter of the fence time, so that a healthy
        worker is answered well before it would fence."""
        if self.heartbeat_timeout is None:
            return self.poll_wait
        return min(self.poll_wait, fence_after(self.heartbeat_timeout) / 4)

    def fence_deadline(self) -> Optional[float]:
        if self.heartbeat_timeout is None or self.last_contact is None:
            return None
        if not any(a.listed for a in self.attempts.values()):
            return None
        return self.last_contact + fence_after(self.heartbeat_timeout)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self.wake = asyncio.Event()

        # The pool calls these from its own threads; the loop's state is the loop's.
        # Ends that come while the loop has not yet taken the earlier ones join them,
        # so that a busy pool wakes the loop once for many.
        ended_lock = threading.Lock()
        ended_pending: List[Tuple[str, Dict[str, Any]]] = []

        def take_ended() -> None:
            with ended_lock:
                batch = ended_pending[:]
                ended_pending.clear()
            self._ended_many(batch)

        loop_thread = threading.get_ident()

        def ended(attempts: List[Tuple[str, Dict[str, Any]]]) -> None:
            if threading.get_ident() == loop_thread:
                # A pool that works on the loop itself (the processes pool reads its
                # children there).
                self._ended_many(attempts)
                return
            with ended_lock:
                first = not ended_pending
                ended_pending.extend(attempts)
            if first:
                loop.call_soon_threadsafe(take_ended)

        def progressed(key: str, state: Dict[str, Any]) -> None:
            if threading.get_ident() == loop_thread:
                self._progressed(key, state)
            else:
                loop.call_soon_threadsafe(self._progressed, key, state)

        # Output comes a line at a time from the pool's threads: gathered here, taken
        # by the loop once per wake-up.
        output_lock = threading.Lock()
        output_pending: List[Tuple[str, str]] = []

        def take_output() -> None:
            with output_lock:
                batch = output_pending[:]
                output_pending.clear()
            for key, text in batch:
                self._outputted(key, text)

        def outputted(key: str, text: str) -> None:
            if threading.get_ident() == loop_thread:
                self._outputted(key, text)
                return
            with output_lock:
                first = not output_pending
                output_pending.append((key, text))
            if first:
                loop.call_soon_threadsafe(take_output)

        self.pool.output = outputted
        self.pool.start(self.tasks, self.hostname, ended, progressed)
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_signal)
        try:
            await self.register()
            uploads = asyncio.create_task(self._upload_output())
            await self._serve()
            uploads.cancel()
        finally:
            for task in [*asyncio.all_tasks()]:
                if task is not asyncio.current_task():
                    task.cancel()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
            self.pool.close()
            await self.client.aclose()

    async def _serve(self) -> None:
        poll: Optional[asyncio.Task[None]] = None
        poll_sent = 0.0
        poll_waits = False
        # A second poll with reports, beside the current one while it is answered.
        beside: Optional[asyncio.Task[None]] = None
        beside_sent = 0.0
        while True:
            if self.pool.broken:
                raise Fatal(self.pool.broken)
            if self.stopping and not self.drained:
                # In the background: a slow or unreachable server must not hold up the
                # polls (and the fence) behind it.
                self.drained = True
                self.draining = asyncio.create_task(self._drain())
            # A second signal does not wait for the server to take the drain.
            drained = self.killing or (self.draining is not None and self.draining.done())
            if beside is not None and beside.done():
                beside.result()
                beside = None
            if self.stopping and drained and not self.attempts and not self.reports and (poll is None or poll.done()):
                # The server sends nothing more, and the last poll's answer is in: an
                # assignment made before the drain landed would have come with it.
                return
            if poll is not None and poll.done() and beside is not None:
                # The poll beside is the current one now.
                poll.result()
                poll, poll_sent, poll_waits, beside = beside, beside_sent, False, None
            if poll is None or poll.done():
                if poll is not None:
                    poll.result()
                # Reports that came while the last poll was on its way go together:
                # under load a poll carries many.
                wait = 0.0 if self._uncarried() or self.stopping and not self.attempts else self.long_poll_wait()
                poll = asyncio.create_task(self._poll(wait))
                poll_sent, poll_waits = time.monotonic(), wait > 0
            elif not poll_waits and beside is None and self._may_pipeline():
                if time.monotonic() - poll_sent >= PIPELINE_AFTER:
                    beside = asyncio.create_task(self._poll(0.0))
                    beside_sent = time.monotonic()
            waiter = asyncio.create_task(self.wake.wait())
            timeout: Optional[float] = None
            fence_at = self.fence_deadline()
            if fence_at is not None:
                timeout = max(0.0, fence_at - time.monotonic())
            if poll_waits and (self.wake.is_set() or self._uncarried()):
                cut_at = poll_sent + CUT_SHORT_AFTER - time.monotonic()
                timeout = cut_at if timeout is None else min(timeout, cut_at)
                timeout = max(0.0, timeout)
            elif not poll_waits and beside is None and self._may_pipeline():
                beside_at = max(0.0, poll_sent + PIPELINE_AFTER - time.monotonic())
                timeout = beside_at if timeout is None else min(timeout, beside_at)
            waiting = {poll, waiter} if beside is None else {poll, waiter, beside}
            await asyncio.wait(waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            self.wake.clear()
            fence_at = self.fence_deadline()
            if fence_at is not None and time.monotonic() >= fence_at:
                self._fence()
            if (
                not poll.done()
                and self._uncarried()
                and len(self.replaced) < MAX_REPLACED_POLLS
                # Only a long-poll waiting for work: a poll that carries reports is
                # answered at once anyway, and replacing it would only delay the
                # assignments it brings.
                and poll_waits
                and time.monotonic() - poll_sent >= CUT_SHORT_AFTER
            ) or (
                # Drained with nothing left: end the waiting long-poll now.
                not poll.done() and poll_waits and self.stopping and drained and not self.attempts
            ):
                # Report now rather than when the waiting poll ends: the server answers
                # the replaced one at once (refusals only); the new one takes its place.
                self.replaced.add(poll)
                poll.add_done_callback(self.replaced.discard)
                wait = 0.0 if self.stopping else self.long_poll_wait()
                poll = asyncio.create_task(self._poll(wait))
                poll_sent, poll_waits = time.monotonic(), wait > 0

    def _may_pipeline(self) -> bool:
        """Whether a second reporting poll may go out beside the current one: the
        server takes `ending` (protocol 5), no registration is under way, and some
        report is on no poll's way yet."""
        registering = self.registering is not None and not self.registering.done()
        return self.protocol >= 5 and not registering and self._uncarried()

    def _uncarried(self) -> bool:
        """Whether some report is on no poll's way yet."""
        return len(self.reports) > len(self.carrying)

    def _acknowledged(self) -> int:
        """The `ack` a poll sent now carries: the highest answer number processed such
        that no poll that could bring a lower one is still out."""
        waiting = []
        for seq, out_then in self.unconfirmed:
            if out_then & self.outstanding:
                waiting.append((seq, out_then))
            else:
                self.ack = max(self.ack, seq)
        self.unconfirmed = waiting
        return self.ack

    async def _poll(self, wait: float) -> None:
        carried: Dict[str, Dict[str, Any]] = {}
        size = 0
        for key, report in self.reports.items():
            if key in self.carrying and self.protocol >= 5:
                # On its way in another poll, and named in `ending` here. Below
                # version 5 it is carried again, in case this poll arrives first (the
                # server refuses the second copy).
                continue
            size += self.report_sizes.get(key, 0)
            if carried and size > POLL_REPORT_BYTES:
                break
            carried[key] = report
        running: List[Dict[str, Any]] = []
        for key, attempt in self.attempts.items():
            if attempt.listed:
                entry: Dict[str, Any] = {"job": attempt.job, "token": attempt.token}
                if attempt.progress is not None:
                    entry["progress"] = attempt.progress
                running.append(entry)
        body = {
            "running": running,
            "finished": list(carried.values()),
            "ack": self._acknowledged(),
            "wait_ms": int(wait * 1000),
        }
        if self.protocol >= 6 and self.registration is not None:
            body["registration"] = self.registration
        if self.protocol >= 5 and len(carried) < len(self.reports):
            # Ended attempts whose reports this poll does not carry: on their way in
            # another poll (which this one may overtake), or left for the next one by
            # the size limit. Neither running nor lost.
            body["ending"] = [
                {"job": report["job"], "token": report["token"]}
                for key, report in self.reports.items()
                if key not in carried
            ]
        sent_at = time.monotonic()
        self.summary["polls"] += 1
        self.polls_sent += 1
        number = self.polls_sent
        self.outstanding.add(number)
        self.carrying.update(carried)
        try:
            await self._polled(number, body, carried, wait, sent_at, self.epoch)
        finally:
            self.outstanding.discard(number)
            self.carrying.difference_update(carried)

    async def _polled(
        self,
        number: int,
        body: Dict[str, Any],
        carried: Dict[str, Dict[str, Any]],
        wait: float,
        sent_at: float,
        epoch: int,
    ) -> None:
        url = self.url
        try:
            response = await self.client.post(
                f"{url}/v1/workers/{self.id}/poll", body, timeout=self.request_timeout + wait
            )
        except TransportError as e:
            log.warning("cannot reach %s (%s: %s); attempts carry on", url, type(e).__name__, e)
            # Two polls failing together move on once, not back and forth.
            if self.url == url:
                self._next_url()
            await self._backoff()
            return
        if response.status_code == 409 and api_error(response).code == "register_again":
            if epoch == self.epoch:
                if self.registering is None or self.registering.done():
                    log.info(
                        "the server does not know this worker (it restarted, or took it for lost): registering again"
                    )
                    self.registering = asyncio.create_task(self.register())
                await asyncio.shield(self.registering)
            return
        if response.status_code == 409 and api_error(response).code == "stale_registration":
            # Nothing was taken from it, and its reports, still held, go in a later poll.
            if body.get("registration") is not None and body.get("registration") == self.registration:
                # It named the number this worker holds: the server has a later
                # registration whose answer never came back (one retried while the first
                # was on its way). Every poll would be refused, so register again, after
                # a pause should that keep happening.
                log.info("the server holds a later registration of this worker than it was told: registering again")
                await self._backoff()
                if epoch != self.epoch:
                    return  # another poll's refusal registered it again meanwhile
                if self.registering is None or self.registering.done():
                    self.registering = asyncio.create_task(self.register())
                await asyncio.shield(self.registering)
                return
            log.debug("a poll from before the latest registration was refused")
            return
        if epoch != self.epoch:
            # Answered under an earlier registration: its numbering is over, and what it
            # assigned was counted lost when this worker registered again without it.
            log.debug("an answer from before registering again is dropped")
            return
        if not response.is_success:
            error = api_error(response)
            if response.status_code == 400 and error.field == "registration" and self.protocol >= 6:
                # A server of an older version took over (a rolling upgrade, a
                # rollback): speak 5 from now on, without the registration's number.
                log.warning("the server at %s does not take `registration` (%s): speaking protocol 5", url, error)
                self.protocol = 5
                return
            if response.status_code == 400 and error.field == "ending" and self.protocol >= 5:
                # The same, from a server older still: speak 4 from now on, one
                # reporting poll at a time.
                log.warning("the server at %s does not take `ending` (%s): speaking protocol 4", url, error)
                self.protocol = min(self.protocol, 4)
                return
            self._check_fatal(response)
            log.warning("poll answered %d (%s); trying again", response.status_code, error)
            await self._backoff()
            return
        self.failures = 0
        self.last_contact = max(self.last_contact or sent_at, sent_at)
        for key, report in carried.items():
            if self.reports.get(key) is report:
                del self.reports[key]
                self.report_sizes.pop(key, None)
        answer = response.json()
        for refused in answer.get("refused", []):
            log.debug("report of %s (token %s) refused: %s", refused["job"], refused["token"], refused["reason"])
        for order in answer.get("kill", []):
            self._kill(order)
        # Every assignment is taken on before anything is awaited, so that `ack` below
        # covers only attempts this worker holds.
        works = []
        for assignment in answer.get("assignments", []):
            work = self._start(assignment)
            if work is None:
                continue
            if assignment.get("inputs_path") and work["inputs"] is None:
                # Its parents' results are read first, off the poll loop.
                self.fetching[work["key"]] = work
                asyncio.create_task(self._with_inputs(work, assignment["inputs_path"]))
            else:
                works.append(work)
        if works:
            self._submit(works)
        seq = answer.get("seq", 0)
        if seq > 0:
            self.unconfirmed.append((seq, frozenset(self.outstanding - {number})))

    # -- attempts ----------------------------------------------------------------------

    def _start(self, assignment: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        """Takes on an assignment: what the pool is to run, None if there is nothing
        to run (seen before, or ended already)."""
        job, token = assignment["job"], assignment["token"]
        key = f"{job}:{token}"
        if key in self.seen or key in self.attempts:
            return None
        self.seen[key] = None
        while len(self.seen) > REMEMBERED_ATTEMPTS + len(self.attempts):
            self.seen.popitem(last=False)
        attempt = _Attempt(job, token)
        self.attempts[key] = attempt
        self.summary["started"] += 1
        kind = assignment["kind"]
        if kind.get("type") != "function":
            self._ended(key, failed_outcome("this Python worker runs no command jobs"))
            return None
        timeout_ms = assignment.get("timeout_ms")
        if timeout_ms is not None:
            attempt.deadline = asyncio.get_running_loop().call_later(timeout_ms / 1000, self._time_out, key)
        soft_ms = assignment.get("soft_timeout_ms")
        return {
            "key": key,
            "job": job,
            "attempt": assignment["attempt"],
            "queue": assignment["queue"],
            "handler": kind["handler"],
            "args": kind.get("args"),
            "inputs": assignment.get("inputs"),
            "soft_deadline": time.monotonic() + soft_ms / 1000 if soft_ms is not None else None,
        }

    def _submit(self, works: List[Dict[str, Any]]) -> None:
        """Hands attempts to the pool; those of a task with a `rate_limit` wait here
        for their turn (Celery's per-worker rate limit: starts evenly spaced)."""
        ready: List[Dict[str, Any]] = []
        limited = set()
        for work in works:
            if work["handler"] in self.rates:
                self.held.setdefault(work["handler"], collections.deque()).append(work)
                limited.add(work["handler"])
            else:
                ready.append(work)
        if ready:
            self.pool.submit(ready)
        for handler in limited:
            self._release_held(handler)

    def _release_held(self, handler: str) -> None:
        self.release_timers.pop(handler, None)
        held = self.held.get(handler)
        if not held:
            return
        interval = 1.0 / self.rates[handler]
        now = time.monotonic()
        released: List[Dict[str, Any]] = []
        while held and self.next_start.get(handler, 0.0) <= now:
            released.append(held.popleft())
            self.next_start[handler] = max(self.next_start.get(handler, 0.0), now) + interval
        if released:
            self.pool.submit(released)
        if held:
            delay = max(0.0, self.next_start[handler] - now)
            self.release_timers[handler] = asyncio.get_running_loop().call_later(
                delay, self._release_held, handler
            )

    def _stop(self, key: str, reason: str, at_once: bool = False) -> None:
        """Ends an attempt early: one still waiting for its rate limit ends here, one in
        the pool is stopped there (`at_once`: without the grace a task gets to end)."""
        if self.fetching.pop(key, None) is not None:
            self._ended(key, failed_outcome(reason))
            return
        for held in self.held.values():
            for work in held:
                if work["key"] == key:
                    held.remove(work)
                    self._ended(key, failed_outcome(reason))
                    return
        self.pool.stop(key, reason, at_once)

    async def _with_inputs(self, work: Dict[str, Any], path: str) -> None:
        inputs = await self._fetch_inputs(path)
        if self.fetching.pop(work["key"], None) is None:
            return  # stopped meanwhile
        if inputs is None:
            self._ended(work["key"], failed_outcome("its parents' results could not be read from the server"))
            return
        work["inputs"] = inputs
        self._submit([work])

    async def _fetch_inputs(self, path: str) -> Optional[List[Any]]:
        for _ in range(5):
            try:
                response = await self.client.get(f"{self.url}{path}")
            except TransportError:
                await self._backoff()
                continue
            if response.is_success:
                inputs = response.json().get("inputs")
                return inputs if isinstance(inputs, list) else None
            if response.status_code < 500:
                log.warning("reading %s answered %d: %s", path, response.status_code, api_error(response))
                return None
            await self._backoff()
        return None

    def _time_out(self, key: str) -> None:
        attempt = self.attempts.get(key)
        if attempt is not None and attempt.stop is None:
            attempt.timed_out = True
            self._stop(key, "timed out")

    def _kill(self, order: Dict[str, Any]) -> None:
        key = f"{order['job']}:{order['token']}"
        attempt = self.attempts.get(key)
        if attempt is None or attempt.stop is not None:
            return
        attempt.stop = f"stopped by the server: {order['reason']}"
        attempt.listed = False
        self.summary[f"killed_{order['reason']}"] += 1
        self._stop(key, attempt.stop)

    def _fence(self) -> None:
        silent = time.monotonic() - (self.last_contact or 0.0)
        stopped = 0
        # A copy: stopping an attempt that waits may end it at once.
        for key, attempt in list(self.attempts.items()):
            if attempt.listed:
                attempt.listed = False
                attempt.stop = FENCED
                stopped += 1
                # No grace: the server may run it elsewhere a margin from now.
                self._stop(key, FENCED, at_once=True)
        if stopped:
            self.summary["fenced"] += stopped
            log.error(
                "no answer from the server for %.1f s: stopped %d attempts before it may run them elsewhere",
                silent,
                stopped,
            )

    def _ended_many(self, attempts: List[Tuple[str, Dict[str, Any]]]) -> None:
        for key, outcome in attempts:
            self._ended(key, outcome)

    def _ended(self, key: str, outcome: Dict[str, Any]) -> None:
        attempt = self.attempts.pop(key, None)
        if attempt is None:
            return
        if attempt.deadline is not None:
            attempt.deadline.cancel()
        if attempt.stop is not None:
            # Killed by the server (which has ended it already) or fenced (the server
            # will find it missing and run it again): nothing to report.
            return
        result = {"type": "timed_out"} if attempt.timed_out else outcome["result"]
        if self.protocol < 4 and "retry" in result and result["type"] == "failed":
            result = {k: v for k, v in result.items() if k != "retry"}
        self.summary[result["type"]] += 1
        report = {
            "job": attempt.job,
            "token": attempt.token,
            "result": result,
            "logs": outcome.get("logs") or None,
            "started_at_ms": outcome.get("started_at_ms"),
        }
        # Large reports are weighed, so that one poll never carries more than its share.
        logs = outcome.get("logs") or ""
        size = len(logs) + len(str(result.get("message", ""))) + int(outcome.get("result_bytes", 0))
        if size > 65536:
            self.report_sizes[key] = size
        self.reports[key] = report
        self.wake.set()

    def _outputted(self, key: str, text: str) -> None:
        attempt = self.attempts.get(key)
        if attempt is not None:
            attempt.add_output(text)

    async def _upload_output(self) -> None:
        """Uploads what running tasks printed and logged since their last upload, about
        once a second, in one call for all of them (protocol 8). An upload that fails is
        not retried as such: the next starts where the server's last answer left each
        attempt, so nothing is skipped or doubled, and the reports carry it all anyway."""
        while True:
            await asyncio.sleep(OUTPUT_UPLOAD_EVERY)
            if self.protocol < LIVE_LOGS_PROTOCOL:
                continue
            budget = OUTPUT_UPLOAD_BYTES
            chunks: List[Dict[str, Any]] = []
            sent: List[Tuple[str, int]] = []
            for key, attempt in self.attempts.items():
                if attempt.output_refused or attempt.stop is not None or budget <= 0:
                    continue
                if attempt.output_end() <= attempt.uploaded:
                    continue
                offset, text = attempt.output_since(attempt.uploaded, budget)
                budget -= len(text)
                sent.append((key, attempt.output_end()))
                chunks.append({"job": attempt.job, "token": attempt.token, "offset": offset, "text": text})
            if not chunks:
                continue
            try:
                response = await self.client.post(f"{self.url}/v1/workers/{self.id}/logs", {"chunks": chunks})
            except TransportError as e:
                log.debug("uploading running tasks' output failed (%s)", e)
                continue
            if not response.is_success:
                log.debug("uploading running tasks' output was answered %d", response.status_code)
                continue
            try:
                refused = {(r["job"], r["token"]) for r in response.json().get("refused", [])}
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                log.debug("the answer to an output upload is not understood (%s)", e)
                continue
            for key, end in sent:
                still = self.attempts.get(key)
                if still is None:
                    continue
                if (still.job, still.token) in refused:
                    still.output_refused = True
                else:
                    still.uploaded = max(still.uploaded, end)

    def _progressed(self, key: str, state: Dict[str, Any]) -> None:
        # The state was checked where it was made (`context.progress_of`).
        attempt = self.attempts.get(key)
        if attempt is not None:
            attempt.progress = state

    # -- shutdown ------------------------------------------------------------------------

    def _on_signal(self) -> None:
        if not self.stopping:
            self.stopping = True
            log.warning(
                "stopping: no new tasks; waiting for %d running ones (a second signal stops them now)",
                len(self.attempts),
            )
        elif not self.killing:
            self.killing = True
            log.warning("stopping now: %d running tasks are stopped and reported failed", len(self.attempts))
            for key, attempt in list(self.attempts.items()):
                if attempt.stop is None:
                    self._stop(key, "its worker was shut down")
        self.wake.set()

    async def _drain(self) -> None:
        """Tells the server to send no more work; tried again until it takes it (new
        assignments that arrive meanwhile still run: they are this worker's)."""
        while True:
            try:
                response = await self.client.post(f"{self.url}/v1/workers/{self.id}/drain", timeout=5.0)
            except TransportError as e:
                log.warning("could not tell the server this worker drains (%s); trying again", e)
                await self._backoff()
                continue
            if response.is_success or response.status_code < 500 and response.status_code != 429:
                if not response.is_success:
                    log.warning("the server did not take the drain (%s)", api_error(response))
                return
            await self._backoff()


def default_name() -> str:
    return f"lqsm-py-{os.getpid()}"

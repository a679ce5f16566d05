"""`App` and its tasks: Celery's shape over LQSM's HTTP API.

A task call becomes a function job: its handler is the task's name, its arguments the
JSON envelope `{"args": [...], "kwargs": {...}}` (see `arguments.encode_call`).
"""

from __future__ import annotations

import datetime as dt
import functools
import time
from urllib.parse import quote
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Dict,
    Generic,
    Iterable,
    Mapping,
    NoReturn,
    Optional,
    Sequence,
    Tuple,
    TypeVar,
    Union,
    overload,
)

from ._batcher import Batcher, new_job_id
from ._server import ServerConnection
from .arguments import encode_call, rate_per_second, resources_spec, round_trip, seconds_to_ms, str_list, str_map
from . import context
from .errors import ApiError, Retry, TaskError, UnsupportedOption, format_failure
from .result import AsyncResult, EagerResult

if TYPE_CHECKING:
    from .canvas import Signature

R = TypeVar("R")

#: Celery task options LQSM does not offer (yet), with what to do instead.
_UNSUPPORTED_TASK_OPTIONS: Dict[str, str] = {
    "max_retries": "use retries= (attempts after the first)",
    "time_limit": "use timeout= (seconds an attempt may run)",
    "soft_time_limit": "use soft_timeout= (seconds before the attempt is warned)",
    "default_retry_delay": "use retry_backoff= (seconds before the first retry)",
    "acks_late": "LQSM tracks attempts itself: a lost worker's attempt is retried, see docs/RELIABILITY.md",
    "serializer": "arguments always travel as JSON",
    "ignore_result": "results are always kept for the server's retention",
    "expires": "give expires= to apply_async()",
}

#: Celery `apply_async` options LQSM does not offer (yet), with what to do instead.
_UNSUPPORTED_SUBMIT_OPTIONS: Dict[str, str] = {
    "task_id": "the server assigns job ids; use idempotency_key= to make a resubmission the same job",
    "link": "build a chain instead: task.s(...) | callback.s() (see lqsm.canvas)",
    "link_error": "a node with run_when all_finished runs after a failure; not offered from Python yet",
    "serializer": "arguments always travel as JSON",
    "routing_key": "route with queue=",
    "exchange": "route with queue=",
    "retry": "submission is one HTTP request; a refused one raises ApiError",
    "headers": "LQSM jobs carry tags= and keys= instead",
    "time_limit": "set timeout= on the task",
    "soft_time_limit": "set soft_timeout= on the task",
}


def _refuse(kind: str, options: Mapping[str, Any], known: Mapping[str, str], supported: str) -> None:
    if not options:
        return
    name = sorted(options)[0]
    hint = known.get(name, f"the options are: {supported}")
    raise UnsupportedOption(f"{kind} option `{name}` is not supported: {hint}")


class App:
    """A connection to an LQSM server and the tasks declared on it.

    `url` is the server's (`lqsm standalone` listens on `http://127.0.0.1:7420`), or
    several servers' (a list, or comma-separated): a request that cannot connect to one
    goes to the next;
    `token` a bearer token when the server requires one. With `eager=True` tasks run
    in this process at `.delay()` and no server is contacted (Celery's
    `task_always_eager`), for unit tests. `request_timeout` bounds each HTTP request
    (seconds), beyond the time `get()` asks the server to wait. `ca_file`: a PEM file of
    CA certificates trusted for `https://` servers besides the system's.

    Submission: by default `.delay()` returns at once, with the job's id chosen here;
    jobs are sent in batches of up to `max_batch` after at most `linger` seconds (a loop
    of `.delay()` makes few requests), and `flush()` (called at exit too) waits for them
    and raises what the server refused. With `confirm=True` (here, or per call to
    `apply_async`) `.delay()` returns only once the job is durable, and raises a refusal
    at once: one request per job. A result's first use waits for its job to be sent.

    Exceptions: `AsyncResult.get()` of a task that raised raises the same exception type
    when that type is already imported in this process, or is one of `exception_types`;
    nothing is ever imported because a result names it. Otherwise it raises `TaskError`
    with the type's name, the message and the remote traceback.
    """

    def __init__(
        self,
        url: Union[str, Sequence[str]] = "http://127.0.0.1:7420",
        token: Optional[str] = None,
        *,
        eager: bool = False,
        request_timeout: float = 30.0,
        confirm: bool = False,
        linger: float = 0.005,
        max_batch: int = 1000,
        exception_types: Iterable[type] = (),
        ca_file: Optional[str] = None,
    ) -> None:
        if not 1 <= max_batch <= 10_000:
            raise ValueError(f"max_batch takes 1 to 10,000 jobs (the server's batch limit), got {max_batch!r}")
        if linger < 0:
            raise ValueError(f"linger takes a non-negative number of seconds, got {linger!r}")
        self.eager = eager
        self.confirm = confirm
        self._server = ServerConnection(url, token, request_timeout, ca_file)
        for kind in exception_types:
            if not (isinstance(kind, type) and issubclass(kind, Exception)):
                raise TypeError(f"exception_types takes exception classes, got {kind!r}")
            self._server.exception_types[f"{kind.__module__}.{kind.__qualname__}"] = kind
        self._batcher = Batcher(self._server, linger, max_batch)
        #: The tasks declared on this app, by name: what a worker of it serves.
        self.tasks: Dict[str, "Task[Any]"] = {}

    @property
    def url(self) -> str:
        """The server's URL."""
        return self._server.url

    def server_version(self) -> str:
        """The server's release. The first request of an app checks it (and that the
        server serves the endpoints the SDK needs), raising `IncompatibleServer`."""
        return self._server.server_version()

    def flush(self) -> None:
        """Waits until every job submitted without confirmation was sent; raises
        `SubmissionError` naming each one the server did not take."""
        self._batcher.flush()

    def close(self) -> None:
        """Sends what is still queued, then closes the app's HTTP connections."""
        try:
            self._batcher.close()
        finally:
            self._server.close()

    def __enter__(self) -> "App":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def submit_command(
        self,
        argv: Sequence[str],
        *,
        queue: str = "root.default",
        env: Optional[Mapping[str, str]] = None,
        secret_env: Optional[Mapping[str, str]] = None,
        cwd: Optional[str] = None,
        timeout: Optional[float] = None,
        retries: Optional[int] = None,
        resources: Optional[Mapping[str, Any]] = None,
        priority: Optional[int] = None,
        tags: Optional[Sequence[str]] = None,
        countdown: Optional[float] = None,
        idempotency_key: Optional[str] = None,
    ) -> AsyncResult:
        """Submits a command job: `argv` runs on a worker that runs commands (`lqsm
        worker`), not a Python function; its result is `{"exit_code": ...}` and its
        output the job's logs. `secret_env` holds variables the command gets like
        `env`'s, shown as `***` in every view of the job and masked in its logs (stored
        in clear by the server). Always confirmed: returns once the job is durable."""
        if isinstance(argv, str) or not argv or not all(isinstance(a, str) for a in argv):
            raise TypeError(f"argv takes a non-empty list of str such as ['echo', 'hi'], got {argv!r}")
        kind: Dict[str, Any] = {"type": "command", "argv": list(argv)}
        variables = str_map("env", env) if env is not None else {}
        secrets = str_map("secret_env", secret_env) if secret_env is not None else {}
        both = sorted(set(variables) & set(secrets))
        if both:
            raise ValueError(f"{both[0]!r} is given both in env and in secret_env")
        if variables or secrets:
            kind["env"] = {**variables, **secrets}
        if cwd is not None:
            kind["cwd"] = cwd
        options: Dict[str, Any] = {"queue": queue}
        if timeout is not None:
            options["timeout"] = timeout
        if retries is not None:
            options["retries"] = retries
        if resources is not None:
            options["resources"] = resources
        if priority is not None:
            options["priority"] = priority
        if tags is not None:
            options["tags"] = tags
        job: Dict[str, Any] = {"queue": queue, "kind": kind}
        if secrets:
            job["secret_env"] = sorted(secrets)
        job.update(TaskOptions.from_kwargs({**options, "name": "command"}, None).job_fields)
        if countdown is not None:
            job["delay_ms"] = seconds_to_ms("countdown", countdown)
        if idempotency_key is not None:
            job["idempotency_key"] = idempotency_key
        if self.eager:
            raise UnsupportedOption("an eager app runs Python tasks only: a command needs a worker")
        submitted = self._server.request("POST", "/v1/jobs", json=job)
        return AsyncResult(str(submitted["id"]), self._server)

    def schedule(
        self,
        name: str,
        task: "Union[Task[Any], Signature]",
        *,
        cron: Optional[str] = None,
        every: Optional[float] = None,
        timezone: Optional[str] = None,
        misfire: Optional[str] = None,
        overlap: Optional[str] = None,
    ) -> Dict[str, Any]:
        """Runs `task` periodically, carried out by the server's schedules (Celery's beat
        table, with no beat process): `app.schedule("nightly-report", report.s("eu"),
        cron="0 3 * * *", timezone="Europe/Paris")` or `every=30` (seconds, at least 1).

        `task` is a signature (`task.s(args)`) or a task taking no arguments. `misfire`
        (`skip`, `run_once`, `catch_up`) says what to do with fires missed while no server
        ran; `overlap` (`allow`, `skip`) whether a fire may start while the previous one's
        job runs. Declaring a schedule that exists updates it, so a table of
        `app.schedule(...)` calls run at each deploy keeps the server's in step. Answers
        the server's `ScheduleView`; every job it makes is tagged `schedule:NAME`.
        """
        from .canvas import Signature

        if (cron is None) == (every is None):
            raise ValueError("give cron= (a cron expression) or every= (seconds), one of them")
        signature = task if isinstance(task, Signature) else task.s()
        job = signature.task._job(signature.envelope, None, None, None, None, None, None)
        fields: Dict[str, Any] = {"job": job}
        if cron is not None:
            if not isinstance(cron, str) or not cron.strip():
                raise TypeError(f"cron takes a cron expression such as '*/5 * * * *', got {cron!r}")
            fields["cron"] = cron
        if every is not None:
            fields["every_ms"] = seconds_to_ms("every", every)
        for option, value in (("timezone", timezone), ("misfire", misfire), ("overlap", overlap)):
            if value is not None:
                fields[option] = value
        if self.eager:
            return {"name": name, **fields}
        try:
            view: Dict[str, Any] = self._server.request("POST", "/v1/schedules", json={"name": name, **fields})
        except ApiError as e:
            if e.code != "conflict":
                raise
            # A declaration is whole: what it leaves out goes back to the defaults.
            fields.setdefault("misfire", "run_once")
            fields.setdefault("overlap", "allow")
            view = self._server.request("PATCH", f"/v1/schedules/{quote(name, safe='')}", json=fields)
        return view

    def unschedule(self, name: str) -> None:
        """Deletes the schedule `name` (its jobs stay); nothing happens if there is none."""
        try:
            self._server.request("DELETE", f"/v1/schedules/{quote(name, safe='')}")
        except ApiError as e:
            if e.code != "not_found":
                raise

    def AsyncResult(self, job_id: str) -> AsyncResult:  # noqa: N802 (Celery's name)
        """A handle on a job submitted earlier, by its id."""
        return AsyncResult(job_id, self._server)

    @overload
    def task(self, function: Callable[..., R]) -> "Task[R]": ...

    @overload
    def task(
        self,
        *,
        name: Optional[str] = None,
        queue: str = "root.default",
        retries: Optional[int] = None,
        retry_backoff: Optional[float] = None,
        retry_backoff_max: Optional[float] = None,
        timeout: Optional[float] = None,
        resources: Optional[Mapping[str, Any]] = None,
        priority: Optional[int] = None,
        tags: Optional[Sequence[str]] = None,
        selector: Optional[Mapping[str, str]] = None,
        bind: bool = False,
        rate_limit: Union[str, float, None] = None,
        autoretry_for: Optional[Sequence[type]] = None,
        **unsupported: Any,
    ) -> Callable[[Callable[..., R]], "Task[R]"]: ...

    def task(
        self, function: Optional[Callable[..., Any]] = None, **options: Any
    ) -> Union["Task[Any]", Callable[[Callable[..., Any]], "Task[Any]"]]:
        """Declares a task: `@app.task` or `@app.task(queue=..., ...)`.

        Options (all optional): `name` (the handler name workers serve; default
        `module.function_name`, as in Celery), `queue` (leaf queue path), `retries`
        (attempts after the first), `retry_backoff` / `retry_backoff_max` (seconds
        before the first retry / at most), `timeout` (seconds an attempt may run), `resources` (`{"cpu": 0.5,
        "memory": "512M", "gpu": 1, "custom": {"licence": 1}}`), `priority` (higher runs
        first), `tags`, `selector` (labels a worker must carry), `bind` (the function
        takes the task as its first argument, for `self.request`, `self.retry()` and
        `self.update_state()`), `rate_limit` (`"10/s"`, `"100/m"`: the most starts of
        this task per second on each Python worker, as Celery's; for a limit across the
        whole cluster use the server's, see docs/RATE_LIMITS.md), `autoretry_for` (exception
        classes: only those are retried, up to `retries`; any other exception fails the job
        at once). Any other option raises
        `UnsupportedOption`; absent ones take the queue's defaults on the server.
        """
        if function is not None:
            return Task(self, function, TaskOptions.from_kwargs(options, function))

        def declare(f: Callable[..., Any]) -> "Task[Any]":
            return Task(self, f, TaskOptions.from_kwargs(options, f))

        # Check the options where they are written, before the decorator is applied.
        TaskOptions.from_kwargs(options, None)
        return declare


def describe(error: BaseException) -> "tuple[str, str, str]":
    """An exception as `format_failure` takes it: its type's path (`ValueError`,
    `myapp.errors.Invalid`), its message and its traceback."""
    import os
    import traceback

    kind = type(error)
    path = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
    # The frames of the SDK that called the task say nothing about it: start at the
    # task's own code.
    frames = error.__traceback__
    package = os.path.dirname(os.path.abspath(__file__))
    while frames is not None and frames.tb_next is not None and frames.tb_frame.f_code.co_filename.startswith(package):
        frames = frames.tb_next
    text = "".join(traceback.format_exception(kind, error, frames))
    return path, str(error), text


def _name_of(function: Callable[..., Any]) -> str:
    # Celery's rule: the module and the function's own name.
    name = getattr(function, "__name__", None)
    if not isinstance(name, str) or name.startswith("<"):
        raise ValueError(
            f"cannot derive a task name for {function!r} (a lambda has none): "
            "give one with @app.task(name='...')"
        )
    return f"{function.__module__}.{name}"


class TaskOptions:
    """A task's settings, checked and converted to the server's units once, at
    declaration."""

    def __init__(
        self,
        name: str,
        queue: str,
        job_fields: Dict[str, Any],
        bind: bool = False,
        rate_limit: Optional[float] = None,
        autoretry_for: Optional[Tuple[type, ...]] = None,
    ) -> None:
        self.name = name
        self.queue = queue
        self.job_fields = job_fields
        self.bind = bind
        #: When set, only these exception types are retried; any other fails the job
        #: at once (Celery's `autoretry_for`). None: every failure is retried.
        self.autoretry_for = autoretry_for
        #: Most starts a second on each worker (Celery's per-worker `rate_limit`).
        self.rate_limit = rate_limit

    @classmethod
    def from_kwargs(cls, options: Mapping[str, Any], function: Optional[Callable[..., Any]]) -> "TaskOptions":
        """Reads the keyword options of `App.task` (see its doc) for `function`, whose
        `module.function_name` is the default name (None: only check the options)."""
        options = dict(options)
        name = options.pop("name", None)
        if name is None:
            name = _name_of(function) if function is not None else "<task>"
        if not isinstance(name, str) or not name:
            raise TypeError(f"name takes a non-empty str, got {name!r}")
        queue = options.pop("queue", "root.default")
        if not isinstance(queue, str):
            raise TypeError(f"queue takes a queue path such as 'root.default', got {queue!r}")
        fields: Dict[str, Any] = {}
        retry: Dict[str, Any] = {}
        retries = options.pop("retries", None)
        if retries is not None:
            if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
                raise ValueError(f"retries takes a non-negative int (attempts after the first), got {retries!r}")
            retry["max_attempts"] = retries + 1
        backoff = options.pop("retry_backoff", None)
        if backoff is not None:
            retry["backoff_base_ms"] = seconds_to_ms("retry_backoff", backoff)
        backoff_max = options.pop("retry_backoff_max", None)
        if backoff_max is not None:
            retry["backoff_cap_ms"] = seconds_to_ms("retry_backoff_max", backoff_max)
        if retry:
            fields["retry"] = retry
        timeout = options.pop("timeout", None)
        if timeout is not None:
            fields["timeout_ms"] = seconds_to_ms("timeout", timeout)
        soft_timeout = options.pop("soft_timeout", None)
        if soft_timeout is not None:
            fields["soft_timeout_ms"] = seconds_to_ms("soft_timeout", soft_timeout)
        resources = options.pop("resources", None)
        if resources is not None:
            if not isinstance(resources, Mapping):
                raise TypeError(f"resources takes a dict such as {{'cpu': 0.5, 'memory': '512M'}}, got {resources!r}")
            fields["resources"] = resources_spec(resources)
        priority = options.pop("priority", None)
        if priority is not None:
            fields["priority"] = _priority(priority)
        tags = options.pop("tags", None)
        if tags is not None:
            fields["tags"] = str_list("tags", tags)
        selector = options.pop("selector", None)
        if selector is not None:
            fields["selector"] = str_map("selector", selector)
        bind = options.pop("bind", False)
        if not isinstance(bind, bool):
            raise TypeError(f"bind takes True or False, got {bind!r}")
        rate = options.pop("rate_limit", None)
        rate_limit = rate_per_second(rate) if rate is not None else None
        autoretry_for = _exception_types("autoretry_for", options.pop("autoretry_for", None))
        _refuse(
            "task",
            options,
            _UNSUPPORTED_TASK_OPTIONS,
            "name, queue, retries, retry_backoff, retry_backoff_max, timeout, soft_timeout, resources, priority, "
            "tags, selector, bind, rate_limit, autoretry_for",
        )
        return cls(name, queue, fields, bind, rate_limit, autoretry_for)


def _exception_types(option: str, value: Any) -> Optional[Tuple[type, ...]]:
    if value is None:
        return None
    kinds = tuple(value) if isinstance(value, (tuple, list)) else (value,)
    for kind in kinds:
        if not (isinstance(kind, type) and issubclass(kind, BaseException)):
            raise TypeError(f"{option} takes exception classes, such as (ConnectionError, TimeoutError), got {kind!r}")
    return kinds


def retried(options: "TaskOptions", error: BaseException) -> bool:
    """Whether `error` raised by a task with `options` is to be retried: always, unless
    the task names the types to retry (`autoretry_for`)."""
    return options.autoretry_for is None or isinstance(error, options.autoretry_for)


def _priority(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not -(2**31) <= value < 2**31:
        raise ValueError(f"priority takes an int (higher runs first), got {value!r}")
    return int(value)


def _epoch_ms(option: str, when: dt.datetime) -> int:
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError(
            f"{option} must be timezone-aware (a naive datetime is ambiguous): "
            "e.g. datetime.now(timezone.utc) + timedelta(minutes=5)"
        )
    return max(0, int(when.timestamp() * 1000))


class Task(Generic[R]):
    """A declared task. Calling it runs the function here and now; `delay` and
    `apply_async` submit it as a job (or, on an eager app, run it in this process)."""

    def __init__(self, app: App, function: Callable[..., R], options: TaskOptions) -> None:
        self.app = app
        self.function = function
        self.options = options
        functools.update_wrapper(self, function)
        app.tasks[options.name] = self

    @property
    def name(self) -> str:
        """The handler name a worker serves this task under."""
        return self.options.name

    def __repr__(self) -> str:
        return f"<Task {self.name} queue={self.options.queue}>"

    def __call__(self, *args: Any, **kwargs: Any) -> R:
        if self.options.bind:
            return self.function(self, *args, **kwargs)
        return self.function(*args, **kwargs)

    @property
    def request(self) -> context.Request:
        """The attempt this task runs in (Celery's `self.request`); empty outside one."""
        attempt = context.current_attempt()
        return attempt.request if attempt is not None else context.Request()

    def retry(
        self, exc: Optional[BaseException] = None, countdown: Optional[float] = None, **unsupported: Any
    ) -> NoReturn:
        """Ends this attempt and runs the job again after `countdown` seconds (the task's
        `retry_backoff` when None); it uses one of the job's `retries`, and once they are
        spent the job fails with this retry's reason. Call it as `raise self.retry(...)`
        or bare: it raises `lqsm.Retry` either way. `exc` is the reason given."""
        _refuse(
            "retry",
            unsupported,
            {"max_retries": "set retries= on the task: the server counts every attempt", "eta": "use countdown="},
            "exc, countdown",
        )
        if countdown is not None:
            seconds_to_ms("countdown", countdown)
        reason = f"{type(exc).__name__}: {exc}" if exc is not None else "the task asked to be retried"
        raise Retry(reason, countdown)

    def update_state(self, state: Optional[str] = None, meta: Any = None) -> None:
        """Reports where the running attempt stands: the job's `progress` becomes
        `{"state": state, "meta": meta}` (`state` defaults to "PROGRESS"), at most 4 KiB
        of JSON. Outside a worker (an eager call, a plain call) it only checks them."""
        progress = context.progress_of(state, meta)
        attempt = context.current_attempt()
        if attempt is not None:
            attempt.report_progress(progress)

    def s(self, *args: Any, **kwargs: Any) -> "Signature":
        """This task with these arguments, for a canvas: `a.s(1) | b.s()`, `group(...)`,
        `chord(...)` (see `lqsm.canvas`)."""
        from .canvas import Signature

        return Signature(self, args, kwargs)

    def delay(self, *args: Any, **kwargs: Any) -> AsyncResult:
        """Submits `task(*args, **kwargs)`; `apply_async` with no options."""
        return self.apply_async(args, kwargs)

    def apply_async(
        self,
        args: Optional[Sequence[Any]] = None,
        kwargs: Optional[Mapping[str, Any]] = None,
        *,
        countdown: Optional[float] = None,
        eta: Optional[dt.datetime] = None,
        expires: Union[float, dt.datetime, None] = None,
        priority: Optional[int] = None,
        queue: Optional[str] = None,
        idempotency_key: Optional[str] = None,
        confirm: Optional[bool] = None,
        **unsupported: Any,
    ) -> AsyncResult:
        """Submits the task as a function job and returns its handle.

        `countdown` (seconds from now) or `eta` (a timezone-aware datetime): not to
        start before. `expires` (seconds from now, or an aware datetime): give up if not
        started by then. `priority` and `queue` override the task's. `idempotency_key`:
        a resubmission with the same key in the same queue returns the same job (such a
        submission is always confirmed: the answer names the job). `confirm`: return only
        once the job is durable (the app's setting when None). Arguments JSON cannot carry
        raise `TypeError` here; a refused submission raises `ApiError` (at once when
        confirmed, else at the result's first use or `app.flush()`).
        """
        _refuse(
            "apply_async",
            unsupported,
            _UNSUPPORTED_SUBMIT_OPTIONS,
            "countdown, eta, expires, priority, queue, idempotency_key, confirm",
        )
        envelope = encode_call(self.name, tuple(args or ()), dict(kwargs or {}))
        job = self._job(envelope, countdown, eta, expires, priority, queue, idempotency_key)
        if self.app.eager:
            return self._run_eagerly(envelope)
        confirmed = self.app.confirm if confirm is None else confirm
        if confirmed or idempotency_key is not None:
            submitted = self.app._server.request("POST", "/v1/jobs", json=job)
            return AsyncResult(str(submitted["id"]), self.app._server)
        # The first contact is made here, not in the background: a server that cannot
        # be reached, or is not one this SDK works with, is said at once (then cached).
        self.app._server.server_version()
        job_id = new_job_id()
        job["id"] = job_id
        batcher = self.app._batcher
        batcher.add(job)
        return AsyncResult(job_id, self.app._server, lambda: batcher.flush(job_id))

    def _job(
        self,
        envelope: Dict[str, Any],
        countdown: Optional[float],
        eta: Optional[dt.datetime],
        expires: Union[float, dt.datetime, None],
        priority: Optional[int],
        queue: Optional[str],
        idempotency_key: Optional[str],
    ) -> Dict[str, Any]:
        job: Dict[str, Any] = {
            "queue": queue if queue is not None else self.options.queue,
            "kind": {"type": "function", "handler": self.name, "args": envelope},
        }
        job.update(self.options.job_fields)
        if countdown is not None and eta is not None:
            raise ValueError("give countdown= or eta=, not both")
        if countdown is not None:
            job["delay_ms"] = seconds_to_ms("countdown", countdown)
        if eta is not None:
            job["not_before_ms"] = _epoch_ms("eta", eta)
        if expires is not None:
            if isinstance(expires, dt.datetime):
                job["expires_at_ms"] = _epoch_ms("expires", expires)
            else:
                # The server takes an instant: a relative expiry is counted from this
                # machine's clock.
                job["expires_at_ms"] = int(time.time() * 1000) + seconds_to_ms("expires", expires)
        if priority is not None:
            job["priority"] = _priority(priority)
        if idempotency_key is not None:
            if not isinstance(idempotency_key, str) or not idempotency_key:
                raise TypeError(f"idempotency_key takes a non-empty str, got {idempotency_key!r}")
            job["idempotency_key"] = idempotency_key
        return job

    def _run_eagerly(self, envelope: Dict[str, Any]) -> EagerResult:
        # The function sees its arguments as a worker would: through JSON and back; a
        # retry runs it again at once, as many times as the task's retries allow.
        received = round_trip(envelope)
        attempts = int(self.options.job_fields.get("retry", {}).get("max_attempts", 1))
        for attempt in range(1, attempts + 1):
            request = context.Request(id="eager", attempt=attempt, queue=self.options.queue, is_eager=True)
            token = context.enter(context.Attempt(request, lambda progress: None))
            try:
                value = self(*received["args"], **received["kwargs"])
            except Retry as e:
                if attempt < attempts:
                    continue
                return EagerResult("failed", None, TaskError("eager", "failed", e.message))
            except Exception as e:  # noqa: BLE001 (a task's failure, whatever it is)
                if self.options.autoretry_for is not None and retried(self.options, e) and attempt < attempts:
                    continue
                error = TaskError("eager", "failed", format_failure(*describe(e)))
                error.__cause__ = e
                return EagerResult("failed", None, error)
            finally:
                context.leave(token)
            break
        try:
            return EagerResult("succeeded", round_trip(value), None)
        except (TypeError, ValueError) as e:
            reason = f"the task returned what JSON cannot carry ({e}): return JSON values"
            return EagerResult("failed", None, TaskError("eager", "failed", reason))

"""Celery's canvas on LQSM's workflows: `task.s(...)` makes a signature; `a.s() | b.s()`
or `chain(...)` runs them one after the other, each receiving the one before's result;
`group(...)` runs them side by side; `chord(header, body)` runs `body` once the whole
group succeeded, with their results in order. The server carries them out (one request,
taken whole or refused whole); `apply_async()` answers a `WorkflowResult`.

A node that receives results gets, on the worker, `{"args": <its call>, "inputs":
[...]}`: the parents' results in order. Its call carries `"receive": "one"` (a chain's
link: its parent's result is the first positional argument) or `"all"` (a chord's
callback: the list of results is)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from .arguments import encode_call, round_trip
from .errors import TimeoutError
from .result import AsyncResult

if TYPE_CHECKING:
    from .app import App, Task


class Signature:
    """A task with its arguments, to run later as part of a canvas (Celery's `.s()`)."""

    def __init__(self, task: "Task[Any]", args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
        self.task = task
        # Checked now, so that a bad argument shows where the signature is made.
        self.envelope = encode_call(task.name, tuple(args), dict(kwargs))

    def __repr__(self) -> str:
        return f"<Signature {self.task.name}>"

    def __or__(self, other: Union["Signature", "Chain"]) -> "Chain":
        return Chain(self) | other

    def apply_async(self) -> "WorkflowResult":
        """Submits this one task as a workflow of one."""
        return Chain(self).apply_async()

    def _node(self, name: str, after: List[str], receive: Optional[str]) -> Dict[str, Any]:
        envelope = self.envelope if receive is None else {**self.envelope, "receive": receive}
        job = self.task._job(envelope, None, None, None, None, None, None)
        job["name"] = name
        if after:
            job["after"] = after
        if receive is not None:
            job["pass_results"] = True
        return job

    def _run_here(self, inputs: Optional[List[Any]]) -> Any:
        """Runs the function in this process (an eager app): results received are its
        first positional argument, as Celery passes them."""
        call = round_trip(self.envelope)
        args = list(call["args"])
        if inputs is not None:
            args.insert(0, inputs[0] if len(inputs) == 1 else inputs)
        return round_trip(self.task(*args, **call["kwargs"]))


class Chain:
    """Signatures run one after the other, each receiving the one before's result; a
    failure cancels the rest."""

    def __init__(self, *signatures: Signature) -> None:
        if not signatures:
            raise ValueError("a chain needs at least one signature")
        self.signatures: Tuple[Signature, ...] = signatures

    def __or__(self, other: Union[Signature, "Chain"]) -> "Chain":
        more = other.signatures if isinstance(other, Chain) else (other,)
        return Chain(*self.signatures, *more)

    def apply_async(self) -> "WorkflowResult":
        nodes = [
            sig._node(str(i), [str(i - 1)] if i else [], "one" if i else None)
            for i, sig in enumerate(self.signatures)
        ]
        app = _app_of(self.signatures)
        if app.eager:
            value: Any = None
            for i, sig in enumerate(self.signatures):
                value = sig._run_here([value] if i else None)
            return _eager("chain", [value])
        return WorkflowResult._submit(app, nodes, "chain")


class Group:
    """Signatures run side by side; the group's results come in one call."""

    def __init__(self, *signatures: Signature) -> None:
        if not signatures:
            raise ValueError("a group needs at least one signature")
        self.signatures: Tuple[Signature, ...] = signatures

    def __or__(self, body: Signature) -> "Chord":
        return Chord(self, body)

    def apply_async(self) -> "WorkflowResult":
        app = _app_of(self.signatures)
        if app.eager:
            return _eager("group", [sig._run_here(None) for sig in self.signatures])
        nodes = [sig._node(str(i), [], None) for i, sig in enumerate(self.signatures)]
        return WorkflowResult._submit(app, nodes, "group")


class Chord:
    """A group, then `body` once every member succeeded, receiving their results in the
    group's order."""

    def __init__(self, header: Union[Group, Sequence[Signature]], body: Signature) -> None:
        self.header = header if isinstance(header, Group) else Group(*header)
        self.body = body

    def apply_async(self) -> "WorkflowResult":
        members = self.header.signatures
        app = _app_of((*members, self.body))
        if app.eager:
            results = [sig._run_here(None) for sig in members]
            return _eager("chord", [self.body._run_here([results])])
        names = [str(i) for i in range(len(members))]
        nodes = [sig._node(name, [], None) for name, sig in zip(names, members)]
        nodes.append(self.body._node("callback", names, "all"))
        return WorkflowResult._submit(app, nodes, "chord")


def chain(*signatures: Signature) -> Chain:
    """`chain(a.s(1), b.s(), c.s())`: as `a.s(1) | b.s() | c.s()`."""
    return Chain(*signatures)


def group(*signatures: Signature) -> Group:
    """`group(a.s(1), a.s(2))`: side by side."""
    return Group(*signatures)


def chord(header: Union[Group, Sequence[Signature]], body: Signature) -> Chord:
    """`chord([a.s(1), a.s(2)], total.s())`: `total` once both succeeded, with their
    results."""
    return Chord(header, body)


def _app_of(signatures: Sequence[Signature]) -> "App":
    apps = {id(sig.task.app): sig.task.app for sig in signatures}
    if len(apps) != 1:
        raise ValueError("every task of a canvas must belong to the same App")
    return next(iter(apps.values()))


class WorkflowResult:
    """A submitted canvas. `results` are its jobs in order; `get()` answers what Celery's
    does: a chain's last result, a group's results in order, a chord's callback's."""

    def __init__(self, workflow_id: str, results: List[AsyncResult], kind: str, app: Optional["App"]) -> None:
        self.id = workflow_id
        self.results = results
        self.kind = kind
        self._app = app

    def __repr__(self) -> str:
        return f"<WorkflowResult {self.kind} {self.id}>"

    @classmethod
    def _submit(cls, app: "App", nodes: List[Dict[str, Any]], kind: str) -> "WorkflowResult":
        answer = app._server.request("POST", "/v1/workflows", json={"nodes": nodes})
        results = [AsyncResult(str(node["id"]), app._server) for node in answer["nodes"]]
        return cls(str(answer["id"]), results, kind, app)

    def fetch(self) -> Dict[str, Any]:
        """The workflow as the server shows it (`WorkflowView` in docs/openapi.json)."""
        assert self._app is not None, "an eager canvas has nothing on a server"
        view: Dict[str, Any] = self._app._server.request("GET", f"/v1/workflows/{self.id}")
        return view

    @property
    def state(self) -> str:
        """`running`, `succeeded`, `failed` or `cancelled`."""
        return str(self.fetch()["state"])

    def get(self, timeout: Optional[float] = None) -> Any:
        """Waits (at most `timeout` seconds) and answers the canvas's result; raises the
        first failed job's `TaskError`, or `lqsm.TimeoutError`."""
        deadline = None if timeout is None else time.monotonic() + timeout

        def left() -> Optional[float]:
            if deadline is None:
                return None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"workflow {self.id} has not finished after {timeout} s")
            return remaining

        if self.kind == "group":
            return [r.get(timeout=left()) for r in self.results]
        # A chain's or chord's last job ends last; a failure before it cancels it, and
        # its error names the parent that failed.
        return self.results[-1].get(timeout=left())

    def revoke(self) -> None:
        """Cancels every unfinished job of the canvas."""
        assert self._app is not None, "an eager canvas has nothing on a server"
        self._app._server.request("POST", f"/v1/workflows/{self.id}/cancel")


def _eager(kind: str, values: List[Any]) -> WorkflowResult:
    from .result import EagerResult

    results: List[AsyncResult] = [EagerResult("succeeded", v, None) for v in values]
    return WorkflowResult("eager", results, kind, None)

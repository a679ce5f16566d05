"""The worker's own HTTP client (`lqsm.worker._http`) against small loopback servers
that answer the ways an HTTP/1.1 server may, and the worker's rule for `ack` when
answers come out of order."""

from __future__ import annotations

import asyncio
import json
from typing import Any, Awaitable, Callable, Dict, List, Tuple

import pytest

from lqsm.worker import _agent, _http
from lqsm.worker._agent import Agent
from lqsm.worker._pools import ThreadPool

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> Tuple[str, Dict[str, str], bytes]:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    lines = head.split("\r\n")
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return lines[0], headers, body


def json_server(respond: Callable[[Dict[str, Any]], Tuple[int, Dict[str, Any]]]) -> Handler:
    """A connection handler answering each JSON request with `respond(body)`: a status
    and a JSON body."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                _, _, body = await read_request(reader)
            except asyncio.IncompleteReadError:
                return
            status, answer = respond(json.loads(body))
            encoded = json.dumps(answer).encode()
            writer.write(b"HTTP/1.1 %d X\r\ncontent-length: %d\r\n\r\n%s" % (status, len(encoded), encoded))
            await writer.drain()

    return handler


def serve(handler: Handler, check: Callable[[str], Awaitable[None]]) -> None:
    """Runs `check(base_url)` against a server whose connections `handler` serves."""

    async def main() -> None:
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            await check(f"http://127.0.0.1:{port}")

    asyncio.run(main())


def test_a_json_request_and_its_answer_on_one_kept_connection() -> None:
    seen: List[Tuple[str, Dict[str, str], bytes]] = []
    connections = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        while True:
            try:
                request = await read_request(reader)
            except asyncio.IncompleteReadError:
                return
            seen.append(request)
            body = json.dumps({"echo": json.loads(request[2] or b"null")}).encode()
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(body))
            writer.write(body)
            await writer.drain()

    async def check(url: str) -> None:
        client = _http.Client([("Authorization", "Bearer s3cret")], timeout=5)
        first = await client.post(f"{url}/v1/workers/w/poll", {"ack": 3, "name": "café"})
        second = await client.get(f"{url}/v1/jobs/j/inputs?x=1")
        await client.aclose()
        assert first.is_success and first.json() == {"echo": {"ack": 3, "name": "café"}}
        assert second.json() == {"echo": None}

    serve(handler, check)
    assert [s[0] for s in seen] == ["POST /v1/workers/w/poll HTTP/1.1", "GET /v1/jobs/j/inputs?x=1 HTTP/1.1"]
    assert seen[0][1]["authorization"] == "Bearer s3cret"
    assert seen[0][1]["content-type"] == "application/json"
    assert len(connections) == 1, "the second request reuses the first one's connection"


def test_a_chunked_answer_and_one_that_ends_with_its_connection() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line, _, _ = await read_request(reader)
        if "chunked" in line:
            writer.write(b"HTTP/1.1 409 Conflict\r\ntransfer-encoding: chunked\r\n\r\n")
            first, second = b'{"error":{"', b'code":"register_again"}}  '
            writer.write(b"%x\r\n%s\r\n" % (len(first), first))
            writer.write(b"%x;ext=1\r\n%s\r\n0\r\nx-trailer: 1\r\n\r\n" % (len(second), second))
        else:
            writer.write(b"HTTP/1.1 502 Bad Gateway\r\nconnection: close\r\n\r\nproxy says no")
        await writer.drain()
        writer.close()

    async def check(url: str) -> None:
        client = _http.Client([], timeout=5)
        chunked = await client.post(f"{url}/chunked", {})
        assert chunked.status_code == 409 and chunked.json() == {"error": {"code": "register_again"}}
        closed = await client.post(f"{url}/closed", {})
        assert closed.status_code == 502 and not closed.is_success and closed.text == "proxy says no"
        await client.aclose()

    serve(handler, check)


def test_a_kept_connection_the_server_closed_is_replaced_without_an_error() -> None:
    served = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # One answer per connection, then the server closes it (as an idle timeout would).
        await read_request(reader)
        served.append(1)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.close()

    async def check(url: str) -> None:
        client = _http.Client([], timeout=5)
        await client.post(f"{url}/a", {})
        await asyncio.sleep(0.2)
        answer = await client.post(f"{url}/b", {})
        assert answer.json() == {}
        await client.aclose()

    serve(handler, check)
    assert len(served) == 2


def test_no_answer_a_refused_connection_and_a_timeout_are_transport_errors() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line, _, _ = await read_request(reader)
        if "silent" in line:
            await asyncio.sleep(10)
        writer.close()

    async def check(url: str) -> None:
        client = _http.Client([], timeout=5)
        with pytest.raises(_http.TransportError, match="closed the connection without answering"):
            await client.post(f"{url}/hang-up", {})
        with pytest.raises(_http.TransportError, match="no answer from .* within 0 s"):
            await client.post(f"{url}/silent", {}, timeout=0.2)
        with pytest.raises(_http.TransportError, match="not an http"):
            await client.post("ftp://127.0.0.1/x", {})
        await client.aclose()

    serve(handler, check)

    async def refused() -> None:
        client = _http.Client([], timeout=5)
        with pytest.raises(_http.TransportError, match="cannot connect"):
            await client.post("http://127.0.0.1:9/", {})

    asyncio.run(refused())


def test_ack_waits_for_every_poll_that_could_bring_a_lower_answer_number() -> None:
    agent = Agent({}, ThreadPool(1, 1.0), ["http://127.0.0.1:9"], None, "w", 1.0, 64, {})
    # Polls 1 and 2 are out; poll 2's answer, number 7, comes first.
    agent.outstanding = {1}
    agent.unconfirmed.append((7, frozenset({1})))
    assert agent._acknowledged() == 0, "poll 1 may still bring number 6"
    # Poll 3 goes out; then poll 1's answer, number 6, arrives while 3 is out.
    agent.outstanding = {3}
    agent.unconfirmed.append((6, frozenset({3})))
    assert agent._acknowledged() == 7, "7 came while only poll 1 was out, and it is in"
    # Poll 3 is answered with number 8: nothing is out.
    agent.outstanding = set()
    agent.unconfirmed.append((8, frozenset()))
    assert agent._acknowledged() == 8
    assert agent.unconfirmed == []


@pytest.mark.parametrize("newest, expected", [(8, 8), (7, 7), (6, 6), (5, 5), (4, 4), (3, 3)])
def test_registration_falls_back_to_the_servers_protocol(newest: int, expected: int) -> None:
    """A server older than the worker refuses its version at registration; the worker
    tries the next older one down to 3 (and at 4 or below sends no second reporting
    poll, since `ending` needs 5)."""
    offered: List[int] = []

    def respond(registration: Dict[str, Any]) -> Tuple[int, Dict[str, Any]]:
        version = registration["protocol"]
        offered.append(version)
        if version > newest:
            message = f"this server speaks 1 to {newest}"
            return 400, {"error": {"code": "incompatible_protocol", "message": message, "field": "protocol"}}
        return 200, {"id": "w", "heartbeat_timeout_ms": 20000}

    async def check(url: str) -> None:
        agent = Agent({}, ThreadPool(1, 1.0), [url], None, "w", 1.0, 64, {})
        await agent.register()
        assert agent.protocol == expected
        await agent.client.aclose()

    serve(json_server(respond), check)
    assert offered == list(range(8, expected - 1, -1))


def test_a_server_that_refuses_ending_makes_the_worker_speak_4_and_lose_no_report() -> None:
    """An older server took over (a rolling upgrade): it refuses the field `ending`
    by name; the worker speaks protocol 4 from then on and carries every report."""
    polls: List[Dict[str, Any]] = []

    def respond(poll: Dict[str, Any]) -> Tuple[int, Dict[str, Any]]:
        polls.append(poll)
        if "ending" in poll:
            refusal = {"code": "unknown_field", "message": "ending: unknown field `ending`", "field": "ending"}
            return 400, {"error": refusal}
        return 200, {"seq": 0, "assignments": [], "kill": [], "refused": []}

    def report(job: str) -> Dict[str, object]:
        return {"job": job, "token": 1, "result": {"type": "succeeded", "result": None}, "logs": None,
                "started_at_ms": 1}

    async def check(url: str) -> None:
        agent = Agent({}, ThreadPool(1, 1.0), [url], None, "w", 1.0, 64, {})
        assert agent.protocol == 8
        # One report is on its way in another poll, one is new.
        agent.reports = {"a:1": report("a"), "b:1": report("b")}
        agent.carrying = {"a:1"}
        await agent._poll(0.0)
        assert agent.protocol == 4
        assert set(agent.reports) == {"a:1", "b:1"}, "nothing refused is forgotten"
        await agent._poll(0.0)
        await agent.client.aclose()

    serve(json_server(respond), check)
    assert [p.get("ending") for p in polls] == [[{"job": "a", "token": 1}], None]
    assert [r["job"] for r in polls[0]["finished"]] == ["b"]
    assert sorted(r["job"] for r in polls[1]["finished"]) == ["a", "b"]


def test_a_poll_from_before_registering_again_is_dropped_and_its_reports_kept() -> None:
    """Protocol 6: polls name the registration they were sent for. The server refuses
    one that reached it after the worker registered again (`409 stale_registration`):
    the worker neither registers again nor forgets the reports it carried, and its
    next poll names the latest registration and carries them."""
    polls: List[Dict[str, Any]] = []
    registrations = iter([7, 9])

    def respond(body: Dict[str, Any]) -> Tuple[int, Dict[str, Any]]:
        if "protocol" in body:
            return 200, {"id": "w", "heartbeat_timeout_ms": 20000, "registration": next(registrations)}
        polls.append(body)
        if body.get("registration") != 9:
            refusal = {"code": "stale_registration", "message": "from registration 7", "field": "registration"}
            return 409, {"error": refusal}
        return 200, {"seq": 0, "assignments": [], "kill": [], "refused": []}

    async def check(url: str) -> None:
        agent = Agent({}, ThreadPool(1, 1.0), [url], None, "w", 1.0, 64, {})
        await agent.register()
        assert agent.registration == 7
        agent.reports = {"a:1": {"job": "a", "token": 1, "result": {"type": "succeeded", "result": None},
                                 "logs": None, "started_at_ms": 1}}
        sent = asyncio.create_task(agent._poll(0.0))
        await agent.register()  # registered again while that poll was on its way
        assert agent.registration == 9
        await sent
        assert set(agent.reports) == {"a:1"}, "a refused poll's reports are kept"
        assert agent.protocol == 8
        assert agent.epoch == 2, "a stale poll does not make the worker register again"
        await agent._poll(0.0)
        assert agent.reports == {}
        await agent.client.aclose()

    serve(json_server(respond), check)
    assert [p.get("registration") for p in polls] == [7, 9]
    assert [r["job"] for r in polls[1]["finished"]] == ["a"]


def test_a_refused_poll_naming_the_held_registration_makes_the_worker_register_again() -> None:
    """A registration sent again while the first was on its way, the first arriving
    last: the server's latest registration (8) is one the worker never saw, and it
    refuses polls naming the number the worker holds (7). The worker registers again,
    keeps its reports, and its next poll names the new number."""
    polls: List[Dict[str, Any]] = []
    registrations = iter([7, 9])
    latest = {"number": 8}

    def respond(body: Dict[str, Any]) -> Tuple[int, Dict[str, Any]]:
        if "protocol" in body:
            latest["number"] = next(registrations)
            return 200, {"id": "w", "heartbeat_timeout_ms": 20000, "registration": latest["number"]}
        polls.append(body)
        if body.get("registration") != latest["number"]:
            refusal = {"code": "stale_registration", "message": "not the latest", "field": "registration"}
            return 409, {"error": refusal}
        return 200, {"seq": 0, "assignments": [], "kill": [], "refused": []}

    async def check(url: str) -> None:
        agent = Agent({}, ThreadPool(1, 1.0), [url], None, "w", 1.0, 64, {})
        await agent.register()
        latest["number"] = 8  # the late copy of the first registration arrives
        agent.reports = {"a:1": {"job": "a", "token": 1, "result": {"type": "succeeded", "result": None},
                                 "logs": None, "started_at_ms": 1}}
        await agent._poll(0.0)
        assert agent.registration == 9, "registered again"
        assert set(agent.reports) == {"a:1"}, "a refused poll's reports are kept"
        await agent._poll(0.0)
        assert agent.reports == {}
        await agent.client.aclose()

    serve(json_server(respond), check)
    assert [p.get("registration") for p in polls] == [7, 9]


def test_a_server_that_refuses_registration_makes_the_worker_speak_5() -> None:
    """An older server took over: it refuses the field `registration` by name; the
    worker speaks protocol 5 from then on, and loses no report."""
    polls: List[Dict[str, Any]] = []

    def respond(body: Dict[str, Any]) -> Tuple[int, Dict[str, Any]]:
        polls.append(body)
        if "registration" in body:
            refusal = {"code": "unknown_field", "message": "unknown field `registration`", "field": "registration"}
            return 400, {"error": refusal}
        return 200, {"seq": 0, "assignments": [], "kill": [], "refused": []}

    async def check(url: str) -> None:
        agent = Agent({}, ThreadPool(1, 1.0), [url], None, "w", 1.0, 64, {})
        agent.registration = 3
        agent.reports = {"a:1": {"job": "a", "token": 1, "result": {"type": "succeeded", "result": None},
                                 "logs": None, "started_at_ms": 1}}
        await agent._poll(0.0)
        assert agent.protocol == 5
        assert set(agent.reports) == {"a:1"}
        await agent._poll(0.0)
        assert agent.reports == {}
        await agent.client.aclose()

    serve(json_server(respond), check)
    assert ["registration" in p for p in polls] == [True, False]


def test_running_output_is_uploaded_from_where_the_server_took_it_and_not_once_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Protocol 8: what running tasks printed goes up in one call for all of them, each
    chunk from where the server's last answer left its attempt; an attempt whose chunk
    was refused (no longer current there) sends no more."""
    monkeypatch.setattr(_agent, "OUTPUT_UPLOAD_EVERY", 0.01)
    uploads: List[Dict[str, Any]] = []

    def respond(body: Dict[str, Any]) -> Tuple[int, Dict[str, Any]]:
        uploads.append(body)
        stale = [c for c in body["chunks"] if c["job"] == "b"]
        return 200, {"refused": [{"job": c["job"], "token": c["token"], "reason": "stale_attempt"} for c in stale]}

    async def uploaded(count: int) -> None:
        deadline = asyncio.get_running_loop().time() + 10
        while len(uploads) < count:
            assert asyncio.get_running_loop().time() < deadline, f"only {len(uploads)} uploads"
            await asyncio.sleep(0.01)

    async def check(url: str) -> None:
        agent = Agent({}, ThreadPool(1, 1.0), [url], None, "w", 1.0, 64, {})
        agent.attempts = {"a:1": _agent._Attempt("a", 1), "b:2": _agent._Attempt("b", 2)}
        agent._outputted("a:1", "line 1\n")
        agent._outputted("b:2", "stale\n")
        uploading = asyncio.create_task(agent._upload_output())
        await uploaded(1)
        agent._outputted("a:1", "\u00e9\n")
        agent._outputted("b:2", "more\n")
        await uploaded(2)
        agent._outputted("a:1", "end\n")
        await uploaded(3)
        uploading.cancel()
        await agent.client.aclose()

    serve(json_server(respond), check)
    assert uploads[0]["chunks"] == [
        {"job": "a", "token": 1, "offset": 0, "text": "line 1\n"},
        {"job": "b", "token": 2, "offset": 0, "text": "stale\n"},
    ]
    assert uploads[1]["chunks"] == [{"job": "a", "token": 1, "offset": 7, "text": "\u00e9\n"}]
    assert uploads[2]["chunks"] == [{"job": "a", "token": 1, "offset": 10, "text": "end\n"}]

"""The first request of an app checks whom it talks to: an LQSM server of a release
this SDK works with. Fake servers stand in for what a real one cannot be made to be."""

from __future__ import annotations

import json
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator, Optional

import pytest

import lqsm
from conftest import free_loopback_port


@contextmanager
def serve(openapi: Optional[Any]) -> Iterator[str]:
    """A server answering /v1/openapi.json with `openapi` (None: 404 as plain text)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the standard library's name)
            if self.path == "/v1/openapi.json" and openapi is not None:
                body, kind, status = json.dumps(openapi).encode(), "application/json", 200
            else:
                body, kind, status = b"Not Found", "text/plain", 404
            self.send_response(status)
            self.send_header("content-type", kind)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def noop_on(url: str) -> "lqsm.Task[None]":
    app = lqsm.App(url)

    @app.task(name="tests.noop")
    def noop() -> None: ...

    return noop


def test_a_server_older_than_the_sdk_supports_is_refused() -> None:
    with serve({"info": {"version": "0.0.9"}, "paths": {}}) as url:
        with pytest.raises(lqsm.IncompatibleServer, match="version 0.0.9.*needs 0.1.0 or newer"):
            noop_on(url).delay()


def test_a_server_lacking_an_endpoint_the_sdk_needs_is_refused() -> None:
    with serve({"info": {"version": "0.2.0"}, "paths": {"/v1/jobs": {}}}) as url:
        with pytest.raises(lqsm.IncompatibleServer, match=r"does not serve /v1/jobs/\{id\}"):
            noop_on(url).delay()


def test_a_server_that_is_not_lqsm_is_refused() -> None:
    with serve(None) as url:
        with pytest.raises(lqsm.IncompatibleServer, match="not an LQSM server"):
            noop_on(url).delay()


def test_no_server_at_the_url_raises_server_unreachable() -> None:
    url = f"http://127.0.0.1:{free_loopback_port()}"

    with pytest.raises(ConnectionError) as raised:
        noop_on(url).delay()
    assert isinstance(raised.value, lqsm.ServerUnreachable)
    assert "lqsm standalone" in str(raised.value)

"""The worker's HTTP/1.1 client for its own server: JSON requests over kept-alive
connections on the worker's event loop.

Not httpx, which the rest of the SDK uses: measured on this project's benchmark
machine, an httpx.AsyncClient request costs about 0.8 ms of CPU in the client, this one
about 0.1 ms, and a busy worker makes hundreds of polls a second (docs/BENCHMARKS.md).
It speaks only what the server answers: a status line, headers, then a body of
`Content-Length` bytes, chunks, or everything up to the connection's end.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from typing import Any, List, Optional, Tuple
from urllib.parse import urlsplit

_encode_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode

#: Longest header section accepted from the server.
MAX_HEADER_BYTES = 64 * 1024


class TransportError(Exception):
    """The server could not be reached, or its answer did not arrive whole."""


class Response:
    """A server's answer: what `lqsm._server.api_error` and the worker read of one."""

    __slots__ = ("status_code", "content", "url")

    def __init__(self, status_code: int, content: bytes, url: str) -> None:
        self.status_code = status_code
        self.content = content
        self.url = url

    @property
    def is_success(self) -> bool:
        return 200 <= self.status_code < 300

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.content)


_Connection = Tuple[asyncio.StreamReader, asyncio.StreamWriter]


class Client:
    """Requests to servers named by base URLs (`http://host:port`, or `https://`),
    each on a connection of its own kept for the next: several may be out at once."""

    def __init__(self, headers: List[Tuple[str, str]], timeout: float, tls: Optional[ssl.SSLContext] = None) -> None:
        self.header_lines = "".join(f"{name}: {value}\r\n" for name, value in headers)
        self.timeout = timeout
        self.idle: dict[str, List[_Connection]] = {}
        # How `https://` servers are checked (made on first use when not given).
        self.tls = tls

    async def post(self, url: str, body: Any = None, timeout: Optional[float] = None) -> Response:
        return await self.request("POST", url, body, timeout)

    async def get(self, url: str, timeout: Optional[float] = None) -> Response:
        return await self.request("GET", url, None, timeout)

    async def request(self, method: str, url: str, body: Any, timeout: Optional[float]) -> Response:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise TransportError(f"not an http(s) URL: {url!r}")
        origin = f"{parts.scheme}://{parts.netloc}"
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        head = f"{method} {target} HTTP/1.1\r\nHost: {parts.netloc}\r\n{self.header_lines}"
        if body is None:
            data = (head + "Content-Length: 0\r\n\r\n").encode()
        else:
            payload = _encode_json(body).encode()
            data = (head + f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n").encode()
            data += payload
        try:
            return await asyncio.wait_for(self._exchange(origin, parts, data, url), timeout or self.timeout)
        except asyncio.TimeoutError:
            raise TransportError(f"no answer from {origin} within {timeout or self.timeout:.0f} s") from None

    async def _exchange(self, origin: str, parts: Any, data: bytes, url: str) -> Response:
        idle = self.idle.setdefault(origin, [])
        # A kept connection the server has closed meanwhile fails before any answer:
        # the request then goes once more, on a new one (every request the worker
        # makes may be repeated: a report the server already has is refused).
        while idle:
            connection = idle.pop()
            try:
                return await self._on(connection, idle, data, url)
            except _Closed:
                continue
        try:
            connection = await self._connect(parts)
        except OSError as e:
            raise TransportError(f"cannot connect to {origin}: {e}") from e
        try:
            return await self._on(connection, idle, data, url)
        except _Closed as e:
            raise TransportError(f"{origin} closed the connection without answering") from e

    async def _connect(self, parts: Any) -> _Connection:
        tls = None
        if parts.scheme == "https":
            if self.tls is None:
                self.tls = ssl.create_default_context()
            tls = self.tls
        port = parts.port or (443 if tls else 80)
        return await asyncio.open_connection(parts.hostname, port, ssl=tls)

    async def _on(self, connection: _Connection, idle: List[_Connection], data: bytes, url: str) -> Response:
        reader, writer = connection
        answered = False
        try:
            writer.write(data)
            await writer.drain()
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as e:
                if not e.partial:
                    raise _Closed() from e
                raise
            answered = True
            status, length, chunked, keep = _parse_head(head)
            if chunked:
                content = await _read_chunks(reader)
            elif length is not None:
                content = await reader.readexactly(length)
            else:
                content, keep = await reader.read(), False
        except _Closed:
            writer.close()
            raise
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as e:
            writer.close()
            if not answered and isinstance(e, (ConnectionResetError, BrokenPipeError)):
                raise _Closed() from e
            raise TransportError(f"the answer from {url} did not arrive whole: {type(e).__name__}: {e}") from e
        except BaseException:
            # Cancelled (a timeout) in the middle of an exchange: the connection's
            # state is unknown, so it is not used again.
            writer.close()
            raise
        if keep:
            idle.append(connection)
        else:
            writer.close()
        return Response(status, content, url)

    async def aclose(self) -> None:
        for connections in self.idle.values():
            for _, writer in connections:
                writer.close()
        self.idle.clear()


class _Closed(Exception):
    """A kept connection was found closed before any answer came on it."""


def _parse_head(head: bytes) -> Tuple[int, Optional[int], bool, bool]:
    """(status, content length or None, chunked, keep the connection)."""
    lines = head.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    if not version.startswith("HTTP/1."):
        raise ValueError(f"not an HTTP/1 answer: {lines[0][:80]!r}")
    status = int(rest[:3])
    length: Optional[int] = None
    chunked = False
    keep = version == "HTTP/1.1"
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "transfer-encoding":
            chunked = "chunked" in value.lower()
        elif name == "connection":
            keep = value.strip().lower() != "close" and (keep or value.strip().lower() == "keep-alive")
    return status, length, chunked, keep


async def _read_chunks(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";", 1)[0], 16)
        if size == 0:
            # Trailers, if any, end with an empty line.
            while await reader.readuntil(b"\r\n") != b"\r\n":
                pass
            return bytes(body)
        body += await reader.readexactly(size)
        await reader.readexactly(2)

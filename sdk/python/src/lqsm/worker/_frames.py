"""The messages between the processes pool and its children: each a pickle, after its
length as 4 bytes (big-endian).

Pickle, not JSON, because it is several times cheaper for the small messages sent per
task, and both ends are this package over a private pipe: nothing from outside the
worker is ever unpickled (the job's arguments came as JSON and stay JSON-shaped)."""

from __future__ import annotations

import logging
import pickle
import struct
from typing import Any, BinaryIO, List, Optional

_LENGTH = struct.Struct(">I")

log = logging.getLogger("lqsm.worker")


def encode(message: Any) -> bytes:
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(body)) + body


def read(stream: BinaryIO) -> Optional[Any]:
    """The next message from a blocking stream; None at its end."""
    header = stream.read(_LENGTH.size)
    if len(header) < _LENGTH.size:
        return None
    (size,) = _LENGTH.unpack(header)
    body = stream.read(size)
    if len(body) < size:
        return None
    return pickle.loads(body)


class Decoder:
    """Messages out of the chunks a non-blocking pipe gives, as they complete."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def feed(self, chunk: bytes) -> List[Any]:
        """The messages completed by `chunk`; one that cannot be read is logged and
        skipped, never left to block those after it."""
        buffer = self.buffer
        buffer += chunk
        bodies = []
        at = 0
        end = len(buffer)
        while end - at >= _LENGTH.size:
            (size,) = _LENGTH.unpack_from(buffer, at)
            if end - at - _LENGTH.size < size:
                break
            start = at + _LENGTH.size
            bodies.append(bytes(buffer[start : start + size]))
            at = start + size
        del buffer[:at]
        messages = []
        for body in bodies:
            try:
                messages.append(pickle.loads(body))
            except Exception:  # noqa: BLE001 (a bug in a child must not wedge the pipe)
                log.exception("a message from a child process could not be read; it is dropped")
        return messages

"""The per-stream header: one JSON line each way before the raw bytes.

The client opens a stream and writes ``{"v": 1, "target": "HOST:PORT"}\\n``.
The server answers ``{"v": 1, "ok": true}\\n`` once it is connected to the
target, or ``{"v": 1, "ok": false, "error": "..."}\\n`` and ends the stream.
After an ``ok`` the stream carries the target connection's bytes both ways. A
client may send data right after its header (it is delivered to the target
once the connection is made), but treats nothing as the target's until ``ok``.
"""

from __future__ import annotations

import asyncio
import json

from continuations.aio import SessionStream
from continuations.errors import RemoteError
from continuations.tunnel.targets import Target

__all__ = [
    "HeaderError",
    "MAX_HEADER",
    "TunnelRefusedError",
    "VERSION",
    "decode_reply",
    "decode_request",
    "encode_reply",
    "encode_request",
    "read_header",
]

VERSION = 1
MAX_HEADER = 4096  # bytes in one header line, newline included


class HeaderError(ValueError):
    """A header line that cannot be understood; the message is meant for the peer."""


class TunnelRefusedError(RemoteError):
    """The tunnel server refused this stream (target not allowed, unreachable, ...)."""


def _line(obj: dict[str, object]) -> bytes:
    return json.dumps(obj, separators=(", ", ": ")).encode() + b"\n"


def encode_request(target: Target) -> bytes:
    return _line({"v": VERSION, "target": str(target)})


def encode_reply(error: str | None = None) -> bytes:
    if error is None:
        return _line({"v": VERSION, "ok": True})
    return _line({"v": VERSION, "ok": False, "error": error})


def _object(line: bytes, what: str) -> dict[str, object]:
    try:
        obj = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise HeaderError(f"{what} is not a JSON line") from None
    if not isinstance(obj, dict):
        raise HeaderError(f"{what} is not a JSON object")
    version = obj.get("v")
    if version != VERSION:
        raise HeaderError(f"unsupported tunnel header version {version!r} "
                          f"(this side speaks {VERSION})")
    return obj


def decode_request(line: bytes) -> Target:
    obj = _object(line, "tunnel request")
    target = obj.get("target")
    if not isinstance(target, str):
        raise HeaderError('tunnel request has no "target": "HOST:PORT"')
    try:
        return Target.parse(target)
    except ValueError as exc:
        raise HeaderError(str(exc)) from None


def decode_reply(line: bytes) -> None:
    """Return on ``ok``; raise ``TunnelRefusedError`` with the server's reason otherwise."""
    try:
        obj = _object(line, "tunnel server's answer")
    except HeaderError as exc:
        raise TunnelRefusedError(str(exc)) from None
    if obj.get("ok") is True:
        return
    error = obj.get("error")
    raise TunnelRefusedError(error if isinstance(error, str) and error else "refused")


async def read_header(stream: SessionStream) -> bytes | None:
    """One header line (newline included), reading nothing beyond it.

    None if the stream ends before a full line; ``HeaderError`` past ``MAX_HEADER``.
    """
    line = bytearray()
    while len(line) < MAX_HEADER:
        try:
            byte = await stream.readexactly(1)
        except asyncio.IncompleteReadError:
            return None
        line += byte
        if byte == b"\n":
            return bytes(line)
    raise HeaderError(f"tunnel header longer than {MAX_HEADER} bytes")

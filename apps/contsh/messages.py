"""The control stream: one JSON object per line, each with a type ``t``.

Client to server: ``auth`` (``method`` publickey with ``key`` and ``sig``, or
password), then ``open`` (a new shell, or ``attach`` to take an existing one
over), then ``resize`` whenever the window changes. Server to client:
``auth-ok`` / ``auth-fail``, ``opened``, ``error``, and ``exit`` with the shell's
status when it ends. Every stream the client opens starts with a JSON line
saying what it is: the control stream with its first message, the terminal
stream with ``{"t": "tty"}``, a forwarded connection with the tunnel header
(``continuations/tunnel/header.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from continuations.aio import AsyncSession, SessionStream
from continuations.errors import ContinuationsError, ProtocolError
from continuations.tunnel.splice import discard

MAX_LINE = 64 * 1024
Message = dict[str, Any]


def encode(kind: str, **fields: Any) -> bytes:
    return json.dumps({"t": kind, **fields}, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> Message:
    try:
        obj = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ProtocolError("control message is not a JSON line") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("t"), str):
        raise ProtocolError("control message is not an object with a type")
    return obj


async def read(stream: SessionStream) -> Message | None:
    """The next message, or None at the end of the stream."""
    line = await stream.readline(limit=MAX_LINE)
    if not line:
        return None
    if not line.endswith(b"\n"):
        raise ProtocolError("control stream ended inside a message")
    return decode(line)


def field(message: Message, name: str, kind: type[Any], default: Any = ...) -> Any:
    """A typed field of a message; ``ProtocolError`` naming it if absent or wrong."""
    value = message.get(name, default)
    if value is ...:
        raise ProtocolError(f"{message['t']} message without {name!r}")
    if value is not None and not isinstance(value, kind):
        raise ProtocolError(f"{message['t']} message: {name!r} is not a {kind.__name__}")
    if kind is int and isinstance(value, bool):
        raise ProtocolError(f"{message['t']} message: {name!r} is not an integer")
    return value


def window(message: Message) -> tuple[int, int]:
    cols, rows = field(message, "cols", int), field(message, "rows", int)
    if not (1 <= cols <= 10000 and 1 <= rows <= 10000):
        raise ProtocolError(f"window size {cols}x{rows} out of range")
    return cols, rows


_ending: set[asyncio.Task[None]] = set()


def forwarded_streams(session: AsyncSession, control: SessionStream,
                      tty: SessionStream) -> list[int]:
    """The session's streams other than the control and terminal streams: forwarded
    connections, which a suspension cuts (``end_streams`` finishes them on resume)."""
    return [s for s in session.stream_ids if s not in (control.stream_id, tty.stream_id)]


def end_streams(session: AsyncSession, stream_ids: list[int]) -> None:
    """End forwarded connections a suspension cut: their target (or local) sockets are
    gone, so send end-of-stream and drop whatever still arrives on them."""
    for stream_id in stream_ids:
        with contextlib.suppress(ContinuationsError):
            stream = session.stream(stream_id)
            stream.write_eof()
            task = asyncio.ensure_future(discard(stream))
            _ending.add(task)
            task.add_done_callback(_ending.discard)

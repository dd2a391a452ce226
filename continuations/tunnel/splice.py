"""Relay bytes between a session stream and a local end, both ways, with half-close.

Each direction awaits its writer's drain before reading more, so a slow side
slows the other down instead of filling memory. The end of one direction is
passed on as a half-close (``write_eof``) and the other direction keeps
flowing, as TCP does. A lost path is not an event here at all: the session
buffers and replays, so reads just wait.

What the session stream cannot carry is a reset: when the local program's
connection fails, the far side sees an orderly end of stream. Once the session
itself ends, the local end is closed (gracefully if the session was closed,
with a reset if it was lost).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from continuations.aio import AsyncSession, SessionStream
from continuations.errors import SessionError
from continuations.protocol import SessionState
from continuations.tunnel.ends import Sink, Source

__all__ = ["SpliceResult", "discard", "splice"]

CHUNK = 64 * 1024
CLOSE_TIMEOUT = 5.0


@dataclass
class SpliceResult:
    bytes_up: int = 0  # local -> stream
    bytes_down: int = 0  # stream -> local
    session_ended: bool = False


async def _up(stream: SessionStream, source: Source, result: SpliceResult) -> None:
    try:
        while data := await source.read(CHUNK):
            stream.write(data)
            result.bytes_up += len(data)
            await stream.drain()
    except OSError:
        pass  # the local connection failed: all the far side can be told is "end"
    stream.write_eof()


async def _down(stream: SessionStream, sink: Sink, result: SpliceResult,
                first: Callable[[], Awaitable[None]] | None) -> None:
    if first is not None:
        await first()
    broken = False
    while data := await stream.read(4 * CHUNK):
        if broken:
            continue  # nobody to give it to; keep reading so the stream can finish
        try:
            sink.write(data)
            result.bytes_down += len(data)
            await sink.drain()
        except OSError:
            broken = True
    if not broken:
        with contextlib.suppress(OSError):
            sink.write_eof()


async def discard(stream: SessionStream) -> None:
    """Read and drop until end of stream (or of session), so the stream can be forgotten."""
    with contextlib.suppress(SessionError):
        while await stream.read(4 * CHUNK):
            pass


async def splice(
    session: AsyncSession,
    stream: SessionStream,
    source: Source,
    sink: Sink,
    *,
    first: Callable[[], Awaitable[None]] | None = None,
) -> SpliceResult:
    """Relay until both directions ended (or the session did); then close the local end.

    ``first`` runs in the stream -> local direction before any byte is passed on
    (the client reads the server's answer there). If it raises, nothing more is
    relayed: the stream is ended, the local end reset, and the error re-raised.
    """
    loop = asyncio.get_running_loop()
    result = SpliceResult()
    up = loop.create_task(_up(stream, source, result))
    down = loop.create_task(_down(stream, sink, result, first))
    ended = loop.create_task(session.wait_closed())
    tasks = (up, down, ended)
    try:
        # stream -> local ends by itself: with the end of stream, or when the session ends.
        await asyncio.wait({down})
        failure = down.exception()
        if failure is not None and not isinstance(failure, SessionError):
            up.cancel()
            await asyncio.wait({up})
            with contextlib.suppress(SessionError):
                stream.write_eof()
            sink.abort()
            await discard(stream)
            raise failure
        # local -> stream may go on (half-close) until the local side ends it, or until
        # the session ends and nothing can be sent any more.
        if not up.done():
            await asyncio.wait({up, ended}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        sink.abort()
        raise
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks)
        for task in tasks:  # collected here; session errors just mean "the session ended"
            if not task.cancelled():
                task.exception()
    result.session_ended = session.finished
    if session.state is SessionState.LOST:
        sink.abort()
    else:
        await sink.close(CLOSE_TIMEOUT)
    return result

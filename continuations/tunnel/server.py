"""The tunnel server: every stream of every session becomes one connection to a target.

Per stream: read the client's header line, check the target against the allow
list, connect, answer, then relay both ways (``splice``). A refusal or a
failed connection is answered on that stream only; the session and its other
streams go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from continuations.aio import AsyncSession, Server, ServerSession, SessionStream, serve
from continuations.errors import SessionError
from continuations.protocol import SessionConfig
from continuations.tunnel.ends import CHUNK, SocketEnd
from continuations.tunnel.header import (
    HeaderError,
    decode_request,
    encode_reply,
    read_header,
)
from continuations.tunnel.splice import discard, splice
from continuations.tunnel.targets import DEFAULT_ALLOWED, AllowList, Target

__all__ = ["TunnelServer", "TunnelStats", "describe_error", "serve_tunnel"]

log = logging.getLogger("continuations.tunnel")

CONNECT_TIMEOUT = 10.0


@dataclass
class TunnelStats:
    sessions: int = 0
    streams: int = 0
    refused: int = 0
    active: int = 0


def describe_error(exc: BaseException) -> str:
    """A short reason: "Connection refused" rather than asyncio's long message."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.errno:
        with contextlib.suppress(ValueError):
            return os.strerror(exc.errno) if exc.errno > 0 else (exc.strerror or str(exc))
    return str(exc) or type(exc).__name__


class TunnelServer:
    """Serves tunnel sessions: pass ``handle`` to ``serve`` (``serve_tunnel`` does)."""

    def __init__(
        self,
        allow: Iterable[Target] | AllowList = DEFAULT_ALLOWED,
        *,
        connect_timeout: float = CONNECT_TIMEOUT,
    ) -> None:
        self.allow = allow if isinstance(allow, AllowList) else AllowList(allow)
        self.connect_timeout = connect_timeout
        self.stats = TunnelStats()
        self.server: Server | None = None

    async def handle(self, session: ServerSession) -> None:
        """Run one session: a task per stream the client opens, until the session ends."""
        self.stats.sessions += 1
        name = session.id_hex[:8]
        log.info("session %s opened", name)
        tasks: set[asyncio.Task[None]] = set()
        try:
            while True:
                stream = await session.accept_stream()
                task = asyncio.ensure_future(self.handle_stream(session, stream, name))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        except SessionError as exc:
            log.info("session %s ended: %s", name, exc)
        finally:
            if tasks:
                # Each ends by itself once the session is over; a cancelled handler
                # (server shutting down) takes them along.
                try:
                    await asyncio.wait(set(tasks))
                finally:
                    for task in tasks:
                        task.cancel()

    async def _refuse(self, stream: SessionStream, where: str, error: str) -> None:
        self.stats.refused += 1
        log.warning("%s refused: %s", where, error)
        with contextlib.suppress(SessionError):
            stream.write(encode_reply(error))
            stream.write_eof()
            await discard(stream)

    async def handle_stream(self, session: AsyncSession, stream: SessionStream,
                            name: str) -> None:
        """Serve one stream: header, allow check, connect, relay until both ends close."""
        self.stats.streams += 1
        where = f"session {name} stream {stream.stream_id}"
        try:
            line = await read_header(stream)
            if line is None:
                with contextlib.suppress(SessionError):
                    stream.write_eof()
                return
            target = decode_request(line)
        except HeaderError as exc:
            await self._refuse(stream, where, str(exc))
            return
        except SessionError:
            return
        if not self.allow.allows(target):
            await self._refuse(stream, where, f"target {target} is not allowed by this tunnel "
                               f"server (allow it with --allow {target})")
            return
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(target.host, target.port, limit=CHUNK),
                self.connect_timeout,
            )
        except (OSError, TimeoutError) as exc:
            await self._refuse(stream, where, f"cannot connect to {target}: {describe_error(exc)}")
            return
        end = SocketEnd(reader, writer)
        try:
            stream.write(encode_reply())
        except SessionError:
            end.abort()
            return
        self.stats.active += 1
        log.info("%s -> %s", where, target)
        try:
            result = await splice(session, stream, end, end)
        finally:
            self.stats.active -= 1
        log.info("%s -> %s done: %d bytes to it, %d from it%s", where, target,
                 result.bytes_down, result.bytes_up,
                 " (session ended)" if result.session_ended else "")


async def serve_tunnel(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    allow: Iterable[Target] = DEFAULT_ALLOWED,
    host_key: Ed25519PrivateKey | str | os.PathLike[str] | None = None,
    config: SessionConfig | None = None,
    connect_timeout: float = CONNECT_TIMEOUT,
) -> TunnelServer:
    """Listen on ``host:port`` and serve tunnel sessions; ``.server`` is the session server."""
    tunnel = TunnelServer(allow, connect_timeout=connect_timeout)
    tunnel.server = await serve(tunnel.handle, host, port, host_key=host_key, config=config)
    return tunnel

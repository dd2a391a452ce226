"""The tunnel client: one lazily opened session, a stream per forwarded connection.

``TunnelClient`` opens its session on first use and shares it among every
stream; a session that ended (closed, or lost after the server forgot it) is
replaced by a fresh one on the next use. With several local addresses, the
client moves to the next one each time the path is lost, and on ``migrate()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from continuations.aio import AsyncSession, ClientSession, SessionStream, connect
from continuations.errors import ContinuationsError, SessionError
from continuations.protocol import (
    Disconnected,
    Event,
    Reattached,
    SessionClosed,
    SessionConfig,
    SessionLost,
)
from continuations.tunnel.ends import CHUNK, Sink, SocketEnd, Source
from continuations.tunnel.header import (
    TunnelRefusedError,
    decode_reply,
    encode_request,
    read_header,
)
from continuations.tunnel.splice import SpliceResult, splice
from continuations.tunnel.targets import Forward, Target

__all__ = ["Forwarder", "Relay", "SessionRelay", "TunnelClient", "relay_on"]

log = logging.getLogger("continuations.tunnel")


def _where(address: tuple[str, int] | None) -> str:
    return f"{address[0]}:{address[1]}" if address else "-"


class TunnelClient:
    def __init__(
        self,
        host: str,
        port: int,
        *,
        known_hosts: str | os.PathLike[str] | None = None,
        local_hosts: Sequence[str] = (),
        config: SessionConfig | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.known_hosts = Path(known_hosts) if known_hosts is not None else None
        self.local_hosts = list(local_hosts)
        self.config = config or SessionConfig()
        self._next_local = 0
        self._session: ClientSession | None = None
        self._opening: asyncio.Task[ClientSession] | None = None
        self.sessions_opened = 0

    # --- the session ----------------------------------------------------------------------

    @property
    def current(self) -> ClientSession | None:
        """The session in use, if one is open."""
        session = self._session
        return session if session is not None and not session.finished else None

    @property
    def last_session(self) -> ClientSession | None:
        """The most recent session, open or not."""
        return self._session

    def _rotate(self) -> str | None:
        if not self.local_hosts:
            return None
        host = self.local_hosts[self._next_local % len(self.local_hosts)]
        self._next_local += 1
        return host

    async def session(self) -> ClientSession:
        """The shared session, opened now if there is none (concurrent callers share it)."""
        current = self.current
        if current is not None:
            return current
        if self._opening is None or self._opening.done():
            self._opening = asyncio.ensure_future(self._open())
        return await asyncio.shield(self._opening)

    async def _open(self) -> ClientSession:
        local = self._rotate()
        session = await connect(self.host, self.port, known_hosts=self.known_hosts,
                                local_host=local, config=self.config)
        self.sessions_opened += 1
        session.add_listener(lambda event: self._on_event(session, event))
        self._session = session
        local_addr, _ = session.path
        log.info("session %s open to %s:%d from %s", session.id_hex[:8], self.host, self.port,
                 _where(local_addr))
        return session

    def _on_event(self, session: ClientSession, event: Event) -> None:
        name = session.id_hex[:8]
        if isinstance(event, Disconnected):
            log.info("session %s: path lost (%s)", name, event.reason)
            if len(self.local_hosts) > 1:
                session.set_local_host(self._rotate())
        elif isinstance(event, Reattached):
            local, _ = session.path
            rtt = f"{event.rtt * 1000:.0f} ms" if event.rtt is not None else "?"
            log.info("session %s: re-attached from %s after %.1f s offline (rtt %s, "
                     "%d bytes replayed)", name, _where(local), event.offline, rtt,
                     event.replayed)
        elif isinstance(event, SessionLost):
            log.warning("session %s lost: %s", name, event.reason)
        elif isinstance(event, SessionClosed) and event.by_peer:
            log.warning("session %s closed by the server: %s", name, event.reason or "ok")

    async def migrate(self) -> None:
        """Make-before-break move of the current session to the next local address."""
        session = self.current
        if session is None:
            return
        local = self._rotate()
        try:
            await session.migrate(local_host=local)
        except (OSError, TimeoutError, SessionError) as exc:
            log.warning("migration to %s failed: %s", local, exc)
            return
        log.info("session %s migrated to %s", session.id_hex[:8], _where(session.path[0]))

    async def close(self, timeout: float = 5.0) -> None:
        if self._opening is not None and not self._opening.done():
            self._opening.cancel()
            with contextlib.suppress(BaseException):
                await self._opening
        session = self._session
        self._session = None
        if session is not None and not session.finished:
            await session.close(timeout=timeout)

    # --- streams --------------------------------------------------------------------------

    async def open_stream(self, target: Target) -> tuple[ClientSession, SessionStream]:
        """A stream asking for ``target``; data may follow at once (the answer is read by
        ``relay``, or by ``expect_ok``)."""
        session = await self.session()
        stream = session.open_stream()
        stream.write(encode_request(target))
        return session, stream

    async def relay(self, target: Target, source: Source, sink: Sink) -> SpliceResult:
        """Forward one local connection (or stdin/stdout) to ``target`` until both ends close.

        Raises ``TunnelRefusedError`` if the server refuses; ``SessionError`` if no
        session can be opened.
        """
        return await relay_on(await self.session(), target, source, sink)


async def relay_on(session: AsyncSession, target: Target, source: Source,
                   sink: Sink) -> SpliceResult:
    """Forward one local end to ``target`` over a new stream of ``session``: the tunnel
    header, then bytes both ways until both ends close (``TunnelRefusedError`` if the
    far side refuses the target)."""
    stream = session.open_stream()
    stream.write(encode_request(target))

    async def expect_ok() -> None:
        await _read_reply(stream)

    return await splice(session, stream, source, sink, first=expect_ok)


async def _read_reply(stream: SessionStream) -> None:
    line = await read_header(stream)
    if line is None:
        raise TunnelRefusedError("the tunnel server ended the stream without an answer")
    decode_reply(line)


class Relay(Protocol):
    """Something that carries one local connection to a target (``TunnelClient``, or a
    session the application already has, wrapped by ``SessionRelay``)."""

    async def relay(self, target: Target, source: Source, sink: Sink) -> SpliceResult: ...


class SessionRelay:
    """Forwards over one given session (an application's own, like the shell's)."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def relay(self, target: Target, source: Source, sink: Sink) -> SpliceResult:
        return await relay_on(self.session, target, source, sink)


class Forwarder:
    """Listens on a local port; each connection becomes a stream to ``forward.target``."""

    def __init__(self, client: Relay, forward: Forward) -> None:
        self.client = client
        self.forward = forward
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._ends: set[SocketEnd] = set()
        self.connections = 0
        self.refused = 0

    async def start(self, sock: socket.socket | None = None) -> tuple[str, int]:
        """Listen on the forward's address, or on ``sock`` if given (a listener the
        runtime manages, released while the session is suspended)."""
        if sock is not None:
            self._server = await asyncio.start_server(self._accepted, sock=sock, limit=CHUNK)
        else:
            self._server = await asyncio.start_server(
                self._accepted, self.forward.bind, self.forward.port, limit=CHUNK,
                reuse_address=True,
            )
        return self.address

    @property
    def address(self) -> tuple[str, int]:
        assert self._server is not None, "forwarder not started"
        sockname = self._server.sockets[0].getsockname()
        return str(sockname[0]), int(sockname[1])

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        end = SocketEnd(reader, writer)
        self._ends.add(end)
        self.connections += 1
        peer = writer.get_extra_info("peername")
        target = self.forward.target
        try:
            await self.client.relay(target, end, end)
        except TunnelRefusedError as exc:
            self.refused += 1
            log.warning("connection from %s to %s refused by the tunnel server: %s",
                        _where(peer), target, exc)
        except (OSError, TimeoutError, ContinuationsError) as exc:
            log.warning("connection from %s to %s failed: %s", _where(peer), target, exc)
            end.abort()
        finally:
            self._ends.discard(end)
            self._tasks.discard(task)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for end in list(self._ends):
            end.abort()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks))
        if self._server is not None:
            await self._server.wait_closed()


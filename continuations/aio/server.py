"""The server: ``serve()`` accepts links and routes them to sessions by session id."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from types import TracebackType

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from continuations.aio.driver import Address, Driver, LinkProtocol
from continuations.aio.session import AsyncSession
from continuations.errors import SessionError, StreamStateError
from continuations.hostkeys import fingerprint, load_or_create_host_key
from continuations.protocol import (
    Event,
    LinkFailed,
    ParkedSessionWanted,
    ServerEndpoint,
    SessionClosed,
    SessionConfig,
    SessionEstablished,
    SessionLost,
)
from continuations.protocol.snapshot import SessionSnapshot

log = logging.getLogger("continuations.server")

Handler = Callable[["ServerSession"], Awaitable[None]]


class ServerSession(AsyncSession):
    """A session a client opened with this server."""


class Server:
    def __init__(
        self, handler: Handler, *, host_key: Ed25519PrivateKey, config: SessionConfig
    ) -> None:
        self._handler = handler
        self.config = config
        self._loop = asyncio.get_running_loop()
        self.endpoint = ServerEndpoint(
            config=config, rng=os.urandom, now=self._loop.time(), host_key=host_key
        )
        self.host_key_fingerprint = fingerprint(self.endpoint.host_public)
        self._driver = Driver(self.endpoint, self._on_event)
        self.sessions: dict[bytes, ServerSession] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.base_events.Server | None = None
        self.links_failed = 0
        # Called with the id of a parked session whose client came back (see serve_parked
        # in the runtime); resuming it lets the client's next attempt in.
        self.on_parked: Callable[[ParkedSessionWanted], None] | None = None

    async def start(self, host: str, port: int) -> None:
        self._server = await self._loop.create_server(
            lambda: LinkProtocol(self._driver), host, port, reuse_address=True
        )

    @property
    def address(self) -> Address:
        assert self._server is not None, "server not started"
        sockname = self._server.sockets[0].getsockname()
        return sockname[0], sockname[1]

    def _on_event(self, event: Event) -> None:
        if isinstance(event, SessionEstablished):
            core = self.endpoint.session(event.session_id)
            if core is None:
                return
            session = ServerSession(core, self._driver)
            self.sessions[event.session_id] = session
            task = self._loop.create_task(self._run(session))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        if isinstance(event, ParkedSessionWanted):
            if self.on_parked is not None:
                self.on_parked(event)
            return
        if isinstance(event, LinkFailed):
            self.links_failed += 1
            log.info("link %d failed: %s", event.link, event.error)
            return
        session_id = getattr(event, "session_id", None)
        target = self.sessions.get(session_id) if session_id is not None else None
        if target is not None:
            target._on_event(event)
            # Only on its own closing event: the core may already be finished while events
            # queued before SessionClosed/SessionLost (the last data) are delivered.
            if isinstance(event, SessionClosed | SessionLost):
                self.sessions.pop(target.id, None)

    async def _run(self, session: ServerSession) -> None:
        try:
            await self._handler(session)
        except SessionError as exc:
            log.info("session %s ended: %s", session.id_hex, exc)
        except Exception:
            log.exception("handler for session %s failed", session.id_hex)
            session.abort("server handler failed")

    def suspend_session(self, session_id: bytes) -> SessionSnapshot:
        """Freeze one session for another server process; it leaves this one."""
        session = self.sessions.pop(session_id, None)
        if session is None:
            raise StreamStateError(f"no session {session_id.hex()} on this server")
        snap = session._freeze_streams(self.endpoint.suspend_session(session_id))
        self._driver.pump()
        for stream in session._streams.values():
            stream._fail()
        session._error = SessionError("session suspended")
        return snap

    def restore_session(self, snapshot: SessionSnapshot) -> ServerSession:
        """Take in a suspended session; it waits for its client to re-attach.

        No handler runs for it: the caller drives the returned session.
        """
        core = self.endpoint.restore_session(snapshot, self._loop.time())
        session = ServerSession(core, self._driver)
        session._thaw_streams(snapshot)
        self.sessions[core.id] = session
        self._driver.pump()
        return session

    def stop_accepting(self) -> None:
        """Stop listening; live sessions carry on (before suspending them for a restart,
        so that their clients cannot come back here meanwhile)."""
        if self._server is not None:
            self._server.close()

    def close(self) -> None:
        """Stop listening, close every session, and drop every connection."""
        if self._server is not None:
            self._server.close()
        for session in list(self.sessions.values()):
            session.abort("server shutting down")
        for task in self._tasks:
            task.cancel()
        self._driver.shutdown()

    async def wait_closed(self) -> None:
        if self._server is not None:
            await self._server.wait_closed()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def __aenter__(self) -> Server:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
        await self.wait_closed()


async def serve(
    handler: Handler,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    host_key: Ed25519PrivateKey | str | os.PathLike[str] | None = None,
    config: SessionConfig | None = None,
) -> Server:
    """Listen on ``host:port``; run ``await handler(session)`` for each new session.

    ``host_key`` is a key, or a path to one (created, 0600, if missing); with
    None a throwaway key is generated (clients will pin it, so use a file for any
    server that restarts).
    """
    if host_key is None:
        key = Ed25519PrivateKey.generate()
    elif isinstance(host_key, Ed25519PrivateKey):
        key = host_key
    else:
        key = load_or_create_host_key(host_key)
    server = Server(handler, host_key=key, config=config or SessionConfig())
    await server.start(host, port)
    return server

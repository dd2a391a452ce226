"""The client: ``connect()``, automatic re-attach, and make-before-break migration."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
from pathlib import Path

from continuations.aio.driver import Driver, LinkProtocol
from continuations.aio.session import AsyncSession
from continuations.errors import (
    AttachRejectedError,
    ConnectError,
    ContinuationsError,
    SessionError,
)
from continuations.hostkeys import KnownHosts
from continuations.protocol import (
    AttachRejected,
    ClientEndpoint,
    Disconnected,
    Event,
    LinkFailed,
    LinkId,
    Reattached,
    RekeyDue,
    SessionConfig,
    SessionEstablished,
    SessionLost,
    SessionState,
)
from continuations.protocol.snapshot import SessionSnapshot


class ClientSession(AsyncSession):
    """A session this process dialled. It re-attaches by itself when its path dies."""

    def __init__(
        self,
        endpoint: ClientEndpoint,
        driver: Driver,
        *,
        host: str,
        port: int,
        local_host: str | None,
        config: SessionConfig,
        reconnect: bool,
    ) -> None:
        super().__init__(endpoint.session, driver)
        self._endpoint = endpoint
        self.remote_host = host
        self.remote_port = port
        self.local_host = local_host
        self._config = config
        self._reconnect = reconnect
        self._random = random.Random()
        self._outcomes: dict[LinkId, asyncio.Future[None]] = {}
        self._reconnector: asyncio.Task[None] | None = None
        self.rekeys = 0
        self._background: set[asyncio.Task[None]] = set()
        self.last_error: BaseException | None = None
        # Loop time at which the latest transport connection came up (re-attach latency
        # is measured from here to data flowing again).
        self.link_opened_at: float | None = None
        self.known_hosts_path: Path | None = None

    # --- addresses ------------------------------------------------------------------------

    def set_local_host(self, host: str | None) -> None:
        """Source address for future links (re-attach from another local address)."""
        self.local_host = host

    def set_remote(self, host: str, port: int) -> None:
        self.remote_host, self.remote_port = host, port

    # --- links ----------------------------------------------------------------------------

    async def _dial(self, local_host: str | None) -> LinkId:
        local = (local_host, 0) if local_host else None
        _, proto = await asyncio.wait_for(
            self._loop.create_connection(
                lambda: LinkProtocol(self._driver),
                self.remote_host,
                self.remote_port,
                local_addr=local,
            ),
            timeout=self._config.handshake_timeout,
        )
        assert isinstance(proto, LinkProtocol)
        return proto.link_id

    async def _attach(self, local_host: str | None) -> LinkId:
        """Open a link and wait until it is the current attachment (or fails)."""
        link = await self._dial(local_host)
        outcome = self._outcomes.get(link)
        if outcome is None:  # settled before we could wait on it
            if self._core.active is not None and self._core.active.id == link:
                return link
            raise ConnectError("link closed during the handshake")
        try:
            await outcome
        finally:
            self._outcomes.pop(link, None)
        return link

    def _link_started(self, link: LinkId) -> None:
        self.link_opened_at = self._loop.time()
        self._outcomes[link] = self._loop.create_future()

    def _settle(self, link: LinkId, error: BaseException | None) -> None:
        outcome = self._outcomes.get(link)
        if outcome is not None and not outcome.done():
            if error is None:
                outcome.set_result(None)
            else:
                outcome.set_exception(error)

    def _link_down(self, link: LinkId) -> None:
        self._settle(link, ConnectError("transport connection closed during the handshake"))

    async def migrate(self, local_host: str | None = None) -> None:
        """Make-before-break: attach over a new link (from ``local_host``), then drop the old.

        Future reconnects use ``local_host`` too.
        """
        self._raise_if_failed()
        if local_host is not None:
            self.local_host = local_host
        await self._attach(self.local_host)

    # --- events ---------------------------------------------------------------------------

    def _on_event(self, event: Event) -> None:
        if isinstance(event, SessionEstablished | Reattached):
            self._settle(event.link, None)
        elif isinstance(event, LinkFailed):
            self.last_error = event.error
            self._settle(event.link, event.error)
        elif isinstance(event, AttachRejected):
            error = AttachRejectedError(f"server refused re-attach: {event.reason}", event.code)
            self.last_error = error
            self._settle(event.link, error)
        elif isinstance(event, SessionLost):
            for link in list(self._outcomes):
                self._settle(link, SessionError(f"session lost: {event.reason}"))
        elif isinstance(event, RekeyDue):
            task = self._loop.create_task(self._rekey())
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        super()._on_event(event)
        if isinstance(event, Disconnected) and self._reconnect:
            self._start_reconnecting()

    async def _rekey(self) -> None:
        """Fresh keys: a make-before-break re-attach from the same local address."""
        for attempt in range(3):
            if self.finished or self._core.state is not SessionState.ESTABLISHED:
                return
            try:
                await self._attach(self.local_host)
                self.rekeys += 1
                return
            except (OSError, TimeoutError, ContinuationsError) as exc:
                self.last_error = exc
                await asyncio.sleep(self._config.reconnect_delay(attempt + 1,
                                                                self._random.random()))

    def _start_reconnecting(self) -> None:
        if self._reconnector is None or self._reconnector.done():
            self._reconnector = self._loop.create_task(self._reconnect_loop())

    async def _reconnect_loop(self) -> None:
        """Re-attach until it works, the session is lost, or it is closed."""
        attempt = 0
        while not self.finished and self._core.state is SessionState.DISCONNECTED:
            if attempt:
                await asyncio.sleep(self._config.reconnect_delay(attempt, self._random.random()))
                if self.finished or self._core.state is not SessionState.DISCONNECTED:
                    return
            attempt += 1
            try:
                await self._attach(self.local_host)
                return
            except (OSError, TimeoutError, ContinuationsError) as exc:
                self.last_error = exc

    def suspend(self) -> SessionSnapshot:
        """Freeze the session for another process (see ``resume``) and drop its links.

        The snapshot holds the session's keys: keep it secret (the runtime's store
        encrypts it). The server keeps the session and waits for the re-attach.
        """
        self._raise_if_failed()
        self._reconnect = False
        if self._reconnector is not None:
            self._reconnector.cancel()
        snap = self._freeze_streams(self._endpoint.suspend())
        self._driver.pump()
        self._driver.shutdown()
        for stream in self._streams.values():
            stream._fail()
        self._error = SessionError("session suspended")
        return snap

    async def close(self, reason: str = "", timeout: float = 10.0) -> None:
        await super().close(reason, timeout)
        if self._reconnector is not None:
            self._reconnector.cancel()
        self._driver.shutdown()


def _build(
    host: str,
    port: int,
    *,
    known_hosts: str | os.PathLike[str] | KnownHosts | None,
    local_host: str | None,
    config: SessionConfig,
    reconnect: bool,
    snapshot: SessionSnapshot | None,
) -> ClientSession:
    pins = known_hosts if isinstance(known_hosts, KnownHosts) else KnownHosts(
        Path(known_hosts).expanduser() if known_hosts is not None else None
    )
    label = f"{host}:{port}"
    holder: list[ClientSession] = []

    def on_event(event: Event) -> None:
        holder[0]._on_event(event)

    def on_link_up(link: LinkId) -> None:
        holder[0]._link_started(link)

    def on_link_down(link: LinkId) -> None:
        holder[0]._link_down(link)

    endpoint = ClientEndpoint(
        config=config,
        rng=os.urandom,
        now=asyncio.get_running_loop().time(),
        verify_host_key=lambda key: pins.check(label, key),
        snapshot=snapshot,
    )
    driver = Driver(endpoint, on_event, on_link_up=on_link_up, on_link_down=on_link_down)
    session = ClientSession(
        endpoint, driver, host=host, port=port, local_host=local_host, config=config,
        reconnect=reconnect,
    )
    session.known_hosts_path = pins.path
    holder.append(session)
    return session


async def connect(
    host: str,
    port: int,
    *,
    known_hosts: str | os.PathLike[str] | KnownHosts | None = None,
    local_host: str | None = None,
    config: SessionConfig | None = None,
    reconnect: bool = True,
) -> ClientSession:
    """Open a new session to ``host:port``.

    The server's host key is pinned in ``known_hosts`` on first use and checked on
    every later connection (``HostKeyMismatchError`` on a change). With
    ``reconnect``, a lost path is re-attached automatically, with capped
    exponential backoff and jitter.
    """
    session = _build(
        host, port, known_hosts=known_hosts, local_host=local_host,
        config=config or SessionConfig(), reconnect=reconnect, snapshot=None,
    )
    try:
        await session._attach(local_host)
    except (OSError, TimeoutError, ContinuationsError) as exc:
        session._driver.shutdown()
        cause = session.last_error or exc
        raise ConnectError(f"cannot open a session to {host}:{port}: {cause}") from cause
    return session


async def resume(
    snapshot: SessionSnapshot,
    host: str,
    port: int,
    *,
    known_hosts: str | os.PathLike[str] | KnownHosts | None = None,
    local_host: str | None = None,
    config: SessionConfig | None = None,
    timeout: float = 30.0,
) -> ClientSession:
    """Continue a suspended session (from ``ClientSession.suspend``) in this process.

    Re-attaches to ``host:port`` with backoff until it works or ``timeout``
    passes; the peer sees one continuous session. Streams keep their ids:
    ``session.stream(id)``.
    """
    session = _build(
        host, port, known_hosts=known_hosts, local_host=local_host,
        config=config or SessionConfig(), reconnect=True, snapshot=snapshot,
    )
    session._thaw_streams(snapshot)
    session._start_reconnecting()
    assert session._reconnector is not None
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(session._reconnector), timeout)
    if session.state is not SessionState.ESTABLISHED:
        session._reconnect = False
        session._reconnector.cancel()
        session._driver.shutdown()
        cause = session.last_error
        raise ConnectError(
            f"cannot resume session {snapshot.session_id.hex()} at {host}:{port}: "
            f"{cause or 'timed out'}"
        ) from cause
    return session

"""What client and server sessions share: streams, lifecycle listeners, closing."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import replace
from types import TracebackType

from continuations.aio.driver import Address, Driver
from continuations.aio.stream import SessionStream
from continuations.errors import (
    SessionClosedError,
    SessionError,
    SessionLostError,
    StreamStateError,
)
from continuations.protocol import (
    Disconnected,
    Event,
    Reattached,
    Session,
    SessionClosed,
    SessionLost,
    SessionState,
    StreamDataReceived,
    StreamOpened,
)
from continuations.protocol.keys import channel_binding
from continuations.protocol.snapshot import SessionSnapshot

Listener = Callable[[Event], None]


class AsyncSession:
    def __init__(self, core: Session, driver: Driver) -> None:
        self._core = core
        self._driver = driver
        self._loop = driver.loop
        self._streams: dict[int, SessionStream] = {}
        self._incoming: asyncio.Queue[SessionStream] = asyncio.Queue()
        self._listeners: list[Listener] = []
        self._starved: dict[SessionStream, None] = {}
        self._closed = self._loop.create_future()
        self._error: SessionError | None = None

    # --- identity and state ---------------------------------------------------------------

    @property
    def id(self) -> bytes:
        return self._core.id

    @property
    def id_hex(self) -> str:
        return self._core.id.hex()

    @property
    def channel_binding(self) -> bytes:
        """32 bytes unique to this session, known only to its two ends (stable across
        re-attachments): sign it to bind an application-level proof to the session."""
        return channel_binding(self._core.resume_key)

    @property
    def state(self) -> SessionState:
        return self._core.state

    @property
    def finished(self) -> bool:
        return self._core.finished

    @property
    def rtt(self) -> float | None:
        """Smoothed round-trip time in seconds (RFC 6298), None before the first sample."""
        return self._core.rtt.srtt

    @property
    def latest_rtt(self) -> float | None:
        """The most recent RTT sample (after a re-attach: the handshake's round trip)."""
        return self._core.rtt.latest

    @property
    def delivery_rate(self) -> float | None:
        """Bytes per second the peer acknowledged while data was outstanding (EWMA)."""
        return self._core.delivery_rate

    async def wait_attached(self) -> None:
        """Wait until the session has a usable path (raises if it ends first)."""
        while self._core.state is not SessionState.ESTABLISHED:
            self._raise_if_failed()
            waiter = self._loop.create_future()

            def wake(event: Event, waiter: asyncio.Future[None] = waiter) -> None:
                if not waiter.done():
                    waiter.set_result(None)

            self.add_listener(wake)
            try:
                await asyncio.wait({waiter, self._closed}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                self.remove_listener(wake)

    @property
    def host_key(self) -> bytes:
        """The server's Ed25519 host key (raw public bytes)."""
        return self._core.host_key

    @property
    def attach_version(self) -> int:
        return self._core.attach_version

    @property
    def path(self) -> tuple[Address | None, Address | None]:
        """(local, remote) address of the current attachment, or (None, None)."""
        active = self._core.active
        return self._driver.path(active.id if active is not None else None)

    @property
    def buffered(self) -> int:
        return self._core.buffered

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(event)`` for Disconnected, Reattached, SessionClosed, SessionLost."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        self._listeners.remove(listener)

    # --- streams --------------------------------------------------------------------------

    def _sweep(self) -> None:
        """Drop streams that are over for both the core and the application."""
        for sid in [sid for sid, stream in self._streams.items() if self._over(sid, stream)]:
            del self._streams[sid]

    def _over(self, stream_id: int, stream: SessionStream) -> bool:
        # The core forgets a stream once both ends are done and everything was read; this
        # layer also waits until the end of stream was handed to the stream object and
        # nobody waits on it, or a reader would never be woken.
        return stream_id not in self._core.streams and stream._finished()

    def open_stream(self) -> SessionStream:
        self._raise_if_failed()
        self._sweep()
        stream_id = self._core.open_stream()
        stream = SessionStream(self, stream_id)
        self._streams[stream_id] = stream
        self._driver.kick()
        return stream

    async def accept_stream(self) -> SessionStream:
        """The next stream the peer opened."""
        if self._incoming.empty():
            self._raise_if_failed()
            getter = asyncio.ensure_future(self._incoming.get())
            done, _ = await asyncio.wait(
                {getter, self._closed}, return_when=asyncio.FIRST_COMPLETED
            )
            if getter not in done:
                getter.cancel()
                self._raise_if_failed()
            return getter.result()
        return self._incoming.get_nowait()

    def stream(self, stream_id: int) -> SessionStream:
        """The stream with this id (after a resume, how an application finds its streams)."""
        try:
            return self._streams[stream_id]
        except KeyError:
            raise StreamStateError(f"no stream {stream_id} in this session") from None

    @property
    def stream_ids(self) -> list[int]:
        return sorted(self._streams)

    def _freeze_streams(self, snap: SessionSnapshot) -> SessionSnapshot:
        """Fold what only this layer holds into a snapshot: unread input, waiting writes."""
        streams = []
        for st in snap.streams:
            stream = self._streams.get(st.stream_id)
            if stream is None:
                streams.append(st)
                continue
            waiting = b"".join(stream._pending)
            streams.append(
                replace(
                    st,
                    unacked=st.unacked + waiting,
                    fin=st.fin or stream._pending_eof,
                    unread=b"".join(stream._chunks),
                )
            )
        return replace(snap, streams=tuple(streams))

    def _thaw_streams(self, snap: SessionSnapshot) -> None:
        for st in snap.streams:
            stream = SessionStream(self, st.stream_id)
            stream._feed(st.unread, False)
            stream._eof = st.final is not None and st.received == st.final + 1
            stream._eof_written = st.fin
            self._streams[st.stream_id] = stream

    def _consumed(self, stream_id: int, n: int) -> None:
        self._core.stream_consumed(stream_id, n)
        stream = self._streams.get(stream_id)
        if stream is not None and self._over(stream_id, stream):
            del self._streams[stream_id]  # the application keeps its own reference
        self._driver.kick()

    def _waiting_for_room(self, stream: SessionStream) -> None:
        self._starved[stream] = None
        self._driver.starved[self] = None

    # --- events ---------------------------------------------------------------------------

    def _on_event(self, event: Event) -> None:
        if isinstance(event, StreamDataReceived):
            stream = self._streams.get(event.stream_id)
            if stream is not None:
                stream._feed(event.data, event.end_stream)
        elif isinstance(event, StreamOpened):
            self._sweep()
            stream = SessionStream(self, event.stream_id)
            self._streams[event.stream_id] = stream
            self._incoming.put_nowait(stream)
        elif isinstance(event, SessionClosed | SessionLost):
            self._finish(event)
        if isinstance(event, Disconnected | Reattached | SessionClosed | SessionLost):
            for listener in list(self._listeners):
                listener(event)

    def refill(self) -> None:
        """Room may have appeared in the replay buffer: move waiting writes in."""
        if self._core.send_capacity > 0 or self.finished:
            self._driver.starved.pop(self, None)
            starved = list(self._starved)
            self._starved.clear()
            for stream in starved:
                if self.finished:
                    stream._fail()
                else:
                    stream._push()

    def _finish(self, event: SessionClosed | SessionLost) -> None:
        if isinstance(event, SessionLost):
            self._error = SessionLostError(f"session lost: {event.reason}")
        else:
            who = "peer" if event.by_peer else "this side"
            self._error = SessionClosedError(f"session closed by {who}: {event.reason or 'ok'}")
        for stream in self._streams.values():
            stream._fail()
        if not self._closed.done():
            self._closed.set_result(None)

    def _raise_if_failed(self, allow_closed: bool = False) -> None:
        if self._error is not None:
            if allow_closed and isinstance(self._error, SessionClosedError):
                return
            raise self._error

    # --- closing --------------------------------------------------------------------------

    async def close(self, reason: str = "", timeout: float = 10.0) -> None:
        """Wait (up to ``timeout``) until the peer has every byte written, then close."""
        if self.finished:
            return
        deadline = self._loop.time() + timeout
        if self.state is not SessionState.ESTABLISHED:
            # Mid re-attach: the CLOSE can only reach the peer over a link, so wait for one
            # (within the timeout) rather than close on this side alone.
            with contextlib.suppress(TimeoutError, SessionError):
                await asyncio.wait_for(self.wait_attached(), max(0.0, deadline - self._loop.time()))
        while self._core.buffered or self._starved:
            if self.finished or self._loop.time() >= deadline:
                break
            await asyncio.sleep(0.01)
        if not self.finished:
            self._core.close(reason=reason)
            self._driver.pump()
        await self.wait_closed(timeout=max(0.1, deadline - self._loop.time()))

    def abort(self, reason: str = "aborted") -> None:
        """Close at once; bytes not yet acknowledged are dropped."""
        if not self.finished:
            self._core.close(reason=reason)
            self._driver.pump()

    async def wait_closed(self, timeout: float | None = None) -> None:
        try:
            await asyncio.wait_for(asyncio.shield(self._closed), timeout)
        except TimeoutError:
            if not self.finished:
                self._core.lose("close timed out")
                self._driver.pump()

    async def __aenter__(self) -> AsyncSession:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

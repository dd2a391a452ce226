"""The thin asyncio shell around a sans-I/O endpoint.

On input it feeds the core, then pumps: dispatch events, transmit, re-arm the
one timer. Writes from the application only mark the driver; one pump per loop
iteration then sends everything that accumulated.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Protocol

from continuations.protocol import ClientEndpoint, Event, LinkId, ServerEndpoint

Address = tuple[str, int]
WRITE_HIGH_WATER = 4 * 1024 * 1024
MAX_ROUNDS_PER_PUMP = 32
LINGER_ON_CLOSE = 2.0  # seconds a closed link may wait for the peer's FIN


class Refillable(Protocol):
    def refill(self) -> None: ...


class LinkProtocol(asyncio.Protocol):
    """One TCP connection, registered with the driver as a link."""

    def __init__(self, driver: Driver) -> None:
        self.driver = driver
        self.transport: asyncio.Transport | None = None
        self.link_id: LinkId = 0
        self.local: Address | None = None
        self.remote: Address | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        local = transport.get_extra_info("sockname")
        remote = transport.get_extra_info("peername")
        self.local = (local[0], local[1]) if local else None
        self.remote = (remote[0], remote[1]) if remote else None
        self.driver.link_up(self)

    def data_received(self, data: bytes) -> None:
        self.driver.endpoint.receive_data(self.link_id, data, self.driver.loop.time())
        self.driver.pump()

    def eof_received(self) -> bool:
        return False  # a half-closed link is useless to us: close it

    def connection_lost(self, exc: Exception | None) -> None:
        self.driver.link_down(self)

    def pause_writing(self) -> None:
        self.driver.endpoint.set_link_writable(self.link_id, False)

    def resume_writing(self) -> None:
        self.driver.endpoint.set_link_writable(self.link_id, True)
        self.driver.kick()


class Driver:
    def __init__(
        self,
        endpoint: ClientEndpoint | ServerEndpoint,
        on_event: Callable[[Event], None],
        *,
        on_link_up: Callable[[LinkId], None] | None = None,
        on_link_down: Callable[[LinkId], None] | None = None,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.endpoint = endpoint
        self.links: dict[LinkId, LinkProtocol] = {}
        self._on_event = on_event
        self._on_link_up = on_link_up
        self._on_link_down = on_link_down
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._kicked = False
        self._pumping = False
        self._again = False
        self.closed = False
        self.starved: dict[Refillable, None] = {}  # writers waiting for replay-buffer room

    def link_up(self, proto: LinkProtocol) -> None:
        proto.link_id = self.endpoint.new_link(self.loop.time())
        self.links[proto.link_id] = proto
        if self._on_link_up is not None:
            self._on_link_up(proto.link_id)
        self.pump()

    def link_down(self, proto: LinkProtocol) -> None:
        if self.links.pop(proto.link_id, None) is None:
            return
        self.endpoint.link_closed(proto.link_id, self.loop.time())
        if self._on_link_down is not None:
            self._on_link_down(proto.link_id)
        self.pump()

    def kick(self) -> None:
        """Pump soon: lets many application writes go out in one transmit."""
        if not self._kicked and not self.closed:
            self._kicked = True
            self.loop.call_soon(self._kicked_pump)

    def _kicked_pump(self) -> None:
        self._kicked = False
        self.pump()

    def pump(self) -> None:
        if self._pumping:
            self._again = True  # an event handler wrote; loop once more
            return
        self._pumping = True
        try:
            for _ in range(MAX_ROUNDS_PER_PUMP):
                self._again = False
                self._dispatch()
                sent = self._transmit()
                self._dispatch()
                if self.starved:
                    for waiting in list(self.starved):
                        waiting.refill()
                if not sent and not self._again:
                    break
            else:
                self.kick()  # still busy: let reads and other tasks in first
        finally:
            self._pumping = False
        self._arm_timer()

    def _dispatch(self) -> None:
        while (event := self.endpoint.next_event()) is not None:
            self._on_event(event)

    def _transmit(self) -> bool:
        out = self.endpoint.transmit(self.loop.time())
        for tx in out:
            proto = self.links.get(tx.link)
            if proto is None or proto.transport is None:
                continue
            for record in tx.chunks:
                proto.transport.write(record)
            if tx.close:
                self.links.pop(tx.link, None)
                self._half_close(proto.transport)
        return bool(out)

    def _half_close(self, transport: asyncio.Transport) -> None:
        """Send our FIN but keep reading until the peer hangs up (bounded): closing with
        unread input would make the kernel answer with a reset, and the peer could lose
        the last records we wrote (a CLOSE, say) before reading them."""
        if transport.is_closing():
            return
        if transport.can_write_eof():
            transport.write_eof()
            self.loop.call_later(LINGER_ON_CLOSE, transport.close)
        else:
            transport.close()

    def _arm_timer(self) -> None:
        when = None if self.closed else self.endpoint.get_timer()
        if when == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = when
        if when is not None:
            self._timer = self.loop.call_at(when, self._fire, when)

    def _fire(self, when: float) -> None:
        self._timer = None
        self._timer_at = None
        # asyncio may run a timer a hair early; the core must see its deadline as reached.
        self.endpoint.handle_timer(max(self.loop.time(), when))
        self.pump()

    def path(self, link: LinkId | None) -> tuple[Address | None, Address | None]:
        proto = self.links.get(link) if link is not None else None
        return (proto.local, proto.remote) if proto is not None else (None, None)

    def shutdown(self) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for proto in list(self.links.values()):
            if proto.transport is not None:
                proto.transport.abort()
        self.links.clear()

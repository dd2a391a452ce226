"""Loopback TCP network-impairment relay for tests, demos and benchmarks.

An :class:`ImpairmentRelay` listens on a local address; for every accepted
connection it dials the fixed ``target`` and forwards bytes both ways ("up" is
client -> target, "down" is target -> client), applying impairments that can be
changed at any time from the event loop thread:

* **Delay / jitter** (``set_delay``): every chunk read from one side gets a
  delivery time ``max(previous delivery time, now + delay + U(0, jitter))`` in
  its direction, so delay applies once per direction (an RTT grows by
  ``2 * delay``) and jitter never reorders bytes.  EOF is delayed like data.
* **Bandwidth** (``set_bandwidth``): a token bucket per direction per connection
  paces writes; the bucket holds at most ~20 ms worth of tokens.
* **Cut** (``cut``): every current connection is reset on both sides (RST via
  ``SO_LINGER 0``); queued bytes are dropped.  New connections still work.
* **Blackhole** (``blackhole`` / ``heal``): the relay stops reading from and
  writing to every socket, so kernel buffers fill and the peers' TCP stacks
  stall exactly as on a silent path; nothing is discarded, no FIN or RST is
  sent.  Connections accepted meanwhile are held without dialling the target.
  ``heal`` resumes everything and the held bytes flow in order, as after a
  transient outage that TCP retransmission papered over.

Memory is bounded: at most ``max_buffer`` bytes are queued per direction per
connection; when a queue is full the relay stops reading that side, which
back-pressures the sender through TCP flow control.  A half-close (EOF) is
forwarded as ``write_eof`` after all bytes queued before it; once both
directions have carried EOF the connection is closed.  A socket error on
either side resets the other side.  ``close`` drops queued bytes, closes every
socket without lingering and waits until they are all released.

All randomness comes from the injected ``rng``.  The relay is not thread-safe:
call its methods from the loop it was started on.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
from collections import deque
from dataclasses import dataclass
from typing import cast

__all__ = ["ConnectionInfo", "ImpairmentRelay", "RelayStats"]

Address = tuple[str, int]

CHUNK_SIZE = 64 * 1024
# Token-bucket depth in seconds of the configured rate: short enough to keep
# pacing smooth, long enough that timer overshoot does not cost throughput.
_BURST_SECONDS = 0.02
_LINGER_ZERO = struct.pack("ii", 1, 0)


@dataclass(frozen=True, slots=True)
class RelayStats:
    """Snapshot of relay-wide counters; byte counts are bytes delivered."""

    connections_accepted: int
    active_connections: int
    bytes_up: int
    bytes_down: int
    cuts: int
    connections_cut: int
    upstream_failures: int
    blackholed: bool


@dataclass(frozen=True, slots=True)
class ConnectionInfo:
    """Snapshot of one live connection, ``client`` being the peer's address."""

    client: Address
    bytes_up: int
    bytes_down: int
    queued_up: int
    queued_down: int
    upstream_connected: bool


class _Direction:
    __slots__ = ("delivered", "last_due", "queue", "queued", "stamp", "tokens", "wakeup")

    def __init__(self, now: float) -> None:
        # None marks EOF; memoryviews appear when pacing splits a chunk.
        self.queue: deque[tuple[bytes | memoryview | None, float]] = deque()
        self.queued = 0
        self.last_due = 0.0
        self.delivered = 0
        self.tokens = 0.0
        self.stamp = now
        self.wakeup = asyncio.Event()


class _Side(asyncio.BufferedProtocol):
    """One socket of a relayed connection; reads feed ``inbound``, writes drain ``outbound``."""

    def __init__(self, conn: _Conn, inbound: _Direction, outbound: _Direction) -> None:
        self.conn = conn
        self.inbound = inbound
        self.outbound = outbound
        self.transport: asyncio.Transport | None = None
        self.reading = True
        self.eof = False
        self.write_paused = False
        self.lost: asyncio.Future[None] = conn.loop.create_future()
        self._buf = memoryview(bytearray(CHUNK_SIZE))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.conn.side_made(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        # Never read more than the queue can take, so max_buffer is a hard bound.
        space = self.conn.relay.max_buffer - self.inbound.queued
        return self._buf[: max(1, min(CHUNK_SIZE, space))]

    def buffer_updated(self, nbytes: int) -> None:
        self.conn.push(self, bytes(self._buf[:nbytes]))

    def eof_received(self) -> bool:
        self.eof = True
        self.conn.push(self, None)
        return True  # keep our write half open: this is only a half-close

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self.outbound.wakeup.set()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)
        self.conn.side_lost()


def _abort(transport: asyncio.Transport, rst: bool) -> None:
    if rst:
        sock = transport.get_extra_info("socket")
        # An already-closed socket has nothing left to reset.
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
    transport.abort()


class _Conn:
    def __init__(self, relay: ImpairmentRelay, loop: asyncio.AbstractEventLoop) -> None:
        self.relay = relay
        self.loop = loop
        now = loop.time()
        self.up = _Direction(now)
        self.down = _Direction(now)
        self.client = _Side(self, self.up, self.down)
        self.upstream = _Side(self, self.down, self.up)
        self.peer: Address = ("", 0)
        self.connector: asyncio.Task[None] | None = None
        self.pumps: list[asyncio.Task[None]] = []
        self.closing = False
        self.eofs_delivered = 0

    def tasks(self) -> list[asyncio.Task[None]]:
        return [*self.pumps] if self.connector is None else [self.connector, *self.pumps]

    def side_made(self, side: _Side) -> None:
        transport = side.transport
        assert transport is not None
        if self.closing or self.relay._closed:
            self.shutdown(rst=False)
            return
        if side is self.client:
            peer = transport.get_extra_info("peername")
            self.peer = (str(peer[0]), int(peer[1]))
            self.relay._conns.add(self)
            self.relay._accepted += 1
            self.update_reading(side)
            if not self.relay.blackholed:
                self.start_connect()
        else:
            self.pumps = [
                self.loop.create_task(self._pump(self.up, self.upstream, self.client)),
                self.loop.create_task(self._pump(self.down, self.client, self.upstream)),
            ]
            for task in self.pumps:
                task.add_done_callback(self._task_done)
            self.update_reading(side)

    def start_connect(self) -> None:
        if self.connector is None and not self.closing:
            self.connector = self.loop.create_task(self._connect())
            self.connector.add_done_callback(self._task_done)

    async def _connect(self) -> None:
        host, port = self.relay.target
        try:
            await self.loop.create_connection(lambda: self.upstream, host, port)
        except Exception:  # any failure must reach the client, not an orphan task
            self.relay._upstream_failures += 1
            self.shutdown(rst=True)

    def update_reading(self, side: _Side) -> None:
        transport = side.transport
        # After EOF the transport has dropped its reader; resuming would re-read EOF.
        if transport is None or side.eof or self.closing:
            return
        relay = self.relay
        want = not relay.blackholed and side.inbound.queued < relay.max_buffer
        if want != side.reading:
            side.reading = want
            if want:
                transport.resume_reading()
            else:
                transport.pause_reading()

    def push(self, side: _Side, data: bytes | None) -> None:
        relay = self.relay
        d = side.inbound
        delay = relay.delay
        if relay.jitter > 0:
            delay += relay.rng.uniform(0.0, relay.jitter)
        due = max(d.last_due, self.loop.time() + delay)
        d.last_due = due
        d.queue.append((data, due))
        if data is not None:
            d.queued += len(data)
            if d.queued >= relay.max_buffer:
                self.update_reading(side)
        d.wakeup.set()

    async def _pump(self, d: _Direction, dst: _Side, src: _Side) -> None:
        relay = self.relay
        loop = self.loop
        transport = dst.transport
        assert transport is not None
        try:
            while True:
                if relay.blackholed or dst.write_paused or not d.queue:
                    d.wakeup.clear()
                    await d.wakeup.wait()
                    continue
                data, due = d.queue[0]
                wait = due - loop.time()
                if wait > 0:
                    # Re-check everything afterwards: a blackhole may start meanwhile.
                    await asyncio.sleep(wait)
                    continue
                if data is None:
                    d.queue.popleft()
                    transport.write_eof()
                    self._eof_delivered()
                    return
                rate = relay.bandwidth
                if rate is not None:
                    size, wait = self._reserve(d, len(data), rate)
                    if wait > 0:
                        await asyncio.sleep(wait)
                        continue
                    if size < len(data):
                        view = memoryview(data)
                        d.queue[0] = (view[size:], due)
                        data = view[:size]
                    else:
                        d.queue.popleft()
                else:
                    d.queue.popleft()
                n = len(data)
                d.queued -= n
                d.delivered += n
                relay._count(d is self.up, n)
                transport.write(data)
                if not src.reading:
                    self.update_reading(src)
        except Exception:  # a write error on one side resets the whole connection
            self.shutdown(rst=True)

    def _reserve(self, d: _Direction, available: int, rate: float) -> tuple[int, float]:
        now = self.loop.time()
        burst = max(1.0, rate * _BURST_SECONDS)
        d.tokens = min(burst, d.tokens + (now - d.stamp) * rate)
        d.stamp = now
        if d.tokens <= 0:
            return 0, (1.0 - d.tokens) / rate
        # Going into debt (at most one piece) rather than waiting for a full piece
        # keeps the long-run rate exact even though the selector rounds sleeps up
        # to whole milliseconds.
        size = min(available, CHUNK_SIZE, max(1, int(burst)))
        d.tokens -= size
        return size, 0.0

    def _eof_delivered(self) -> None:
        self.eofs_delivered += 1
        if self.eofs_delivered == 2 and not self.closing:
            # Both halves are shut: close gracefully, letting write buffers flush.
            self.closing = True
            for side in (self.client, self.upstream):
                if side.transport is not None:
                    side.transport.close()

    def shutdown(self, rst: bool) -> None:
        # Not a no-op when already closing: close() must also abort graceful closes
        # still waiting to flush to a peer that stopped reading.
        self.closing = True
        for task in self.tasks():
            task.cancel()
        for side in (self.client, self.upstream):
            if side.transport is not None and not side.lost.done():
                _abort(side.transport, rst)
        for d in (self.up, self.down):
            d.queue.clear()
            d.queued = 0
        self._maybe_forget()

    def side_lost(self) -> None:
        if self.closing:
            self._maybe_forget()
        else:
            self.shutdown(rst=True)  # unexpected loss means an error: reset the peer too

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._maybe_forget()

    def _maybe_forget(self) -> None:
        if not self.closing or any(not t.done() for t in self.tasks()):
            return
        for side in (self.client, self.upstream):
            if side.transport is not None and not side.lost.done():
                return
        self.relay._conns.discard(self)


class ImpairmentRelay:
    """TCP relay from a loopback listener to ``target`` with controllable impairments."""

    def __init__(
        self,
        target: Address,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        delay: float = 0.0,
        jitter: float = 0.0,
        bandwidth: float | None = None,
        max_buffer: int = 4 * 1024 * 1024,
        rng: random.Random | None = None,
    ) -> None:
        if max_buffer < 1:
            raise ValueError("max_buffer must be >= 1")
        self.target: Address = (target[0], int(target[1]))
        self.listen_host = listen_host
        self.listen_port = listen_port
        self.max_buffer = max_buffer
        self.rng = rng if rng is not None else random.Random()
        self.delay = 0.0
        self.jitter = 0.0
        self.bandwidth: float | None = None
        self.set_delay(delay, jitter)
        self.set_bandwidth(bandwidth)
        self._blackholed = False
        self._closed = False
        self._server: asyncio.Server | None = None
        self._address: Address | None = None
        # Every connection not yet fully released, including ones being closed.
        self._conns: set[_Conn] = set()
        self._accepted = 0
        self._bytes_up = 0
        self._bytes_down = 0
        self._cuts = 0
        self._connections_cut = 0
        self._upstream_failures = 0

    async def start(self) -> None:
        if self._server is not None or self._closed:
            raise RuntimeError("relay already started or closed")
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Conn(self, loop).client, self.listen_host, self.listen_port
        )
        host, port = self._server.sockets[0].getsockname()[:2]
        self._address = (str(host), int(port))

    @property
    def address(self) -> Address:
        if self._address is None:
            raise RuntimeError("relay not started")
        return self._address

    def set_delay(self, delay: float, jitter: float = 0.0) -> None:
        if delay < 0 or jitter < 0:
            raise ValueError("delay and jitter must be >= 0")
        self.delay = float(delay)
        self.jitter = float(jitter)

    def set_bandwidth(self, bytes_per_second: float | None) -> None:
        if bytes_per_second is not None and bytes_per_second <= 0:
            raise ValueError("bandwidth must be positive or None")
        self.bandwidth = None if bytes_per_second is None else float(bytes_per_second)

    @property
    def blackholed(self) -> bool:
        return self._blackholed

    def blackhole(self) -> None:
        self._blackholed = True
        for conn in self._live():
            conn.update_reading(conn.client)
            conn.update_reading(conn.upstream)

    def heal(self) -> None:
        self._blackholed = False
        for conn in self._live():
            conn.start_connect()
            conn.update_reading(conn.client)
            conn.update_reading(conn.upstream)
            conn.up.wakeup.set()
            conn.down.wakeup.set()

    async def cut(self) -> None:
        conns = self._live()
        self._cuts += 1
        self._connections_cut += len(conns)
        for conn in conns:
            conn.shutdown(rst=True)
        await _wait_released(conns)

    async def close(self) -> None:
        self._closed = True
        if self._server is not None:
            self._server.close()
        conns = list(self._conns)
        for conn in conns:
            conn.shutdown(rst=False)
        await _wait_released(conns)
        if self._server is not None:
            await self._server.wait_closed()

    @property
    def stats(self) -> RelayStats:
        return RelayStats(
            connections_accepted=self._accepted,
            active_connections=len(self._live()),
            bytes_up=self._bytes_up,
            bytes_down=self._bytes_down,
            cuts=self._cuts,
            connections_cut=self._connections_cut,
            upstream_failures=self._upstream_failures,
            blackholed=self.blackholed,
        )

    @property
    def connections(self) -> list[ConnectionInfo]:
        return [
            ConnectionInfo(
                client=c.peer,
                bytes_up=c.up.delivered,
                bytes_down=c.down.delivered,
                queued_up=c.up.queued,
                queued_down=c.down.queued,
                upstream_connected=c.upstream.transport is not None,
            )
            for c in self._live()
        ]

    async def __aenter__(self) -> ImpairmentRelay:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _live(self) -> list[_Conn]:
        return [c for c in self._conns if not c.closing]

    def _count(self, up: bool, n: int) -> None:
        if up:
            self._bytes_up += n
        else:
            self._bytes_down += n


async def _wait_released(conns: list[_Conn]) -> None:
    # asyncio.wait rather than gather: a cancelled caller must not cancel these.
    tasks = [t for c in conns for t in c.tasks()]
    if tasks:
        await asyncio.wait(tasks)
    # Only now: a cancelled dial may still have delivered its connection_made.
    lost = [s.lost for c in conns for s in (c.client, c.upstream) if s.transport is not None]
    if lost:
        await asyncio.wait(lost)

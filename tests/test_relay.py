"""Tests for continuations.testing.relay.ImpairmentRelay (real loopback sockets)."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import random
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

import pytest

from continuations.testing import ImpairmentRelay
from continuations.testing.relay import ConnectionInfo

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]
STEP = 5.0  # bound for any single wait that should succeed


def run(body: Callable[[], Awaitable[None]], timeout: float = 10.0) -> None:
    """Run ``body`` on a fresh loop; fail on loop errors or leaked tasks."""
    errors: list[dict[str, Any]] = []

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: errors.append(ctx))
        await asyncio.wait_for(body(), timeout)
        leaked = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        assert not leaked, leaked

    asyncio.run(main())
    gc.collect()  # surfaces "Task exception was never retrieved"
    assert not errors, errors


class Target:
    """Loopback server handing each accepted connection to the test."""

    def __init__(self) -> None:
        self.accepted: asyncio.Queue[Streams] = asyncio.Queue()
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> Target:
        self.server = await asyncio.start_server(self._on_conn, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for w in self.writers:
            w.transport.abort()
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    @property
    def address(self) -> tuple[str, int]:
        assert self.server is not None
        host, port = self.server.sockets[0].getsockname()[:2]
        return host, port

    def _on_conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        self.accepted.put_nowait((reader, writer))

    async def accept(self, timeout: float = STEP) -> Streams:
        return await asyncio.wait_for(self.accepted.get(), timeout)


async def connect(relay: ImpairmentRelay) -> Streams:
    return await asyncio.wait_for(asyncio.open_connection(*relay.address), STEP)


async def read_exactly(reader: asyncio.StreamReader, n: int) -> bytes:
    return await asyncio.wait_for(reader.readexactly(n), STEP)


async def read_until_closed(reader: asyncio.StreamReader) -> bytes:
    """Read to EOF; a reset counts as closed (returns what arrived before it)."""
    chunks = []
    try:
        while chunk := await asyncio.wait_for(reader.read(65536), STEP):
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    return b"".join(chunks)


async def assert_silent(reader: asyncio.StreamReader, seconds: float) -> None:
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(reader.read(1), seconds)


async def wait_until(cond: Callable[[], bool], timeout: float = STEP) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


async def send_all(writer: asyncio.StreamWriter, data: bytes) -> None:
    for i in range(0, len(data), 1 << 20):
        writer.write(data[i : i + (1 << 20)])
        await writer.drain()


def test_forwarding_both_ways_sha256() -> None:
    size = 8 * 1024 * 1024
    rng = random.Random(1)
    up, down = rng.randbytes(size), rng.randbytes(size)

    async def body() -> None:
        async with Target() as target, ImpairmentRelay(target.address) as relay:
            cr, cw = await connect(relay)
            tr, tw = await target.accept()

            async def side(w: asyncio.StreamWriter, r: asyncio.StreamReader, out: bytes) -> str:
                sender = asyncio.create_task(send_all(w, out))
                got = await asyncio.wait_for(r.readexactly(size), STEP)
                await sender
                return hashlib.sha256(got).hexdigest()

            at_target, at_client = await asyncio.gather(side(cw, tr, up), side(tw, cr, down))
            assert at_target == hashlib.sha256(up).hexdigest()
            assert at_client == hashlib.sha256(down).hexdigest()
            stats = relay.stats
            assert (stats.bytes_up, stats.bytes_down) == (size, size)
            cw.close()

    run(body)


def test_delay_adds_twice_per_round_trip_and_can_change() -> None:
    async def body() -> None:
        async with Target() as target, ImpairmentRelay(target.address, delay=0.05) as relay:
            cr, cw = await connect(relay)
            tr, tw = await target.accept()

            async def round_trip() -> float:
                start = time.monotonic()
                cw.write(b"ping")
                tw.write(await read_exactly(tr, 4))
                assert await read_exactly(cr, 4) == b"ping"
                return time.monotonic() - start

            slow = await round_trip()
            assert 0.1 <= slow < 1.0
            relay.set_delay(0.0)
            await asyncio.sleep(0.06)  # let the previous delivery time pass
            assert await round_trip() < 0.05
            cw.close()

    run(body)


def test_jitter_never_reorders() -> None:
    async def body() -> None:
        async with Target() as target:
            relay = ImpairmentRelay(target.address, delay=0.001, jitter=0.03, rng=random.Random(7))
            async with relay:
                _cr, cw = await connect(relay)
                tr, _tw = await target.accept()
                expected = b"".join(i.to_bytes(4, "big") for i in range(300))
                for i in range(0, len(expected), 4):
                    cw.write(expected[i : i + 4])
                    if i % 40 == 0:
                        await asyncio.sleep(0.002)
                assert await read_exactly(tr, len(expected)) == expected
                cw.close()

    run(body)


def test_bandwidth_cap_is_respected() -> None:
    rate, size = 400_000, 200_000

    async def body() -> None:
        async with Target() as target, ImpairmentRelay(target.address, bandwidth=rate) as relay:
            cr, cw = await connect(relay)
            tr, tw = await target.accept()
            data = random.Random(2).randbytes(size)
            start = time.monotonic()
            cw.write(data)
            assert await read_exactly(tr, size) == data
            elapsed = time.monotonic() - start
            assert size / rate * 0.8 <= elapsed < size / rate * 3 + 0.5
            relay.set_bandwidth(None)
            start = time.monotonic()
            tw.write(data)
            assert await read_exactly(cr, size) == data
            assert time.monotonic() - start < size / rate * 0.5
            cw.close()

    run(body)


def test_cut_resets_both_sides_and_relay_keeps_working() -> None:
    async def body() -> None:
        async with Target() as target, ImpairmentRelay(target.address) as relay:
            cr, cw = await connect(relay)
            tr, tw = await target.accept()
            cw.write(b"x")
            assert await read_exactly(tr, 1) == b"x"
            # Still in the target's socket when the cut happens: must be dropped.
            tw.write(b"never delivered")
            await relay.cut()
            assert relay.stats.active_connections == 0
            assert relay.connections == []
            for reader in (cr, tr):
                assert await read_until_closed(reader) == b""
            stats = relay.stats
            assert (stats.cuts, stats.connections_cut) == (1, 1)
            _cr2, cw2 = await connect(relay)
            tr2, _tw2 = await target.accept()
            cw2.write(b"again")
            assert await read_exactly(tr2, 5) == b"again"
            cw2.close()
            cw.close()

    run(body)


def test_blackhole_holds_data_then_heal_delivers_in_order() -> None:
    size = 2 * 1024 * 1024
    up = random.Random(3).randbytes(size)
    down = random.Random(4).randbytes(size)

    async def body() -> None:
        async with Target() as target, ImpairmentRelay(target.address) as relay:
            cr, cw = await connect(relay)
            tr, tw = await target.accept()
            cw.write(b"before")
            assert await read_exactly(tr, 6) == b"before"

            relay.blackhole()
            assert relay.stats.blackholed
            senders = [
                asyncio.create_task(send_all(cw, up)),
                asyncio.create_task(send_all(tw, down)),
            ]
            # A connection made during the blackhole is accepted but not dialled.
            _nr, nw = await connect(relay)
            nw.write(b"new")
            await asyncio.sleep(0.3)
            await assert_silent(tr, 0.1)
            await assert_silent(cr, 0.1)
            assert target.accepted.empty()
            conns = relay.connections
            assert sorted(c.upstream_connected for c in conns) == [False, True]
            # Not read at all (kernel buffers hold it), rather than read and parked.
            assert all(c.queued_up == c.queued_down == 0 for c in conns)

            relay.heal()
            assert await read_exactly(tr, size) == up
            assert await read_exactly(cr, size) == down
            await asyncio.wait_for(asyncio.gather(*senders), STEP)
            ntr, _ntw = await target.accept()
            assert await read_exactly(ntr, 3) == b"new"
            for w in (cw, nw):
                w.close()

    run(body)


def test_blackhole_holds_bytes_already_queued_in_relay() -> None:
    async def body() -> None:
        async with Target() as target, ImpairmentRelay(target.address, delay=0.2) as relay:
            _cr, cw = await connect(relay)
            tr, _tw = await target.accept()
            cw.write(b"in flight")
            await wait_until(lambda: relay.connections[0].queued_up == 9)
            relay.blackhole()
            await assert_silent(tr, 0.4)
            relay.heal()
            assert await read_exactly(tr, 9) == b"in flight"
            cw.close()

    run(body)


def test_half_close_propagates_each_way() -> None:
    async def body() -> None:
        async with Target() as target, ImpairmentRelay(target.address, delay=0.01) as relay:
            cr, cw = await connect(relay)
            tr, tw = await target.accept()
            cw.write(b"request")
            cw.write_eof()
            assert await asyncio.wait_for(tr.read(), STEP) == b"request"
            # The other direction is still open after the client's half-close.
            tw.write(b"response")
            await asyncio.sleep(0.05)
            assert relay.stats.active_connections == 1
            tw.write_eof()
            assert await asyncio.wait_for(cr.read(), STEP) == b"response"
            await wait_until(lambda: relay.stats.active_connections == 0)
            cw.close()
            tw.close()

    run(body)


def test_target_reset_resets_client() -> None:
    async def body() -> None:
        async with Target() as target, ImpairmentRelay(target.address) as relay:
            cr, cw = await connect(relay)
            tr, tw = await target.accept()
            cw.write(b"x")
            assert await read_exactly(tr, 1) == b"x"
            sock = tw.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            tw.transport.abort()
            assert await read_until_closed(cr) == b""
            await wait_until(lambda: relay.stats.active_connections == 0)
            cw.close()

    run(body)


def test_unreachable_target_closes_client() -> None:
    async def body() -> None:
        with socket.socket() as probe:  # a port that is bound but not listening
            probe.bind(("127.0.0.1", 0))
            async with ImpairmentRelay(probe.getsockname()) as relay:
                cr, cw = await connect(relay)
                assert await read_until_closed(cr) == b""
                await wait_until(lambda: relay.stats.upstream_failures == 1)
                assert relay.stats.active_connections == 0
                cw.close()

    run(body)


def test_back_pressure_bounds_queue() -> None:
    limit, size = 64 * 1024, 8 * 1024 * 1024
    data = random.Random(5).randbytes(size)

    async def body() -> None:
        async with Target() as target, ImpairmentRelay(target.address, max_buffer=limit) as relay:
            _cr, cw = await connect(relay)
            tr, tw = await target.accept()
            target_transport = cast(asyncio.Transport, tw.transport)
            target_transport.pause_reading()  # the target stops consuming
            sender = asyncio.create_task(send_all(cw, data))
            await asyncio.sleep(0.3)
            forwarded = relay.stats.bytes_up
            await asyncio.sleep(0.2)
            # Stalled: the queue sits exactly at its bound and nothing moves, the
            # rest waits in kernel buffers (or in the client, via TCP flow control).
            assert relay.connections[0].queued_up == limit
            assert relay.stats.bytes_up == forwarded < size - limit
            target_transport.resume_reading()
            assert await asyncio.wait_for(tr.readexactly(size), STEP) == data
            await asyncio.wait_for(sender, STEP)
            cw.close()

    run(body)


def test_stats_and_connections() -> None:
    async def body() -> None:
        async with Target() as target, ImpairmentRelay(target.address) as relay:
            clients = [await connect(relay) for _ in range(3)]
            targets = [await target.accept() for _ in range(3)]
            for i, ((_, cw), (tr, tw)) in enumerate(zip(clients, targets, strict=True)):
                cw.write(b"u" * (i + 1))
                assert await read_exactly(tr, i + 1) == b"u" * (i + 1)
                tw.write(b"d" * 10)
            for cr, _ in clients:
                assert await read_exactly(cr, 10) == b"d" * 10
            stats = relay.stats
            assert stats.connections_accepted == 3
            assert stats.active_connections == 3
            assert (stats.bytes_up, stats.bytes_down) == (6, 30)
            infos = sorted(relay.connections, key=lambda c: c.bytes_up)
            assert [c.bytes_up for c in infos] == [1, 2, 3]
            assert all(isinstance(c, ConnectionInfo) and c.bytes_down == 10 for c in infos)
            peers = {w.get_extra_info("sockname")[:2] for _, w in clients}
            assert {c.client for c in infos} == peers
            for _, cw in clients:
                cw.close()

    run(body)


def test_close_releases_everything_and_is_idempotent() -> None:
    async def body() -> None:
        async with Target() as target:
            relay = ImpairmentRelay(target.address, delay=0.05)
            await relay.start()
            clients = [await connect(relay) for _ in range(3)]
            for _ in range(3):
                await target.accept()
            relay.blackhole()
            held = await connect(relay)  # accepted but never dialled
            await wait_until(lambda: relay.stats.active_connections == 4)
            clients[0][1].write(b"pending")
            await relay.close()
            assert relay.stats.active_connections == 0
            assert relay.connections == []
            assert not relay._conns
            for cr, _ in [*clients, held]:
                assert await read_until_closed(cr) == b""
            with pytest.raises(OSError):
                await asyncio.wait_for(asyncio.open_connection(*relay.address), STEP)
            await relay.close()
            for _, cw in [*clients, held]:
                cw.close()

    run(body)

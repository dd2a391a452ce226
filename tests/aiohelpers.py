"""Helpers for end-to-end tests over real loopback sockets."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from continuations.aio import ClientSession, Server, ServerSession, connect, serve
from continuations.errors import SessionError
from continuations.protocol import SessionConfig
from continuations.testing import ImpairmentRelay

T = TypeVar("T")

# Faster liveness than the defaults so fault-heavy tests finish quickly; still far above
# loopback RTT, so nothing is declared dead while the path works.
FAST = SessionConfig(
    keepalive_interval=0.1, min_dead_timeout=0.4, dead_timeout=1.0,
    reconnect_initial_delay=0.02, reconnect_max_delay=0.3,
)


def run(coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
    """Run one test coroutine with a hard bound on its time."""

    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


async def echo_handler(session: ServerSession) -> None:
    """Echo every stream the client opens."""

    async def echo(stream: Any) -> None:
        try:
            while data := await stream.read(1 << 20):
                stream.write(data)
                await stream.drain()
            stream.write_eof()
        except SessionError:
            pass  # the client closed the whole session; nothing left to echo

    tasks = set()
    while True:
        stream = await session.accept_stream()
        task = asyncio.ensure_future(echo(stream))
        tasks.add(task)
        task.add_done_callback(tasks.discard)


@asynccontextmanager
async def server_and_relay(
    tmp_path: Path,
    handler: Callable[[ServerSession], Awaitable[None]] = echo_handler,
    config: SessionConfig = FAST,
    **relay_options: Any,
) -> AsyncIterator[tuple[Server, ImpairmentRelay]]:
    server = await serve(handler, host_key=tmp_path / "host_key", config=config)
    relay = ImpairmentRelay(target=server.address, **relay_options)
    await relay.start()
    try:
        yield server, relay
    finally:
        await relay.close()
        server.close()
        await server.wait_closed()


async def client_via(
    relay: ImpairmentRelay, tmp_path: Path, config: SessionConfig = FAST,
    local_host: str | None = "127.0.0.2",
) -> ClientSession:
    host, port = relay.address
    return await connect(
        host, port, known_hosts=tmp_path / "known_hosts", local_host=local_host, config=config
    )


def sha(data: bytes | bytearray) -> str:
    return hashlib.sha256(data).hexdigest()


def pattern(size: int, seed: int) -> bytes:
    """Deterministic, non-repeating test data (so a misplaced chunk changes the hash)."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(b"%d:%d" % (seed, counter)).digest() * 64
        counter += 1
    return bytes(out[:size])


class Tap:
    """A loopback forwarder that records what clients send, for replay attacks.

    ``swallow_next`` makes the next connection a black hole that still records:
    a request the server never saw, captured by an on-path attacker.
    """

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.captured: list[bytearray] = []
        self.swallow_next = False
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> tuple[str, int]:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        host, port = self._server.sockets[0].getsockname()[:2]
        return host, port

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        record = bytearray()
        self.captured.append(record)
        self._writers.append(writer)
        if self.swallow_next:
            self.swallow_next = False
            while data := await reader.read(65536):
                record += data
            return
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self._writers.append(up_writer)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, log: bool) -> None:
            try:
                while data := await src.read(65536):
                    if log:
                        record.extend(data)
                    dst.write(data)
                    await dst.drain()
            except OSError:
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer, True), pipe(up_reader, writer, False))

    def cut(self) -> None:
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


async def raw_exchange(address: tuple[str, int], payload: bytes, timeout: float = 3.0) -> bytes:
    """Send bytes on a fresh connection; return all the server says until it closes."""
    reader, writer = await asyncio.open_connection(*address)
    try:
        writer.write(payload)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), timeout)
    except (ConnectionResetError, BrokenPipeError):
        return b""
    finally:
        writer.close()

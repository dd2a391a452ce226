"""Helpers for tests that drive real processes: an impairment relay on its own thread,
bounded waits, free ports."""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from continuations.testing import ImpairmentRelay

T = TypeVar("T")


class RelayThread:
    """An ImpairmentRelay on its own event loop thread, driven from synchronous test code."""

    def __init__(self, target: tuple[str, int], **options: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.relay = ImpairmentRelay(target=target, **options)
        self.call(self.relay.start())
        self.seen: set[str] = set()  # client addresses of every connection observed
        self.watcher = asyncio.run_coroutine_threadsafe(self._watch(), self.loop)

    async def _watch(self) -> None:
        while True:
            self.seen |= {c.client[0] for c in self.relay.connections}
            await asyncio.sleep(0.01)

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def do(self, fn: Callable[[], T]) -> T:
        async def inside() -> T:
            return fn()

        return self.call(inside())

    @property
    def address(self) -> tuple[str, int]:
        return self.relay.address

    def cut(self) -> None:
        self.call(self.relay.cut())

    def blackhole(self) -> None:
        self.do(self.relay.blackhole)

    def heal(self) -> None:
        self.do(self.relay.heal)

    def sources(self) -> set[str]:
        return {c.client[0] for c in self.do(lambda: self.relay.connections)}

    def settled(self, timeout: float = 20) -> str:
        """Wait until exactly one connection is live; return the client address it is from."""
        deadline = time.monotonic() + timeout
        while len(now := self.sources()) != 1 or len(self.do(lambda: self.relay.connections)) != 1:
            assert time.monotonic() < deadline, f"connections from {now}"
            time.sleep(0.05)
        return now.pop()

    def moved_from(self, host: str, timeout: float = 20) -> str:
        """Wait until the one live connection comes from another address than ``host``."""
        deadline = time.monotonic() + timeout
        while (now := self.settled(timeout)) == host:
            assert time.monotonic() < deadline, f"still connected from {host}"
            time.sleep(0.05)
        return now

    def moved_bytes(self) -> int:
        stats = self.do(lambda: self.relay.stats)
        return stats.bytes_up + stats.bytes_down

    def close(self) -> None:
        self.watcher.cancel()
        with contextlib.suppress(Exception):
            self.call(self.relay.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def read_lines(proc: subprocess.Popen[str], count: int, timeout: float = 20) -> list[str]:
    """The child's next ``count`` stdout lines, read from the descriptor itself.

    (Not through the text wrapper: it may buffer a second line where select cannot see it.)
    """
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    data = b""
    deadline = time.monotonic() + timeout
    while data.count(b"\n") < count:
        left = deadline - time.monotonic()
        assert left > 0, f"{proc.args!r}: no {count} lines within {timeout} s: {data!r}"
        if select.select([fd], [], [], min(left, 0.5))[0]:
            chunk = os.read(fd, 65536)
            assert chunk, f"{proc.args!r} exited (rc={proc.wait(5)}) after {data!r}"
            data += chunk
    return data.decode().splitlines()[:count]


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])

"""What the demo's client process tells the demo: one JSON object per line, in a file.

A file rather than a pipe, because the client outlives itself: the process that
resumes the session (forked by the resumer, with its own output) reopens the
same file, through the runtime, at the offset the first one left it. Every
record has ``ev`` (its kind), ``t`` (``time.monotonic()``, one clock for every
process on the machine) and ``pid``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from continuations.errors import SessionError

Record = dict[str, Any]
POLL = 0.05


def write(handle: IO[str], ev: str, **fields: Any) -> None:
    """Append one record and flush it, so the demo sees it at once."""
    record = {"ev": ev, "t": time.monotonic(), "pid": os.getpid(), **fields}
    handle.write(json.dumps(record, default=str) + "\n")
    handle.flush()


class Tail:
    """The demo's side: follows the file and lets the scenario wait for records."""

    def __init__(self, path: Path, alive: Callable[[], bool]) -> None:
        self.path = path
        self.records: list[Record] = []
        self._alive = alive
        self._offset = 0
        self._partial = b""
        self._arrived = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._follow())

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def poll(self) -> None:
        """Read whatever was appended since the last poll."""
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self._offset)
                data = handle.read()
        except FileNotFoundError:
            return
        self._offset += len(data)
        *lines, self._partial = (self._partial + data).split(b"\n")
        fresh = False
        for line in lines:
            if line.strip():
                self.records.append(json.loads(line))
                fresh = True
        if fresh:
            self._arrived.set()

    async def _follow(self) -> None:
        while True:
            self.poll()
            await asyncio.sleep(POLL)

    def find(self, ev: str, after: float = 0.0,
             where: Callable[[Record], bool] | None = None) -> Record | None:
        for record in self.records:
            if record["ev"] == ev and record["t"] >= after and (where is None or where(record)):
                return record
        return None

    def latest(self, ev: str) -> Record | None:
        for record in reversed(self.records):
            if record["ev"] == ev:
                return record
        return None

    async def wait(self, ev: str, *, after: float = 0.0, timeout: float = 30.0,
                   where: Callable[[Record], bool] | None = None, what: str = "") -> Record:
        """The first record of kind ``ev`` at or after ``after`` (matching ``where``).

        Raises ``SessionError`` if none comes within ``timeout``, or if the client
        process died without writing it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            self.poll()
            found = self.find(ev, after, where)
            if found is not None:
                return found
            failure = self.find("error", after)
            if failure is not None:
                raise SessionError(f"the client failed: {failure.get('message')}")
            if not self._alive():
                self.poll()
                found = self.find(ev, after, where)
                if found is not None:
                    return found
                raise SessionError(f"the client process exited before {what or ev} (its "
                                   "output is in logs/ in the output directory)")
            left = deadline - loop.time()
            if left <= 0:
                raise SessionError(f"no {what or ev} from the client within {timeout:g} s")
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), min(left, POLL * 2))

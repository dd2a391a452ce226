"""A shell's terminal as a runtime resource: the PTY master, borrowed from the keeper.

Released (the server closes its copy; the keeper's keeps the terminal open, so
the shell sees no hangup) once a suspension is stored; reacquired by asking the
keeper for the master again, in whatever server process resumes the session.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apps.contsh.keeper import KeeperClient
from continuations.errors import ResourceError
from continuations.runtime import register_kind

KIND = "contsh-terminal"


@dataclass(eq=False)
class KeptTerminal:
    shell_id: str
    pid: int
    keeper: Path
    master: int | None

    @property
    def fd(self) -> int:
        if self.master is None:
            raise ResourceError(f"terminal of shell {self.shell_id} is released")
        return self.master

    def describe(self) -> dict[str, Any]:
        return {"kind": KIND, "shell": self.shell_id, "pid": self.pid,
                "keeper": str(self.keeper)}

    def release(self) -> dict[str, Any]:
        record = self.describe()
        if self.master is not None:
            os.close(self.master)
            self.master = None
        return record

    @classmethod
    def fetch(cls, keeper: Path, shell_id: str) -> KeptTerminal:
        client = KeeperClient(keeper)
        try:
            reply, fds = client.call("fetch", id=shell_id)
        finally:
            client.close()
        if len(fds) != 1:
            for fd in fds:
                os.close(fd)
            raise ResourceError(f"the keeper sent {len(fds)} descriptors for one terminal")
        return cls(shell_id, int(reply["pid"]), keeper, fds[0])

    @classmethod
    def reacquire(cls, record: dict[str, Any]) -> KeptTerminal:
        return cls.fetch(Path(record["keeper"]), record["shell"])


register_kind(KIND, KeptTerminal.reacquire)


async def wait_fd(fd: int, *, writable: bool = False) -> None:
    """Until ``fd`` is readable (or writable); cancellable at any point."""
    loop = asyncio.get_running_loop()
    ready = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    if writable:
        loop.add_writer(fd, wake)
    else:
        loop.add_reader(fd, wake)
    try:
        await ready
    finally:
        with contextlib.suppress(ValueError, OSError):
            (loop.remove_writer if writable else loop.remove_reader)(fd)

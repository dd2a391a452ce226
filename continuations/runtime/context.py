"""What a continuation generator and a continuation see of one managed session."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Sequence
from typing import IO, TYPE_CHECKING, Any

from continuations.aio import AsyncSession, Server
from continuations.errors import LocalError, ResourceError
from continuations.runtime.resources import (
    ManagedFile,
    ManagedListener,
    ManagedProcess,
    ManagedSocket,
    Resource,
)
from continuations.store import Attributes

if TYPE_CHECKING:
    from continuations.runtime.runtime import Runtime


class SessionContext:
    """One session under the runtime: its resources, attributes and suspension state.

    Open files, listening ports, sockets and child processes through the context,
    not directly: the runtime must release them while the session is suspended
    and reacquire them, by name, when it resumes (``ctx.resource(name)``).
    """

    def __init__(
        self, runtime: Runtime, session: AsyncSession, *, server: Server | None = None
    ) -> None:
        self.runtime = runtime
        self.session = session
        self.server = server
        self.resources: dict[str, Resource] = {}
        self.reason = ""
        self.deadline = 0.0  # loop time by which generators must have answered

    @property
    def session_id(self) -> str:
        return self.session.id_hex

    @property
    def attributes(self) -> Attributes:
        """The session's attributes in the shared store (namespace "app")."""
        return self.runtime.store.attributes(self.session_id, "app")

    def time_left(self) -> float:
        """Seconds a generator has left to finish pending work."""
        return max(0.0, self.deadline - asyncio.get_running_loop().time())

    def _add(self, name: str, resource: Resource) -> None:
        if name in self.resources:
            raise LocalError(f"a resource named {name!r} is already open in this session")
        self.resources[name] = resource

    def open_file(self, path: str | os.PathLike[str], mode: str = "r", *,
                  name: str | None = None) -> IO[Any]:
        managed = ManagedFile.open(path, mode)
        self._add(name or str(managed.path), managed)
        return managed.file

    def listen(self, host: str, port: int, *, name: str | None = None,
               backlog: int = 128) -> socket.socket:
        managed = ManagedListener.listen(host, port, backlog)
        self._add(name or f"listen {host}:{managed.port}", managed)
        return managed.socket

    def connect(self, host: str, port: int, *, name: str | None = None) -> socket.socket:
        managed = ManagedSocket.connect(host, port)
        self._add(name or f"connect {host}:{port}", managed)
        return managed.socket

    def spawn(self, args: Sequence[str], *, name: str | None = None,
              **popen_options: Any) -> ManagedProcess:
        managed = ManagedProcess.spawn(args, **popen_options)
        self._add(name or f"process {managed.pid}", managed)
        return managed

    def adopt(self, name: str, resource: Resource) -> None:
        """Put a resource of the application's own kind (see ``register_kind``) under
        the runtime: released after a suspension is stored, reacquired on resume."""
        self._add(name, resource)

    def resource(self, name: str) -> Resource:
        try:
            return self.resources[name]
        except KeyError:
            raise ResourceError(f"no resource named {name!r} in this session") from None

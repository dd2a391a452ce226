"""Resources an application opens through the runtime, so they can be let go while
suspended and taken back on resume.

Each resource can ``release()`` itself and describe how to get it back as a
JSON-able record; ``reacquire(record)`` does so in any process. What happens:

- **file**: closed; reopened at the same offset. The file must still be the same
  one (device and inode): a file replaced by another (renamed over it) is
  refused. A file deleted and then recreated may get the same inode number back
  and is not detected. Modes that would truncate or refuse an existing file
  (``w``, ``x``) reopen as ``r+``.
- **listener** (a listening TCP socket): closed, so the port is free while
  suspended; bound again on resume, with a clear error if someone took the port.
- **socket** (an outgoing TCP connection): closed; connected again to the same
  remote address.
- **process** (a child): kept running, and told. It is started in its own
  session (so it outlives the application's process) and receives ``SIGUSR1``
  when the application is suspended and ``SIGUSR2`` when it resumes; its
  environment has ``CONTINUATIONS_NOTIFY=signals``. On resume the runtime checks
  it is the same process (pid and start time) before signalling it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

from continuations.errors import ResourceError

Record = dict[str, Any]

DISCONNECT_SIGNAL = signal.SIGUSR1
RESUME_SIGNAL = signal.SIGUSR2
_REOPEN_MODE = {"w": "r+", "w+": "r+", "x": "r+", "x+": "r+", "wb": "rb+", "w+b": "rb+",
                "wb+": "rb+", "xb": "rb+"}


@dataclass(eq=False)
class ManagedFile:
    path: Path
    mode: str
    handle: IO[Any] | None = None
    device: int = 0
    inode: int = 0
    offset: int = 0

    @classmethod
    def open(cls, path: str | os.PathLike[str], mode: str = "r") -> ManagedFile:
        target = Path(path).resolve()
        handle = open(target, mode)  # noqa: SIM115 - the runtime owns its lifetime
        st = os.fstat(handle.fileno())
        return cls(target, mode, handle, st.st_dev, st.st_ino)

    @property
    def file(self) -> IO[Any]:
        if self.handle is None:
            raise ResourceError(f"{self.path} is released (the session is suspended)")
        return self.handle

    def describe(self) -> Record:
        """How to get this back, without letting go of it yet."""
        if self.handle is not None:
            self.handle.flush()
            self.offset = self.handle.tell()
        return {"kind": "file", "path": str(self.path), "mode": self.mode,
                "offset": self.offset, "device": self.device, "inode": self.inode}

    def release(self) -> Record:
        record = self.describe()
        if self.handle is not None:
            self.handle.close()
            self.handle = None
        return record

    @classmethod
    def reacquire(cls, record: Record) -> ManagedFile:
        path = Path(record["path"])
        try:
            st = path.stat()
        except OSError as exc:
            raise ResourceError(f"cannot reopen {path}: {exc.strerror}") from exc
        if (st.st_dev, st.st_ino) != (record["device"], record["inode"]):
            raise ResourceError(f"{path} was replaced by another file while suspended")
        mode: str = _REOPEN_MODE.get(record["mode"]) or record["mode"]
        handle = open(path, mode)  # noqa: SIM115
        if "a" not in mode:
            handle.seek(record["offset"])
        return cls(path, record["mode"], handle, st.st_dev, st.st_ino, record["offset"])


class _HeldSocket:
    """What a listener and a connection share: a socket that is let go and held again."""

    sock: socket.socket | None
    host: str
    port: int
    _what = "socket"

    def describe(self) -> Record:
        raise NotImplementedError

    @property
    def socket(self) -> socket.socket:
        if self.sock is None:
            raise ResourceError(f"{self._what} {self.host}:{self.port} is released")
        return self.sock

    def release(self) -> Record:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        return self.describe()


@dataclass(eq=False)
class ManagedListener(_HeldSocket):
    host: str
    port: int
    backlog: int = 128
    sock: socket.socket | None = None
    _what = "listener"

    @classmethod
    def listen(cls, host: str, port: int, backlog: int = 128) -> ManagedListener:
        listener = cls(host, port, backlog)
        listener.sock = listener._bind()
        listener.port = listener.sock.getsockname()[1]
        return listener

    def _bind(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError as exc:
            sock.close()
            raise ResourceError(
                f"cannot listen on {self.host}:{self.port} again: {exc.strerror} "
                "(another process took the port while the session was suspended)"
            ) from exc
        sock.listen(self.backlog)
        sock.setblocking(False)
        return sock

    def describe(self) -> Record:
        return {"kind": "listener", "host": self.host, "port": self.port,
                "backlog": self.backlog}

    @classmethod
    def reacquire(cls, record: Record) -> ManagedListener:
        listener = cls(record["host"], record["port"], record["backlog"])
        listener.sock = listener._bind()
        return listener


@dataclass(eq=False)
class ManagedSocket(_HeldSocket):
    host: str
    port: int
    sock: socket.socket | None = None
    _what = "connection to"

    @classmethod
    def connect(cls, host: str, port: int, timeout: float = 10.0) -> ManagedSocket:
        managed = cls(host, port)
        managed.sock = managed._connect(timeout)
        return managed

    def _connect(self, timeout: float) -> socket.socket:
        try:
            return socket.create_connection((self.host, self.port), timeout=timeout)
        except OSError as exc:
            raise ResourceError(f"cannot connect to {self.host}:{self.port}: {exc}") from exc

    def describe(self) -> Record:
        return {"kind": "socket", "host": self.host, "port": self.port}

    @classmethod
    def reacquire(cls, record: Record) -> ManagedSocket:
        return cls.connect(record["host"], record["port"])


def _start_time(pid: int) -> int:
    """Clock ticks after boot at which ``pid`` started: with the pid, a process identity
    that survives our own exit (a reused pid gets a different start time)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError as exc:
        raise ResourceError(f"process {pid} is gone") from exc
    # The command name (field 2) may contain spaces and parentheses; fields after the
    # last ')' are plain. Start time is field 22 overall, so index 19 after it.
    return int(stat.rsplit(")", 1)[1].split()[19])


def pid_alive(pid: int | None) -> bool:
    """Whether ``pid`` is a running process (a zombie is not: it has exited)."""
    if not pid:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


@dataclass(eq=False)
class ManagedProcess:
    pid: int
    args: list[str]
    started: int
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @classmethod
    def spawn(cls, args: Sequence[str], **popen_options: Any) -> ManagedProcess:
        env = dict(popen_options.pop("env", None) or os.environ)
        env["CONTINUATIONS_NOTIFY"] = "signals"
        popen = subprocess.Popen(list(args), env=env, start_new_session=True, **popen_options)
        return cls(popen.pid, list(args), _start_time(popen.pid), popen)

    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        return pid_alive(self.pid)

    def notify(self, sig: signal.Signals) -> None:
        if not self.alive():
            raise ResourceError(f"child process {self.pid} ({self.args[0]}) has exited")
        os.kill(self.pid, sig)

    def describe(self) -> Record:
        return {"kind": "process", "pid": self.pid, "args": self.args, "started": self.started}

    def release(self) -> Record:
        """The child keeps running; it is told the application is suspended."""
        if self.alive():
            self.notify(DISCONNECT_SIGNAL)
        return self.describe()

    @classmethod
    def reacquire(cls, record: Record) -> ManagedProcess:
        pid = record["pid"]
        if not pid_alive(pid) or _start_time(pid) != record["started"]:
            raise ResourceError(f"child process {pid} ({record['args'][0]}) did not survive")
        child = cls(pid, record["args"], record["started"])
        child.notify(RESUME_SIGNAL)
        return child


class Resource(Protocol):
    """What the runtime needs of a resource: how to get it back (a JSON-able record
    with a registered ``kind``), and to let go of it once the suspension is stored."""

    def describe(self) -> Record: ...

    def release(self) -> Record: ...


_KINDS: dict[str, Callable[[Record], Resource]] = {
    "file": ManagedFile.reacquire,
    "listener": ManagedListener.reacquire,
    "socket": ManagedSocket.reacquire,
    "process": ManagedProcess.reacquire,
}


def register_kind(kind: str, reacquire: Callable[[Record], Resource]) -> None:
    """Teach the runtime an application's own kind of resource (a terminal held by a
    keeper process, say): ``reacquire(record)`` gets it back from its ``describe()``.
    Register it at import time of the module that defines it, so a resuming process
    that loads the continuation knows the kind."""
    if kind in _KINDS and _KINDS[kind] is not reacquire:
        raise ResourceError(f"resource kind {kind!r} is already registered")
    _KINDS[kind] = reacquire


def reacquire(record: Record) -> Resource:
    kind = record.get("kind")
    factory = _KINDS.get(kind) if isinstance(kind, str) else None
    if factory is None:
        raise ResourceError(f"unknown resource kind {kind!r}")
    return factory(record)

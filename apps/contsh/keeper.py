"""The keeper: a small process that owns the shells' terminals, so shells outlive servers.

It opens each PTY, forks the shell into it (so it is the shell's parent and can
always report its exit status) and keeps a copy of every PTY master for as long
as the shell lives. A server borrows a master (``SCM_RIGHTS``) to relay it; when
the server restarts, is upgraded, crashes, or suspends a session to disk, the
keeper's copy keeps the terminal open, so the shell never sees a hangup. The new
server asks for the masters back by shell id.

Protocol: a 0600 Unix socket; one JSON request per line, one JSON reply per
line, descriptors attached to the reply. Only the keeper's own user may connect
(checked with ``SO_PEERCRED``). Requests: ``spawn``, ``fetch``, ``status``,
``forget``, ``list``, ``ping``. The keeper exits after ``--idle`` seconds with no
shell and no connection; SIGTERM ends it and, with it, every shell (hangup).

Run: ``python -m apps.contsh.keeper --socket PATH``; servers start it themselves
(``ensure_keeper``).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import os
import re
import selectors
import signal
import socket
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from continuations.errors import ResourceError
from continuations.paths import private_unix_socket

log = logging.getLogger("contsh.keeper")

MAX_REQUEST = 64 * 1024
_SHELL_ID = re.compile(r"[0-9a-f]{16}")
IDLE_EXIT = 60.0
_PEERCRED = struct.Struct("3i")


def set_window(fd: int, cols: int, rows: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def exit_code(status: int) -> int:
    """A wait status as a shell reports it: the exit code, or 128 + the signal."""
    code = os.waitstatus_to_exitcode(status)
    return code if code >= 0 else 128 - code


@dataclass
class Kept:
    id: str
    pid: int
    master: int
    pidfd: int
    argv: list[str]
    status: int | None = None  # exit code once reaped


@dataclass
class _Conn:
    sock: socket.socket
    buffer: bytearray = field(default_factory=bytearray)


class Keeper:
    def __init__(self, path: Path, idle: float = IDLE_EXIT) -> None:
        self.path = path
        self.idle = idle
        self.shells: dict[str, Kept] = {}
        self.conns: dict[int, _Conn] = {}
        self.selector = selectors.DefaultSelector()
        self.running = True
        self.last_activity = time.monotonic()

    # --- shells ---------------------------------------------------------------------------

    def spawn(self, shell_id: str, argv: list[str], env: dict[str, str], cwd: str, cols: int,
              rows: int) -> Kept:
        master, slave = os.openpty()
        set_window(slave, cols, rows)
        os.set_inheritable(slave, False)
        pid = os.fork()
        if pid == 0:  # the shell: its own session, the PTY as controlling terminal
            try:
                os.close(master)
                os.login_tty(slave)
                with contextlib.suppress(OSError):
                    os.chdir(cwd)
                signal.signal(signal.SIGPIPE, signal.SIG_DFL)
                os.execvpe(argv[0], argv, env)
            except BaseException as exc:
                with contextlib.suppress(OSError):
                    os.write(2, f"contsh: cannot run {argv[0]}: {exc}\r\n".encode())
            os._exit(127)
        os.close(slave)
        os.set_blocking(master, False)
        shell = Kept(shell_id, pid, master, os.pidfd_open(pid), argv)
        self.shells[shell.id] = shell
        self.selector.register(shell.pidfd, selectors.EVENT_READ, ("exit", shell.id))
        log.info("shell %s: pid %d, %s", shell.id, pid, argv)
        return shell

    def reap(self, shell: Kept) -> None:
        if shell.status is not None:
            return
        with contextlib.suppress(ChildProcessError):
            pid, status = os.waitpid(shell.pid, os.WNOHANG)
            if pid == 0:
                return
            shell.status = exit_code(status)
            log.info("shell %s exited with %d", shell.id, shell.status)
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(shell.pidfd)
        os.close(shell.pidfd)

    def forget(self, shell: Kept) -> None:
        if shell.status is None:  # ending it: the hangup a closed terminal gives
            with contextlib.suppress(ProcessLookupError):
                os.killpg(shell.pid, signal.SIGHUP)
        os.close(shell.master)
        self.shells.pop(shell.id, None)
        if shell.status is None:
            self.reap(shell)

    # --- requests -------------------------------------------------------------------------

    def answer(self, request: dict[str, Any]) -> tuple[dict[str, Any], list[int]]:
        op = request.get("op")
        if op == "ping":
            return {"ok": True, "pid": os.getpid()}, []
        if op == "list":
            return {"ok": True, "shells": [
                {"id": s.id, "pid": s.pid, "status": s.status, "argv": s.argv}
                for s in self.shells.values()]}, []
        if op == "spawn":
            argv, env = request.get("argv"), request.get("env")
            if (not isinstance(argv, list) or not argv
                    or not all(isinstance(a, str) for a in argv)
                    or not isinstance(env, dict)):
                return {"ok": False, "error": "spawn needs argv (strings) and env"}, []
            shell_id = request.get("id")
            if not isinstance(shell_id, str) or not _SHELL_ID.fullmatch(shell_id):
                return {"ok": False, "error": "spawn needs an id of 16 hex digits"}, []
            if shell_id in self.shells:
                return {"ok": False, "error": f"shell {shell_id} exists"}, []
            new = self.spawn(shell_id, argv, {str(k): str(v) for k, v in env.items()},
                             str(request.get("cwd") or "/"), int(request.get("cols", 80)),
                             int(request.get("rows", 24)))
            return {"ok": True, "id": new.id, "pid": new.pid}, [new.master]
        if op not in ("fetch", "status", "forget"):
            return {"ok": False, "error": f"unknown request {op!r}"}, []
        shell_id = request.get("id")
        shell = self.shells.get(shell_id) if isinstance(shell_id, str) else None
        if shell is None:
            return {"ok": False, "error": f"no shell {shell_id!r} here"}, []
        self.reap(shell)
        if op == "fetch":
            return {"ok": True, "pid": shell.pid, "status": shell.status}, [shell.master]
        if op == "status":
            return {"ok": True, "pid": shell.pid, "status": shell.status}, []
        self.forget(shell)
        return {"ok": True}, []

    def _accept(self, listener: socket.socket) -> None:
        sock, _ = listener.accept()
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
        _, uid, _ = _PEERCRED.unpack(creds)
        if uid != os.getuid():
            log.warning("refused a connection from uid %d", uid)
            sock.close()
            return
        sock.setblocking(True)
        sock.settimeout(5.0)
        self.conns[sock.fileno()] = _Conn(sock)
        self.selector.register(sock, selectors.EVENT_READ, ("conn", sock.fileno()))

    def _close(self, conn: _Conn) -> None:
        self.selector.unregister(conn.sock)
        self.conns.pop(conn.sock.fileno(), None)
        conn.sock.close()

    def _serve(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(MAX_REQUEST)
        except OSError:
            data = b""
        if not data:
            self._close(conn)
            return
        conn.buffer += data
        while b"\n" in conn.buffer:
            line, _, rest = bytes(conn.buffer).partition(b"\n")
            conn.buffer = bytearray(rest)
            try:
                request = json.loads(line)
                if not isinstance(request, dict):
                    raise ValueError("not an object")
                reply, fds = self.answer(request)
            except (ValueError, OSError) as exc:
                reply, fds = {"ok": False, "error": f"bad request: {exc}"}, []
            try:
                socket.send_fds(conn.sock, [json.dumps(reply).encode() + b"\n"], fds)
            except OSError:
                self._close(conn)
                return
        if len(conn.buffer) > MAX_REQUEST:
            self._close(conn)

    def run(self, listener: socket.socket) -> None:
        self.selector.register(listener, selectors.EVENT_READ, ("listen", 0))
        while self.running:
            for key, _ in self.selector.select(timeout=1.0):
                kind, ident = key.data
                self.last_activity = time.monotonic()
                if kind == "listen":
                    self._accept(listener)
                elif kind == "conn" and ident in self.conns:
                    self._serve(self.conns[ident])
                elif kind == "exit" and ident in self.shells:
                    self.reap(self.shells[ident])
            idle = not self.shells and not self.conns
            if idle and time.monotonic() - self.last_activity > self.idle:
                log.info("no shells and no servers for %.0f s; exiting", self.idle)
                break
        for shell in list(self.shells.values()):
            self.forget(shell)


def serve(path: Path, idle: float = IDLE_EXIT) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    listener = private_unix_socket(path)
    listener.listen(16)
    keeper = Keeper(path, idle)

    def stop(signum: int, frame: object) -> None:
        keeper.running = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # its terminal (if any) going away
    try:
        keeper.run(listener)
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        listener.close()


# --- the servers' side ---------------------------------------------------------------------


class KeeperClient:
    """Blocking calls to the keeper; each answers in well under a millisecond."""

    def __init__(self, path: Path, timeout: float = 5.0) -> None:
        self.path = path
        self.timeout = timeout
        self._sock: socket.socket | None = None

    def _connect(self) -> socket.socket:
        if self._sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            try:
                sock.connect(str(self.path))
            except OSError as exc:
                sock.close()
                raise ResourceError(f"the shell keeper at {self.path} is not running: "
                                    f"{exc}") from exc
            self._sock = sock
        return self._sock

    def call(self, op: str, **fields: Any) -> tuple[dict[str, Any], list[int]]:
        sock = self._connect()
        try:
            sock.sendall(json.dumps({"op": op, **fields}).encode() + b"\n")
            data, fds = b"", []
            while not data.endswith(b"\n"):
                chunk, got, _, _ = socket.recv_fds(sock, MAX_REQUEST, 4)
                fds += got
                if not chunk:
                    raise ResourceError("the shell keeper closed the connection")
                data += chunk
        except OSError as exc:
            self.close()
            raise ResourceError(f"the shell keeper did not answer: {exc}") from exc
        reply = json.loads(data)
        if not reply.get("ok"):
            for fd in fds:
                os.close(fd)
            raise ResourceError(f"shell keeper: {reply.get('error', 'refused')}")
        for fd in fds:
            os.set_blocking(fd, False)
        return reply, fds

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def ensure_keeper(path: Path, *, log_path: Path | None = None,
                  timeout: float = 10.0) -> KeeperClient:
    """A client of the keeper at ``path``, starting one (detached) if none answers."""
    client = KeeperClient(path)
    with contextlib.suppress(ResourceError):
        client.call("ping")
        return client
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    try:
        subprocess.Popen(
            [sys.executable, "-m", "apps.contsh.keeper", "--socket", str(path)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True,
            cwd="/", env={**os.environ, "PYTHONPATH": _package_root()},
        )
    finally:
        if log_path:
            out.close()  # type: ignore[union-attr]
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.call("ping")
            return client
        except ResourceError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _package_root() -> str:
    here = str(Path(__file__).resolve().parents[2])
    return os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH", "")) if p)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m apps.contsh.keeper",
                                     description="Hold contsh shells' terminals.")
    parser.add_argument("--socket", required=True, type=Path)
    parser.add_argument("--idle", type=float, default=IDLE_EXIT,
                        help="exit after this many seconds with no shell and no server")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s keeper %(message)s")
    serve(args.socket, args.idle)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A per-user resumer that has everything imported, and forks a new process per resume.

Starting Python and importing ``cryptography``, ``dill`` and ``sqlite-utils``
takes about a quarter of a second; the resume itself a few milliseconds. The
forkserver pays the imports once. ``continuations resume`` asks it (through a
Unix socket, 0600, in the user's 0700 runtime directory) and it forks a child
that becomes the session's new process: its own pid, its own session (setsid),
output to the session's log. The parent holds no store connection, no threads
and no event loop, so forking is safe. It exits after ``IDLE_EXIT`` seconds
without a request; its socket name carries the package version and the
interpreter, so an upgraded install never runs stale code.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from continuations.errors import ContinuationError
from continuations.paths import runtime_dir
from continuations.runtime import launch

IDLE_EXIT = 600.0
START_TIMEOUT = 30.0
MAX_REQUEST = 64 * 1024


def socket_path() -> Path:
    from continuations import __version__

    tag = hashlib.sha256(f"{__version__}:{sys.executable}".encode()).hexdigest()[:12]
    return runtime_dir() / f"resumer-{tag}.sock"


def _child(request: dict[str, Any]) -> int:
    """In the forked child: become the session's process."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the app may wait for its own children
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(log, 1)
    os.dup2(log, 2)
    if request.get("cwd") and os.path.isdir(request["cwd"]):
        os.chdir(request["cwd"])
    argv = [request["session"]]
    if request.get("store"):
        argv += ["--store", request["store"]]
    if request.get("local_host"):
        argv += ["--local-host", request["local_host"]]
    return launch.main(argv)


def _handle(conn: socket.socket, listener: socket.socket) -> None:
    conn.settimeout(10)
    data = b""
    while not data.endswith(b"\n") and len(data) < MAX_REQUEST:
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    try:
        request = json.loads(data)
        if isinstance(request, dict) and request.get("op") in ("exit", "ping"):
            conn.sendall(json.dumps({"ok": True, "pid": os.getpid()}).encode() + b"\n")
            if request["op"] == "exit":
                raise SystemExit(0)
            return
        if not isinstance(request, dict) or not isinstance(request.get("session"), str):
            raise ValueError("need a session id")
    except ValueError as exc:
        conn.sendall(json.dumps({"ok": False, "error": f"bad request: {exc}"}).encode() + b"\n")
        return
    pid = os.fork()
    if pid == 0:  # the child never returns into the server loop
        code = 1
        try:
            listener.close()
            conn.close()
            code = _child(request)
        finally:
            os._exit(code)
    conn.sendall(json.dumps({"ok": True, "pid": pid}).encode() + b"\n")


def serve_forever(path: Path) -> None:
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    path.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        listener.bind(str(path))
    finally:
        os.umask(old)
    listener.listen(16)
    listener.settimeout(IDLE_EXIT)
    try:
        while True:
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                return  # idle: go away; the next resume starts a fresh one
            with conn, contextlib.suppress(OSError):
                _handle(conn, listener)
    finally:
        listener.close()
        path.unlink(missing_ok=True)


def _ask(path: Path, request: dict[str, Any]) -> int:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        sock.sendall(json.dumps(request).encode() + b"\n")
        answer = b""
        while not answer.endswith(b"\n"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    reply = json.loads(answer)
    if not reply.get("ok"):
        raise ContinuationError(f"resumer refused: {reply.get('error')}")
    return int(reply["pid"])


def stop() -> bool:
    """Ask a running resumer to exit; False if none was running."""
    try:
        _ask(socket_path(), {"op": "exit"})
    except (FileNotFoundError, ConnectionRefusedError):
        return False
    return True


def ensure_running() -> int:
    """Start the resumer unless it runs; return its pid."""
    return fork_resume({"op": "ping"})


def fork_resume(request: dict[str, Any]) -> int:
    """Have the forkserver start the session's new process; start the server if needed.

    Returns the new process's pid (for a ping: the resumer's own)."""
    path = socket_path()
    try:
        return _ask(path, request)
    except (FileNotFoundError, ConnectionRefusedError):
        pass
    subprocess.Popen(
        [sys.executable, "-m", "continuations.runtime.forkserver", str(path)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        try:
            return _ask(path, request)
        except (FileNotFoundError, ConnectionRefusedError):
            time.sleep(0.02)
    raise ContinuationError(f"the resumer did not start within {START_TIMEOUT:g} s")


if __name__ == "__main__":
    serve_forever(Path(sys.argv[1]))

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
import fcntl
import hashlib
import importlib
import json
import os
import signal
import socket
import struct
import sys
import time
from pathlib import Path
from typing import Any

from continuations.errors import ContinuationError
from continuations.paths import private_unix_socket, runtime_dir

IDLE_EXIT = 600.0
START_TIMEOUT = 30.0
MAX_REQUEST = 64 * 1024


def socket_path() -> Path:
    from continuations import __version__

    # The installation, not the name it was started by: python, python3 and python3.11
    # of one venv share one resumer.
    tag = hashlib.sha256(f"{__version__}:{sys.prefix}:{sys.version}".encode()).hexdigest()[:12]
    return runtime_dir() / f"resumer-{tag}.sock"


def _child(request: dict[str, Any], fds: list[int]) -> int:
    """In the forked child: become the session's process (or the asked-for program)."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the app may wait for its own children
    os.setsid()
    if fds:  # attached: the caller's terminal (or pipes) become ours
        for target, fd in enumerate(fds[:3]):
            os.dup2(fd, target)
        for fd in fds:
            if fd > 2:
                os.close(fd)
    else:
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(log, 1)
        os.dup2(log, 2)
    if isinstance(request.get("env"), dict):
        os.environ.clear()
        os.environ.update({str(k): str(v) for k, v in request["env"].items()})
    if request.get("cwd") and os.path.isdir(request["cwd"]):
        os.chdir(request["cwd"])
    if request.get("op") == "run":
        module, _, function = str(request["entry"]).partition(":")
        code = getattr(importlib.import_module(module), function)(list(request["argv"]))
        return int(code or 0)
    from continuations.runtime import launch

    argv = [request["session"]]
    if request.get("store"):
        argv += ["--store", request["store"]]
    if request.get("local_host"):
        argv += ["--local-host", request["local_host"]]
    return launch.main(argv)


def _handle(conn: socket.socket, listener: socket.socket) -> None:
    conn.settimeout(10)
    _, uid, _ = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                     struct.calcsize("3i")))
    if uid != os.getuid():  # the socket is 0600 in a 0700 directory; this is a second lock
        return
    data, fds = b"", []
    while not data.endswith(b"\n") and len(data) < MAX_REQUEST:
        chunk, got, _, _ = socket.recv_fds(conn, 4096, 3)
        fds += got
        if not chunk:
            break
        data += chunk
    try:
        try:
            request = json.loads(data)
            if isinstance(request, dict) and request.get("op") in ("exit", "ping"):
                conn.sendall(json.dumps({"ok": True, "pid": os.getpid()}).encode() + b"\n")
                if request["op"] == "exit":
                    raise SystemExit(0)
                return
            _check(request, fds)
            for module in request.get("preload", []):
                importlib.import_module(module)  # the next fork starts with it loaded
        except (ValueError, ImportError) as exc:
            conn.sendall(json.dumps({"ok": False, "error": f"bad request: {exc}"}).encode()
                         + b"\n")
            return
        pid = os.fork()
        if pid == 0:  # the child never returns into the server loop
            code = 1
            try:
                listener.close()
                if not fds:
                    conn.close()
                code = _child(request, fds)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            finally:
                if fds:  # attached: the caller waits for our exit status
                    with contextlib.suppress(OSError):
                        conn.sendall(json.dumps({"exit": code}).encode() + b"\n")
                os._exit(code)
        conn.sendall(json.dumps({"ok": True, "pid": pid}).encode() + b"\n")
    finally:
        for fd in fds:
            os.close(fd)


def _check(request: Any, fds: list[int]) -> None:
    if not isinstance(request, dict):
        raise ValueError("not an object")
    if request.get("op") == "run":
        if not isinstance(request.get("entry"), str) or ":" not in request["entry"]:
            raise ValueError("run needs an entry point module:function")
        if not isinstance(request.get("argv"), list) or len(fds) != 3:
            raise ValueError("run needs argv and three descriptors (stdin, stdout, stderr)")
    elif not isinstance(request.get("session"), str):
        raise ValueError("need a session id")


def serve_forever(path: Path) -> None:
    # Paid once here, not by every forked child: that is the point of the resumer.
    importlib.import_module("continuations.runtime.launch")
    # Two clients that found no resumer may start two: the second must not take the
    # first one's socket away (it would be orphaned until it idles out).
    lock = os.open(f"{path}.lock", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    listener = private_unix_socket(path)
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
        path.unlink(missing_ok=True)  # while still holding the lock: never another's
        listener.close()
        os.close(lock)


def _ask(path: Path, request: dict[str, Any]) -> int:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        sock.sendall(json.dumps(request).encode() + b"\n")
        return _reply(sock)


def _reply(sock: socket.socket) -> int:
    answer = b""
    while not answer.endswith(b"\n"):
        chunk = sock.recv(1)  # one line only: an attached child's exit status follows
        if not chunk:
            break
        answer += chunk
    reply = json.loads(answer or b"{}")
    if not reply.get("ok"):
        raise ContinuationError(f"resumer refused: {reply.get('error', 'no answer')}")
    return int(reply["pid"])


def run_attached(entry: str, argv: list[str], *, preload: tuple[str, ...] = ()) -> int:
    """Run ``entry(argv)`` ("module:function") in a process forked from the resumer, on
    this process's stdin, stdout and stderr, with its environment and directory; wait
    for it and return its exit status. A new program in milliseconds instead of the
    quarter second that starting Python and importing our dependencies takes.

    Window-size changes and termination signals sent to this process are passed on.
    Raises ``ContinuationError`` if the resumer cannot be reached or started."""
    path = socket_path()
    request = {"op": "run", "entry": entry, "argv": argv, "env": dict(os.environ),
               "cwd": os.getcwd(), "preload": list(preload)}
    data = json.dumps(request).encode() + b"\n"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
    except (FileNotFoundError, ConnectionRefusedError):
        sock.close()
        # Waiting for a cold start would make this run slower than running it in the
        # caller: start one for next time, and let the caller go ahead by itself.
        _start(path)
        raise ContinuationError("no resumer was running (one is starting)") from None
    with sock:
        sock.settimeout(10)
        socket.send_fds(sock, [data], [0, 1, 2])
        pid = _reply(sock)
        forwarded = (signal.SIGWINCH, signal.SIGTERM, signal.SIGHUP, signal.SIGINT)
        for sig in forwarded:
            signal.signal(sig, lambda signum, _frame: _signal(pid, signum))
        sock.settimeout(None)
        answer = b""
        while not answer.endswith(b"\n"):
            try:
                chunk = sock.recv(4096)
            except InterruptedError:
                continue
            if not chunk:
                return 255  # it died without saying (killed)
            answer += chunk
        return int(json.loads(answer).get("exit", 255))


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def stop(runtime: Path | None = None) -> bool:
    """Ask a running resumer to exit (the one of another runtime directory, if given);
    False if none was running."""
    path = socket_path() if runtime is None else runtime / socket_path().name
    try:
        _ask(path, {"op": "exit"})
    except (FileNotFoundError, ConnectionRefusedError):
        return False
    return True


def _start(path: Path) -> None:
    import subprocess  # only when starting one: the attached launcher stays light

    subprocess.Popen(
        [sys.executable, "-m", "continuations.runtime.forkserver", str(path)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


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
    _start(path)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        try:
            return _ask(path, request)
        except (FileNotFoundError, ConnectionRefusedError):
            time.sleep(0.02)
    raise ContinuationError(f"the resumer did not start within {START_TIMEOUT:g} s")


if __name__ == "__main__":
    serve_forever(Path(sys.argv[1]))

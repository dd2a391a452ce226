"""Resources really let go and really come back: /proc fds, ports, live children."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from continuations.errors import ResourceError
from continuations.runtime.resources import (
    ManagedFile,
    ManagedListener,
    ManagedProcess,
    ManagedSocket,
    reacquire,
)


def open_fds() -> set[str]:
    return {os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
            if os.path.exists(f"/proc/self/fd/{fd}")}


def test_file_is_closed_then_reopened_at_the_same_offset(tmp_path: Path) -> None:
    path = tmp_path / "log.txt"
    managed = ManagedFile.open(path, "w")
    managed.file.write("first part|")
    record = managed.release()
    assert str(path) not in open_fds()
    assert record["offset"] == len("first part|")
    again = reacquire(record)
    assert isinstance(again, ManagedFile)
    again.file.write("second part")
    again.release()
    assert path.read_text() == "first part|second part"  # not truncated by mode "w"


def test_replaced_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "data"
    path.write_text("original")
    record = ManagedFile.open(path, "r").release()
    impostor = tmp_path / "new"
    impostor.write_text("impostor")
    os.replace(impostor, path)  # how editors and package managers replace files
    with pytest.raises(ResourceError, match="replaced"):
        reacquire(record)


def test_listener_frees_the_port_and_takes_it_back_or_says_why_not() -> None:
    listener = ManagedListener.listen("127.0.0.1", 0)
    port = listener.port
    record = listener.release()
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", port))  # the port really is free while suspended
    squatter.listen()
    with pytest.raises(ResourceError, match=f"127.0.0.1:{port}.*another process took"):
        reacquire(record)
    squatter.close()
    again = reacquire(record)
    assert isinstance(again, ManagedListener)
    client = socket.create_connection(("127.0.0.1", port), timeout=5)
    client.close()
    again.release()


def test_socket_reconnects_to_the_same_remote() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    managed = ManagedSocket.connect("127.0.0.1", port)
    first, _ = server.accept()
    record = managed.release()
    assert first.recv(10) == b""  # the peer saw it close
    again = reacquire(record)
    second, _ = server.accept()
    assert isinstance(again, ManagedSocket)
    again.socket.sendall(b"hi")
    assert second.recv(10) == b"hi"
    for s in (first, second, server):
        s.close()
    again.release()


CHILD = """
import signal, sys, time
log = open(sys.argv[1], "a", buffering=1)
signal.signal(signal.SIGUSR1, lambda *a: log.write("disconnect\\n"))
signal.signal(signal.SIGUSR2, lambda *a: log.write("resume\\n"))
log.write("ready\\n")
for _ in range(600):
    time.sleep(0.05)
"""


def wait_for_lines(path: Path, count: int) -> list[str]:
    for _ in range(200):
        lines = path.read_text().split() if path.exists() else []
        if len(lines) >= count:
            return lines
        time.sleep(0.02)
    return path.read_text().split() if path.exists() else []


def test_child_survives_and_is_told_of_disconnect_and_resume(tmp_path: Path) -> None:
    log = tmp_path / "child.log"
    child = ManagedProcess.spawn([sys.executable, "-c", CHILD, str(log)],
                                 stdout=subprocess.DEVNULL)
    try:
        assert wait_for_lines(log, 1) == ["ready"]
        record = child.release()
        assert wait_for_lines(log, 2) == ["ready", "disconnect"]
        again = reacquire(record)
        assert isinstance(again, ManagedProcess) and again.pid == child.pid
        assert wait_for_lines(log, 3) == ["ready", "disconnect", "resume"]
    finally:
        os.kill(child.pid, signal.SIGKILL)
        if child.popen is not None:
            child.popen.wait(timeout=10)
    with pytest.raises(ResourceError, match="did not survive"):
        reacquire(record)

"""Issue acceptance, as a user would do it: real processes, a real store, the real CLI."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

APPS = Path(__file__).parent / "runtime_apps"


def wait_for(predicate, timeout: float = 20.0, what: str = "condition"):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def stop_resumer(env: dict[str, str]) -> None:
    """The resumer (forkserver) that `continuations resume` started must not outlive us."""
    subprocess.run(
        [sys.executable, "-c", "from continuations.runtime import forkserver; forkserver.stop()"],
        env=env, timeout=30, check=True,
    )


def cli(store: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "continuations", "--store", str(store), *args],
        capture_output=True, text=True, timeout=60,
    )


@pytest.fixture
def world(tmp_path: Path) -> Iterator[dict[str, object]]:
    """The peer (a session server), a plain TCP sink, and environment for the app."""
    env = {**os.environ, "CONTINUATIONS_STATE_DIR": str(tmp_path / "state"),
           "CONTINUATIONS_RUNTIME_DIR": str(tmp_path / "run")}
    sink = socket.create_server(("127.0.0.1", 0))
    (tmp_path / "sink.port").write_text(str(sink.getsockname()[1]))
    peer = subprocess.Popen([sys.executable, str(APPS / "peer.py"), str(tmp_path)], env=env)
    procs = [peer]
    try:
        wait_for(lambda: (tmp_path / "peer.port").exists(), what="the peer to listen")
        yield {"dir": tmp_path, "env": env, "sink": sink, "procs": procs}
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
        sink.close()
        stop_resumer(env)
        subprocess.run(["pkill", "-f", str(APPS / "child.py") + " " + str(tmp_path)],
                       check=False)


def test_suspend_releases_everything_and_resume_in_a_new_process_continues(
    world: dict[str, object],
) -> None:
    workdir = world["dir"]
    env = world["env"]
    sink = world["sink"]
    procs = world["procs"]
    assert isinstance(workdir, Path) and isinstance(env, dict)
    assert isinstance(sink, socket.socket) and isinstance(procs, list)
    store = workdir / "store.db"
    os.environ.update(env)  # the CLI subprocesses inherit the same state dirs
    app = subprocess.Popen([sys.executable, str(APPS / "holder.py"), str(workdir), str(store)],
                           env=env)
    procs.append(app)
    first_sink, _ = sink.accept()
    assert first_sink.recv(100) == b"started\n"
    session_id = wait_for(lambda: (workdir / "session.id").exists()
                          and (workdir / "session.id").read_text(), what="the session")
    wait_for(lambda: (workdir / "child.log").exists(), what="the child")
    time.sleep(0.5)  # let it stream for a while

    listed = json.loads(cli(store, "list", "--json").stdout)
    assert [(s["id"], s["state"], s["pid"]) for s in listed] == [
        (session_id, "established", app.pid)
    ]
    shown = cli(store, "show", session_id[:8])
    assert shown.returncode == 0 and "status" in shown.stdout  # live resources listed

    done = cli(store, "suspend", session_id[:8])
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"suspended {session_id}")
    wait_for(lambda: (workdir / "suspended").exists(), what="the app to see the suspension")
    # The process is still there (it lingers 1.5 s) and holds none of the resources.
    fds = {os.readlink(f"/proc/{app.pid}/fd/{fd}") for fd in os.listdir(f"/proc/{app.pid}/fd")}
    assert str(workdir / "app.log") not in fds
    status_port = int((workdir / "status.port").read_text())
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", status_port))  # the port is free
    squatter.close()
    assert first_sink.recv(100) == b""  # the sink connection was closed
    assert app.wait(timeout=20) == 0  # and the app can exit
    assert (workdir / "child.log").read_text().split() == ["started", "disconnect"]

    shown = json.loads(cli(store, "show", session_id, "--json").stdout)
    assert shown["state"] == "suspended"
    assert shown["continuation"]["tree"]["name"] == "producer"
    assert {r["name"] for r in shown["resources"]} == {"log", "status", "sink", "helper"}
    offset = next(r["offset"] for r in shown["resources"] if r["name"] == "log")
    assert offset == len((workdir / "app.log").read_bytes())

    resumed = cli(store, "resume", session_id)
    assert resumed.returncode == 0, resumed.stderr + resumed.stdout
    new_pid = int(resumed.stdout.split(" in pid ")[1].split()[0])
    assert new_pid != app.pid
    second_sink, _ = sink.accept()  # the TCP connection came back
    assert second_sink.recv(100) == b"resumed\n"
    with socket.create_connection(("127.0.0.1", status_port), timeout=10) as probe:
        assert probe.recv(100) == b"status: resumed\n"  # the port was re-bound
    wait_for(lambda: "resume" in (workdir / "child.log").read_text(), what="child resume")
    assert (workdir / "child.log").read_text().split() == ["started", "disconnect", "resume"]

    def finished() -> bool:
        return (workdir / "peer.log").exists() and (
            (workdir / "peer.log").read_text().count("\n") >= 3000
        )

    wait_for(finished, timeout=60, what="all numbers at the peer")
    numbers = (workdir / "peer.log").read_text().split()
    assert numbers == [str(n) for n in range(3000)]  # nothing lost, nothing twice
    assert (workdir / "app.log").read_text().split() == [str(n) for n in range(3000)]
    conditions = json.loads((workdir / "conditions.json").read_text())
    assert conditions["rtt"] is not None and conditions["rtt"] > 0
    assert conditions["offline"] > 0
    assert conditions["local"][0] == "127.0.0.2"
    wait_for(lambda: not json.loads(cli(store, "list", "--json").stdout),
             what="the closed session to leave the store")
    first_sink.close()
    second_sink.close()

"""The server end suspends to disk too: a new server process takes the session back."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from aiohelpers import run
from continuations import connect
from continuations.protocol import SessionConfig

APP = Path(__file__).parent / "runtime_apps" / "server_app.py"
# Clients that notice a vanished server quickly and come back quickly.
RECONNECT_FAST = SessionConfig(keepalive_interval=0.1, min_dead_timeout=0.4, dead_timeout=1.0,
                               reconnect_initial_delay=0.05, reconnect_max_delay=0.5)


async def wait_file(path: Path, timeout: float = 20.0) -> str:
    for _ in range(int(timeout / 0.05)):
        if path.exists() and path.read_text():
            return path.read_text()
        await asyncio.sleep(0.05)
    raise AssertionError(f"{path} never appeared")


def test_server_restart_suspends_sessions_and_the_new_server_resumes_them(
    tmp_path: Path,
) -> None:
    env = {**os.environ, "CONTINUATIONS_STATE_DIR": str(tmp_path / "state"),
           "CONTINUATIONS_RUNTIME_DIR": str(tmp_path / "run")}
    store = str(tmp_path / "server.db")
    procs: list[subprocess.Popen[bytes]] = []

    def start(mode: str, port: int) -> None:
        procs.append(subprocess.Popen(
            [sys.executable, str(APP), mode, str(tmp_path), str(port), store], env=env,
        ))

    async def main() -> tuple[list[bytes], str]:
        start("serve", 0)
        port = int(await wait_file(tmp_path / "serve.port"))
        client = await connect("127.0.0.1", port, known_hosts=tmp_path / "kh",
                               config=RECONNECT_FAST)
        stream = client.open_stream()
        replies = []
        for n in range(100):
            stream.write(b"%d\n" % n)
            replies.append(await stream.readline())
        procs[0].terminate()  # a restart: it stops accepting, suspends its sessions, exits
        assert await asyncio.to_thread(procs[0].wait, 30) == 0
        for n in range(100, 150):  # the client keeps writing meanwhile
            stream.write(b"%d\n" % n)
        start("resume", port)
        for _ in range(100, 150):
            replies.append(await asyncio.wait_for(stream.readline(), 30))
        for n in range(150, 200):
            stream.write(b"%d\n" % n)
            replies.append(await stream.readline())
        rtt = await wait_file(tmp_path / "resumed")
        await client.close()
        return replies, rtt

    try:
        replies, rtt = run(main(), timeout=120)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
    assert (tmp_path / "resume.parked").read_text() == "1"  # found in the store at start
    assert replies == [b"ok %d\n" % n for n in range(200)]
    logged = (tmp_path / "server.log").read_text().split()
    assert logged == [str(n) for n in range(200)]  # across two server processes, once each
    assert float(rtt) > 0


def test_a_suspended_server_session_resumes_when_its_client_comes_back(tmp_path: Path) -> None:
    """No restart: the same server parks the session, and takes it back on the client's
    next attempt ("the peer came back")."""
    env = {**os.environ, "CONTINUATIONS_STATE_DIR": str(tmp_path / "state"),
           "CONTINUATIONS_RUNTIME_DIR": str(tmp_path / "run")}
    store = str(tmp_path / "server.db")
    server = subprocess.Popen([sys.executable, str(APP), "serve", str(tmp_path), "0", store],
                              env=env)

    async def main() -> list[bytes]:
        port = int(await wait_file(tmp_path / "serve.port"))
        client = await connect("127.0.0.1", port, known_hosts=tmp_path / "kh",
                               config=RECONNECT_FAST)
        stream = client.open_stream()
        replies = []
        for n in range(20):
            stream.write(b"%d\n" % n)
            replies.append(await stream.readline())
        session_id = await wait_file(tmp_path / "session.id")
        done = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "continuations", "--store", store, "suspend", session_id,
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        _, err = await done.communicate()
        assert done.returncode == 0, err.decode()
        for n in range(20, 40):
            stream.write(b"%d\n" % n)
            replies.append(await asyncio.wait_for(stream.readline(), 30))
        await wait_file(tmp_path / "resumed")
        await client.close()
        return replies

    try:
        replies = run(main(), timeout=120)
    finally:
        server.kill()
        server.wait(timeout=10)
    assert replies == [b"ok %d\n" % n for n in range(40)]
    assert (tmp_path / "server.log").read_text().split() == [str(n) for n in range(40)]

"""Suspend a client to disk, exit, and resume it from a new process: one session to the peer."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import sys
from pathlib import Path

from aiohelpers import FAST, run
from continuations.aio import ServerSession, serve

CLIENT = """
import asyncio, sys
from pathlib import Path
from continuations.aio import connect, resume
from continuations.paths import private_file
from continuations.protocol.snapshot import SessionSnapshot
from aiohelpers import FAST, pattern

async def first(port, state):
    session = await connect("127.0.0.1", port, known_hosts=state / "kh", config=FAST)
    stream = session.open_stream()
    stream.write(pattern(3_000_000, 1))          # some of it still unacknowledged below
    reply = await stream.readexactly(1000)       # part of the server's answer...
    snap = session.suspend()                     # ...the rest arrives or waits in the server
    private_file(state / "snapshot", snap.encode())
    print(len(reply), snap.session_id.hex(), flush=True)

async def second(port, state):
    snap = SessionSnapshot.decode((state / "snapshot").read_bytes())
    session = await resume(snap, "127.0.0.1", port, known_hosts=state / "kh", config=FAST)
    stream = session.stream(0)
    stream.write(pattern(1_000_000, 2))
    stream.write_eof()
    rest = await stream.read()
    print(len(rest), session.id_hex, session.attach_version, flush=True)
    await session.close()

step, port, state = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
asyncio.run(first(port, state) if step == "first" else second(port, state))
"""


def test_client_resumes_in_a_new_process_and_the_server_sees_one_stream(
    tmp_path: Path,
) -> None:
    from aiohelpers import pattern

    expected_up = hashlib.sha256(pattern(3_000_000, 1) + pattern(1_000_000, 2)).hexdigest()
    answer = pattern(2_000_000, 3)
    seen: dict[str, object] = {}

    async def handler(session: ServerSession) -> None:
        stream = await session.accept_stream()
        stream.write(answer)
        stream.write_eof()
        seen["sessions_started"] = int(seen.get("sessions_started", 0)) + 1  # type: ignore[call-overload]
        data = await stream.read()
        seen["up"] = hashlib.sha256(data).hexdigest()
        seen["session"] = session.id_hex

    async def main() -> tuple[list[str], list[str]]:
        server = await serve(handler, host_key=tmp_path / "hk", config=FAST)
        port = str(server.address[1])
        tests_dir = str(Path(__file__).parent)

        async def step(name: str) -> list[str]:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", CLIENT, name, port, str(tmp_path),
                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                env={"PYTHONPATH": tests_dir, "PATH": "/usr/bin:/bin"},
            )
            out, err = await asyncio.wait_for(proc.communicate(), 60)
            assert proc.returncode == 0, err.decode()
            return out.decode().split()

        try:
            first = await step("first")
            second = await step("second")
            for _ in range(200):
                if "up" in seen:
                    break
                await asyncio.sleep(0.05)
        finally:
            server.close()
            await server.wait_closed()
        return first, second

    first, second = run(main(), timeout=120)
    assert first[0] == "1000"
    assert second[0] == str(len(answer) - 1000)  # the rest of the answer, exactly once
    assert first[1] == second[1] == seen["session"]  # one session throughout
    assert int(second[2]) >= 1
    assert seen["up"] == expected_up  # every byte from both processes, in order, once
    assert seen["sessions_started"] == 1
    assert (tmp_path / "snapshot").stat().st_mode & 0o777 == 0o600

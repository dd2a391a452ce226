"""With the peer gone, writers block at the replay buffer's cap and memory stays bounded."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

from aiohelpers import run
from continuations.aio import connect
from continuations.protocol import SessionConfig

MiB = 1024 * 1024

SERVER = """
import asyncio, sys
from continuations.aio import serve

async def handler(session):
    await session.accept_stream()
    await asyncio.sleep(3600)

async def main():
    server = await serve(handler, host_key=sys.argv[1])
    print(server.address[1], flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_writer_blocks_at_replay_cap_and_memory_stays_bounded(tmp_path: Path) -> None:
    cap = 8 * MiB
    chunk = b"z" * (256 * 1024)
    config = SessionConfig(replay_buffer=cap, keepalive_interval=0.1, min_dead_timeout=0.4,
                           dead_timeout=1.0)
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(tmp_path / "hk")],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())

        async def main() -> tuple[int, int, int, bool]:
            client = await connect("127.0.0.1", port, known_hosts=tmp_path / "kh", config=config)
            stream = client.open_stream()
            stream.write(b"hello")
            await stream.drain()
            await asyncio.sleep(0.2)
            os.kill(proc.pid, signal.SIGSTOP)  # the peer is gone: no reads, no acks, no RST
            baseline = rss_bytes()
            accepted = 0
            blocked = False
            while accepted < 8 * cap:
                stream.write(chunk)
                try:
                    await asyncio.wait_for(stream.drain(), 2.0)
                except TimeoutError:
                    blocked = True
                    break
                accepted += len(chunk)
            grown = rss_bytes() - baseline
            buffered = client.buffered
            client.abort()
            return accepted, grown, buffered, blocked

        accepted, grown, buffered, blocked = run(main())
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        proc.kill()
        proc.wait(timeout=10)
    print(f"accepted={accepted} buffered={buffered} rss_growth={grown}")
    assert blocked, "the writer was never back-pressured"
    # Everything the writer was told is written sits in the replay buffer, nothing beyond it.
    assert accepted <= cap
    assert buffered <= cap
    assert accepted >= cap - 2 * len(chunk)
    # The replay buffer plus one pending write, the transport buffer and allocator slack.
    assert grown <= cap + 8 * MiB, f"RSS grew by {grown / MiB:.1f} MiB"

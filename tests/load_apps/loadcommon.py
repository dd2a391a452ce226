"""What the load-test server and clients share: the config and a line protocol."""

from __future__ import annotations

import asyncio
import json
import resource
import sys

from continuations.protocol import SessionConfig

# Idle keepalives cost the server a record per session per interval: with 1,000 sessions
# on 2 cores the defaults (0.25 s) would be most of the load. Cuts are resets, noticed at
# once, so the longer dead-path bound slows nothing down here.
LOAD_CONFIG = SessionConfig(
    keepalive_interval=1.0, min_dead_timeout=3.0, dead_timeout=5.0,
    reconnect_initial_delay=0.02, reconnect_max_delay=0.3,
)


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def say(word: str, payload: object = None) -> None:
    """One line on stdout: a word, optionally a JSON payload."""
    line = word if payload is None else f"{word} {json.dumps(payload)}"
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def stdin_lines() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader

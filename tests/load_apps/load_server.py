"""Load-test server: ``continuations.aio.serve`` with an echo handler, one process.

    python load_server.py HOST_KEY_PATH

Prints ``READY {"port": N, "pid": P}``, then answers each line on stdin:
``stats`` -> ``STATS {...}`` (after a full garbage collection: open fds, RSS before
and after malloc_trim, live protocol objects, the endpoint's tables, tasks), ``stats
deep`` -> the same plus what holds any session the endpoint no longer routes to (slow:
it scans the heap), ``quit`` -> closes the server and exits.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import os
import sys
import time
from collections import Counter

from loadcommon import LOAD_CONFIG, raise_fd_limit, say, stdin_lines

from continuations.aio import ServerSession, serve
from continuations.errors import SessionError
from continuations.protocol import Disconnected, Event, SessionClosed, SessionLost
from continuations.protocol.link import Link
from continuations.protocol.session import Session


async def echo_handler(session: ServerSession) -> None:
    async def echo(stream) -> None:  # type: ignore[no-untyped-def]
        try:
            while data := await stream.read(1 << 16):
                stream.write(data)
                await stream.drain()
            stream.write_eof()
        except SessionError:
            pass

    tasks = set()
    while True:
        stream = await session.accept_stream()
        task = asyncio.ensure_future(echo(stream))
        tasks.add(task)
        task.add_done_callback(tasks.discard)


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def holders(obj: object, ids: set[int], depth: int = 3) -> list[str]:
    """What keeps ``obj`` alive: a few referrer chains, by type name (a leak's trail)."""
    chains: list[str] = []
    for ref in gc.get_referrers(obj):
        if id(ref) not in ids:
            continue
        name = type(ref).__name__
        if depth > 1:
            up = holders(ref, ids, depth - 1)[:3]
            chains.extend(f"{name} <- {u}" for u in up) if up else chains.append(name)
        else:
            chains.append(name)
    return chains[:6]


def stats(server, deep: bool) -> dict[str, object]:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    gc.collect()
    endpoint = server.endpoint
    objects = gc.get_objects()
    # Sessions the endpoint no longer routes to, yet something keeps alive.
    strays = [o for o in objects if type(o) is Session and endpoint.sessions.get(o.id) is not o]
    out: dict[str, object] = {
        "fds": len(os.listdir("/proc/self/fd")) - 1,  # minus the one listdir itself holds
        "rss_kib": rss_kib(),
        "live_core_sessions": sum(1 for o in objects if type(o) is Session),
        "live_links": sum(1 for o in objects if type(o) is Link),
        "endpoint_sessions": len(endpoint.sessions),
        "session_states": dict(Counter(s.state.value for s in endpoint.sessions.values())),
        "why_disconnected": dict(Counter(
            LAST_DISCONNECT.get(s.id, "?") for s in endpoint.sessions.values()
            if s.state.value == "disconnected").most_common(4)),
        "server_sessions": len(server.sessions),
        "endpoint_links": len(endpoint._links),
        "driver_links": len(server._driver.links),
        "unbound": len(endpoint._unbound),
        "embryos": len(endpoint._embryos),
        "timer_heap": len(endpoint._heap),
        "tasks": len(asyncio.all_tasks()),
        "task_stacks": dict(Counter(
            " / ".join(f"{f.f_code.co_name}:{f.f_lineno}" for f in t.get_stack(limit=4))
            for t in asyncio.all_tasks()).most_common(6)),
        "stray_states": dict(Counter(o.state.value for o in strays)),
        "links_failed": server.links_failed,
        "gc_objects": len(objects),
        # Referrer chains scan the whole heap: only when asked, never under load.
        "stray_sessions": ([holders(o, {id(o) for o in objects}) for o in strays[:2]]
                           if deep else []),
        "types": dict(Counter(type(o).__name__ for o in objects).most_common(60)),
    }
    try:  # what glibc would give back: separates allocator retention from live memory
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        out["rss_kib_after_trim"] = rss_kib()
    except OSError:
        out["rss_kib_after_trim"] = None
    out["stats_ms"] = round(1000 * (time.perf_counter() - started))
    return out


LAST_DISCONNECT: dict[bytes, str] = {}  # session id -> why it last lost its link


async def main(host_key: str) -> None:
    raise_fd_limit()
    server = await serve(echo_handler, "127.0.0.1", 0, host_key=host_key, config=LOAD_CONFIG)
    dispatch = server._driver._on_event

    def on_event(event: Event) -> None:
        if isinstance(event, Disconnected):
            LAST_DISCONNECT[event.session_id] = event.reason
        elif isinstance(event, SessionClosed | SessionLost):
            LAST_DISCONNECT.pop(event.session_id, None)
        dispatch(event)

    server._driver._on_event = on_event
    commands = await stdin_lines()
    say("READY", {"port": server.address[1], "pid": os.getpid()})
    while line := await commands.readline():
        command = line.decode().strip()
        if command in ("stats", "stats deep"):
            say("STATS", stats(server, deep=command == "stats deep"))
        elif command == "quit":
            break
    server.close()
    await server.wait_closed()
    say("BYE")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))

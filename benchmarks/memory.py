"""Memory per idle session: N sessions held open by one server process.

The server runs in a process of its own (this file as a worker); clients run in
one or more other processes (at most ``PER_CLIENT`` sessions each), so the
server's memory is only the server's. Each session is established, opens one
stream and sends one byte, which the server's handler reads; the handler then
waits for more, as a shell or a tunnel waiting for its user would. That is an
idle session: every per-session structure exists, no data is in flight.

The server measures itself (after ``gc.collect()``): RSS (``VmRSS``) and USS
(private pages, ``/proc/self/smaps_rollup``). ``WARM`` sessions are opened
first, so that what every server pays once (imports done lazily, caches, the
allocator's first arenas) is in the "before" figure; then N more, and
per session = (after - before) / N. Also reported: RSS after ``malloc_trim(0)``
(what glibc would hand back: allocator slack rather than live memory), and the
server's CPU while the N sessions sit idle, over one keepalive interval.

Baseline in the same run, interleaved: the same shape with a plain asyncio TCP
server (``asyncio.start_server``, one handler task, StreamReader and
StreamWriter per connection) and plain TCP clients. No encryption, no replay
buffer, no re-attach: the floor for a Python server holding N connections.

Sessions send a keepalive every 5 s (``IDLE_KEEPALIVE``) instead of the default
0.25 s. With the default, every idle session costs the server a PING in and a
PONG out every quarter second: 1,000 of them already keep it at about 45 % of a core
here, so 10,000 would need more than a core and paths would be declared dead
and re-attached in a loop. A server for many idle sessions needs a longer
interval anyway, and the memory a session holds does not depend on it. One more
run, at 1,000 sessions with the default config, measures what the default
keepalive costs an idle server in CPU, so the report shows it.

As a script this file is the worker: ``memory.py server KIND`` / ``memory.py client KIND PORT``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import gc
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    Figure,
    MiB,
    Options,
    Outcome,
    cpu_seconds,
    median,
    read_line,
    spawn,
    stop,
    table,
    unavailable,
)

from continuations.protocol import SessionConfig

NAME = "memory"
TITLE = "Memory per idle session, one server process"

KINDS = ("ours", "tcp")
WARM = 50  # sessions opened before the "before" measurement
PER_CLIENT = 5000  # sessions per client process
CONCURRENCY = 32  # connects in flight per client process: well under the listen backlog (100)
IDLE_KEEPALIVE = 5.0  # seconds; see the module docstring
# Idle CPU is measured over one keepalive interval: each session's keepalive falls due
# in it exactly once, whatever its phase.
IDLE_WINDOW = IDLE_KEEPALIVE
TIMEOUT = 600.0


# --- workers ------------------------------------------------------------------------------


def _emit(obj: dict[str, Any]) -> None:
    print(json.dumps(obj), flush=True)


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _config(keepalive: str) -> SessionConfig:
    if keepalive == "default":
        return SessionConfig()
    return SessionConfig(keepalive_interval=IDLE_KEEPALIVE, min_dead_timeout=15.0,
                         dead_timeout=30.0)


def _memory() -> dict[str, int]:
    """This process's RSS and USS in bytes (Linux /proc)."""
    out = {"rss": 0, "uss": 0}
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                out["rss"] = int(line.split()[1]) * 1024
    with open("/proc/self/smaps_rollup") as rollup:
        for line in rollup:
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                out["uss"] += int(line.split()[1]) * 1024
    return out


async def _stdin_lines() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def _server(kind: str, host_key: str, keepalive: str) -> None:
    idle = 0

    async def ours(session: Any) -> None:
        nonlocal idle
        stream = await session.accept_stream()
        await stream.readexactly(1)
        idle += 1
        with contextlib.suppress(Exception):  # the client's process simply goes away
            await stream.read(1)

    async def plain(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal idle
        await reader.readexactly(1)
        idle += 1
        with contextlib.suppress(Exception):
            await reader.read(1)
        writer.close()

    if kind == "ours":
        from continuations.aio import serve

        server = await serve(ours, "127.0.0.1", 0, host_key=host_key, config=_config(keepalive))
        port = server.address[1]
    else:
        tcp = await asyncio.start_server(plain, "127.0.0.1", 0)
        port = tcp.sockets[0].getsockname()[1]
    commands = await _stdin_lines()
    _emit({"port": port})
    while line := await commands.readline():
        if line.strip() == b"stats":
            # The collection and the trim are the measurement's work, not the server's:
            # the idle-CPU window runs from the end of one "stats" to the start of the next.
            stats: dict[str, Any] = {"idle": idle, "cpu": cpu_seconds(), "at": time.monotonic()}
            gc.collect()
            stats.update(_memory())
            with contextlib.suppress(OSError, AttributeError):
                ctypes.CDLL("libc.so.6").malloc_trim(0)
                stats["rss_trimmed"] = _memory()["rss"]
            stats.update(cpu_end=cpu_seconds(), at_end=time.monotonic())
            _emit(stats)
    os._exit(0)  # closing thousands of sessions one by one is not what is measured


async def _client(kind: str, port: int, known_hosts: str, keepalive: str) -> None:
    held: list[Any] = []  # every session / connection stays referenced, hence open
    commands = await _stdin_lines()
    _emit({"ready": True})
    if kind == "ours":
        from continuations.aio import connect
        from continuations.hostkeys import KnownHosts

        pins = KnownHosts(known_hosts)
        config = _config(keepalive)

    async def one() -> None:
        if kind == "ours":
            session = await connect("127.0.0.1", port, known_hosts=pins, config=config)
            stream = session.open_stream()
            stream.write(b"x")
            await stream.drain()
            held.append((session, stream))
        else:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"x")
            await writer.drain()
            held.append((reader, writer))

    async def gated(gate: asyncio.Semaphore) -> None:
        async with gate:
            await one()

    while line := await commands.readline():
        words = line.split()
        if words[:1] == [b"open"]:
            start = time.perf_counter()
            gate = asyncio.Semaphore(CONCURRENCY)
            await asyncio.gather(*(gated(gate) for _ in range(int(words[1]))))
            _emit({"opened": len(held), "seconds": time.perf_counter() - start})
    os._exit(0)


def worker_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description="memory benchmark worker")
    parser.add_argument("role", choices=["server", "client"])
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--host-key", default="")
    parser.add_argument("--known-hosts", default="")
    parser.add_argument("--keepalive", choices=["idle", "default"], default="idle")
    args = parser.parse_args(argv)
    _raise_fd_limit()
    if args.role == "server":
        asyncio.run(_server(args.kind, args.host_key, args.keepalive))
    else:
        asyncio.run(_client(args.kind, args.port, args.known_hosts, args.keepalive))


# --- one measurement ----------------------------------------------------------------------


def _command(proc: subprocess.Popen[str], line: str) -> None:
    assert proc.stdin is not None
    proc.stdin.write(line + "\n")
    proc.stdin.flush()


def _stats(server: subprocess.Popen[str], want_idle: int, timeout: float) -> dict[str, Any]:
    """The server's stats once ``want_idle`` handlers have read their byte."""
    deadline = time.monotonic() + timeout
    while True:
        _command(server, "stats")
        stats: dict[str, Any] = json.loads(read_line(server, timeout))
        if stats["idle"] >= want_idle:
            return stats
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {stats['idle']} of {want_idle} sessions idle "
                               f"after {timeout:.0f} s")
        time.sleep(0.2)


def _measure(kind: str, count: int, workdir: Path, keepalive: str = "idle") -> dict[str, Any]:
    """One server process with WARM + ``count`` idle sessions; per-session figures."""
    me = [sys.executable, str(Path(__file__).resolve())]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    known_hosts = workdir / f"known_hosts-{kind}-{count}-{keepalive}"
    known_hosts.unlink(missing_ok=True)  # a new server process, a new throwaway host key
    common_args = [kind, "--keepalive", keepalive]
    clients: list[subprocess.Popen[str]] = []
    server = spawn([*me, "server", *common_args, "--host-key", str(workdir / "host_key")],
                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    try:
        port = json.loads(read_line(server, 60))["port"]
        for _ in range(max(1, math.ceil(count / PER_CLIENT))):
            client = spawn([*me, "client", *common_args, "--port", str(port),
                            "--known-hosts", str(known_hosts)],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
            clients.append(client)
        for client in clients:
            read_line(client, 60)
        # The first client alone pins the host key (no two processes race to write it).
        _command(clients[0], f"open {WARM}")
        read_line(clients[0], TIMEOUT)
        before = _stats(server, WARM, 60)
        shares = [count // len(clients) + (i < count % len(clients))
                  for i in range(len(clients))]
        start = time.monotonic()
        for client, share in zip(clients, shares, strict=True):
            _command(client, f"open {share}")
        for client in clients:
            read_line(client, TIMEOUT)
        after = _stats(server, WARM + count, 120)
        opened = time.monotonic() - start
        time.sleep(IDLE_WINDOW)
        idle = _stats(server, WARM + count, 60)
    finally:
        stop(server)
        for client in clients:
            stop(client)
    per = {key: (after[key] - before[key]) / count
           for key in ("rss", "uss", "rss_trimmed") if key in after and key in before}
    return {
        "sessions": count,
        "keepalive": keepalive,
        "before": before,
        "after": after,
        "per_session_bytes": per,
        "idle_cpu_fraction": (idle["cpu"] - after["cpu_end"]) / (idle["at"] - after["at_end"]),
        "open_seconds": opened,
        "client_processes": len(clients),
    }


# --- the benchmark ------------------------------------------------------------------------


def _kib(value: float) -> str:
    return f"{value / 1024:.1f} KiB"


def _fd_shortfall(count: int) -> str:
    """Why ``count`` sessions cannot be held here ("" if they can): every process raises
    its descriptor limit to the hard limit, which the server must have room under."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    need = count + WARM + 100  # the server: a socket per session, plus its own files
    if hard != resource.RLIM_INFINITY and hard < need:
        return (f"open-file limit {hard} is below the {need} the server needs "
                f"(raise it: ulimit -n {need})")
    return ""


def run(options: Options) -> Outcome:
    counts = [1000, 10_000]
    runs = options.repeats(1, 3)
    why_not = {n: _fd_shortfall(n) for n in counts}
    measured = [n for n in counts if not why_not[n]]
    samples: dict[str, dict[int, list[dict[str, Any]]]] = {
        kind: {n: [] for n in measured} for kind in KINDS}
    default_keepalive: list[dict[str, Any]] = []
    for _ in range(runs):
        for count in measured:
            for kind in KINDS:  # interleaved, so a load change hits both
                samples[kind][count].append(_measure(kind, count, options.workdir))
        if counts[0] in measured:
            default_keepalive.append(_measure("ours", counts[0], options.workdir, "default"))

    def med(kind: str, count: int, key: str) -> float:
        return median([s["per_session_bytes"][key] for s in samples[kind][count]])

    data: dict[str, Any] = {
        "runs": runs, "warm_sessions": WARM, "keepalive_interval_s": IDLE_KEEPALIVE,
        "unit": "bytes per session; idle CPU as a fraction of one core",
    }
    figures: dict[str, Figure] = {}
    rows = []
    ours_cells, tcp_cells, ratio_cells = [], [], []
    for count in counts:
        if why_not[count]:
            why = unavailable(why_not[count])
            data[str(count)] = {"unavailable": why_not[count]}
            for key in ("ours_rss_per_session", "tcp_rss_per_session", "ratio_rss",
                        "ours_uss_per_session", "tcp_uss_per_session",
                        "ours_idle_cpu_percent", "tcp_idle_cpu_percent"):
                figures[f"{key}_{count}"] = why
            rows.append([f"{count:,}", why, "", "", "", "", "", ""])
            ours_cells.append(why)
            tcp_cells.append(why)
            ratio_cells.append("")
            continue
        entry: dict[str, Any] = {}
        for kind in KINDS:
            entry[kind] = {
                "rss_per_session": med(kind, count, "rss"),
                "uss_per_session": med(kind, count, "uss"),
                "rss_trimmed_per_session": med(kind, count, "rss_trimmed"),
                "idle_cpu_fraction": median(
                    [s["idle_cpu_fraction"] for s in samples[kind][count]]),
                "server_rss_after": median([s["after"]["rss"] for s in samples[kind][count]]),
                "open_seconds": median([s["open_seconds"] for s in samples[kind][count]]),
                "samples": samples[kind][count],
            }
            for key in ("rss", "uss"):
                figures[f"{kind}_{key}_per_session_{count}"] = entry[kind][f"{key}_per_session"]
            figures[f"{kind}_idle_cpu_percent_{count}"] = entry[kind]["idle_cpu_fraction"] * 100
        ours, tcp = entry["ours"], entry["tcp"]
        entry["ratio_rss"] = ours["rss_per_session"] / tcp["rss_per_session"]
        data[str(count)] = entry
        figures[f"ratio_rss_{count}"] = entry["ratio_rss"]
        rows.append([
            f"{count:,}", _kib(ours["rss_per_session"]), _kib(tcp["rss_per_session"]),
            f"{entry['ratio_rss']:.1f}x",
            f"{_kib(ours['uss_per_session'])} / {_kib(tcp['uss_per_session'])}",
            f"{_kib(ours['rss_trimmed_per_session'])} / "
            f"{_kib(tcp['rss_trimmed_per_session'])}",
            f"{ours['server_rss_after'] / MiB:.0f} / {tcp['server_rss_after'] / MiB:.0f} MiB",
            f"{ours['idle_cpu_fraction'] * 100:.1f} / {tcp['idle_cpu_fraction'] * 100:.1f} %",
        ])
        ours_cells.append(_kib(ours["rss_per_session"]))
        tcp_cells.append(_kib(tcp["rss_per_session"]))
        ratio_cells.append(f"{entry['ratio_rss']:.1f}x")
    if default_keepalive:
        busy = median([s["idle_cpu_fraction"] for s in default_keepalive])
        busy_rss = median([s["per_session_bytes"]["rss"] for s in default_keepalive])
        data["default_keepalive_1000"] = {"idle_cpu_fraction": busy,
                                          "rss_per_session": busy_rss,
                                          "samples": default_keepalive}
        figures["ours_default_keepalive_idle_cpu_percent_1000"] = busy * 100
        default_text = (
            f"With the default keepalive (every {SessionConfig().keepalive_interval:g} s) "
            f"instead, {counts[0]:,} idle sessions keep the server at {busy * 100:.0f} % of "
            f"a core ({_kib(busy_rss)} per session).")
    else:
        why = unavailable(why_not[counts[0]])
        figures["ours_default_keepalive_idle_cpu_percent_1000"] = why
        default_text = f"Default keepalive at {counts[0]:,} sessions: {why}."
    summary = [[
        f"memory per idle session, {counts[0]:,} / {counts[1]:,} in one server process "
        "(RSS)",
        " / ".join(ours_cells), "plain asyncio TCP " + " / ".join(tcp_cells),
        " / ".join(ratio_cells),
    ]]
    markdown = (
        f"Server in its own process, clients in other processes ({PER_CLIENT:,} sessions "
        "each at most); each session established, one stream, one byte read by the "
        f"handler, then idle. Per session = (server memory after - before) / N, after {WARM} "
        f"warm-up sessions; median of {runs} run(s). Baseline in the same run: a plain "
        "asyncio TCP server (`asyncio.start_server`) holding N idle connections. Keepalive "
        f"every {IDLE_KEEPALIVE:g} s (see benchmarks/README.md); idle CPU measured over "
        f"{IDLE_WINDOW:g} s with all N sessions open.\n\n"
        + table(["sessions", "ours, RSS", "asyncio TCP, RSS", "ours / TCP",
                 "USS, ours / TCP", "RSS after malloc_trim, ours / TCP",
                 "server RSS at N, ours / TCP", "idle server CPU, ours / TCP"], rows)
        + "\n\n" + default_text
    )
    return Outcome(markdown=markdown, data=data, figures=figures, summary=summary)


if __name__ == "__main__":
    worker_main(sys.argv[1:])

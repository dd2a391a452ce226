"""Load and leaks: one server process, 1,000 concurrent sessions re-attaching under load.

The server (tests/load_apps/load_server.py) is ``continuations.aio.serve`` with an echo
handler in a process of its own, so its file descriptors and memory are its own; it
reports them on request. Four client processes (load_client.py) open 250 sessions each,
every session through its own ImpairmentRelay, and echo 16 KiB per session while their
relays reset the link at one or two random moments; the sessions re-attach by
themselves. Every session's echo is hash-checked. Two such rounds; after each, once
everything closed, the server's open file descriptors must be back at the baseline,
its live objects too (no protocol session, link or task left), and its RSS within a
margin of the baseline (see RSS_MARGIN_KIB for how RSS is measured and why).

A "sentinel" session stays open for the whole test, as on any real server some
session always does: leaks that only show while the server is busy (and vanish when
it is idle) are caught too. Then the fast, deterministic leak checks of the sans-I/O
core and of the asyncio server: what closed sessions and failed attacker links leave
behind, and sessions that end on the client but not on the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import random
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from aiohelpers import FAST, client_via, echo_handler, run, server_and_relay
from continuations.aio import ServerSession, connect, serve
from continuations.errors import SessionError
from continuations.protocol import SessionState, handshake
from continuations.protocol.session import Session
from continuations.protocol.states import RecordType
from continuations.protocol.wire import encode_record
from sansio import Net

APPS = Path(__file__).resolve().parent / "load_apps"
CLIENT_PROCESSES = 4
SESSIONS_PER_CLIENT = 250
SIZE = 16 * 1024

ROUNDS = 2

# Memory. The precise checks: after each round the live-object count (gc) is back at
# the baseline, and no protocol Session or Link object survives but the sentinel's.
# RSS: with CPython's own allocator (pymalloc) RSS does not come back after a load,
# whatever the program does: arenas that a few long-lived objects pin stay mapped
# (measured: 15-30 MiB of 45-55 MiB stay after 1,000 sessions close, with the live
# objects back at the baseline). So the server runs with PYTHONMALLOC=malloc, and
# measures RSS after gc.collect() and malloc_trim(0), which hands every free page back:
# that RSS tracks live memory (measured: back to 2-3 MiB above the baseline after each
# round of 1,000 sessions). The margin, 8 MiB, is 8 KiB per session of one round: a
# leak of any real part of a session (its core state alone is several KiB, its stream
# buffers 16 KiB each way) exceeds it within two rounds.
RSS_MARGIN_KIB = 8 * 1024
SERVER_ENV = {**os.environ, "PYTHONMALLOC": "malloc"}


class Proc:
    """A child speaking the load apps' line protocol on stdin/stdout."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.popen = subprocess.Popen(
            [sys.executable, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, cwd=APPS, env=env,
        )

    def send(self, line: str) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write(line + "\n")
        self.popen.stdin.flush()

    def expect(self, word: str, timeout: float = 60.0) -> Any:
        assert self.popen.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.popen.stdout.readline()
            if not line:
                raise AssertionError(f"child exited before {word}: {self.stderr()}")
            head, _, payload = line.strip().partition(" ")
            if head == word:
                return json.loads(payload) if payload else None
        raise AssertionError(f"no {word} within {timeout} s")

    def stderr(self) -> str:
        if self.popen.poll() is None:
            return "(still running)"
        assert self.popen.stderr is not None
        return self.popen.stderr.read()[-4000:]

    def wait(self, timeout: float = 30.0) -> int:
        return self.popen.wait(timeout)

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(10)


def server_stats(server: Proc, deep: bool = False) -> dict[str, Any]:
    server.send("stats deep" if deep else "stats")
    stats: dict[str, Any] = server.expect("STATS")
    # Counted from outside too, as the kernel sees the process (the reply is written by
    # then, so the two agree while the server sits idle waiting for the next command).
    stats["proc_fds"] = len(os.listdir(f"/proc/{server.popen.pid}/fd"))
    return stats


def settle(server: Proc, done: Any, timeout: float = 6.0) -> dict[str, Any]:
    """Poll the server's stats until ``done(stats)`` (closes take a round trip or two);
    the last stats if that never happens (the assertions then say what is wrong)."""
    deadline = time.monotonic() + timeout
    while True:
        stats = server_stats(server)
        if done(stats):
            return stats
        if time.monotonic() > deadline:
            return server_stats(server, deep=True)
        time.sleep(0.25)


def growth(before: dict[str, Any], after: dict[str, Any]) -> dict[str, int]:
    """Object types whose live count grew the most."""
    counts = {name: n - before["types"].get(name, 0) for name, n in after["types"].items()}
    return dict(sorted(((k, v) for k, v in counts.items() if v > 0),
                       key=lambda kv: -kv[1])[:8])


def mib(kib: int) -> str:
    return f"{kib / 1024:.1f} MiB"


def run_round(server: Proc, port: int, seed: int, procs: list[Proc]) -> dict[str, Any]:
    """1,000 sessions from CLIENT_PROCESSES processes: open, transfer with cuts, close."""
    clients = [Proc("load_client.py", str(port), str(SESSIONS_PER_CLIENT),
                    str(seed * 100 + k)) for k in range(CLIENT_PROCESSES)]
    procs.extend(clients)
    opened = [c.expect("OPEN", timeout=90) for c in clients]
    peak = server_stats(server)
    for c in clients:
        c.send("go")
    done = [c.expect("DONE", timeout=120) for c in clients]
    during = server_stats(server)
    for c in clients:
        c.send("close")
    for c in clients:
        c.expect("CLOSED", timeout=60)
        assert c.wait() == 0, c.stderr()
    return {
        "peak": peak, "during": during,
        "open_seconds": max(o["seconds"] for o in opened),
        "transfer_seconds": max(d["seconds"] for d in done),
        "intact": sum(d["intact"] for d in done),
        "cuts": sum(d["cuts"] for d in done),
        "reattached_sessions": sum(d["reattached"] for d in done),
        "reattaches": sum(d["attach_versions"] for d in done),
    }


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_thousand_sessions_reattaching_then_no_leak(tmp_path: Path) -> None:
    started = time.monotonic()
    procs: list[Proc] = []
    server = Proc("load_server.py", str(tmp_path / "host_key"), env=SERVER_ENV)
    procs.append(server)
    try:
        port = server.expect("READY")["port"]
        empty = server_stats(server)

        # Warm-up round (imports, code paths, allocator pools), not measured.
        warm = Proc("load_client.py", str(port), "20", "99")
        procs.append(warm)
        warm.expect("OPEN")
        warm.send("go")
        warm_done = warm.expect("DONE")
        assert warm_done["intact"] == 20, warm_done
        warm.send("close")
        warm.expect("CLOSED")
        assert warm.wait() == 0

        # A session that stays open throughout, as on any real server.
        sentinel = Proc("load_client.py", str(port), "1", "98", "--hold")
        procs.append(sentinel)
        sentinel.expect("OPEN")

        def back_to_one(s: dict[str, Any]) -> bool:
            return bool(s["endpoint_sessions"] == 1 and s["live_core_sessions"] == 1
                        and s["live_links"] == 1 and s["fds"] <= empty["fds"] + 1)

        baseline = settle(server, back_to_one)
        total = CLIENT_PROCESSES * SESSIONS_PER_CLIENT
        rounds, afters = [], []
        for number in range(ROUNDS):
            rounds.append(run_round(server, port, number, procs))
            # Settled: back to one session, and to the baseline's live objects (a closing
            # transport may take a moment to let go).
            afters.append(settle(server, lambda s: back_to_one(s) and (
                s["gc_objects"] <= baseline["gc_objects"] + 50)))

        sentinel.send("close")
        sentinel.expect("CLOSED")
        assert sentinel.wait() == 0
        idle = settle(server, lambda s: s["endpoint_sessions"] == 0 and s["fds"] <= empty["fds"]
                      and s["live_core_sessions"] == 0)
        server.send("quit")
        server.expect("BYE")
        assert server.wait() == 0

        last = afters[-1]
        report = {
            "sessions_per_round": total,
            "rounds": [{key: r[key] for key in (
                "open_seconds", "transfer_seconds", "intact", "cuts", "reattached_sessions",
                "reattaches")} for r in rounds],
            "fds_from_proc": {"baseline": baseline["proc_fds"],
                              "after": [a["proc_fds"] for a in afters]},
            "fds": {"empty": empty["fds"], "baseline": baseline["fds"],
                    "peak": max(r["peak"]["fds"] for r in rounds),
                    "after": [a["fds"] for a in afters], "idle": idle["fds"]},
            "rss_trimmed": {  # after gc.collect() and malloc_trim(0): tracks live memory
                "empty": mib(empty["rss_kib_after_trim"]),
                "baseline": mib(baseline["rss_kib_after_trim"]),
                "after": [mib(a["rss_kib_after_trim"]) for a in afters],
                "after_minus_baseline": [
                    mib(a["rss_kib_after_trim"] - baseline["rss_kib_after_trim"])
                    for a in afters],
                "idle": mib(idle["rss_kib_after_trim"])},
            "rss_raw": {"baseline": mib(baseline["rss_kib"]),
                        "peak": mib(max(max(r["peak"]["rss_kib"], r["during"]["rss_kib"])
                                        for r in rounds)),
                        "after": [mib(a["rss_kib"]) for a in afters]},
            "gc_objects": {"baseline": baseline["gc_objects"],
                           "after": [a["gc_objects"] for a in afters]},
            "object_growth": growth(baseline, last),
            "live_core_sessions_after": [a["live_core_sessions"] for a in afters],
            "server_session_states_after": [a["session_states"] for a in afters],
            "why_disconnected_after": [a["why_disconnected"] for a in afters],
            "stray_sessions_after": last["stray_states"],
            "what_holds_them": last["stray_sessions"],
            "timer_heap_after": last["timer_heap"],
            "server_tasks": {"baseline": baseline["tasks"], "after": last["tasks"],
                             "stacks": last["task_stacks"]},
            "stats_ms_under_load": max(max(r["peak"]["stats_ms"], r["during"]["stats_ms"])
                                       for r in rounds),
            "elapsed_seconds": round(time.monotonic() - started, 1),
        }
        print("\nLOAD REPORT " + json.dumps(report, indent=1))

        for r, before in zip(rounds, [baseline, *afters], strict=False):
            # Concurrency, integrity, and every session really re-attached.
            assert r["peak"]["endpoint_sessions"] == before["endpoint_sessions"] + total
            assert r["peak"]["fds"] >= baseline["fds"] + total
            assert r["intact"] == total
            assert r["reattached_sessions"] == total
        # Nothing left behind by the warm-up round (20 sessions), nor by any later one.
        assert baseline["endpoint_sessions"] == 1, (
            f"the warm-up round left sessions on the server: {baseline['session_states']}, "
            f"last disconnected because {baseline['why_disconnected']}")
        assert baseline["live_core_sessions"] == 1 and baseline["tasks"] <= empty["tasks"] + 2, (
            f"the warm-up round left {baseline['stray_states']} sessions alive, held by "
            f"{baseline['stray_sessions']}; server tasks {baseline['task_stacks']}")
        for after in afters:
            assert after["endpoint_sessions"] == 1 and after["server_sessions"] == 1, (
                f"sessions left on the server: {after['session_states']}, last disconnected "
                f"because {after['why_disconnected']}")
            assert after["endpoint_links"] == 1 and after["driver_links"] == 1
            assert after["unbound"] == 0
            assert after["fds"] == baseline["fds"]
            assert after["proc_fds"] == baseline["proc_fds"]
            assert after["live_core_sessions"] == 1, (
                f"{after['live_core_sessions'] - 1} closed sessions still alive "
                f"({after['stray_states']}), held by {after['stray_sessions']}; "
                f"timer heap {after['timer_heap']} entries")
            assert after["live_links"] == 1
            assert after["tasks"] == baseline["tasks"], after["task_stacks"]
            assert after["gc_objects"] <= baseline["gc_objects"] + 50, growth(baseline, after)
            assert (after["rss_kib_after_trim"] - baseline["rss_kib_after_trim"]
                    <= RSS_MARGIN_KIB)
        assert idle["fds"] == empty["fds"] and idle["live_core_sessions"] == 0
    finally:
        for proc in procs:
            proc.kill()


# --- the same leaks, deterministic, in the sans-I/O core --------------------------------------


def test_closed_session_is_freed_while_other_sessions_keep_the_server_busy() -> None:
    """A session that was disconnected once leaves a linger deadline (24 h) in the
    server's timer heap. When it re-attaches and later closes, nothing may keep it alive:
    not even that stale deadline while other sessions' timers keep the heap's top busy."""
    from test_fuzz_entrypoints import MultiNet

    net = MultiNet(seed=51, clients=2)
    wires = [net.connect(0), net.connect(1)]
    net.pump()
    net.cut(wires[1])  # session 1 is disconnected: its linger deadline is scheduled
    net.pump()
    net.connect(1)  # and re-attaches
    net.pump()
    session = net.server_session_of(1)
    sid = session.open_stream()
    session.send(sid, b"q" * 200_000)  # something to hold on to
    net.pump()
    net.clients[1].session.close()
    net.pump()
    net.advance(5.0)  # session 0 keeps its keepalive deadlines at the top of the heap
    assert session.finished and session.id not in net.server.sessions
    del session
    net.server_events.clear()
    gc.collect()
    alive = [target for _, _, target in net.server._heap
             if isinstance(target, Session) and target.finished]
    assert not alive, (
        f"the server's timer heap still holds {len(alive)} finished session(s) "
        f"(stale deadlines up to {max(d for d, _, _ in net.server._heap) - net.now:.0f} s "
        f"ahead)")


def _retained(feed: Any) -> int:
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        feed()
        gc.collect()
        return tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


CHUNK = 256 * 1024  # what asyncio hands over per read
ATTACKERS = 40


def test_failed_attacker_links_leave_no_buffers_behind() -> None:
    """An attacker connects and sends a 256 KiB chunk of garbage: the link fails at once.
    The server must not keep that chunk: the documented limit is max_pending_handshakes
    *live* handshakes, and a failed link is none of them."""
    net = Net(seed=52)
    net.connect()
    net.pump()

    def attack() -> None:
        for _ in range(ATTACKERS):
            link = net.server.new_link(net.now)
            net.server.receive_data(link, b"\x42" * CHUNK, net.now)
        net.pump()
        net.server_events.clear()  # drop LinkFailed events (their tracebacks hold the input)

    kept = _retained(attack)
    assert not net.server._unbound
    assert kept < ATTACKERS * CHUNK // 10, (
        f"{kept / 2**20:.1f} MiB kept after {ATTACKERS} failed links of "
        f"{CHUNK // 1024} KiB each (until handshake_timeout)")


def test_failed_confirm_leaves_no_buffers_behind() -> None:
    """As above after a valid hello (the server keeps the answered hello in case the
    client re-attaches): the garbage that failed the confirm must not be kept with it."""
    net = Net(seed=53)
    net.connect()
    net.pump()
    rng = random.Random(53)

    def attack() -> None:
        for _ in range(ATTACKERS):
            _, hello = handshake.start_hello(rng.randbytes)
            link = net.server.new_link(net.now)
            record = encode_record(RecordType.CLIENT_HELLO, hello.encode())
            net.server.receive_data(link, record + b"\x42" * CHUNK, net.now)
        net.pump()
        net.server_events.clear()
        net.advance(net.config.handshake_timeout + 1.0, step=0.25)

    kept = _retained(attack)
    assert not net.server.sessions or len(net.server.sessions) == 1
    assert kept < ATTACKERS * CHUNK // 10, (
        f"{kept / 2**20:.1f} MiB kept, after handshake_timeout, by {ATTACKERS} answered "
        f"hellos whose confirm was {CHUNK // 1024} KiB of garbage")


# --- sessions that end must end on the server too ---------------------------------------------


def test_handler_ends_when_the_peer_closes_right_after_other_events(tmp_path: Path) -> None:
    """The client writes on a new stream and closes at once: one record carries the data
    and the CLOSE, so the server's core emits StreamOpened, StreamDataReceived and
    SessionClosed together. The handler must see the close: otherwise it (and every
    stream task of the session) waits for ever, holding the session."""

    async def main() -> tuple[bool, int]:
        ended = asyncio.Event()

        async def handler(session: ServerSession) -> None:
            try:
                await echo_handler(session)
            finally:
                ended.set()

        server = await serve(handler, host_key=tmp_path / "hk", config=FAST)
        try:
            client = await connect(*server.address, known_hosts=tmp_path / "kh", config=FAST)
            while not server.sessions:  # the handler is running
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)
            stream = client.open_stream()
            stream.write(b"hello")
            client.abort()  # the data and the CLOSE leave in one record
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ended.wait(), 5)
            await client.close()
            return ended.is_set(), len(server._tasks)
        finally:
            server.close()
            await server.wait_closed()

    ended, tasks = run(main(), timeout=30)
    assert ended, f"the handler never learnt that its session closed ({tasks} tasks left)"


def test_close_while_reattaching_reaches_the_server(tmp_path: Path) -> None:
    """``close()`` while the path is down (a re-attach under way) must still end the
    session for both sides, as docs/sessions.md says close() does; the server must not
    keep it, and its handler, for the whole linger time (24 h by default)."""

    async def main() -> tuple[SessionState, int, float]:
        async with server_and_relay(tmp_path) as (server, relay):
            client = await client_via(relay, tmp_path)
            stream = client.open_stream()
            stream.write(b"ping")
            stream.write_eof()
            assert await asyncio.wait_for(stream.read(), 10) == b"ping"
            await relay.cut()
            while client.state is SessionState.ESTABLISHED:
                await asyncio.sleep(0.005)
            state = client.state
            await client.close()
            started = asyncio.get_running_loop().time()
            while server.endpoint.sessions and asyncio.get_running_loop().time() - started < 5:
                await asyncio.sleep(0.05)
            return state, len(server.endpoint.sessions), server.config.linger

    state, left, linger = run(main(), timeout=30)
    assert left == 0, (
        f"closed while {state.value}: the server still holds the session, for up to "
        f"{linger:.0f} s")


def test_close_reaches_the_server_while_it_is_sending(tmp_path: Path) -> None:
    """The client closes while the server is still sending to it. The CLOSE record must
    reach the server: otherwise the server keeps the session (and its handler) for its
    whole linger time, 24 h by default. A hundred sessions, so that a loss that happens
    to one close in ten or twenty shows."""
    sessions = 100

    async def handler(session: ServerSession) -> None:
        stream = session.open_stream()
        with contextlib.suppress(SessionError):
            while True:
                stream.write(b"s" * 2000)
                await stream.drain()
                await asyncio.sleep(0.001)

    async def one(address: tuple[str, int], seed: int) -> None:
        client = await connect(*address, known_hosts=tmp_path / f"kh{seed}", config=FAST)
        stream = await client.accept_stream()

        async def read() -> None:
            with contextlib.suppress(SessionError):
                while await stream.read(65536):
                    pass

        reader = asyncio.ensure_future(read())
        await asyncio.sleep(random.Random(seed).uniform(0.05, 0.3))
        await client.close()
        reader.cancel()

    async def main() -> tuple[int, dict[str, int]]:
        server = await serve(handler, host_key=tmp_path / "hk", config=FAST)
        try:
            await asyncio.gather(*(one(server.address, i) for i in range(sessions)))
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 3
            while server.endpoint.sessions and loop.time() < deadline:
                await asyncio.sleep(0.05)
            states: dict[str, int] = {}
            for s in server.endpoint.sessions.values():
                states[s.state.value] = states.get(s.state.value, 0) + 1
            return len(server.endpoint.sessions), states
        finally:
            server.close()
            await server.wait_closed()

    left, states = run(main(), timeout=60)
    assert left == 0, (
        f"{left} of {sessions} sessions the client closed are still on the server "
        f"({states}): their CLOSE never arrived")

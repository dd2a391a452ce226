"""Re-attach latency after a connection cut, and dead-path (blackhole) detection time.

Everything runs in one process: a server that streams 16 KiB every 5 ms to the
client, an ImpairmentRelay adding RTT/2 in each direction, and a client
connected through the relay, all with the default SessionConfig.

* cut: ``relay.cut()`` resets the connection. We time the first application
  byte the client reads on the new attachment, from ``client.link_opened_at``
  (the new TCP connection came up) and from the cut itself, in ms and in RTTs of
  the configured delay. Goal: 1 RTT; 2 RTT is the floor we accept.
* blackhole: ``relay.blackhole()`` silences the path; we time until the client
  reports ``Disconnected``. The protocol bounds this by ``dead_timeout`` (2 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import sys
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Figure, Options, Outcome, median, percentile, table

from continuations.aio import ClientSession, ServerSession, SessionStream, connect, serve
from continuations.protocol import (
    Disconnected,
    Event,
    Reattached,
    SessionConfig,
    SessionState,
)
from continuations.testing import ImpairmentRelay

NAME = "reattach"
TITLE = "Re-attach after a cut, and blackhole detection (in-process, through the relay)"

BLOCK = 16 * 1024
INTERVAL = 0.005
GOAL_RTTS = 1.0
FLOOR_RTTS = 2.0
DEAD_BOUND = SessionConfig().dead_timeout
SETTLE = 0.2  # seconds of steady flow between trials


async def stream_forever(session: ServerSession) -> None:
    """The server's side: 16 KiB every 5 ms until the session ends."""
    stream = await session.accept_stream()
    await stream.readexactly(2)
    block = os.urandom(BLOCK)
    while True:
        stream.write(block)
        await stream.drain()
        await asyncio.sleep(INTERVAL)


class Watch:
    """Reads the client's stream and timestamps what the trials need."""

    def __init__(self, client: ClientSession, stream: SessionStream) -> None:
        self.loop = asyncio.get_running_loop()
        self.client = client
        self.stream = stream
        self.received = 0
        self.last_read = 0.0
        self.read_times: deque[float] = deque(maxlen=4096)
        self.after_version: int | None = None
        self.first_byte: asyncio.Future[float] = self.loop.create_future()
        self.disconnected: asyncio.Future[float] = self.loop.create_future()
        self.reattached: asyncio.Future[float] = self.loop.create_future()
        client.add_listener(self._on_event)

    def arm(self) -> None:
        """Wait for the next re-attach: its time and the first byte read after it."""
        self.after_version = self.client.attach_version
        self.first_byte = self.loop.create_future()
        self.disconnected = self.loop.create_future()
        self.reattached = self.loop.create_future()

    def _on_event(self, event: Event) -> None:
        now = self.loop.time()
        if isinstance(event, Disconnected) and not self.disconnected.done():
            self.disconnected.set_result(now)
        elif isinstance(event, Reattached) and not self.reattached.done():
            self.reattached.set_result(now)

    async def read_forever(self) -> None:
        with contextlib.suppress(Exception):
            while data := await self.stream.read(1 << 20):
                now = self.loop.time()
                self.received += len(data)
                self.last_read = now
                self.read_times.append(now)
                if (
                    self.after_version is not None
                    and self.client.attach_version > self.after_version
                    and not self.first_byte.done()
                ):
                    self.first_byte.set_result(now)

    async def flowing(self, timeout: float = 30.0) -> None:
        """Until the session is established and at least 4 blocks more have arrived."""
        async with asyncio.timeout(timeout):
            while True:
                start = self.received
                while self.received < start + 4 * BLOCK:
                    await asyncio.sleep(INTERVAL)
                if self.client.state is SessionState.ESTABLISHED:
                    return

    async def steady(self, window: float = 0.5, max_gap: float = 0.05,
                     timeout: float = 30.0) -> None:
        """Until data has arrived evenly (no gap over ``max_gap``) for ``window`` seconds.

        After an outage the server's backlog arrives in window-limited bursts for a few
        RTTs; a blackhole started in a lull would be detected early (the silence began
        before the blackhole), so those trials wait for this.
        """
        async with asyncio.timeout(timeout):
            while True:
                await self.flowing()
                await asyncio.sleep(window)
                now = self.loop.time()
                recent = [t for t in self.read_times if t >= now - window]
                edges = [now - window, *recent, now]
                if recent and all(b - a <= max_gap for a, b in itertools.pairwise(edges)):
                    return


async def relay_rtt(delay: float, pings: int = 15) -> float:
    """Median 1-byte ping-pong through an identical relay to a plain TCP echo server.

    The same-run baseline for "one RTT": the configured delay plus what the relay
    and the event loop add (timer granularity, scheduling), without our protocol.
    """

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(1024):
                writer.write(data)
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    relay = ImpairmentRelay(target=server.sockets[0].getsockname()[:2], delay=delay)
    writer: asyncio.StreamWriter | None = None
    try:
        await relay.start()
        reader, writer = await asyncio.open_connection(*relay.address)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        loop = asyncio.get_running_loop()
        samples = []
        for _ in range(pings + 1):
            start = loop.time()
            writer.write(b"x")
            await reader.readexactly(1)
            samples.append(loop.time() - start)
            await asyncio.sleep(0.01)
        return median(samples[1:])  # the first ping also waits for the relay's dial
    finally:
        if writer is not None:
            writer.close()
        await relay.close()
        server.close()
        await server.wait_closed()


@dataclass
class RttResult:
    rtt: float
    measured_rtt: float = 0.0
    link_to_data: list[float] = field(default_factory=list)
    cut_to_data: list[float] = field(default_factory=list)
    cut_to_reattached: list[float] = field(default_factory=list)
    blackhole_to_disconnected: list[float] = field(default_factory=list)
    last_byte_to_disconnected: list[float] = field(default_factory=list)
    srtt_estimate: float | None = None

    def summary(self) -> dict[str, Any]:
        def stats(values: list[float]) -> dict[str, Any]:
            return {
                "samples_ms": [round(v * 1000, 3) for v in values],
                "median_ms": median(values) * 1000,
                "p90_ms": percentile(values, 90) * 1000,
                "max_ms": max(values) * 1000,
                "median_rtts": median(values) / self.rtt,
                "p90_rtts": percentile(values, 90) / self.rtt,
                "median_measured_rtts": median(values) / self.measured_rtt,
            }

        return {
            "rtt_ms": self.rtt * 1000,
            "relay_rtt_measured_ms": self.measured_rtt * 1000,
            "trials": len(self.link_to_data),
            "srtt_estimate_ms": None if self.srtt_estimate is None else self.srtt_estimate * 1000,
            "link_up_to_first_byte": stats(self.link_to_data),
            "cut_to_first_byte": stats(self.cut_to_data),
            "cut_to_reattached_event": stats(self.cut_to_reattached),
            "blackhole_to_disconnected": stats(self.blackhole_to_disconnected),
            "last_byte_to_disconnected": stats(self.last_byte_to_disconnected),
        }


async def measure(rtt: float, trials: int, workdir: Path) -> RttResult:
    config = SessionConfig()
    result = RttResult(rtt, measured_rtt=await relay_rtt(rtt / 2))
    loop = asyncio.get_running_loop()
    timeout = 10.0 + 20 * rtt
    server = await serve(stream_forever, host_key=workdir / "host_key", config=config)
    relay = ImpairmentRelay(target=server.address, delay=rtt / 2)
    reader: asyncio.Task[None] | None = None
    client: ClientSession | None = None
    try:
        await relay.start()
        host, port = relay.address
        client = await connect(host, port, known_hosts=workdir / "known_hosts", config=config)
        stream = client.open_stream()
        stream.write(b"go")
        watch = Watch(client, stream)
        reader = asyncio.ensure_future(watch.read_forever())
        await watch.flowing()
        await asyncio.sleep(SETTLE)

        for _ in range(trials):
            await watch.flowing()
            await asyncio.sleep(SETTLE)
            watch.arm()
            cut_at = loop.time()
            await relay.cut()
            first = await asyncio.wait_for(asyncio.shield(watch.first_byte), timeout)
            reattached = await asyncio.wait_for(asyncio.shield(watch.reattached), timeout)
            opened = client.link_opened_at
            assert opened is not None and opened >= cut_at, "no new link after the cut"
            result.link_to_data.append(first - opened)
            result.cut_to_data.append(first - cut_at)
            result.cut_to_reattached.append(reattached - cut_at)

        for _ in range(trials):
            await watch.steady()
            watch.arm()
            silent_at = loop.time()
            last_read = watch.last_read
            relay.blackhole()
            try:
                dead = await asyncio.wait_for(asyncio.shield(watch.disconnected), timeout)
            finally:
                relay.heal()
            result.blackhole_to_disconnected.append(dead - silent_at)
            result.last_byte_to_disconnected.append(dead - last_read)
            await asyncio.wait_for(asyncio.shield(watch.first_byte), timeout + 10)
        result.srtt_estimate = client.rtt
    finally:
        if reader is not None:
            reader.cancel()
        if client is not None:
            await client.close(timeout=2)
        await relay.close()
        server.close()
        await server.wait_closed()
    return result


def _fmt(values: list[float], rtt: float, q: str) -> str:
    tail = percentile(values, 90) if q == "p90" else max(values)
    return (f"{median(values) * 1000:.1f} / {tail * 1000:.1f} ms "
            f"({median(values) / rtt:.2f} / {tail / rtt:.2f} RTT)")


def _verdict(rtts: float) -> str:
    if rtts <= GOAL_RTTS * 1.1:
        return "goal met (~1 RTT)"
    if rtts <= FLOOR_RTTS:
        return "above goal, within 2 RTT floor"
    return "ABOVE 2 RTT floor"


def run(options: Options) -> Outcome:
    rtts = [0.020, 0.100, 0.300]
    trials = options.repeats(3, 15)
    # Writes racing a reset connection make asyncio log "socket.send() raised exception."
    logging.getLogger("asyncio").setLevel(logging.ERROR)
    results: list[RttResult] = []
    for rtt in rtts:
        workdir = options.workdir / f"reattach-{int(rtt * 1000)}ms"
        workdir.mkdir()
        budget = 60 + trials * (8 + 30 * rtt)
        results.append(asyncio.run(asyncio.wait_for(measure(rtt, trials, workdir), budget)))

    rows = []
    for r in results:
        verdict = _verdict(median(r.link_to_data) / r.rtt)
        dead = r.blackhole_to_disconnected
        bound = "within" if max(dead) <= DEAD_BOUND + 0.05 else "OVER"
        rows.append([
            f"{r.rtt * 1000:.0f} ms ({r.measured_rtt * 1000:.1f})", str(len(r.link_to_data)),
            _fmt(r.link_to_data, r.rtt, "p90"), _fmt(r.cut_to_data, r.rtt, "p90"), verdict,
            f"{median(dead) * 1000:.0f} / {max(dead) * 1000:.0f} ms ({bound} {DEAD_BOUND:g} s)",
        ])
    markdown = (
        "Cut: connection reset by the relay; time to the first application byte read on "
        "the new attachment. Median / p90, ms and RTTs of the configured delay; "
        "(measured) is a 1-byte TCP ping-pong through an identical relay without our "
        "protocol. "
        f"Goal {GOAL_RTTS:g} RTT, floor {FLOOR_RTTS:g} RTT. Blackhole: path silenced; "
        "time until the client's Disconnected event, median / max, default SessionConfig.\n\n"
        + table(
            ["RTT (measured)", "trials", "link up -> first byte", "cut -> first byte",
             "verdict (link up)", "blackhole -> Disconnected"],
            rows,
        )
    )
    data = {
        "goal_rtts": GOAL_RTTS,
        "floor_rtts": FLOOR_RTTS,
        "dead_timeout_bound_ms": DEAD_BOUND * 1000,
        "trials": trials,
        "rtts": {f"{int(r.rtt * 1000)}ms": r.summary() for r in results},
    }
    figures: dict[str, Figure] = {}
    for r in results:
        at = f"{int(r.rtt * 1000)}ms"
        figures[f"link_up_to_first_byte_rtts_{at}"] = median(r.link_to_data) / r.rtt
        figures[f"link_up_to_first_byte_ms_{at}"] = median(r.link_to_data) * 1000
        figures[f"cut_to_first_byte_ms_{at}"] = median(r.cut_to_data) * 1000
        figures[f"relay_rtt_measured_ms_{at}"] = r.measured_rtt * 1000
        figures[f"ratio_to_measured_rtt_{at}"] = median(r.link_to_data) / r.measured_rtt
        figures[f"blackhole_detection_ms_{at}"] = median(r.blackhole_to_disconnected) * 1000

    def each(fmt: str, values: list[float]) -> str:
        return " / ".join(format(v, fmt) for v in values)

    at_rtts = each(".0f", [r.rtt * 1000 for r in results])
    summary = [
        [f"re-attach after a cut, new link to data flowing, at {at_rtts} ms RTT (RTTs)",
         each(".2f", [median(r.link_to_data) / r.rtt for r in results]),
         "TCP ping-pong through the same relay: "
         + each(".1f", [r.measured_rtt * 1000 for r in results]) + " ms",
         each(".2f", [median(r.link_to_data) / r.measured_rtt for r in results]) + "x"],
        [f"blackhole declared dead, at {at_rtts} ms RTT (ms)",
         each(".0f", [median(r.blackhole_to_disconnected) * 1000 for r in results]),
         f"bound: dead_timeout {DEAD_BOUND * 1000:.0f} ms",
         each(".2f", [median(r.blackhole_to_disconnected) / DEAD_BOUND for r in results])
         + " of the bound"],
    ]
    return Outcome(markdown=markdown, data=data, figures=figures, summary=summary)

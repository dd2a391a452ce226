"""`continuations demo`: one session lives through a cut, a blackhole and a migration.

Everything runs in this process on loopback: a server, an impairment relay with a
realistic delay, and a client that moves between local addresses 127.0.0.2 and
127.0.0.3. Both sides stream data the whole time and compare SHA-256 at the end.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from continuations.aio import ServerSession, SessionStream, connect, serve
from continuations.hostkeys import fingerprint
from continuations.protocol import Disconnected, Event, Reattached, SessionConfig
from continuations.testing import ImpairmentRelay

MiB = 1024 * 1024
CHUNK = 64 * 1024


@dataclass
class Step:
    name: str
    detail: str
    seconds: float
    rtts: float | None = None
    replayed: int | None = None


@dataclass
class Report:
    session_id: str = ""
    host_key: str = ""
    rtt_ms: float = 0.0
    steps: list[Step] = field(default_factory=list)
    upload_ok: bool = False
    download_ok: bool = False
    bytes_each_way: int = 0
    attach_version: int = 0

    @property
    def ok(self) -> bool:
        return self.upload_ok and self.download_ok


def _block(seed: int, index: int) -> bytes:
    """Deterministic data: the receiver can check it without having been sent a copy."""
    return hashlib.sha256(b"%d/%d" % (seed, index)).digest() * (CHUNK // 32)


async def _send(stream: SessionStream, seed: int, size: int, rate: float) -> None:
    """Constant bit rate, like a media stream: data is in flight during every event."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    for index in range(size // CHUNK):
        stream.write(_block(seed, index))
        await stream.drain()
        ahead = start + (index + 1) * CHUNK / rate - loop.time()
        if ahead > 0:
            await asyncio.sleep(ahead)
    stream.write_eof()


async def _check(stream: SessionStream, seed: int, size: int) -> bool:
    expected = hashlib.sha256()
    for index in range(size // CHUNK):
        expected.update(_block(seed, index))
    got = hashlib.sha256()
    received = 0
    while data := await stream.read(MiB):
        got.update(data)
        received += len(data)
    return received == size and got.digest() == expected.digest()


class _Watcher:
    """Turns the session's lifecycle events into timestamps for the timeline."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.disconnected: asyncio.Future[float] = self.loop.create_future()
        self.reattached: asyncio.Future[Reattached] = self.loop.create_future()
        self.reattached_at = 0.0

    def reset(self) -> None:
        self.disconnected = self.loop.create_future()
        self.reattached = self.loop.create_future()

    def __call__(self, event: Event) -> None:
        if isinstance(event, Disconnected) and not self.disconnected.done():
            self.disconnected.set_result(self.loop.time())
        elif isinstance(event, Reattached) and not self.reattached.done():
            self.reattached_at = self.loop.time()
            self.reattached.set_result(event)


def _where(address: tuple[str, int] | None) -> str:
    return f"{address[0]}:{address[1]}" if address else "-"


def _say(text: str) -> None:
    print(text, flush=True)


async def run_demo(
    *, rtt: float, outage: float, size: int, rate: float, workdir: Path
) -> Report:
    report = Report(bytes_each_way=size)
    config = SessionConfig()
    results: dict[str, bool] = {}

    async def handler(session: ServerSession) -> None:
        stream = await session.accept_stream()
        sender = asyncio.ensure_future(_send(stream, 2, size, rate))
        results["upload"] = await _check(stream, 1, size)
        await sender

    server = await serve(handler, host_key=workdir / "host_key", config=config)
    relay = ImpairmentRelay(target=server.address, delay=rtt / 2)
    await relay.start()
    loop = asyncio.get_running_loop()
    try:
        host, port = relay.address
        _say(f"server   {_where(server.address)}  host key "
             f"{server.host_key_fingerprint}")
        _say(f"relay    {host}:{port}  (adds {rtt * 1000:.0f} ms round trip)")
        client = await connect(host, port, known_hosts=workdir / "known_hosts",
                               local_host="127.0.0.2", config=config)
        report.session_id = client.id_hex
        report.host_key = fingerprint(client.host_key)
        report.rtt_ms = (client.rtt or 0.0) * 1000
        _say(f"session  {client.id_hex}  from {_where(client.path[0])}  rtt {report.rtt_ms:.1f} ms")
        watch = _Watcher()
        client.add_listener(watch)
        stream = client.open_stream()
        upload = asyncio.ensure_future(_send(stream, 1, size, rate))
        download = asyncio.ensure_future(_check(stream, 2, size))
        await asyncio.sleep(0.5)

        # 1. The connection is reset under the session; the client comes back from .3.
        client.set_local_host("127.0.0.3")
        start = loop.time()
        await relay.cut()
        event = await asyncio.wait_for(watch.reattached, 30)
        took = watch.reattached_at - start
        report.steps.append(Step("cut", f"re-attached from {_where(client.path[0])}", took,
                                 took / rtt, event.replayed))
        _say(f"[cut]        connection reset; re-attached from {_where(client.path[0])} in "
             f"{took * 1000:.0f} ms ({took / rtt:.1f} RTT), {event.replayed} bytes replayed")
        watch.reset()
        await asyncio.sleep(0.5)

        # 2. The path goes silent: no reset, packets just vanish.
        start = loop.time()
        relay.blackhole()
        detected = await asyncio.wait_for(watch.disconnected, 30) - start
        _say(f"[blackhole]  path silent; declared dead after {detected * 1000:.0f} ms")
        await asyncio.sleep(max(0.0, outage - detected))
        relay.heal()
        healed = loop.time()
        event = await asyncio.wait_for(watch.reattached, 30)
        took = watch.reattached_at - healed
        report.steps.append(Step("blackhole", f"detected after {detected:.2f} s", detected))
        report.steps.append(Step("heal", "re-attached", took, took / rtt, event.replayed))
        _say(f"[heal]       path back after {outage:.1f} s; data flowing again "
             f"{took * 1000:.0f} ms later, {event.replayed} bytes replayed")
        watch.reset()
        await asyncio.sleep(0.5)

        # 3. Make-before-break: move back to .2 while the old path still works.
        start = loop.time()
        await client.migrate("127.0.0.2")
        took = loop.time() - start
        report.steps.append(Step("migrate", "make-before-break to 127.0.0.2", took, took / rtt))
        _say(f"[migrate]    make-before-break to {_where(client.path[0])} in {took * 1000:.0f} ms "
             f"({took / rtt:.1f} RTT)")

        await asyncio.wait_for(upload, 300)
        report.download_ok = await asyncio.wait_for(download, 300)
        for _ in range(300):
            if "upload" in results:
                break
            await asyncio.sleep(0.05)
        report.upload_ok = results.get("upload", False)
        report.attach_version = client.attach_version
        await client.close()
    finally:
        await relay.close()
        server.close()
        await server.wait_closed()
    return report


def main(args: Any) -> int:
    size = max(CHUNK, int(args.size * MiB) // CHUNK * CHUNK)
    rate = args.rate * MiB
    _say(f"continuations demo: {size // MiB} MiB each way at {args.rate:g} MiB/s through a "
         f"cut, a {args.outage:.1f} s blackhole and a migration\n")
    with tempfile.TemporaryDirectory(prefix="continuations-demo-") as tmp:
        started = time.monotonic()
        report = asyncio.run(
            run_demo(rtt=args.rtt / 1000, outage=args.outage, size=size, rate=rate,
                     workdir=Path(tmp))
        )
        elapsed = time.monotonic() - started
    verdict = "intact" if report.ok else "CORRUPTED OR LOST"
    _say(f"\nsummary: {size // MiB} MiB up and {size // MiB} MiB down {verdict} "
         f"(SHA-256 compared), one session, {report.attach_version} re-attachments, "
         f"{elapsed:.1f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {**asdict(report), "ok": report.ok, "elapsed": elapsed}, indent=2
        ))
    return 0 if report.ok else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(1)

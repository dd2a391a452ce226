"""Load-test client: many sessions in one asyncio process, each through its own relay.

    python load_client.py PORT SESSIONS SEED [--size N] [--hold]

Each session reaches the server through its own ``ImpairmentRelay``, so cutting one
session's link (a reset on both sides) disturbs no other. Protocol on stdin/stdout:

- opens every session, then prints ``OPEN {...}`` and waits for ``go``;
- transfers: each session echoes ``--size`` bytes (written in 1 KiB pieces at random
  pauses) while its relay is cut at one or two random moments; the session re-attaches
  by itself. Then ``DONE {...}``: per-session hash checks, re-attach counts;
- waits for ``close``: closes every session and relay, prints ``CLOSED`` and exits.

With ``--hold`` it skips the transfer: ``OPEN``, then waits for ``close``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import random
import time

from loadcommon import LOAD_CONFIG, raise_fd_limit, say, stdin_lines

from continuations.aio import ClientSession, connect
from continuations.errors import HostKeyMismatchError
from continuations.hostkeys import KnownHosts, fingerprint
from continuations.testing import ImpairmentRelay


class OneServer(KnownHosts):
    """Every relay fronts the same server: pin its key once, in memory, for all of them."""

    def __init__(self) -> None:
        self.path = None  # type: ignore[assignment]
        self.key: bytes | None = None

    def check(self, host: str, public_key: bytes) -> None:
        if self.key is None:
            self.key = public_key
        elif public_key != self.key:
            raise HostKeyMismatchError(host, fingerprint(self.key), fingerprint(public_key),
                                       "(memory)")


def payload(size: int, seed: int) -> bytes:
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(b"%d:%d" % (seed, counter)).digest()
        counter += 1
    return bytes(out[:size])


class Member:
    def __init__(self, index: int, seed: int) -> None:
        self.index = index
        self.rng = random.Random(seed * 100_003 + index)
        self.relay: ImpairmentRelay | None = None
        self.session: ClientSession | None = None
        self.ok = False
        self.cuts = 0


async def open_member(member: Member, port: int, pins: OneServer, gate: asyncio.Semaphore
                      ) -> None:
    async with gate:  # a few handshakes at a time, as real clients trickle in
        member.relay = ImpairmentRelay(target=("127.0.0.1", port), rng=member.rng)
        await member.relay.start()
        member.session = await connect(*member.relay.address, known_hosts=pins,
                                       config=LOAD_CONFIG)


async def transfer(member: Member, size: int, seed: int) -> None:
    session, relay, rng = member.session, member.relay, member.rng
    assert session is not None and relay is not None
    data = payload(size, seed * 100_003 + member.index)
    stream = session.open_stream()

    async def write() -> None:
        for pos in range(0, size, 1024):
            stream.write(data[pos : pos + 1024])
            await stream.drain()
            await asyncio.sleep(rng.uniform(0.0, 0.12))
        stream.write_eof()

    async def cutter() -> None:
        moments = [rng.uniform(0.05, 0.9)]
        if rng.random() < 0.5:
            moments.append(rng.uniform(0.9, 1.8))
        start = time.monotonic()
        for moment in moments:
            await asyncio.sleep(max(0.0, start + moment - time.monotonic()))
            await relay.cut()
            member.cuts += 1

    writer = asyncio.ensure_future(write())
    cuts = asyncio.ensure_future(cutter())
    echoed = bytearray()
    while chunk := await stream.read(65536):
        echoed += chunk
    await writer
    await cuts
    member.ok = hashlib.sha256(echoed).digest() == hashlib.sha256(data).digest()


async def close(session: ClientSession) -> None:
    # A session closed while it has no link (a re-attach after the last cut still under
    # way) ends only here: the server learns nothing and keeps it for its linger time
    # (see test_close_while_reattaching_reaches_the_server). Close it attached.
    await asyncio.wait_for(session.wait_attached(), 30)
    await session.close()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("sessions", type=int)
    parser.add_argument("seed", type=int)
    parser.add_argument("--size", type=int, default=16 * 1024)
    parser.add_argument("--hold", action="store_true")
    args = parser.parse_args()
    raise_fd_limit()
    commands = await stdin_lines()
    pins = OneServer()
    members = [Member(i, args.seed) for i in range(args.sessions)]
    gate = asyncio.Semaphore(16)
    started = time.monotonic()
    await asyncio.gather(*(open_member(m, args.port, pins, gate) for m in members))
    say("OPEN", {"sessions": len(members), "seconds": round(time.monotonic() - started, 2)})
    if not args.hold:
        assert (await commands.readline()).strip() == b"go"
        started = time.monotonic()
        await asyncio.wait_for(
            asyncio.gather(*(transfer(m, args.size, args.seed) for m in members)), 120)
        sessions = [m.session for m in members if m.session is not None]
        say("DONE", {
            "sessions": len(members),
            "intact": sum(m.ok for m in members),
            "cuts": sum(m.cuts for m in members),
            "reattached": sum(s.attach_version >= 1 for s in sessions),
            "attach_versions": sum(s.attach_version for s in sessions),
            "min_attach_version": min(s.attach_version for s in sessions),
            "seconds": round(time.monotonic() - started, 2),
        })
    assert (await commands.readline()).strip() == b"close"
    await asyncio.gather(*(close(m.session) for m in members if m.session is not None))
    # close() returns once the CLOSE record is written; the relay may still hold it.
    # Closing a relay drops what it holds, so wait for the server to hang up first.
    deadline = time.monotonic() + 20
    for m in members:
        if m.relay is not None:
            while m.relay.stats.active_connections and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            await m.relay.close()
    say("CLOSED")


if __name__ == "__main__":
    asyncio.run(main())

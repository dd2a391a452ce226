"""Tunnels in one process: the library pieces over real loopback sockets and a relay.

The command-line programs, sshd, ssh and an HTTP server are driven for real in
test_tunnel_cli.py; here the same server and client classes run in the test's
event loop, so faults can be placed precisely and internals counted.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from aiohelpers import FAST, pattern, run, sha
from continuations.aio import connect
from continuations.errors import ConfigError
from continuations.protocol import SessionState
from continuations.testing import ImpairmentRelay
from continuations.tunnel import (
    Forward,
    Forwarder,
    Target,
    TunnelClient,
    TunnelRefusedError,
    TunnelServer,
    decode_request,
    encode_request,
    serve_tunnel,
)
from continuations.tunnel.header import MAX_HEADER, HeaderError

pytestmark = pytest.mark.timeout(60)

MiB = 1024 * 1024
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


# --- targets: small TCP servers the tunnel connects to --------------------------------------


@asynccontextmanager
async def tcp_server(handler: Handler) -> AsyncIterator[Target]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    try:
        yield Target("127.0.0.1", server.sockets[0].getsockname()[1])
    finally:
        server.close()
        await server.wait_closed()


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


async def digest_at_eof(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Reads until the client half-closes, then answers with the SHA-256 of it all."""
    digest = hashlib.sha256()
    while data := await reader.read(65536):
        digest.update(data)
    writer.write(digest.hexdigest().encode() + b"\n")
    await writer.drain()
    writer.close()


def greeter(greeting: bytes, got: asyncio.Future[str]) -> Handler:
    """Sends ``greeting`` and half-closes at once, then keeps reading what the client sends."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(greeting)
        await writer.drain()
        writer.write_eof()
        digest = hashlib.sha256()
        while data := await reader.read(65536):
            digest.update(data)
        if not got.done():
            got.set_result(digest.hexdigest())
        writer.close()

    return handler


@asynccontextmanager
async def tunnel(
    tmp_path: Path, allow: list[Target], **relay_options: object
) -> AsyncIterator[tuple[TunnelServer, ImpairmentRelay, TunnelClient]]:
    server = await serve_tunnel(allow=allow, host_key=tmp_path / "host_key", config=FAST)
    assert server.server is not None
    relay = ImpairmentRelay(target=server.server.address, **relay_options)  # type: ignore[arg-type]
    await relay.start()
    client = TunnelClient(*relay.address, known_hosts=tmp_path / "known_hosts",
                          local_hosts=["127.0.0.2", "127.0.0.3"], config=FAST)
    try:
        yield server, relay, client
    finally:
        await client.close(timeout=2)
        await relay.close()
        server.server.close()
        await server.server.wait_closed()


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def sources(relay: ImpairmentRelay) -> set[str]:
    return {c.client[0] for c in relay.connections}


# --- half-close through faults ---------------------------------------------------------------


def test_half_close_both_ways_through_cut_blackhole_and_address_change(tmp_path: Path) -> None:
    up_a, up_b = pattern(6 * MiB, 1), pattern(6 * MiB, 2)
    greeting = pattern(3 * MiB, 3)

    async def main() -> None:
        got_b: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        async with (
            tcp_server(digest_at_eof) as digest_target,
            tcp_server(greeter(greeting, got_b)) as greet_target,
            tunnel(tmp_path, [digest_target, greet_target], bandwidth=8 * MiB) as (
                server, relay, client),
        ):
            fwd_a = Forwarder(client, Forward("127.0.0.1", 0, digest_target))
            fwd_b = Forwarder(client, Forward("127.0.0.1", 0, greet_target))
            await fwd_a.start()
            await fwd_b.start()
            assert relay.stats.connections_accepted == 0  # opened lazily

            async def conn_a() -> bytes:
                # Client half-closes; the answer still flows back on the other half.
                reader, writer = await asyncio.open_connection(*fwd_a.address)
                for i in range(0, len(up_a), 256 * 1024):
                    writer.write(up_a[i : i + 256 * 1024])
                    await writer.drain()
                writer.write_eof()
                answer = await reader.read()
                writer.close()
                return answer

            async def conn_b() -> bytes:
                # The target half-closes first; the client keeps sending afterwards.
                reader, writer = await asyncio.open_connection(*fwd_b.address)
                received = await reader.read()  # up to the target's FIN
                assert reader.at_eof()
                for i in range(0, len(up_b), 256 * 1024):
                    writer.write(up_b[i : i + 256 * 1024])
                    await writer.drain()
                writer.write_eof()
                writer.close()
                return received

            a = asyncio.ensure_future(conn_a())
            b = asyncio.ensure_future(conn_b())
            await until(lambda: relay.stats.bytes_up + relay.stats.bytes_down > 2 * MiB)
            first = sources(relay)
            await relay.cut()
            await until(lambda: bool(sources(relay)) and sources(relay) != first)
            relay.blackhole()
            await asyncio.sleep(1.2)
            relay.heal()
            await until(lambda: relay.stats.bytes_up + relay.stats.bytes_down > 8 * MiB)
            await client.migrate()  # make-before-break to the other address

            answer_a, received_b = await asyncio.wait_for(asyncio.gather(a, b), 40)
            assert answer_a == sha(up_a).encode() + b"\n"
            assert received_b == greeting
            assert await asyncio.wait_for(got_b, 10) == sha(up_b)
            assert client.sessions_opened == 1 and server.stats.sessions == 1
            session = client.current
            assert session is not None and session.attach_version >= 3
            assert relay.stats.cuts == 1
            await fwd_a.close()
            await fwd_b.close()

    run(main(), timeout=55)


# --- refusals ---------------------------------------------------------------------------------


def test_refused_and_unreachable_targets_fail_alone(tmp_path: Path) -> None:
    async def main() -> None:
        async with (
            tcp_server(echo) as allowed,
            tcp_server(echo) as forbidden,
            tunnel(tmp_path, [allowed, Target("127.0.0.1", 1)]) as (server, _relay, client),
        ):
            fwd = Forwarder(client, Forward("127.0.0.1", 0, allowed))
            await fwd.start()
            reader, writer = await asyncio.open_connection(*fwd.address)
            writer.write(b"before\n")
            assert await reader.readline() == b"before\n"
            session = client.current
            assert session is not None

            # Not allowed: a clear refusal on that stream, naming the flag that allows it.
            with pytest.raises(TunnelRefusedError) as refused:
                _, stream = await client.open_stream(forbidden)
                from continuations.tunnel.client import _read_reply

                await _read_reply(stream)
            assert str(refused.value) == (
                f"target {forbidden} is not allowed by this tunnel server "
                f"(allow it with --allow {forbidden})"
            )
            # Allowed, but nothing listens there.
            fwd_dead = Forwarder(client, Forward("127.0.0.1", 0, Target("127.0.0.1", 1)))
            await fwd_dead.start()
            r2, w2 = await asyncio.open_connection(*fwd_dead.address)
            w2.write(b"hello?")
            with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
                await asyncio.wait_for(r2.readexactly(1), 10)  # reset, no data
            w2.close()
            assert fwd_dead.refused == 1

            # The open connection, the session and later connections are unaffected.
            writer.write(b"after\n")
            assert await reader.readline() == b"after\n"
            r3, w3 = await asyncio.open_connection(*fwd.address)
            w3.write(b"new\n")
            assert await r3.readline() == b"new\n"
            assert client.current is session and session.state is SessionState.ESTABLISHED
            assert server.stats.refused == 2 and server.stats.sessions == 1
            for w in (writer, w3):
                w.close()
            await fwd.close()
            await fwd_dead.close()

    run(main(), timeout=30)


def test_connection_failure_message(tmp_path: Path) -> None:
    async def main() -> str:
        async with tunnel(tmp_path, [Target("127.0.0.1", 1)]) as (_, _relay, client):
            _, stream = await client.open_stream(Target("127.0.0.1", 1))
            line = await asyncio.wait_for(stream.readline(), 10)
            assert await stream.read() == b""  # the server ends the stream after answering
            stream.write_eof()
            return json.loads(line)["error"]

    assert run(main(), timeout=20) == "cannot connect to 127.0.0.1:1: Connection refused"


@pytest.mark.parametrize(
    ("header", "error"),
    [
        (b"not json\n", "tunnel request is not a JSON line"),
        (b'{"v": 2, "target": "127.0.0.1:22"}\n',
         "unsupported tunnel header version 2 (this side speaks 1)"),
        (b'{"v": 1}\n', 'tunnel request has no "target": "HOST:PORT"'),
        (b'{"v": 1, "target": "nowhere"}\n', "bad target 'nowhere' (expected HOST:PORT)"),
        (b"x" * (MAX_HEADER + 10), f"tunnel header longer than {MAX_HEADER} bytes"),
    ],
)
def test_bad_headers_are_answered_and_the_session_goes_on(
    tmp_path: Path, header: bytes, error: str
) -> None:
    async def main() -> None:
        async with tcp_server(echo) as allowed:
            server = await serve_tunnel(allow=[allowed], host_key=tmp_path / "hk", config=FAST)
            assert server.server is not None
            session = await connect(*server.server.address, known_hosts=tmp_path / "kh",
                                    config=FAST)
            try:
                bad = session.open_stream()
                bad.write(header)
                reply = json.loads(await asyncio.wait_for(bad.readline(), 10))
                assert reply == {"v": 1, "ok": False, "error": error}
                assert await asyncio.wait_for(bad.read(), 10) == b""
                bad.write_eof()
                good = session.open_stream()
                good.write(encode_request(allowed) + b"ping")
                assert json.loads(await good.readline()) == {"v": 1, "ok": True}
                assert await good.readexactly(4) == b"ping"
                good.write_eof()
                assert await asyncio.wait_for(good.read(), 10) == b""
            finally:
                await session.close(timeout=2)
                server.server.close()
                await server.server.wait_closed()

    run(main(), timeout=30)


# --- one session, opened lazily, shared -------------------------------------------------------


def test_many_connections_share_one_lazily_opened_session(tmp_path: Path) -> None:
    async def main() -> None:
        async with (
            tcp_server(echo) as target,
            tunnel(tmp_path, [target]) as (server, relay, client),
        ):
            fwd = Forwarder(client, Forward("127.0.0.1", 0, target))
            await fwd.start()
            await asyncio.sleep(0.2)
            assert relay.stats.connections_accepted == 0 and client.current is None

            async def one(i: int) -> bytes:
                reader, writer = await asyncio.open_connection(*fwd.address)
                payload = pattern(100_000 + i, i)
                writer.write(payload)
                writer.write_eof()
                back = await reader.read()
                writer.close()
                return back if back == payload else b"mismatch"

            results = await asyncio.gather(*(one(i) for i in range(40)))
            assert all(r != b"mismatch" for r in results)
            assert client.sessions_opened == 1 and server.stats.sessions == 1
            assert relay.stats.connections_accepted == 1
            assert server.stats.streams == 40
            await until(lambda: server.stats.active == 0)
            await fwd.close()

    run(main(), timeout=40)


def test_a_forgotten_session_is_replaced_on_the_next_connection(tmp_path: Path) -> None:
    """The server restarts unseen (its goodbye is lost on the path): the client learns its
    session is gone when it re-attaches, and the next connection opens a new one."""

    async def main() -> None:
        async with tcp_server(echo) as target:
            first = await serve_tunnel(allow=[target], host_key=tmp_path / "hk", config=FAST)
            assert first.server is not None
            relay = ImpairmentRelay(target=first.server.address)
            await relay.start()
            client = TunnelClient(*relay.address, known_hosts=tmp_path / "kh", config=FAST)
            fwd = Forwarder(client, Forward("127.0.0.1", 0, target))
            await fwd.start()
            second: TunnelServer | None = None

            async def roundtrip(text: bytes) -> bytes:
                reader, writer = await asyncio.open_connection(*fwd.address)
                writer.write(text)
                writer.write_eof()
                back = await asyncio.wait_for(reader.read(), 15)
                writer.close()
                return back

            try:
                assert await roundtrip(b"one") == b"one"
                old = client.current
                assert old is not None
                relay.blackhole()
                first.server.close()  # its CLOSE is held by the blackhole, then dropped
                await first.server.wait_closed()
                await relay.cut()
                second = await serve_tunnel(allow=[target], host_key=tmp_path / "hk",
                                            config=FAST)
                assert second.server is not None
                relay.target = second.server.address
                relay.heal()
                await until(lambda: old.finished, timeout=15)
                assert old.state is SessionState.LOST
                assert await roundtrip(b"two") == b"two"
                assert client.sessions_opened == 2 and client.current is not old
            finally:
                await fwd.close()
                await client.close(timeout=2)
                await relay.close()
                if second is not None and second.server is not None:
                    second.server.close()
                    await second.server.wait_closed()

    run(main(), timeout=40)


# --- addresses and headers --------------------------------------------------------------------


def test_targets_and_forward_specs_parse() -> None:
    assert Target.parse("127.0.0.1:22") == Target("127.0.0.1", 22)
    assert Target.parse("[::1]:8080") == Target("::1", 8080)
    assert str(Target("::1", 8080)) == "[::1]:8080"
    assert Forward.parse("8080:db.internal:5432") == Forward(
        "127.0.0.1", 8080, Target("db.internal", 5432))
    assert Forward.parse("0.0.0.0:0:[::1]:22") == Forward("0.0.0.0", 0, Target("::1", 22))
    for bad in ("22", "host:", ":22", "host:0", "host:99999", "a b:22", "h:1:2"):
        with pytest.raises(ConfigError):
            Target.parse(bad)
    for bad in ("8080", "8080:host", "x:y:host:1", "1:2:3:4:5", "8080:host:0"):
        with pytest.raises(ConfigError):
            Forward.parse(bad)
    target = Target("Example.org", 443)
    assert decode_request(encode_request(target)) == target
    with pytest.raises(HeaderError):
        decode_request(b"[]\n")

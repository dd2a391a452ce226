"""End to end over real loopback TCP: transfer through faults, liveness, close, linger."""

from __future__ import annotations

import asyncio
import hashlib
import random
from pathlib import Path

import pytest

from aiohelpers import FAST, client_via, echo_handler, pattern, run, server_and_relay, sha
from continuations.aio import ServerSession, connect, serve
from continuations.errors import ConnectError, HostKeyMismatchError, SessionClosedError
from continuations.protocol import Disconnected, Reattached, SessionConfig, SessionState

MiB = 1024 * 1024


@pytest.mark.slow
def test_64_mib_each_way_through_30_faults_from_alternating_addresses(tmp_path: Path) -> None:
    size = 64 * MiB
    up = pattern(size, 1)
    down = pattern(size, 2)
    results: dict[str, str] = {}

    async def handler(session: ServerSession) -> None:
        stream = await session.accept_stream()

        async def send() -> None:
            for i in range(0, size, MiB):
                stream.write(down[i : i + MiB])
                await stream.drain()
            stream.write_eof()

        sender = asyncio.ensure_future(send())
        digest = hashlib.sha256()
        while data := await stream.read(MiB):
            digest.update(data)
        results["server_got"] = digest.hexdigest()
        await sender

    async def main() -> tuple[int, list[str], set[str]]:
        # A bandwidth cap stretches the transfer so the faults land in the middle of it.
        async with server_and_relay(tmp_path, handler, bandwidth=24 * MiB) as (_, relay):
            client = await client_via(relay, tmp_path)
            sources: set[str] = set()

            def note(event: object) -> None:
                local, _ = client.path
                if isinstance(event, Reattached) and local is not None:
                    sources.add(local[0])

            client.add_listener(note)
            stream = client.open_stream()
            done = asyncio.Event()

            async def send() -> None:
                for i in range(0, size, MiB):
                    stream.write(up[i : i + MiB])
                    await stream.drain()
                stream.write_eof()

            async def receive() -> None:
                digest = hashlib.sha256()
                while data := await stream.read(MiB):
                    digest.update(data)
                results["client_got"] = digest.hexdigest()
                done.set()

            faults: list[str] = []

            async def inject() -> None:
                rand = random.Random(7)
                addresses = ["127.0.0.3", "127.0.0.2"]
                while len(faults) < 30 or not done.is_set():
                    if len(faults) >= 60:
                        break
                    await asyncio.sleep(rand.uniform(0.05, 0.2))
                    client.set_local_host(addresses[len(faults) % 2])
                    if len(faults) % 3 == 2:
                        relay.blackhole()
                        await asyncio.sleep(rand.uniform(0.2, 1.2))
                        relay.heal()
                        faults.append("blackhole")
                    else:
                        await relay.cut()
                        faults.append("cut")

            tasks = [asyncio.ensure_future(c) for c in (send(), receive(), inject())]
            await asyncio.gather(*tasks)
            await client.close()
            return client.attach_version, faults, sources

    attach_version, faults, sources = run(main(), timeout=240)
    assert len(faults) >= 30
    assert results["client_got"] == sha(down)
    assert results["server_got"] == sha(up)
    assert attach_version >= 20  # re-attached after (nearly) every fault
    assert sources == {"127.0.0.2", "127.0.0.3"}


def test_blackhole_detected_within_bound_and_heal_is_invisible(tmp_path: Path) -> None:
    config = SessionConfig()  # the defaults: a 2 s bound

    async def main() -> tuple[float, bytes]:
        async with server_and_relay(tmp_path, config=config) as (_, relay):
            client = await client_via(relay, tmp_path, config=config)
            stream = client.open_stream()
            stream.write(b"before ")
            assert await stream.readexactly(7) == b"before "
            lost = asyncio.get_running_loop().create_future()

            def note(event: object) -> None:
                if isinstance(event, Disconnected) and not lost.done():
                    lost.set_result(asyncio.get_running_loop().time())

            client.add_listener(note)
            start = asyncio.get_running_loop().time()
            relay.blackhole()
            stream.write(b"during ")  # the app keeps writing; nothing fails
            detected = await asyncio.wait_for(lost, 10) - start
            relay.heal()
            stream.write(b"after")
            echoed = await stream.readexactly(12)
            await client.close()
            return detected, echoed

    detected, echoed = run(main())
    # The bound is a protocol guarantee, not a speed target; 0.5 s covers timer scheduling.
    assert detected <= config.dead_timeout + 0.5
    assert echoed == b"during after"


def test_many_streams_both_directions_and_end_of_stream(tmp_path: Path) -> None:
    async def main() -> list[bytes]:
        async with server_and_relay(tmp_path) as (_, relay):
            client = await client_via(relay, tmp_path)
            streams = [client.open_stream() for _ in range(20)]
            for i, stream in enumerate(streams):
                stream.write(pattern(10_000 + i, i))
                stream.write_eof()
            replies = await asyncio.gather(*(s.read() for s in streams))
            await client.close()
            return replies

    replies = run(main())
    assert replies == [pattern(10_000 + i, i) for i in range(20)]


def test_orderly_close_reaches_peer_and_server_forgets_session(tmp_path: Path) -> None:
    seen: list[str] = []

    async def handler(session: ServerSession) -> None:
        stream = await session.accept_stream()
        seen.append((await stream.read()).decode())
        await session.wait_closed()
        seen.append(session.state.value)

    async def main() -> int:
        async with server_and_relay(tmp_path, handler) as (server, relay):
            client = await client_via(relay, tmp_path)
            stream = client.open_stream()
            stream.write(b"bye")
            stream.write_eof()
            await client.close(reason="done")
            with pytest.raises(SessionClosedError):
                client.open_stream()
            for _ in range(100):
                if not server.sessions:
                    break
                await asyncio.sleep(0.02)
            return len(server.endpoint.sessions)

    assert run(main()) == 0
    assert seen == ["bye", "closed"]


def test_server_drops_disconnected_session_after_linger(tmp_path: Path) -> None:
    config = SessionConfig(
        keepalive_interval=0.1, min_dead_timeout=0.3, dead_timeout=0.5, linger=1.0
    )

    async def main() -> tuple[int, int]:
        async with server_and_relay(tmp_path, config=config) as (server, relay):
            host, port = relay.address
            client = await connect(
                host, port, known_hosts=tmp_path / "kh", config=config, reconnect=False
            )
            client.open_stream().write(b"x")
            await asyncio.sleep(0.2)
            before = len(server.endpoint.sessions)
            await relay.cut()  # the client vanishes without a word and never comes back
            for _ in range(200):
                if not server.endpoint.sessions:
                    break
                await asyncio.sleep(0.05)
            return before, len(server.endpoint.sessions)

    assert run(main()) == (1, 0)


def test_host_key_mismatch_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    async def main() -> ConnectError:
        first = await serve(echo_handler, host_key=tmp_path / "key1", config=FAST)
        host, port = first.address
        client = await connect(host, port, known_hosts=tmp_path / "known_hosts", config=FAST)
        await client.close()
        first.close()
        await first.wait_closed()
        impostor = await serve(echo_handler, host, port, host_key=tmp_path / "key2", config=FAST)
        try:
            with pytest.raises(ConnectError) as caught:
                await connect(host, port, known_hosts=tmp_path / "known_hosts", config=FAST)
            return caught.value
        finally:
            impostor.close()
            await impostor.wait_closed()

    error = run(main())
    assert isinstance(error.__cause__, HostKeyMismatchError)
    assert "does not match" in str(error) and "known_hosts" in str(error)


def test_known_hosts_file_is_private(tmp_path: Path) -> None:
    async def main() -> None:
        server = await serve(echo_handler, host_key=tmp_path / "host_key", config=FAST)
        client = await connect(*server.address, known_hosts=tmp_path / "kh", config=FAST)
        await client.close()
        server.close()
        await server.wait_closed()

    run(main())
    assert (tmp_path / "kh").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "host_key").stat().st_mode & 0o777 == 0o600


def test_reconnect_survives_server_side_cut_while_idle(tmp_path: Path) -> None:
    async def main() -> tuple[bytes, SessionState]:
        async with server_and_relay(tmp_path) as (_, relay):
            client = await client_via(relay, tmp_path)
            stream = client.open_stream()
            for _ in range(5):
                await relay.cut()
                await asyncio.sleep(0.05)
            stream.write(b"still here")
            echoed = await stream.readexactly(10)
            state = client.state
            await client.close()
            return echoed, state

    echoed, state = run(main())
    assert echoed == b"still here"
    assert state is SessionState.ESTABLISHED


def test_keys_are_replaced_automatically_without_the_application_noticing(
    tmp_path: Path,
) -> None:
    config = SessionConfig(keepalive_interval=0.1, min_dead_timeout=0.4, dead_timeout=1.0,
                           rekey_after_bytes=4 * MiB)

    async def main() -> tuple[bytes, int, int]:
        async with server_and_relay(tmp_path, config=config) as (_, relay):
            client = await client_via(relay, tmp_path, config=config)
            stream = client.open_stream()
            payload = pattern(12 * MiB, 9)
            stream.write(payload)
            stream.write_eof()
            echoed = await asyncio.wait_for(stream.read(), 60)
            rekeys, version = client.rekeys, client.attach_version
            await client.close()
            return echoed, rekeys, version

    echoed, rekeys, version = run(main())
    assert echoed == pattern(12 * MiB, 9)
    assert rekeys >= 3 and version >= rekeys  # 24 MiB through 4 MiB keys


def test_read_to_the_end_of_a_stream_longer_than_the_window(tmp_path: Path) -> None:
    """read() with no size must hand flow-control credit back as data arrives."""
    config = SessionConfig(stream_window=64 * 1024)

    async def main() -> bytes:
        async with server_and_relay(tmp_path, config=config) as (_, relay):
            client = await client_via(relay, tmp_path, config=config)
            stream = client.open_stream()
            stream.write(pattern(2 * MiB, 10))
            stream.write_eof()
            echoed = await asyncio.wait_for(stream.read(), 30)
            await client.close()
            return echoed

    assert run(main()) == pattern(2 * MiB, 10)


def test_finished_streams_are_forgotten_so_long_sessions_do_not_grow(tmp_path: Path) -> None:
    async def main() -> tuple[int, bool]:
        async with server_and_relay(tmp_path) as (server, relay):
            client = await client_via(relay, tmp_path)
            for i in range(200):  # like a forwarding tunnel: a stream per connection
                stream = client.open_stream()
                stream.write(b"request %d" % i)
                stream.write_eof()
                assert await stream.read() == b"request %d" % i
            await asyncio.sleep(0.2)
            client.open_stream().write_eof()  # opening sweeps what has finished since
            (server_side,) = server.sessions.values()
            kept_client = len(client.stream_ids)
            await client.close()
            return kept_client, len(server_side.stream_ids) < 10

    kept_client, server_small = run(main())
    assert kept_client <= 2 and server_small

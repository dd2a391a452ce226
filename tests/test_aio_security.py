"""Attacks from the network against a live server: each refused, the real session unharmed."""

from __future__ import annotations

import asyncio
import dataclasses
import os
from pathlib import Path

from aiohelpers import FAST, Tap, echo_handler, raw_exchange, run
from continuations.aio import ClientSession, connect, serve
from continuations.protocol import SessionState
from continuations.protocol.states import RecordType
from continuations.protocol.wire import (
    AttachRequest,
    RecordDecoder,
    Reject,
    RejectCode,
    encode_record,
    record_header,
)


def first_record(data: bytes) -> tuple[RecordType, bytes]:
    decoder = RecordDecoder()
    decoder.feed(data)
    record = decoder.next_record()
    assert record is not None, "no whole record"
    return record[0], record[2]


def reject_code(reply: bytes) -> int:
    rtype, body = first_record(reply)
    assert rtype is RecordType.REJECT
    return Reject.decode(body).code


async def echo_ok(client: ClientSession, payload: bytes) -> bool:
    stream = client.open_stream()
    stream.write(payload)
    stream.write_eof()
    return await asyncio.wait_for(stream.read(), 10) == payload


def test_forged_replayed_stale_unknown_and_garbage_requests_are_refused(tmp_path: Path) -> None:
    async def main() -> dict[str, object]:
        server = await serve(echo_handler, host_key=tmp_path / "hk", config=FAST)
        tap = Tap(server.address)
        tap_address = await tap.start()
        client = await connect(*tap_address, known_hosts=tmp_path / "kh", config=FAST)
        out: dict[str, object] = {}
        try:
            assert await echo_ok(client, b"warm-up")
            tap.cut()  # the client re-attaches through the tap, which records the request
            for _ in range(100):
                if client.state is SessionState.ESTABLISHED and client.attach_version == 1:
                    break
                await asyncio.sleep(0.02)
            rtype, body = first_record(bytes(tap.captured[1]))
            assert rtype is RecordType.ATTACH_REQUEST
            captured = AttachRequest.decode(body)
            version_before = client.attach_version
            path_before = client.path
            target = server.address

            # 1. A replay of the captured request: its version is no longer newer.
            replay = encode_record(RecordType.ATTACH_REQUEST, captured.encode())
            out["replay"] = reject_code(await raw_exchange(target, replay))
            # 2. The same request with a newer version: the proof no longer matches.
            newer = dataclasses.replace(captured, attach_version=captured.attach_version + 50)
            forged = encode_record(RecordType.ATTACH_REQUEST, newer.encode())
            out["forged"] = reject_code(await raw_exchange(target, forged))
            # 3. A wrong proof outright.
            bad_proof = dataclasses.replace(newer, proof=os.urandom(32))
            out["bad_proof"] = reject_code(
                await raw_exchange(target, encode_record(RecordType.ATTACH_REQUEST,
                                                         bad_proof.encode()))
            )
            # 4. An unknown session id.
            unknown = dataclasses.replace(newer, session_id=os.urandom(16))
            out["unknown"] = reject_code(
                await raw_exchange(target, encode_record(RecordType.ATTACH_REQUEST,
                                                         unknown.encode()))
            )
            # 5. Garbage after a valid header; 6. an oversized length; 7. pure noise.
            out["garbage_after_header"] = await raw_exchange(
                target, record_header(RecordType.ATTACH_REQUEST, 200) + os.urandom(200)
            )
            out["oversized"] = await raw_exchange(target, record_header(RecordType.SEALED,
                                                                        0xFFFFFF))
            out["noise"] = await raw_exchange(target, os.urandom(256 * 1024))

            out["version_unchanged"] = client.attach_version == version_before
            out["path_unchanged"] = client.path == path_before
            out["echo_after"] = await echo_ok(client, b"still working " * 1000)
            out["sessions"] = len(server.endpoint.sessions)
            out["links_failed"] = server.links_failed
        finally:
            await client.close()
            await tap.close()
            server.close()
            await server.wait_closed()
        return out

    out = run(main())
    assert out["replay"] == RejectCode.STALE_VERSION
    assert out["forged"] == RejectCode.BAD_PROOF
    assert out["bad_proof"] == RejectCode.BAD_PROOF
    assert out["unknown"] == RejectCode.UNKNOWN_SESSION
    # Malformed input gets no answer at all: the server just ends that connection.
    assert out["garbage_after_header"] == b""
    assert out["oversized"] == b""
    assert out["noise"] == b""
    assert out["version_unchanged"] and out["path_unchanged"]
    assert out["echo_after"] is True
    assert out["sessions"] == 1
    assert out["links_failed"] >= 3


def test_replayed_request_that_never_arrived_cannot_tear_down_the_session(
    tmp_path: Path,
) -> None:
    """An on-path attacker swallows a migration request, then replays it later."""

    async def main() -> dict[str, object]:
        server = await serve(echo_handler, host_key=tmp_path / "hk", config=FAST)
        tap = Tap(server.address)
        tap_address = await tap.start()
        client = await connect(*tap_address, known_hosts=tmp_path / "kh", config=FAST,
                               reconnect=False)
        out: dict[str, object] = {}
        try:
            assert await echo_ok(client, b"warm-up")
            tap.swallow_next = True
            try:
                await client.migrate()  # never reaches the server; times out
                out["migrate"] = "succeeded"
            except Exception as exc:
                out["migrate"] = type(exc).__name__
            stolen = bytes(tap.captured[-1])
            rtype, _ = first_record(stolen)
            assert rtype is RecordType.ATTACH_REQUEST
            version_before = client.attach_version
            path_before = client.path
            # The stolen request is newer than the current attachment and its proof is good,
            # but the attacker cannot confirm it: the server must keep the current one.
            reader, writer = await asyncio.open_connection(*server.address)
            writer.write(stolen)
            await writer.drain()
            reply = await asyncio.wait_for(reader.read(), 10)  # accept, then closed on timeout
            writer.close()
            out["reply_type"] = first_record(reply)[0]
            await asyncio.sleep(0.2)
            out["server_version"] = server.endpoint.sessions[client.id].attach_version
            out["version_before"] = version_before
            out["path_unchanged"] = client.path == path_before
            out["state"] = client.state
            out["echo_after"] = await echo_ok(client, b"x" * 100_000)
        finally:
            await client.close()
            await tap.close()
            server.close()
            await server.wait_closed()
        return out

    out = run(main())
    assert out["migrate"] != "succeeded"
    assert out["reply_type"] is RecordType.ATTACH_ACCEPT  # readable only with the keys
    assert out["server_version"] == out["version_before"]
    assert out["path_unchanged"]
    assert out["state"] is SessionState.ESTABLISHED
    assert out["echo_after"] is True

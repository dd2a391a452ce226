"""Fuzz targets for the wire decoders and the server's entry points, without atheris.

Each ``*_target(data: bytes)`` takes one input and raises only when an invariant
breaks (an ``InvariantError``, or an exception that should never have escaped).
``fuzz_wire.py`` and ``fuzz_server.py`` hand these to atheris (coverage-guided);
``replay.py`` runs them over a corpus with plain Python, to reproduce a crash or to
measure line coverage. Nothing here reads the clock or the OS's randomness: the
same input always takes the same path.

Invariants:

- wire: decoders raise only ``FrameError`` or ``VersionError``; what decodes
  encodes back to the same bytes; the record decoder gives the same records
  however the input is split.
- server: ``ServerEndpoint`` input methods never raise for peer input; no input
  creates a session or emits ``SessionEstablished`` (an attacker has no keys);
  a session restored on the endpoint is left exactly as it was unless the input
  begins with the one authentic attach request; every link an attacker opened is
  closed once ``handshake_timeout`` has passed; nothing hangs (inputs are bounded by
  the fuzzer's ``-max_len`` and every loop here is bounded by the input's length).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from continuations.errors import FrameError, VersionError
from continuations.protocol import (
    ClientEndpoint,
    LinkFailed,
    ServerEndpoint,
    SessionConfig,
    SessionEstablished,
    SessionState,
    StreamDataReceived,
)
from continuations.protocol.snapshot import SessionSnapshot
from continuations.protocol.states import RecordType
from continuations.protocol.wire import (
    MAX_RECORD_BODY,
    AckFrame,
    AttachAccept,
    AttachRequest,
    ClientHello,
    CloseFrame,
    PingFrame,
    PongFrame,
    RecordDecoder,
    Reject,
    ServerHello,
    StreamFrame,
    decode_frames,
    encode_ack,
    encode_close,
    encode_ping,
    encode_pong,
    encode_record,
    stream_frame_header,
)

DECODE_ERRORS = (FrameError, VersionError)
CONFIG = SessionConfig()
T0 = 1000.0
HOST_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))


class InvariantError(AssertionError):
    """An invariant of the code under test does not hold for this input."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise InvariantError(message)


# --- wire -------------------------------------------------------------------------------------


def _split_points(data: bytes, seed: int) -> list[bytes]:
    """Cut ``data`` into chunks of pseudo-random sizes (1 byte to 4 KiB)."""
    rng = random.Random(seed)
    out = []
    pos = 0
    while pos < len(data):
        n = rng.choice((1, 2, 3, 4, 5, 7, 64, 1000, 4096))
        out.append(data[pos : pos + n])
        pos += n
    return out


def _records(chunks: list[bytes], max_body: int) -> tuple[list[tuple[int, bytes, bytes]], bool]:
    dec = RecordDecoder(max_body)
    out: list[tuple[int, bytes, bytes]] = []
    for chunk in chunks:
        dec.feed(chunk)
        try:
            while (rec := dec.next_record()) is not None:
                rtype, header, body = rec
                check(len(body) <= max_body, "record body above the decoder's limit")
                check(encode_record(rtype, body) == header + body, "record does not re-encode")
                out.append((int(rtype), header, body))
        except FrameError:
            return out, True
    return out, False


def _reencode_frame(frame: object) -> bytes:
    if isinstance(frame, StreamFrame):
        return stream_frame_header(frame.stream_id, frame.offset, len(frame.data),
                                   frame.fin) + frame.data
    if isinstance(frame, AckFrame):
        return encode_ack(frame.stream_id, frame.received, frame.limit)
    if isinstance(frame, PingFrame):
        return encode_ping(frame.ping_id)
    if isinstance(frame, PongFrame):
        return encode_pong(frame.ping_id)
    assert isinstance(frame, CloseFrame)
    return encode_close(frame.code, frame.reason)


_MESSAGES = (ClientHello, ServerHello, AttachRequest, AttachAccept, Reject)


def wire_target(data: bytes) -> None:
    """Record decoder (chunked and whole), handshake decoders and the frame decoder."""
    if not data:
        return
    selector, body = data[0], data[1:]
    if selector < 0x40:
        # The record decoder with a limit from the input, one-shot and chunked.
        max_body = MAX_RECORD_BODY if selector & 1 else 1 + (selector * 997) % MAX_RECORD_BODY
        whole, failed_whole = _records([body], max_body)
        chunked, failed_chunked = _records(_split_points(body, selector), max_body)
        check(whole == chunked and failed_whole == failed_chunked,
              "record decoder depends on how the input is split")
        consumed = sum(len(h) + len(b) for _, h, b in whole)
        check(b"".join(h + b for _, h, b in whole) == body[:consumed], "records are not a prefix")
        return
    if selector < 0x80:
        frames = []
        try:
            frames = list(decode_frames(body))
        except DECODE_ERRORS:
            return
        rebuilt = b"".join(_reencode_frame(f) for f in frames)
        if not any(isinstance(f, CloseFrame) for f in frames):
            check(rebuilt == body, "frames do not re-encode to the same plaintext")
        return
    cls = _MESSAGES[(selector - 0x80) % len(_MESSAGES)]
    try:
        msg = cls.decode(body)
    except DECODE_ERRORS:
        return
    if isinstance(msg, Reject):
        try:
            body[3 : 3 + int.from_bytes(body[1:3], "big")].decode("utf-8")
        except UnicodeDecodeError:
            return  # invalid UTF-8 in the reason is replaced: those bytes cannot come back
    check(msg.encode() == body, f"{cls.__name__} does not re-encode to the same bytes")


# --- server fixtures --------------------------------------------------------------------------


@dataclass(frozen=True)
class Fixture:
    snapshot: SessionSnapshot  # a server session after some traffic, suspended
    request: bytes  # the client's next ATTACH_REQUEST record, never delivered
    hello: bytes  # a CLIENT_HELLO record


def _rng(seed: int) -> random.Random:
    return random.Random(seed)


def _pump(client: ClientEndpoint, server: ServerEndpoint, links: dict[int, int]) -> None:
    """Move bytes between one client and one server; ``links`` maps client to server ids."""
    back = {s: c for c, s in links.items()}
    for _ in range(1000):
        moved = False
        for tx in client.transmit(T0):
            if tx.link in links and tx.data:
                server.receive_data(links[tx.link], tx.data, T0)
                moved = True
        for tx in server.transmit(T0):
            if tx.link in back and tx.data:
                client.receive_data(back[tx.link], tx.data, T0)
                moved = True
        for endpoint in (client, server):
            while (event := endpoint.next_event()) is not None:
                if isinstance(event, StreamDataReceived):
                    session = (client.session if endpoint is client
                               else server.session(event.session_id))
                    if session is not None:
                        session.stream_consumed(event.stream_id, len(event.data))
        if not moved:
            return
    raise RuntimeError("fixture exchange did not settle")


def build_fixture() -> Fixture:
    rng = _rng(1)
    server = ServerEndpoint(config=CONFIG, rng=rng.randbytes, now=T0, host_key=HOST_KEY)
    client = ClientEndpoint(config=CONFIG, rng=rng.randbytes, now=T0,
                            verify_host_key=lambda key: None)
    links = {client.new_link(T0): server.new_link(T0)}
    hello = b"".join(tx.data for tx in client.transmit(T0))
    c_link = next(iter(links))
    server.receive_data(links[c_link], hello, T0)
    for tx in server.transmit(T0):
        client.receive_data(c_link, tx.data, T0)
    _pump(client, server, links)
    c = client.session
    check(c.state is SessionState.ESTABLISHED, "fixture session not established")
    s = server.session(c.id)
    assert s is not None
    for sid in (c.open_stream(), c.open_stream()):
        c.send(sid, rng.randbytes(3000), end_stream=sid == 0)
    sid = s.open_stream()
    s.send(sid, rng.randbytes(5000))
    _pump(client, server, links)
    snapshot = server.suspend_session(c.id)
    server.transmit(T0)  # the server drops its link; the client does not learn of it
    client.new_link(T0)  # a re-attach attempt whose request the server never sees
    request = b"".join(tx.data for tx in client.transmit(T0)
                       if tx.data[:1] == bytes([RecordType.ATTACH_REQUEST]))
    check(request[:1] == bytes([RecordType.ATTACH_REQUEST]), "no attach request captured")
    return Fixture(snapshot=snapshot, request=request, hello=hello)


_FIXTURE: Fixture | None = None


def fixture() -> Fixture:
    global _FIXTURE
    if _FIXTURE is None:
        _FIXTURE = build_fixture()
    return _FIXTURE


def fresh_server(seed: int = 7) -> ServerEndpoint:
    return ServerEndpoint(config=CONFIG, rng=_rng(seed).randbytes, now=T0, host_key=HOST_KEY)


def _feed(server: ServerEndpoint, link: int, data: bytes, seed: int) -> None:
    """Peer input in chunks; every call must return normally whatever the bytes."""
    for chunk in _split_points(data, seed) if seed % 2 else [data]:
        server.receive_data(link, chunk, T0)
    server.transmit(T0)


def _events(server: ServerEndpoint) -> list[object]:
    out = []
    while (event := server.next_event()) is not None:
        out.append(event)
    return out


def _expire(server: ServerEndpoint, links: list[int]) -> None:
    """Let handshake_timeout pass: every attacker link must then be closed."""
    later = T0 + CONFIG.handshake_timeout + 1.0
    server.handle_timer(later)
    server.transmit(later)
    for link in links:
        server.link_closed(link, later)  # harmless if already closed: it must not raise
    server.transmit(later)


# --- server targets ---------------------------------------------------------------------------


def handshake_target(data: bytes) -> None:
    """Arbitrary bytes as the first bytes of a fresh link on a fresh ServerEndpoint."""
    server = fresh_server()
    link = server.new_link(T0)
    _feed(server, link, data, data[0] if data else 0)
    events = _events(server)
    check(not server.sessions, "peer input created a session")
    check(not any(isinstance(e, SessionEstablished) for e in events),
          "SessionEstablished without the client's keys")
    check(all(isinstance(e, LinkFailed) and e.link == link for e in events),
          f"unexpected events {events!r}")
    _expire(server, [link])
    check(not server.sessions, "a session appeared after the timeout")
    check(not server._unbound, "an attacker link is still pending after handshake_timeout")


def attach_target(data: bytes) -> None:
    """Mutated attach requests against a server that holds the session (restored from a
    snapshot), and against one for which it is still an unconfirmed hello (an embryo)."""
    fx = fixture()
    authentic = data.startswith(fx.request)

    # 1. The session exists (disconnected, waiting for its client).
    server = fresh_server()
    session = server.restore_session(fx.snapshot, T0)
    before = (session.state, session.attach_version, session.offered_version,
              session.active, session.pending, session.buffered)
    link = server.new_link(T0)
    _feed(server, link, data, data[-1] if data else 0)
    events = _events(server)
    check(list(server.sessions) == [fx.snapshot.session_id], "the set of sessions changed")
    check(not any(isinstance(e, SessionEstablished) for e in events), "session established")
    if not authentic:
        after = (session.state, session.attach_version, session.offered_version,
                 session.active, session.pending, session.buffered)
        check(after == before, f"a refused request changed the session: {before} -> {after}")
    _expire(server, [link])
    check(server.session(fx.snapshot.session_id) is session, "the session was dropped")
    check(not session.finished, "peer input ended the session")

    # 2. Only an answered hello (embryo) exists; the input is aimed at its session id.
    server = fresh_server(seed=len(data))
    hello_link = server.new_link(T0)
    server.receive_data(hello_link, fx.hello, T0)
    (answer,) = server.transmit(T0)
    sid = ServerHello.decode(answer.data[4:]).session_id
    aimed = bytearray(data)
    if len(aimed) >= 9 + 16:
        aimed[9 : 9 + 16] = sid  # record header (4), magic (4), version (1), session id
    link = server.new_link(T0)
    _feed(server, link, bytes(aimed), len(data))
    events = _events(server)
    check(not server.sessions, "a forged request hatched an unconfirmed session")
    check(not any(isinstance(e, SessionEstablished) for e in events), "session established")
    _expire(server, [hello_link, link])
    check(not server.sessions, "a session appeared after the timeout")


TARGETS = {
    "wire": wire_target,
    "handshake": handshake_target,
    "attach": attach_target,
}


def seeds(name: str) -> dict[str, bytes]:
    """A few valid inputs per target, to start the corpus from."""
    fx = fixture()
    if name == "wire":
        return {
            "records": b"\x01" + fx.hello + fx.request,
            "frames": b"\x40" + encode_ping(7) + encode_ack(0, 10, 1 << 20)
            + stream_frame_header(2, 0, 3, True) + b"abc" + encode_close(0, "bye"),
            "attach_request": bytes([0x80 + 2]) + fx.request[4:],
            "client_hello": bytes([0x80]) + fx.hello[4:],
            "reject": bytes([0x80 + 4]) + Reject(code=1, reason="x", signature=bytes(64)).encode(),
        }
    if name == "handshake":
        return {
            "hello": fx.hello,
            "hello_then_sealed": fx.hello + encode_record(RecordType.SEALED, bytes(40)),
            "attach": fx.request,
            "noise": bytes(range(256)),
        }
    return {"request": fx.request, "request_twice": fx.request + fx.request}

"""Fuzzing the server's entry points from the normal suite (the atheris harness is fuzz/).

Random, truncated and mutated bytes go into ``ServerEndpoint`` links: the handshake
entry (first bytes of a new link), the confirm of an answered hello, and the re-attach
path (mutations of a real, never-delivered ATTACH_REQUEST). Whatever arrives:

- nothing raises out of ``receive_data`` (a peer's fault is a ``LinkFailed`` event);
- no session is created, and no existing one changes (state, attachment, versions);
- the other sessions on the same endpoint keep exchanging data, exactly once;
- every link the attacker opened is closed by ``handshake_timeout`` at the latest.

Then the same over real sockets: one connection pours garbage into a live server
while two sessions transfer data. The hypothesis tests are derandomized, so a
failure reproduces; the coverage-guided exploration is fuzz/run.sh's job.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import random
import struct
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st

from aiohelpers import FAST, echo_handler, pattern, run
from continuations.aio import ClientSession, connect, serve
from continuations.errors import AuthenticationError, ProtocolError
from continuations.protocol import (
    ClientEndpoint,
    Event,
    LinkFailed,
    SessionConfig,
    SessionEstablished,
    SessionLost,
    SessionState,
    StreamDataReceived,
    handshake,
)
from continuations.protocol.keys import MAX_RECORDS_PER_KEY, reject_is_authentic
from continuations.protocol.session import Session
from continuations.protocol.states import RecordType
from continuations.protocol.wire import (
    AttachRequest,
    RecordDecoder,
    Reject,
    RejectCode,
    encode_ping,
    encode_record,
    record_header,
    stream_frame_header,
)
from sansio import Net, Wire

FUZZ = settings(
    max_examples=200,
    deadline=None,
    database=None,
    derandomize=True,  # the same inputs on every run: a failure reproduces
    phases=[Phase.explicit, Phase.generate, Phase.shrink],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# --- several clients on one server endpoint ---------------------------------------------------


@dataclass
class PeerWire(Wire):
    who: int = 0  # index of the client endpoint at the other end (-1: an attacker)


class MultiNet(Net):
    """``Net`` with several client endpoints (sessions) on the one server endpoint."""

    def __init__(self, seed: int = 0, clients: int = 2) -> None:
        super().__init__(seed=seed)
        self.clients = [self.client] + [
            ClientEndpoint(config=self.config, rng=self.rand.randbytes, now=self.now,
                           verify_host_key=lambda key: None)
            for _ in range(clients - 1)
        ]
        self.client_log: list[list[Event]] = [[] for _ in self.clients]
        self.got: dict[tuple[object, int], bytearray] = {}  # (who, stream id) -> bytes

    def connect(self, who: int = 0) -> PeerWire:  # type: ignore[override]
        server_link = self.server.new_link(self.now)
        client_link = self.clients[who].new_link(self.now)
        wire = PeerWire(client_link, server_link, who=who)
        self.wires.append(wire)
        return wire

    def raw_wire(self) -> PeerWire:
        wire = PeerWire(-1, self.server.new_link(self.now), who=-1)
        self.wires.append(wire)
        return wire

    def cut(self, wire: Wire) -> None:
        if wire.closed:
            return
        wire.closed = True
        wire.to_server.clear()
        wire.to_client.clear()
        assert isinstance(wire, PeerWire)
        if wire.client_link >= 0:
            self.clients[wire.who].link_closed(wire.client_link, self.now)
        self.server.link_closed(wire.server_link, self.now)

    def _wire_of(self, who: int, link: int) -> PeerWire | None:
        for wire in self.wires:
            assert isinstance(wire, PeerWire)
            if wire.closed:
                continue
            if who < 0 and wire.server_link == link:
                return wire
            if who >= 0 and wire.who == who and wire.client_link == link:
                return wire
        return None

    def _collect(self) -> bool:
        moved = False
        endpoints = [(-1, self.server), *enumerate(self.clients)]
        for who, endpoint in endpoints:
            for tx in endpoint.transmit(self.now):
                wire = self._wire_of(who, tx.link)
                if wire is None:
                    continue
                if tx.data:
                    moved = True
                    if who >= 0:
                        wire.to_server += tx.data
                        wire.captured_to_server += tx.data
                    else:
                        wire.to_client += tx.data
                        wire.captured_to_client += tx.data
                if tx.close:
                    self._deliver(wire)
                    self.cut(wire)
                    moved = True
        return moved

    def _deliver(self, wire: Wire) -> bool:
        assert isinstance(wire, PeerWire)
        if wire.closed or wire.blackholed:
            return False
        moved = False
        ends = [(wire.to_server, wire.server_link, wire.hold_to_server, -1)]
        if wire.who >= 0:
            ends.append((wire.to_client, wire.client_link, wire.hold_to_client, wire.who))
        else:
            wire.to_client.clear()  # the attacker reads captured_to_client
        for buf, link, held, who in ends:
            if held or not buf:
                continue
            data = bytes(buf)
            buf.clear()
            endpoint = self.server if who < 0 else self.clients[who]
            endpoint.receive_data(link, data, self.now)
            moved = True
            if wire.closed:
                break
        return moved

    def _drain_events(self) -> None:
        while (event := self.server.next_event()) is not None:
            self.server_events.append(event)
            if isinstance(event, StreamDataReceived):
                self.got.setdefault((event.session_id, event.stream_id), bytearray()).extend(
                    event.data)
                session = self.server.session(event.session_id)
                if session is not None:
                    session.stream_consumed(event.stream_id, len(event.data))
        for who, endpoint in enumerate(self.clients):
            while (event := endpoint.next_event()) is not None:
                self.client_log[who].append(event)
                if isinstance(event, StreamDataReceived):
                    self.got.setdefault((who, event.stream_id), bytearray()).extend(event.data)
                    endpoint.session.stream_consumed(event.stream_id, len(event.data))

    def advance(self, seconds: float, step: float = 0.05) -> None:
        end = self.now + seconds
        while self.now < end:
            self.now = min(end, self.now + step)
            for endpoint in (self.server, *self.clients):
                timer = endpoint.get_timer()
                if timer is not None and timer <= self.now:
                    endpoint.handle_timer(self.now)
            self.pump()

    def server_session_of(self, who: int) -> Session:
        session = self.server.session(self.clients[who].session.id)
        assert session is not None
        return session


class Traffic:
    """Per session: one client-opened and one server-opened stream; checks exactly-once."""

    def __init__(self, net: MultiNet) -> None:
        self.net = net
        self.rng = random.Random(7)
        self.streams: list[tuple[int, int, Session, Session]] = []
        self.sent: dict[tuple[object, int], bytearray] = {}
        for who, endpoint in enumerate(net.clients):
            client, server = endpoint.session, net.server_session_of(who)
            c_sid, s_sid = client.open_stream(), server.open_stream()
            self.streams.append((c_sid, s_sid, client, server))
            self.sent[(server.id, c_sid)] = bytearray()
            self.sent[(who, s_sid)] = bytearray()

    def flows(self, size: int = 700) -> None:
        for who, (c_sid, s_sid, client, server) in enumerate(self.streams):
            data = self.rng.randbytes(size)
            assert client.send(c_sid, data) == size
            self.sent[(server.id, c_sid)] += data
            data = self.rng.randbytes(size)
            assert server.send(s_sid, data) == size
            self.sent[(who, s_sid)] += data
        self.net.pump()
        for key, data in self.sent.items():
            assert bytes(self.net.got.get(key, b"")) == bytes(data), key


@dataclasses.dataclass(frozen=True)
class State:
    """What an attacker must not change about a server session."""

    state: SessionState
    attach_version: int
    offered_version: int
    active: int | None
    pending: int | None

    @classmethod
    def of(cls, s: Session) -> State:
        return cls(s.state, s.attach_version, s.offered_version,
                   None if s.active is None else s.active.id,
                   None if s.pending is None else s.pending.id)


class Scene:
    """Two established sessions with traffic, and a re-attach request of session 0's that
    never reached the server (an on-path attacker kept it: it is authentic and fresh)."""

    def __init__(self, seed: int = 21) -> None:
        net = self.net = MultiNet(seed=seed)
        for who in range(2):
            net.connect(who)
        net.pump()
        assert all(c.session.state is SessionState.ESTABLISHED for c in net.clients)
        self.traffic = Traffic(net)
        self.traffic.flows()
        lost = net.connect(0)  # the client migrates; the path eats the request
        lost.blackholed = True
        net.pump()
        self.request = first_record(bytes(lost.captured_to_server))
        assert self.request[0] == RecordType.ATTACH_REQUEST
        net.cut(lost)
        net.pump()
        self.sessions = {who: net.server_session_of(who) for who in range(2)}
        self.before = {who: State.of(s) for who, s in self.sessions.items()}
        self.failed_before = len(net.events_of("server", LinkFailed))

    def attack(self, chunks: list[bytes]) -> PeerWire:
        net = self.net
        raw = net.raw_wire()
        for chunk in chunks:  # straight into the entry point: nothing may raise
            net.server.receive_data(raw.server_link, chunk, net.now)
        net.pump()
        return raw

    def check_untouched(self, raw: PeerWire) -> None:
        net = self.net
        if not raw.closed:  # e.g. a header that announced more bytes than came
            net.advance(net.config.handshake_timeout + 0.5, step=0.25)
        assert raw.closed, "an attacker link outlived handshake_timeout"
        assert set(net.server.sessions) == {s.id for s in self.sessions.values()}
        assert not net.events_of("server", SessionLost)
        assert len(net.events_of("server", SessionEstablished)) == 2
        for who, session in self.sessions.items():
            assert State.of(session) == self.before[who], who
            assert net.clients[who].session.state is SessionState.ESTABLISHED
            assert not any(isinstance(e, SessionLost) for e in net.client_log[who])
        for failure in net.events_of("server", LinkFailed)[self.failed_before:]:
            assert isinstance(failure, LinkFailed)
            assert failure.link == raw.server_link and failure.session_id is None
            assert isinstance(failure.error, ProtocolError | AuthenticationError)
        self.traffic.flows()
        assert not net.server._unbound


def first_record(data: bytes) -> tuple[int, bytes]:
    decoder = RecordDecoder()
    decoder.feed(data)
    record = decoder.next_record()
    assert record is not None
    return record[0], record[1] + record[2]


# --- strategies -------------------------------------------------------------------------------

_, _HELLO_MSG = handshake.start_hello(random.Random(3).randbytes)
HELLO = encode_record(RecordType.CLIENT_HELLO, _HELLO_MSG.encode())
RECORD_TYPES = st.one_of(st.sampled_from([int(t) for t in RecordType]), st.integers(0, 255))


@st.composite
def records(draw: st.DrawFn) -> bytes:
    """One record: a known or unknown type, a body, and a length that may lie."""
    rtype = draw(RECORD_TYPES)
    body = draw(st.binary(max_size=300))
    length = draw(st.one_of(st.just(len(body)), st.integers(0, 2**24 - 1)))
    return record_header(rtype, length) + body


def chunked(data: bytes, sizes: list[int]) -> list[bytes]:
    out, pos = [], 0
    for n in sizes:
        if pos >= len(data):
            break
        out.append(data[pos : pos + n])
        pos += n
    if pos < len(data):
        out.append(data[pos:])
    return out


ATTACKER_BYTES = st.one_of(
    st.binary(max_size=3000),
    st.lists(records(), min_size=1, max_size=4).map(b"".join),
    # An answered hello, then anything: the confirm the attacker cannot produce.
    st.lists(records(), max_size=3).map(lambda rs: HELLO + b"".join(rs)),
    st.tuples(st.just(HELLO), st.binary(max_size=500)).map(b"".join),
    # Truncated valid handshakes.
    st.integers(0, len(HELLO) - 1).map(lambda n: HELLO[:n]),
    # A header that announces more than ever comes (held until handshake_timeout).
    st.tuples(RECORD_TYPES, st.integers(1, 65536)).map(lambda t: record_header(*t)),
)
CHUNK_SIZES = st.lists(st.integers(1, 600), max_size=8)


# --- the handshake entry ----------------------------------------------------------------------


@FUZZ
@given(data=ATTACKER_BYTES, sizes=CHUNK_SIZES)
def test_attacker_bytes_on_a_new_link_change_nothing(data: bytes, sizes: list[int]) -> None:
    scene = Scene()
    raw = scene.attack(chunked(data, sizes))
    scene.check_untouched(raw)


@FUZZ
@given(parts=st.lists(st.tuples(st.integers(0, 3), ATTACKER_BYTES), min_size=1, max_size=6))
def test_interleaved_attacker_links_change_nothing(parts: list[tuple[int, bytes]]) -> None:
    """Several attacker links at once, fed in turns while real traffic flows between."""
    scene = Scene()
    net = scene.net
    raws = [net.raw_wire() for _ in range(4)]
    for index, data in parts:
        net.server.receive_data(raws[index].server_link, data, net.now)
        scene.traffic.flows(100)
        net.advance(0.3)
    net.advance(net.config.handshake_timeout + 0.5, step=0.25)
    assert all(raw.closed for raw in raws)
    assert set(net.server.sessions) == {s.id for s in scene.sessions.values()}
    assert len(net.events_of("server", SessionEstablished)) == 2
    for who, session in scene.sessions.items():
        assert session.state is SessionState.ESTABLISHED
        assert session.attach_version == scene.before[who].attach_version
    scene.traffic.flows()
    assert not net.server._unbound


# --- the re-attach path -----------------------------------------------------------------------

MUTATION = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10_000), st.integers(1, 255)),
    st.tuples(st.just("truncate"), st.integers(0, 10_000), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 10_000), st.integers(0, 255)),
    st.tuples(st.just("delete"), st.integers(0, 10_000), st.integers(1, 40)),
    st.tuples(st.just("set_length"), st.integers(0, 2**24 - 1), st.just(0)),
)


def mutate(record: bytes, ops: list[tuple[str, int, int]]) -> bytes:
    out = bytearray(record)
    for op, pos, value in ops:
        at = pos % (len(out) + 1)
        if op == "flip" and out:
            out[at % len(out)] ^= value
        elif op == "truncate":
            del out[at:]
        elif op == "insert":
            out[at:at] = bytes([value])
        elif op == "delete":
            del out[at : at + value]
        elif op == "set_length" and len(out) >= 4:
            out[1:4] = pos.to_bytes(3, "big")
    return bytes(out)


@FUZZ
@given(ops=st.lists(MUTATION, min_size=1, max_size=4), sizes=CHUNK_SIZES)
def test_mutated_attach_request_changes_nothing(
    ops: list[tuple[str, int, int]], sizes: list[int]
) -> None:
    scene = Scene()
    original = scene.request[1]
    mutated = mutate(original, ops)
    assume(not mutated.startswith(original))  # the authentic request itself is allowed in
    raw = scene.attack(chunked(mutated, sizes))
    scene.check_untouched(raw)
    # The one refusal a client takes as final is a signed "unknown session" over its own
    # nonce and session id: no mutation of the real request may earn one.
    real = AttachRequest.decode(original[4:])
    for reply_type, body in _records(bytes(raw.captured_to_client)):
        if reply_type == RecordType.REJECT:
            reject = Reject.decode(body)
            assert reject.code in (RejectCode.BAD_PROOF, RejectCode.STALE_VERSION,
                                   RejectCode.UNKNOWN_SESSION, RejectCode.UNSUPPORTED_VERSION)
            if reject.code == RejectCode.UNKNOWN_SESSION:
                assert not reject_is_authentic(
                    scene.net.server.host_public, real.client_nonce, real.session_id,
                    reject.code, reject.signature)


@FUZZ
@given(fields=st.fixed_dictionaries({
    "attach_version": st.integers(0, 2**64 - 1),
    "client_nonce": st.binary(min_size=32, max_size=32),
    "client_public": st.binary(min_size=32, max_size=32),
    "proof": st.binary(min_size=32, max_size=32),
}), target=st.sampled_from(["session0", "session1", "unknown"]))
def test_well_formed_forged_requests_are_refused(fields: dict[str, object], target: str) -> None:
    """Structure-aware: every field chosen by the attacker, the request well formed."""
    scene = Scene()
    request = AttachRequest.decode(scene.request[1][4:])
    session_id = {"session0": scene.sessions[0].id, "session1": scene.sessions[1].id,
                  "unknown": bytes(16)}[target]
    forged = dataclasses.replace(request, session_id=session_id, **fields)  # type: ignore[arg-type]
    assume(forged != request)
    raw = scene.attack([encode_record(RecordType.ATTACH_REQUEST, forged.encode())])
    scene.check_untouched(raw)
    ((reply_type, body),) = _records(bytes(raw.captured_to_client))
    assert reply_type == RecordType.REJECT
    code = Reject.decode(body).code
    if target == "unknown":
        assert code == RejectCode.UNKNOWN_SESSION
    else:
        assert code in (RejectCode.BAD_PROOF, RejectCode.STALE_VERSION)


def _records(data: bytes) -> list[tuple[int, bytes]]:
    decoder = RecordDecoder()
    decoder.feed(data)
    out = []
    while (record := decoder.next_record()) is not None:
        out.append((record[0], record[2]))
    return out


def test_forged_request_for_an_unconfirmed_session_cannot_get_it_killed() -> None:
    """The client got the server's hello but its confirm was lost with the link, so the
    server holds only an answered hello (no session yet); the client re-attaches, which
    completes the session. An on-path attacker keeps that request and sends the server a
    copy with a broken proof. The server must not answer it with a *signed* "unknown
    session" bound to the client's nonce: relayed to the client, that refusal is
    authentic and ends the session for good, which a forged request must never do."""
    net = MultiNet(seed=31, clients=1)
    wire = net.connect()
    net.step()  # the hello reaches the server; its answer is queued
    wire.hold_to_server = True  # the client's confirm will be lost with this link
    net.pump()
    client = net.client.session
    assert client.state is SessionState.ESTABLISHED and not net.server.sessions
    net.cut(wire)
    net.pump()
    second = net.connect()
    second.hold_to_server = True  # the attacker holds the client's request
    net.pump()
    request = AttachRequest.decode(first_record(bytes(second.captured_to_server))[1][4:])
    forged = dataclasses.replace(request, proof=bytes(32))
    raw = net.raw_wire()
    net.server.receive_data(
        raw.server_link, encode_record(RecordType.ATTACH_REQUEST, forged.encode()), net.now)
    net.pump()
    ((reply_type, body),) = _records(bytes(raw.captured_to_client))
    assert reply_type == RecordType.REJECT
    second.to_client += encode_record(RecordType.REJECT, body)  # relayed to the client
    net.pump()
    assert client.state is not SessionState.LOST, (
        f"a forged attach request got the server to sign refusal code "
        f"{Reject.decode(body).code} for the client's nonce, and the client gave up its "
        f"session")
    net.cut(second)
    net.connect()  # the real request, at last: it completes the session
    net.pump()
    assert client.state is SessionState.ESTABLISHED
    assert list(net.server.sessions) == [client.id]


# --- reflection and the per-session limits ---------------------------------------------------


def test_reflected_records_are_refused() -> None:
    """An on-path attacker sends each side's own sealed records back to it. Keys are per
    direction (c2s, s2c), so nothing reflected opens: the link ends, the session and its
    data do not. (Handshake records are typed per direction: a server refuses server
    records outright, see test_core_security's "server_record_from_client".)"""
    for victim in ("server", "client"):
        net = MultiNet(seed=61, clients=1)
        wire = net.connect()
        net.pump()
        traffic = Traffic(net)
        traffic.flows()
        if victim == "server":  # its sealed records, after its 180-byte SERVER_HELLO
            wire.to_server += bytes(wire.captured_to_client)[4 + 176 :]
        else:  # the client's sealed records, after its CLIENT_HELLO
            wire.to_client += bytes(wire.captured_to_server)[len(HELLO) :]
        net.pump()
        log = net.server_events if victim == "server" else net.client_log[0]
        failures = [e for e in log if isinstance(e, LinkFailed)]
        assert len(failures) == 1, victim
        assert isinstance(failures[0].error, AuthenticationError), failures[0].error
        assert wire.closed
        assert not net.events_of("server", SessionLost)
        assert net.client.session.state is SessionState.DISCONNECTED
        net.connect()
        net.pump()
        traffic.flows()


def test_stream_data_never_appears_on_the_wire() -> None:
    net = MultiNet(seed=65, clients=1)
    wire = net.connect()
    net.pump()
    secret = b"attack at dawn, " * 64
    c_sid = net.client.session.open_stream()
    net.client.session.send(c_sid, secret)
    server = net.server_session_of(0)
    s_sid = server.open_stream()
    server.send(s_sid, secret)
    net.pump()
    assert bytes(net.got[(server.id, c_sid)]) == secret and bytes(net.got[(0, s_sid)]) == secret
    for captured in (wire.captured_to_server, wire.captured_to_client):
        assert b"attack at dawn" not in captured


def test_replayed_sealed_records_are_refused() -> None:
    """A sealed record captured on the wire and sent again, on its own attachment or on a
    later one, never opens (the counter moved on; a later attachment has other keys)."""
    net = MultiNet(seed=66, clients=1)
    wire = net.connect()
    net.pump()
    traffic = Traffic(net)
    traffic.flows()
    records = _records(bytes(wire.captured_to_server))
    sealed = [encode_record(RecordType.SEALED, body) for rtype, body in records
              if rtype == RecordType.SEALED]
    assert len(sealed) >= 2
    received_before = {k: bytes(v) for k, v in net.got.items()}
    wire.to_server += sealed[1]  # same attachment, an old counter
    net.pump()
    failures = [e for e in net.server_events if isinstance(e, LinkFailed)]
    assert len(failures) == 1 and isinstance(failures[0].error, AuthenticationError)
    assert {k: bytes(v) for k, v in net.got.items()} == received_before  # nothing twice
    second = net.connect()
    net.pump()
    traffic.flows()
    second.to_server += sealed[1]  # a later attachment: other keys, and counter 1 is used
    net.pump()
    failures = [e for e in net.server_events if isinstance(e, LinkFailed)]
    assert len(failures) == 2 and isinstance(failures[1].error, AuthenticationError)
    net.connect()
    net.pump()
    traffic.flows()
    assert not net.events_of("server", SessionLost)


def _inject_sealed(net: MultiNet, wire: Wire, frame: bytes) -> None:
    """What only an authenticated client could send: a frame sealed with its keys."""
    link = net.client.session.active
    assert link is not None and link.sealer is not None
    wire.to_server += link.sealer.seal([frame])


def test_peer_opening_more_than_max_streams_ends_the_link_only() -> None:
    config = SessionConfig(max_streams=8)
    net = MultiNet(seed=62, clients=1)
    net.config = config
    net.server.config = config
    for endpoint in net.clients:
        endpoint.config = config
    wire = net.connect()
    net.pump()
    server = net.server_session_of(0)
    server.config = net.client.session.config = config
    # Stream id 16 implies the client's streams 0, 2, ..., 16: nine of them.
    _inject_sealed(net, wire, stream_frame_header(16, 0, 1, False) + b"x")
    net.pump()
    (failure,) = [e for e in net.server_events if isinstance(e, LinkFailed)]
    assert isinstance(failure.error, ProtocolError) and "streams" in str(failure.error)
    assert not server.streams and server.peer_opened == 0
    assert not net.events_of("server", SessionLost)
    net.connect()
    net.pump()
    assert server.state is SessionState.ESTABLISHED
    Traffic(net).flows()


def test_peer_sending_beyond_the_flow_control_limit_ends_the_link_only() -> None:
    net = MultiNet(seed=63, clients=1)
    wire = net.connect()
    net.pump()
    server = net.server_session_of(0)
    assert net.client.session.open_stream() == 0  # opened, nothing sent yet
    limit = 256 * 1024  # every new stream's limit until an ack raises it
    _inject_sealed(net, wire, stream_frame_header(0, limit - 1, 2, False) + b"xy")
    net.pump()
    (failure,) = [e for e in net.server_events if isinstance(e, LinkFailed)]
    assert isinstance(failure.error, ProtocolError) and "flow-control" in str(failure.error)
    assert not net.events_of("server", SessionLost)
    net.connect()
    net.pump()
    assert server.state is SessionState.ESTABLISHED
    Traffic(net).flows()


def test_answered_hellos_are_bounded_in_number_and_age() -> None:
    """Hellos answered but never confirmed (the client vanished) are kept so that a
    re-attach can complete them: at most max_pending_handshakes of them."""
    config = SessionConfig(max_pending_handshakes=4)
    net = Net(seed=64, config=config)
    net.connect()
    net.pump()
    rng = random.Random(64)
    for _ in range(10):
        _, hello = handshake.start_hello(rng.randbytes)
        link = net.server.new_link(net.now)
        net.server.receive_data(link, encode_record(RecordType.CLIENT_HELLO, hello.encode()),
                                net.now)
        net.server.transmit(net.now)
        net.server.link_closed(link, net.now)  # the client is gone before confirming
        assert len(net.server._embryos) <= config.max_pending_handshakes
    assert len(net.server.sessions) == 1
    net.advance(config.handshake_timeout + 1.0, step=0.25)
    _, hello = handshake.start_hello(rng.randbytes)
    link = net.server.new_link(net.now)
    net.server.receive_data(link, encode_record(RecordType.CLIENT_HELLO, hello.encode()),
                            net.now)
    assert len(net.server._embryos) == 1  # the old ones are purged by age on the next hello


# --- record counters at the 2^48 cap ----------------------------------------------------------


def test_peer_record_past_the_counter_cap_ends_the_link_only() -> None:
    net = MultiNet(seed=41, clients=1)
    wire = net.connect()
    net.pump()
    server = net.server_session_of(0)
    client = net.client.session
    assert client.active is not None and server.active is not None
    sealer, opener = client.active.sealer, server.active.opener
    assert sealer is not None and opener is not None
    # Jump both ends of the client-to-server direction to the last usable record number.
    sealer._counter = opener._counter = MAX_RECORDS_PER_KEY - 1
    sid = client.open_stream()
    client.send(sid, b"x" * 100)
    net.pump()  # record 2^48 - 1 is accepted
    assert bytes(net.got[(server.id, sid)]) == b"x" * 100
    assert not wire.closed
    # Record number 2^48, correctly sealed under the same key: refused all the same.
    plaintext = encode_ping(99)
    header = record_header(RecordType.SEALED, len(plaintext) + 16)
    nonce = struct.pack("!4xQ", MAX_RECORDS_PER_KEY)
    wire.to_server += header + sealer._aead.encrypt(nonce, plaintext, header)
    net.pump()
    failures = [e for e in net.server_events if isinstance(e, LinkFailed)]
    assert len(failures) == 1 and "exhausted" in str(failures[0].error)
    assert wire.closed
    assert not net.events_of("server", SessionLost)
    net.connect()  # the re-attach brings fresh keys, counters from 0
    net.pump()
    assert client.state is SessionState.ESTABLISHED and server.state is SessionState.ESTABLISHED
    assert client.active is not None and client.active.sealer is not None
    assert client.active.sealer._counter < 10
    client.send(sid, b"z" * 100)
    net.pump()
    assert bytes(net.got[(server.id, sid)]) == b"x" * 100 + b"z" * 100


def test_own_counter_at_the_cap_ends_the_link_instead_of_raising() -> None:
    """protocol.md: "A key is retired after 2^48 records (the link is ended and the
    re-attach that follows brings fresh keys)". The sending side must end the link; an
    exception out of ``transmit()`` would stop the driver that called it."""
    net = MultiNet(seed=42, clients=1)
    net.connect()
    net.pump()
    server = net.server_session_of(0)
    client = net.client.session
    assert server.active is not None and client.active is not None
    assert server.active.sealer is not None and client.active.opener is not None
    server.active.sealer._counter = client.active.opener._counter = MAX_RECORDS_PER_KEY - 1
    sid = server.open_stream()
    for _ in range(3):
        server.send(sid, b"y" * 100)
        net.pump()  # must not raise, whatever the counter
    net.advance(0.5)
    net.connect()
    net.pump()
    net.advance(0.5)
    assert server.state is SessionState.ESTABLISHED
    assert bytes(net.got[(0, sid)]) == b"y" * 300


# --- over real sockets ------------------------------------------------------------------------

GARBAGE_KINDS = ("noise", "hello_then_noise", "attach_garbage", "sealed_garbage", "huge_header")


def garbage(kind: str, rng: random.Random) -> bytes:
    if kind == "noise":
        return rng.randbytes(rng.choice((16, 1000, 64 * 1024)))
    if kind == "hello_then_noise":
        return HELLO + rng.randbytes(rng.randrange(1, 70_000))
    if kind == "attach_garbage":
        n = rng.randrange(0, 400)
        return record_header(RecordType.ATTACH_REQUEST, n) + rng.randbytes(n)
    if kind == "sealed_garbage":
        return encode_record(RecordType.SEALED, rng.randbytes(rng.randrange(17, 65_536)))
    return record_header(rng.randrange(256), rng.randrange(2**24))


async def _garbage_feeder(address: tuple[str, int], stop: asyncio.Event,
                          stats: dict[str, int]) -> None:
    """One connection at a time, pouring garbage until the server hangs up, then the next."""
    rng = random.Random(11)
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection(*address)
        except OSError:
            await asyncio.sleep(0.01)
            continue
        stats["connections"] += 1
        kind = GARBAGE_KINDS[stats["connections"] % len(GARBAGE_KINDS)]
        hung_up = asyncio.ensure_future(reader.read(-1))
        try:
            while not stop.is_set() and not hung_up.done():
                data = garbage(kind, rng)
                writer.write(data)
                await writer.drain()
                stats["bytes"] += len(data)
                await asyncio.sleep(0)
        except (ConnectionError, OSError):
            pass
        finally:
            hung_up.cancel()
            writer.transport.abort()


async def _echo_transfer(client_session: ClientSession, size: int, seed: int) -> bool:
    stream = client_session.open_stream()
    payload = pattern(size, seed)

    async def write() -> None:
        for pos in range(0, size, 16_384):
            stream.write(payload[pos : pos + 16_384])
            await stream.drain()
            await asyncio.sleep(0.005)
        stream.write_eof()

    writer = asyncio.ensure_future(write())
    echoed = bytearray()
    while chunk := await stream.read(65536):
        echoed += chunk
    await writer
    return hashlib.sha256(echoed).digest() == hashlib.sha256(payload).digest()


@pytest.mark.slow
def test_garbage_flood_leaves_other_sessions_and_the_server_intact(tmp_path: Path) -> None:
    async def main() -> dict[str, object]:
        server = await serve(echo_handler, host_key=tmp_path / "hk", config=FAST)
        out: dict[str, object] = {}
        stop = asyncio.Event()
        stats = {"connections": 0, "bytes": 0}
        try:
            a = await connect(*server.address, known_hosts=tmp_path / "kh", config=FAST)
            b = await connect(*server.address, known_hosts=tmp_path / "kh", config=FAST)
            flood = asyncio.ensure_future(_garbage_feeder(server.address, stop, stats))
            await asyncio.sleep(0.3)  # the flood is on before the transfers start
            results = await asyncio.gather(
                _echo_transfer(a, 1 << 20, 1), _echo_transfer(b, 1 << 20, 2))
            await asyncio.sleep(0.5)
            stop.set()
            await flood
            await asyncio.sleep(0.3)  # the server sees the last garbage link close
            out["intact"] = results
            out["attach_versions"] = (a.attach_version, b.attach_version)
            out["states"] = (a.state, b.state)
            out["sessions"] = set(server.endpoint.sessions)
            out["expected_sessions"] = {a.id, b.id}
            out["links_failed"] = server.links_failed
            out["unbound"] = len(server.endpoint._unbound)
            out["driver_links"] = len(server._driver.links)
            # A newcomer still gets a session, and the old ones still work.
            c = await connect(*server.address, known_hosts=tmp_path / "kh", config=FAST)
            out["after"] = await asyncio.gather(
                _echo_transfer(a, 50_000, 3), _echo_transfer(c, 50_000, 4))
            for session in (a, b, c):
                await session.close()
            await asyncio.sleep(0.2)
            out["sessions_at_end"] = len(server.endpoint.sessions)
            out["server_sessions_at_end"] = len(server.sessions)
        finally:
            stop.set()
            server.close()
            await server.wait_closed()
        return out

    out = run(main(), timeout=60)
    print(f"garbage flood: {out}")
    assert out["intact"] == [True, True]
    assert out["after"] == [True, True]
    assert out["attach_versions"] == (0, 0)  # never even had to re-attach
    assert out["states"] == (SessionState.ESTABLISHED, SessionState.ESTABLISHED)
    assert out["sessions"] == out["expected_sessions"]
    assert isinstance(out["links_failed"], int) and out["links_failed"] >= 20
    assert out["unbound"] == 0
    assert out["driver_links"] == 2
    assert out["sessions_at_end"] == 0 and out["server_sessions_at_end"] == 0

"""Attacks on the sans-I/O core: forged, replayed and malformed input, and host-key pinning.

An attacker either opens its own server link (``Net.raw_wire()``) or, on path,
writes into a real wire's buffers. Whatever it sends, the real session must be
untouched: same state, same attachment, data still flowing, nothing lost.
"""

from __future__ import annotations

import dataclasses
import random

import pytest

from continuations.errors import (
    AuthenticationError,
    FrameError,
    HostKeyMismatchError,
    ProtocolError,
    StreamStateError,
    VersionError,
)
from continuations.protocol import (
    Disconnected,
    LinkFailed,
    Reattached,
    SessionConfig,
    SessionEstablished,
    SessionLost,
    SessionState,
    handshake,
)
from continuations.protocol.session import Session
from continuations.protocol.states import RecordType
from continuations.protocol.wire import (
    AttachRequest,
    ClientHello,
    RecordDecoder,
    Reject,
    RejectCode,
    ResumePoint,
    encode_record,
    record_header,
)
from sansio import Net, Wire

STEP = 0.05


# --- helpers ----------------------------------------------------------------------------------


def established(seed: int = 0, config: SessionConfig | None = None) -> tuple[Net, Wire]:
    net = Net(seed=seed, config=config)
    wire = net.connect()
    net.pump()
    assert net.client.session.state is SessionState.ESTABLISHED
    return net, wire


def records(data: bytes) -> list[tuple[RecordType, bytes]]:
    dec = RecordDecoder()
    dec.feed(data)
    out = []
    while (rec := dec.next_record()) is not None:
        out.append((rec[0], rec[2]))
    return out


def captured_request(wire: Wire) -> AttachRequest:
    rtype, body = records(bytes(wire.captured_to_server))[0]
    assert rtype is RecordType.ATTACH_REQUEST
    return AttachRequest.decode(body)


def request_record(request: AttachRequest) -> bytes:
    return encode_record(RecordType.ATTACH_REQUEST, request.encode())


def inject(net: Net, data: bytes) -> Wire:
    """An attacker connects to the server and sends ``data``."""
    raw = net.raw_wire()
    raw.to_server += data
    net.pump()
    return raw


def reject_of(raw: Wire) -> Reject:
    (rec,) = records(bytes(raw.captured_to_client))
    assert rec[0] is RecordType.REJECT
    return Reject.decode(rec[1])


@dataclasses.dataclass(frozen=True)
class Snapshot:
    state: SessionState
    attach_version: int
    active: int | None
    pending: int | None

    @classmethod
    def of(cls, session: Session) -> Snapshot:
        return cls(
            session.state,
            session.attach_version,
            None if session.active is None else session.active.id,
            None if session.pending is None else session.pending.id,
        )


class Traffic:
    """Writes on one client-opened and one server-opened stream; checks exactly-once."""

    def __init__(self, net: Net) -> None:
        self.net = net
        self.server = net.server_session()
        self.rng = random.Random(99)
        self.c_sid = net.client.session.open_stream()
        self.s_sid = self.server.open_stream()
        self.sent = {("server", self.c_sid): bytearray(), ("client", self.s_sid): bytearray()}

    def write(self, size: int = 2000) -> None:
        net = self.net
        data = self.rng.randbytes(size)
        assert net.client.session.send(self.c_sid, data) == size
        self.sent[("server", self.c_sid)] += data
        data = self.rng.randbytes(size)
        assert self.server.send(self.s_sid, data) == size
        self.sent[("client", self.s_sid)] += data

    def check(self) -> None:
        for key, data in self.sent.items():
            assert bytes(self.net.received.get(key, b"")) == bytes(data), key

    def flows(self) -> None:
        self.write()
        self.net.pump()
        self.check()


def never_delivered_request(net: Net) -> tuple[Wire, AttachRequest]:
    """The client tries a re-attach over a wire that loses everything, then gives up on it
    and stays on its current link."""
    wire = net.connect()
    wire.blackholed = True
    net.pump()
    request = captured_request(wire)
    net.cut(wire)
    net.pump()
    assert net.client.session.state is SessionState.ESTABLISHED
    assert net.client.session.pending is None
    return wire, request


# --- forged and replayed attach requests -----------------------------------------------------


def test_forged_attach_request_bad_proof_refused() -> None:
    net, wire = established(seed=1)
    traffic = Traffic(net)
    traffic.flows()
    s = net.server_session()
    before = Snapshot.of(s)
    rng = random.Random(1)
    forged = AttachRequest(
        session_id=s.id, attach_version=50, client_nonce=rng.randbytes(32),
        client_public=rng.randbytes(32), resume=ResumePoint(peer_streams_seen=0, received=()),
        proof=rng.randbytes(32),
    )
    raw = inject(net, request_record(forged))
    assert reject_of(raw).code == RejectCode.BAD_PROOF
    assert raw.closed
    assert Snapshot.of(s) == before
    assert s.active is not None and s.active.id == wire.server_link
    traffic.flows()
    net.advance(3.0)
    assert Snapshot.of(s) == before
    traffic.flows()


@pytest.mark.parametrize("tamper", ["proof", "resume", "version", "nonce"])
def test_tampered_genuine_request_refused(tamper: str) -> None:
    net, _ = established(seed=2)
    traffic = Traffic(net)
    traffic.flows()
    _, request = never_delivered_request(net)
    s = net.server_session()
    assert request.attach_version > s.attach_version  # not stale: the proof is what fails
    before = Snapshot.of(s)
    if tamper == "proof":
        proof = bytearray(request.proof)
        proof[5] ^= 0x01
        bad = dataclasses.replace(request, proof=bytes(proof))
    elif tamper == "resume":
        bad = dataclasses.replace(
            request, resume=ResumePoint(peer_streams_seen=request.resume.peer_streams_seen + 1,
                                        received=request.resume.received)
        )
    elif tamper == "version":
        bad = dataclasses.replace(request, attach_version=request.attach_version + 1)
    else:
        bad = dataclasses.replace(request, client_nonce=bytes(32))
    raw = inject(net, request_record(bad))
    assert reject_of(raw).code == RejectCode.BAD_PROOF
    assert Snapshot.of(s) == before
    traffic.flows()


def test_replayed_committed_requests_are_stale() -> None:
    net, wire = established(seed=3)
    traffic = Traffic(net)
    captured = []
    for _ in range(2):
        traffic.write()
        net.pump()
        net.cut(wire)
        wire = net.connect()
        net.pump()
        captured.append(captured_request(wire))
    s = net.server_session()
    assert s.attach_version == 2
    before = Snapshot.of(s)
    for request in captured:  # the older one and the current attachment's own request
        raw = inject(net, request_record(request))
        assert reject_of(raw).code == RejectCode.STALE_VERSION
        assert Snapshot.of(s) == before
    traffic.flows()
    assert net.client.session.attach_version == 2
    assert len(net.events_of("client", Reattached)) == 2


def test_stale_version_refused_even_with_valid_proof() -> None:
    net, wire = established(seed=4)
    net.cut(wire)
    net.connect()
    net.pump()
    c = net.client.session
    s = net.server_session()
    assert s.attach_version == 1
    traffic = Traffic(net)
    before = Snapshot.of(s)
    for version in (0, 1):
        _, request = handshake.start_attach(
            session_id=c.id, version=version, resume_key=c.resume_key,
            resume=c.resume_point(), rng=random.Random(version).randbytes,
        )
        raw = inject(net, request_record(request))
        assert reject_of(raw).code == RejectCode.STALE_VERSION
    assert Snapshot.of(s) == before
    traffic.flows()


def test_unknown_session_id_refused() -> None:
    net, _ = established(seed=5)
    traffic = Traffic(net)
    s = net.server_session()
    before = Snapshot.of(s)
    _, request = handshake.start_attach(
        session_id=bytes(16), version=1, resume_key=bytes(32),
        resume=ResumePoint(peer_streams_seen=0, received=()), rng=random.Random(5).randbytes,
    )
    raw = inject(net, request_record(request))
    assert reject_of(raw).code == RejectCode.UNKNOWN_SESSION
    assert list(net.server.sessions) == [s.id]
    assert Snapshot.of(s) == before
    traffic.flows()


def test_replay_of_never_delivered_request_after_client_moved_on_is_stale() -> None:
    net, wire1 = established(seed=6)
    traffic = Traffic(net)
    traffic.flows()
    lost = net.connect()
    lost.blackholed = True
    net.pump()
    request = captured_request(lost)
    wire3 = net.connect()  # supersedes the lost attempt
    net.pump()
    assert wire1.closed and lost.closed and not wire3.closed
    s = net.server_session()
    assert s.attach_version > request.attach_version
    before = Snapshot.of(s)
    raw = inject(net, request_record(request))
    assert reject_of(raw).code == RejectCode.STALE_VERSION
    assert Snapshot.of(s) == before
    assert s.active is not None and s.active.id == wire3.server_link
    traffic.flows()


def _replay_never_delivered(net: Net, wire1: Wire, traffic: Traffic, request: AttachRequest
                            ) -> None:
    c = net.client.session
    s = net.server_session()
    assert request.attach_version > s.attach_version
    raw = inject(net, request_record(request))
    assert not raw.captured_to_client.startswith(bytes([RecordType.REJECT]))  # it verifies
    assert not net.events_of("server", SessionLost), "a replayed request ended the session"
    assert net.server.sessions.get(c.id) is s
    # While the replayed attachment is pending, the real client keeps writing.
    traffic.write(500)
    net.pump()
    start = net.now
    while net.now - start < net.config.dead_timeout + STEP and s.pending is not None:
        net.advance(STEP)
    assert s.pending is None  # the pending attachment timed out
    assert not net.events_of("server", SessionLost)
    assert net.server.sessions.get(c.id) is s
    assert s.state is SessionState.ESTABLISHED
    assert s.active is not None and s.active.id == wire1.server_link
    assert c.state is SessionState.ESTABLISHED
    assert c.active is not None and c.active.id == wire1.client_link
    assert not wire1.closed
    assert not net.events_of("client", Disconnected)
    net.pump()
    traffic.check()  # including what the server sent into the void meanwhile
    traffic.flows()
    net.advance(1.0)
    assert c.buffered == 0 and s.buffered == 0


def test_replay_of_never_delivered_request_cannot_tear_down_current_attachment() -> None:
    net, wire1 = established(seed=7)
    traffic = Traffic(net)
    traffic.flows()
    _, request = never_delivered_request(net)
    _replay_never_delivered(net, wire1, traffic, request)


def test_replay_of_never_delivered_request_after_more_traffic() -> None:
    """As above, but the session moved on after the capture: the server sent more, and the
    client acknowledged it. The replayed request's resume point is now stale; the server
    must not conclude that the client lost data (and kill the session)."""
    net, wire1 = established(seed=8)
    traffic = Traffic(net)
    traffic.flows()
    _, request = never_delivered_request(net)
    traffic.flows()  # acknowledged by both sides after the capture
    net.advance(0.2)
    _replay_never_delivered(net, wire1, traffic, request)


# --- malformed input --------------------------------------------------------------------------


def _hello_record() -> bytes:
    _, hello = handshake.start_hello(random.Random(10).randbytes)
    return encode_record(RecordType.CLIENT_HELLO, hello.encode())


GARBAGE = {
    "attach_header_garbage_body": record_header(RecordType.ATTACH_REQUEST, 200) + b"\xaa" * 200,
    "hello_header_garbage_body": record_header(RecordType.CLIENT_HELLO, 69) + b"\x00" * 69,
    "hello_then_garbage": _hello_record() + record_header(RecordType.SEALED, 40) + b"\x11" * 40,
    "unknown_record_type": bytes([0x42, 0, 0, 4]) + b"abcd",
    "oversize_length": bytes([RecordType.SEALED, 0xFF, 0xFF, 0xFF]),
    "sealed_on_new_link": encode_record(RecordType.SEALED, b"\x00" * 40),
    "server_record_from_client": encode_record(RecordType.REJECT, Reject(code=1, reason="x")
                                               .encode()),
    "truncated_attach": encode_record(RecordType.ATTACH_REQUEST, b"CNTN\x01" + b"\x00" * 10),
}


@pytest.mark.parametrize("name", list(GARBAGE))
def test_garbage_on_a_new_link_ends_that_link_only(name: str) -> None:
    net, _ = established(seed=11)
    traffic = Traffic(net)
    s = net.server_session()
    before = Snapshot.of(s)
    failed_before = len(net.events_of("server", LinkFailed))
    raw = inject(net, GARBAGE[name])
    assert raw.closed
    failures = net.events_of("server", LinkFailed)[failed_before:]
    assert len(failures) == 1
    (failure,) = failures
    assert isinstance(failure, LinkFailed)
    assert failure.link == raw.server_link and failure.session_id is None
    assert isinstance(failure.error, ProtocolError | AuthenticationError)
    assert not any(rtype is RecordType.REJECT for rtype, _ in
                   records(bytes(raw.captured_to_client)))
    assert list(net.server.sessions) == [s.id]
    assert Snapshot.of(s) == before
    traffic.flows()


def test_unsupported_version_attach_is_version_error() -> None:
    net, wire = established(seed=12)
    net.cut(wire)
    wire = net.connect()
    net.pump()
    request = captured_request(wire)
    body = bytearray(request.encode())
    body[4] = 2  # protocol version
    raw = inject(net, encode_record(RecordType.ATTACH_REQUEST, bytes(body)))
    assert raw.closed
    failure = net.events_of("server", LinkFailed)[-1]
    assert isinstance(failure, LinkFailed) and isinstance(failure.error, VersionError)


@pytest.mark.parametrize("direction", ["to_server", "to_client"])
@pytest.mark.parametrize("kind", ["bad_tag", "oversize"])
def test_garbage_on_established_link_ends_that_link_only(direction: str, kind: str) -> None:
    net, wire = established(seed=13)
    net.chunking = True
    traffic = Traffic(net)
    traffic.flows()
    c = net.client.session
    s = net.server_session()
    traffic.write(50_000)  # queued, and partly in flight when the garbage lands
    net.step()
    garbage = (
        encode_record(RecordType.SEALED, random.Random(13).randbytes(100))
        if kind == "bad_tag" else bytes([RecordType.SEALED, 0xFF, 0xFF, 0xFF])
    )
    getattr(wire, direction).extend(garbage)
    net.pump()
    victim = "server" if direction == "to_server" else "client"
    failures = net.events_of(victim, LinkFailed)
    assert len(failures) == 1
    (failure,) = failures
    assert isinstance(failure, LinkFailed)
    expected = AuthenticationError if kind == "bad_tag" else FrameError
    assert isinstance(failure.error, expected)
    assert failure.session_id == c.id
    assert wire.closed
    assert not net.events_of("client", SessionLost) and not net.events_of("server", SessionLost)
    assert c.state is SessionState.DISCONNECTED
    assert s.state is SessionState.DISCONNECTED
    net.connect()
    net.pump()
    traffic.check()
    traffic.flows()


def test_captured_hello_replay_creates_no_session() -> None:
    net, wire = established(seed=14)
    hello_type, hello_body = records(bytes(wire.captured_to_server))[0]
    assert hello_type is RecordType.CLIENT_HELLO
    ClientHello.decode(hello_body)
    s = net.server_session()
    raw = inject(net, encode_record(hello_type, hello_body))
    (answer_type, _), = records(bytes(raw.captured_to_client))
    assert answer_type is RecordType.SERVER_HELLO
    assert list(net.server.sessions) == [s.id]  # half-open: no session state yet
    assert not raw.closed
    net.advance(net.config.handshake_timeout + 0.5)
    assert raw.closed
    assert list(net.server.sessions) == [s.id]
    assert len(net.events_of("server", SessionEstablished)) == 1
    assert s.state is SessionState.ESTABLISHED


def test_pending_handshake_limit() -> None:
    config = SessionConfig(max_pending_handshakes=2)
    net, _ = established(seed=15, config=config)
    raws = [net.raw_wire() for _ in range(3)]
    net.pump()
    assert [r.closed for r in raws] == [False, False, True]
    traffic = Traffic(net)
    traffic.flows()


# --- host key pinning -------------------------------------------------------------------------


def test_host_key_mismatch_loses_the_session() -> None:
    seen: list[bytes] = []

    def verify(key: bytes) -> None:
        seen.append(key)
        raise HostKeyMismatchError("server.example", "SHA256:pinned", "SHA256:other",
                                   "/tmp/known_hosts")

    net = Net(seed=16, verify_host_key=verify)
    wire = net.connect()
    net.pump()
    c = net.client.session
    assert seen == [net.server.host_public]
    assert c.state is SessionState.LOST
    (lost,) = net.events_of("client", SessionLost)
    assert isinstance(lost, SessionLost)
    failures = net.events_of("client", LinkFailed)
    assert len(failures) == 1 and isinstance(failures[0].error, HostKeyMismatchError)
    assert not net.events_of("client", SessionEstablished)
    assert wire.closed
    net.advance(1.0)
    assert net.server.sessions == {}
    assert not net.events_of("server", SessionEstablished)
    with pytest.raises(StreamStateError):
        c.open_stream()
    with pytest.raises(StreamStateError):
        net.client.new_link(net.now)
    assert net.received == {}


def test_host_key_verified_on_every_new_session_only() -> None:
    seen: list[bytes] = []
    net = Net(seed=17, verify_host_key=seen.append)
    wire = net.connect()
    net.pump()
    assert seen == [net.server.host_public]
    (est,) = net.events_of("client", SessionEstablished)
    assert isinstance(est, SessionEstablished) and est.host_key == net.server.host_public
    net.cut(wire)
    net.connect()
    net.pump()
    assert net.client.session.state is SessionState.ESTABLISHED
    assert seen == [net.server.host_public]  # a re-attach is proved by the resume key

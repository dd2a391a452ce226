"""Bugs found once, pinned down."""

from __future__ import annotations

from sansio import Net


def test_final_ack_is_sent_even_when_the_stream_is_forgotten_at_once() -> None:
    """Both halves finished: the receiver forgot the stream on the FIN and used to drop the
    last ack, so the sender kept the bytes in its replay buffer forever."""
    net = Net(11)
    net.connect()
    net.pump()
    client = net.client.session
    sid = client.open_stream()
    client.send(sid, b"q" * 1000)
    net.pump()
    server = net.server_session()
    server.send(sid, b"r" * 500, end_stream=True)
    net.pump()  # the server's half is done and acknowledged
    client.send(sid, b"s" * 70_000, end_stream=True)
    net.pump()
    assert bytes(net.received[("server", sid)]) == b"q" * 1000 + b"s" * 70_000
    assert client.buffered == 0
    assert client.unacknowledged(sid) == 0
    assert sid not in client.streams and sid not in server.streams


def test_forged_refusals_cannot_kill_a_session_but_a_signed_one_ends_it() -> None:
    from continuations.protocol import AttachRejected, SessionLost, SessionState
    from continuations.protocol.states import RecordType
    from continuations.protocol.wire import Reject, RejectCode, encode_record

    net = Net(12)
    wire = net.connect()
    net.pump()
    net.cut(wire)
    forged = encode_record(
        RecordType.REJECT, Reject(code=RejectCode.UNKNOWN_SESSION, reason="go away").encode()
    )
    for _ in range(10):  # an on-path attacker answers every attempt
        link = net.client.new_link(net.now)
        net.client.receive_data(link, forged, net.now)
        net.pump()
    assert net.client.session.state is SessionState.DISCONNECTED
    rejected = net.events_of("client", AttachRejected)
    assert len(rejected) == 10 and not any(e.authentic for e in rejected)

    net.server.suspend_session(net.client.session.id)
    net.server.parked.clear()  # ...and the snapshot was lost: the server really forgot it
    assert not net.server.sessions
    net.connect()
    net.pump()
    last = net.events_of("client", AttachRejected)[-1]
    assert last.authentic and last.code == RejectCode.UNKNOWN_SESSION
    assert net.client.session.state is SessionState.LOST
    assert net.events_of("client", SessionLost)


def test_a_captured_unconfirmed_request_works_only_once() -> None:
    from continuations.protocol.states import RecordType
    from continuations.protocol.wire import RecordDecoder, Reject, RejectCode

    net = Net(13)
    net.connect()
    net.pump()
    attempt = net.connect()
    attempt.blackholed = True  # the request never reaches the server...
    net.pump()
    stolen = bytes(attempt.to_server)  # ...but the attacker has it
    net.cut(attempt)
    for round_ in range(2):
        raw = net.raw_wire()
        net.server.receive_data(raw.server_link, stolen, net.now)
        reply = b"".join(tx.data for tx in net.server.transmit(net.now)
                         if tx.link == raw.server_link)
        decoder = RecordDecoder()
        decoder.feed(reply)
        record = decoder.next_record()
        assert record is not None
        if round_ == 0:
            assert record[0] is RecordType.ATTACH_ACCEPT  # answered, never confirmed
            net.cut(raw)
            net.advance(3.0)
        else:
            assert record[0] is RecordType.REJECT
            assert Reject.decode(record[2]).code == RejectCode.STALE_VERSION


def test_a_server_that_parked_the_session_says_retry_not_gone() -> None:
    from continuations.protocol import AttachRejected, SessionState
    from continuations.protocol.wire import RejectCode

    net = Net(14)
    net.connect()
    net.pump()
    snap = net.server.suspend_session(net.client.session.id)  # suspended to disk
    net.pump()
    for _ in range(3):
        net.connect()
        net.pump()
    last = net.events_of("client", AttachRejected)[-1]
    assert last.code == RejectCode.SUSPENDED and last.authentic
    assert net.client.session.state is SessionState.DISCONNECTED  # still waiting, not lost
    net.server.restore_session(snap, net.now)
    net.connect()
    net.pump()
    assert net.client.session.state is SessionState.ESTABLISHED


def test_keys_are_replaced_after_their_byte_limit() -> None:
    from continuations.protocol import RekeyDue, SessionConfig

    net = Net(15, SessionConfig(rekey_after_bytes=1 << 20))
    first = net.connect()
    net.pump()
    client = net.client.session
    sid = client.open_stream()
    client.send(sid, b"k" * 600_000)
    net.pump()
    assert not net.events_of("client", RekeyDue)
    client.send(sid, b"k" * 600_000)
    net.pump()
    (due,) = net.events_of("client", RekeyDue)
    assert due.link == first.client_link
    client.send(sid, b"m" * 300_000)
    net.connect()  # what the asyncio client does on RekeyDue: make-before-break
    net.pump()
    assert client.attach_version == 1 and first.closed
    assert bytes(net.received[("server", sid)]) == b"k" * 1_200_000 + b"m" * 300_000


def test_keys_are_replaced_after_their_age_limit() -> None:
    from continuations.protocol import RekeyDue, SessionConfig

    net = Net(16, SessionConfig(rekey_after_seconds=30.0))
    net.connect()
    net.pump()
    net.advance(29.0, step=0.2)
    assert not net.events_of("client", RekeyDue)
    net.advance(2.0, step=0.2)
    assert len(net.events_of("client", RekeyDue)) == 1
    assert not net.events_of("server", RekeyDue)  # only the client can re-attach


def test_a_forgotten_hello_cannot_be_confirmed_later() -> None:
    """Found by the SPIN model: an evicted hello's link used to stay open, so a late
    confirm created a session the client had been told (signed) was unknown."""
    from continuations.protocol import SessionConfig, SessionState
    from continuations.protocol.handshake import start_hello
    from continuations.protocol.states import RecordType
    from continuations.protocol.wire import encode_record

    net = Net(17, SessionConfig(max_pending_handshakes=2))
    first = net.connect()
    net.step()  # the hello reaches the server
    net.step()  # its answer reaches the client, whose confirm is now queued...
    first.hold_to_server = True  # ...and delayed on the path
    net.pump()
    assert net.client.session.state is SessionState.ESTABLISHED  # it has the keys

    def stranger_hello() -> object:
        wire = net.raw_wire()
        _, hello = start_hello(net.rand.randbytes)
        net.server.receive_data(wire.server_link,
                                encode_record(RecordType.CLIENT_HELLO, hello.encode()), net.now)
        return wire

    net.cut(stranger_hello())  # remembered after its link is gone: still counts
    stranger_hello()  # one more: the oldest remembered hello (ours) is forgotten
    net.pump()
    first.hold_to_server = False
    net.pump()
    assert not net.server.sessions  # the late confirm created nothing

"""Suspend either end mid-transfer, resume it in a fresh endpoint: nothing lost or doubled."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from continuations.errors import SessionLostError
from continuations.protocol import ClientEndpoint, Reattached, ServerEndpoint, SessionState
from continuations.protocol.snapshot import SessionSnapshot
from sansio import Net


def started(seed: int) -> tuple[Net, int]:
    net = Net(seed)
    net.connect()
    net.pump()
    stream = net.client.session.open_stream()
    return net, stream


def test_client_suspended_and_resumed_in_a_new_endpoint_loses_nothing() -> None:
    net, sid = started(3)
    client = net.client.session
    up = bytes(range(256)) * 4000  # ~1 MB
    assert client.send(sid, up[:300_000]) == 300_000
    net.pump()
    server = net.server_session()
    down = bytes(reversed(range(256))) * 3000
    server.send(sid, down[:200_000])
    # Some of the client's bytes are in flight, unacknowledged, when it suspends.
    client.send(sid, up[300_000:600_000])
    net.client.transmit(net.now)
    snap = net.client.suspend()
    for wire in net.wires:
        net.cut(wire)
    encoded = snap.encode()
    assert snap.unacknowledged >= 300_000

    # "A new process": a fresh endpoint from the decoded snapshot.
    net.client = ClientEndpoint(
        config=net.config, rng=net.rand.randbytes, now=net.now,
        verify_host_key=lambda key: None, snapshot=SessionSnapshot.decode(encoded),
    )
    assert net.client.session.state is SessionState.DISCONNECTED
    assert net.client.session.id == snap.session_id
    net.client.session.send(sid, up[600_000:], end_stream=True)
    server.send(sid, down[200_000:], end_stream=True)
    net.connect()
    net.pump()
    assert net.client.session.state is SessionState.ESTABLISHED
    assert bytes(net.received[("server", sid)]) == up
    assert bytes(net.received[("client", sid)]) == down
    reattached = net.events_of("client", Reattached)
    assert reattached and reattached[-1].attach_version > snap.attach_version


def test_server_suspended_and_resumed_by_a_new_server_process() -> None:
    net, sid = started(4)
    host_key = Ed25519PrivateKey.from_private_bytes(bytes(32))
    client = net.client.session
    client.send(sid, b"a" * 100_000)
    net.pump()
    server_session = net.server_session()
    server_session.send(sid, b"b" * 50_000)
    net.server.transmit(net.now)  # in flight when the server goes away
    snap = net.server.suspend_session(server_session.id)
    for wire in net.wires:
        net.cut(wire)
    assert not net.server.sessions

    net.server = ServerEndpoint(
        config=net.config, rng=net.rand.randbytes, now=net.now, host_key=host_key
    )
    restored = net.server.restore_session(SessionSnapshot.decode(snap.encode()), net.now)
    assert restored.state is SessionState.DISCONNECTED
    client.send(sid, b"c" * 10_000, end_stream=True)
    net.connect()
    net.pump()
    restored.send(sid, b"d" * 10, end_stream=True)
    net.pump()
    assert bytes(net.received[("server", sid)]) == b"a" * 100_000 + b"c" * 10_000
    assert bytes(net.received[("client", sid)]) == b"b" * 50_000 + b"d" * 10


def test_damaged_snapshot_is_refused_clearly() -> None:
    net, sid = started(5)
    net.client.session.send(sid, b"x" * 1000)
    data = net.client.suspend().encode()
    with pytest.raises(SessionLostError, match="damaged"):
        SessionSnapshot.decode(data[:-10])
    with pytest.raises(SessionLostError, match="damaged"):
        SessionSnapshot.decode(b"{not json}\n")
    wrong_role = SessionSnapshot.decode(data)
    server = ServerEndpoint(config=net.config, rng=net.rand.randbytes, now=net.now,
                            host_key=Ed25519PrivateKey.generate())
    with pytest.raises(SessionLostError, match="cannot resume as server"):
        server.restore_session(wrong_role, net.now)

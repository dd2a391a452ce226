"""The sans-I/O core end to end over the in-memory harness (tests/sansio.py)."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from continuations.errors import StreamStateError
from continuations.protocol import (
    Disconnected,
    LinkFailed,
    Reattached,
    SessionClosed,
    SessionConfig,
    SessionEstablished,
    SessionLost,
    SessionState,
    StreamDataReceived,
    StreamOpened,
)
from sansio import Net, Wire

STEP = 0.05  # Net.advance's default step


def established(seed: int = 0, config: SessionConfig | None = None) -> tuple[Net, Wire]:
    net = Net(seed=seed, config=config)
    wire = net.connect()
    net.pump()
    assert net.client.session.state is SessionState.ESTABLISHED
    return net, wire


def payload(rng: random.Random, n: int) -> bytes:
    return rng.randbytes(n)


def got(net: Net, side: str, sid: int) -> bytes:
    return bytes(net.received.get((side, sid), b""))


def send_all(net: Net, side: str, sid: int, data: bytes, end: bool = False) -> None:
    session = net.client.session if side == "client" else net.server_session()
    assert session.send(sid, data, end_stream=end) == len(data)


def reattached(net: Net, side: str) -> list[Reattached]:
    return net.events_of(side, Reattached)  # type: ignore[return-value]


# --- handshake and data ----------------------------------------------------------------------


def test_handshake_establishes_both_sides() -> None:
    net, wire = established()
    c = net.client.session
    (ce,) = net.events_of("client", SessionEstablished)
    (se,) = net.events_of("server", SessionEstablished)
    assert isinstance(ce, SessionEstablished) and isinstance(se, SessionEstablished)
    assert ce.session_id == se.session_id == c.id
    assert len(c.id) == 16
    assert ce.host_key == se.host_key == net.server.host_public
    assert ce.link == wire.client_link and se.link == wire.server_link
    s = net.server_session()
    assert s.id == c.id and s.state is SessionState.ESTABLISHED
    assert c.attach_version == s.attach_version == 0
    assert c.rtt.srtt is not None and s.rtt.srtt is not None
    assert not net.events_of("client", LinkFailed) and not net.events_of("server", LinkFailed)


def test_server_creates_no_session_before_the_client_confirms() -> None:
    net = Net(seed=3)
    wire = net.connect()
    wire.hold_to_client = True  # the server hello is held: no confirm can come
    net.pump()
    assert net.server.sessions == {}
    wire.hold_to_client = False
    net.pump()
    assert len(net.server.sessions) == 1


def test_data_on_several_streams_both_directions() -> None:
    net, _ = established(seed=1)
    net.chunking = True
    rng = random.Random(1)
    c = net.client.session
    s = net.server_session()
    c_sids = [c.open_stream() for _ in range(3)]
    s_sids = [s.open_stream() for _ in range(2)]
    assert c_sids == [0, 2, 4] and s_sids == [1, 3]
    sent: dict[tuple[str, int], bytes] = {}
    for sid in c_sids:
        data = payload(rng, rng.choice([1, 1000, 70_000, 200_000]))
        send_all(net, "client", sid, data)
        sent[("server", sid)] = data
    for sid in s_sids:
        data = payload(rng, rng.choice([5, 65_000, 150_000]))
        send_all(net, "server", sid, data)
        sent[("client", sid)] = data
    net.pump()
    # Each side also writes on streams the other side opened.
    for sid in s_sids:
        data = payload(rng, 3000)
        send_all(net, "client", sid, data)
        sent[("server", sid)] = data
    for sid in c_sids:
        data = payload(rng, 4000)
        send_all(net, "server", sid, data)
        sent[("client", sid)] = data
    net.pump()
    for key, data in sent.items():
        assert got(net, *key) == data, key
    opened_at_server = [e.stream_id for e in net.events_of("server", StreamOpened)]
    opened_at_client = [e.stream_id for e in net.events_of("client", StreamOpened)]
    assert opened_at_server == c_sids
    assert opened_at_client == s_sids
    net.advance(0.5)
    assert c.buffered == 0 and s.buffered == 0


def test_higher_stream_implies_lower_ones_opened() -> None:
    net, _ = established(seed=2)
    c = net.client.session
    sids = [c.open_stream() for _ in range(3)]
    send_all(net, "client", sids[2], b"third first")
    net.pump()
    assert [e.stream_id for e in net.events_of("server", StreamOpened)] == sids
    send_all(net, "client", sids[0], b"then the first")
    net.pump()
    assert got(net, "server", 0) == b"then the first"
    assert got(net, "server", 4) == b"third first"


def test_large_transfer_beyond_initial_window() -> None:
    net, _ = established(seed=4)
    c = net.client.session
    sid = c.open_stream()
    data = payload(random.Random(4), 3 * 1024 * 1024 + 17)
    send_all(net, "client", sid, data, end=True)
    net.pump()
    assert got(net, "server", sid) == data
    assert ("server", sid) in net.ended


def test_end_of_stream_both_halves_and_forgetting() -> None:
    net, _ = established(seed=5)
    c = net.client.session
    s = net.server_session()
    sid = c.open_stream()
    send_all(net, "client", sid, b"request", end=True)
    net.pump()
    ends = [e for e in net.events_of("server", StreamDataReceived) if e.end_stream]
    assert len(ends) == 1 and ends[0].stream_id == sid
    assert got(net, "server", sid) == b"request"
    with pytest.raises(StreamStateError):
        c.send(sid, b"more")
    # The server's half is still open: it answers, then ends it.
    send_all(net, "server", sid, b"response")
    assert s.send(sid, b"", end_stream=True) == 0
    net.pump()
    net.advance(0.3)
    assert got(net, "client", sid) == b"response"
    assert ("client", sid) in net.ended
    with pytest.raises(StreamStateError):
        c.send(sid, b"x")
    # Ending delivered exactly once on each side.
    assert sum(1 for e in net.events_of("client", StreamDataReceived) if e.end_stream) == 1
    assert sum(1 for e in net.events_of("server", StreamDataReceived) if e.end_stream) == 1


@pytest.mark.parametrize("last", ["client", "server"])
def test_completed_stream_is_acknowledged_then_forgotten_by_both_sides(last: str) -> None:
    """The side whose receipt of the peer's FIN completes a stream must still acknowledge
    that FIN (and the data with it): otherwise the peer keeps the stream and its bytes in
    its replay buffer for as long as the attachment lasts."""
    net, _ = established(seed=21)
    c = net.client.session
    s = net.server_session()
    sid = c.open_stream()
    first, second = ("server", "client") if last == "client" else ("client", "server")
    # The stream must exist at the server before it can write on it.
    send_all(net, "client", sid, b"open")
    net.pump()
    send_all(net, first, sid, b"first half", end=True)
    net.pump()
    net.advance(0.3)
    send_all(net, second, sid, b"second half", end=True)
    net.pump()
    net.advance(1.0)
    assert (first, sid) in net.ended and (second, sid) in net.ended
    for name, sess in (("client", c), ("server", s)):
        assert sess.unacknowledged(sid) == 0, name
        assert sess.buffered == 0, name
        assert sid not in sess.streams, name


def test_send_unknown_stream_refused() -> None:
    net, _ = established()
    with pytest.raises(StreamStateError):
        net.client.session.send(7, b"x")


def test_idle_healthy_link_stays_up() -> None:
    net, wire = established(seed=6)
    net.advance(30.0)
    assert not net.events_of("client", Disconnected)
    assert not net.events_of("server", Disconnected)
    assert not net.events_of("client", LinkFailed)
    assert not wire.closed
    assert net.client.session.state is SessionState.ESTABLISHED


def test_an_idle_session_costs_one_ping_and_one_pong_per_interval() -> None:
    """The client keeps an idle link alive; the server only answers, unless the
    client's PINGs stop (then it pings, so its own dead-path detection holds)."""
    net, _ = established(seed=61)
    client_link = net.client.session.active
    server_link = net.server_session().active
    c0, s0 = client_link.ping_id, server_link.ping_id
    net.advance(10.0)
    interval = SessionConfig().keepalive_interval
    assert client_link.ping_id - c0 >= 10.0 / (interval + STEP) - 2
    assert server_link.ping_id - s0 <= 1  # at most the confirmation ping
    # A client that stops pinging (here: its keepalive pushed far out) is pinged.
    net.client.session.config = replace(SessionConfig(), keepalive_interval=1.9)
    s1 = server_link.ping_id
    net.advance(1.5)
    assert server_link.ping_id - s1 >= 2
    assert not net.events_of("server", Disconnected)


# --- cut, re-attach, exactly-once ------------------------------------------------------------


def test_cut_with_bytes_in_flight_replays_exactly_them() -> None:
    net, wire = established(seed=7)
    c = net.client.session
    s = net.server_session()
    sid_c = c.open_stream()
    sid_s = s.open_stream()
    send_all(net, "client", sid_c, b"a" * 1000)
    send_all(net, "server", sid_s, b"b" * 500)
    net.pump()
    net.advance(0.1)  # all acknowledged
    assert c.buffered == 0 and s.buffered == 0
    wire.blackholed = True
    send_all(net, "client", sid_c, b"c" * 3000)
    send_all(net, "server", sid_s, b"d" * 2000)
    net.pump()  # sent into the wire, never delivered
    net.cut(wire)
    net.pump()  # drains the events
    assert c.state is SessionState.DISCONNECTED and s.state is SessionState.DISCONNECTED
    assert len(net.events_of("client", Disconnected)) == 1
    assert len(net.events_of("server", Disconnected)) == 1
    net.advance(1.0)
    wire2 = net.connect()
    net.pump()
    (rc,) = reattached(net, "client")
    (rs,) = reattached(net, "server")
    assert rc.replayed == 3000 and rs.replayed == 2000
    assert rc.attach_version == rs.attach_version == 1
    assert rc.link == wire2.client_link and rs.link == wire2.server_link
    assert rc.offline == pytest.approx(1.0)
    assert rc.rtt is not None
    assert got(net, "server", sid_c) == b"a" * 1000 + b"c" * 3000
    assert got(net, "client", sid_s) == b"b" * 500 + b"d" * 2000
    assert c.state is SessionState.ESTABLISHED and s.state is SessionState.ESTABLISHED


def test_repeated_cuts_mid_transfer_exactly_once_in_order() -> None:
    net, wire = established(seed=8)
    net.chunking = True
    rng = random.Random(8)
    c = net.client.session
    s = net.server_session()
    c_sids = [c.open_stream(), c.open_stream()]
    s_sids = [s.open_stream(), s.open_stream()]
    expect: dict[tuple[str, int], bytearray] = {}
    versions_c: list[int] = []
    for round_no in range(6):
        for sid in c_sids + s_sids:
            side = "client" if sid in c_sids else "server"
            other = "server" if side == "client" else "client"
            data = payload(rng, rng.randrange(1, 400_000))
            sess = c if side == "client" else s
            taken = sess.send(sid, data)
            expect.setdefault((other, sid), bytearray()).extend(data[:taken])
        for _ in range(rng.randrange(0, 4)):
            net.step()
        if round_no % 2:
            wire.blackholed = True
            net.step()
        net.cut(wire)
        net.advance(rng.choice([0.0, 0.3, 2.5]))
        wire = net.connect()
        net.pump()
        versions_c = [e.attach_version for e in reattached(net, "client")]
        assert versions_c == list(range(1, round_no + 2))
        for key, data in expect.items():
            assert got(net, *key) == bytes(data), (round_no, key)
    assert [e.attach_version for e in reattached(net, "server")] == versions_c
    assert c.attach_version == s.attach_version == 6
    net.advance(0.5)
    assert c.buffered == 0 and s.buffered == 0


def test_cut_before_confirm_then_reattach() -> None:
    """The server accepted a re-attach, the confirm never came: the next one still works."""
    net, wire = established(seed=9)
    c = net.client.session
    sid = c.open_stream()
    send_all(net, "client", sid, b"x" * 100)
    net.pump()
    net.cut(wire)
    wire2 = net.connect()
    wire2.hold_to_server = True
    net.step()  # the request goes out
    wire2.hold_to_server = False
    wire2.hold_to_client = True
    net.pump()  # the server answers; the answer is held
    assert net.server_session().state is SessionState.MIGRATING
    net.cut(wire2)
    assert net.server_session().state is SessionState.DISCONNECTED
    send_all(net, "client", sid, b"y" * 100)
    server_sid = net.server_session().open_stream()
    send_all(net, "server", server_sid, b"z" * 50)
    net.connect()
    net.pump()
    assert got(net, "server", sid) == b"x" * 100 + b"y" * 100
    assert got(net, "client", server_sid) == b"z" * 50
    assert c.attach_version == net.server_session().attach_version == 2


# --- make-before-break -----------------------------------------------------------------------


def test_make_before_break_switch_without_loss() -> None:
    net, wire1 = established(seed=10)
    c = net.client.session
    s = net.server_session()
    sid = c.open_stream()
    ssid = s.open_stream()
    send_all(net, "client", sid, b"before" * 1000)
    send_all(net, "server", ssid, b"BEFORE" * 1000)
    net.step()
    wire2 = net.connect()  # the old wire is alive
    assert c.state is SessionState.MIGRATING
    send_all(net, "client", sid, b"during" * 1000)
    send_all(net, "server", ssid, b"DURING" * 1000)
    net.pump()
    assert wire1.closed and not wire2.closed
    (rc,) = reattached(net, "client")
    (rs,) = reattached(net, "server")
    assert rc.link == wire2.client_link and rs.link == wire2.server_link
    assert rc.attach_version == rs.attach_version == 1
    assert rc.offline == 0.0
    assert not net.events_of("client", Disconnected)
    assert not net.events_of("server", Disconnected)
    send_all(net, "client", sid, b"after" * 1000)
    send_all(net, "server", ssid, b"AFTER" * 1000)
    net.pump()
    assert got(net, "server", sid) == b"before" * 1000 + b"during" * 1000 + b"after" * 1000
    assert got(net, "client", ssid) == b"BEFORE" * 1000 + b"DURING" * 1000 + b"AFTER" * 1000
    assert c.state is SessionState.ESTABLISHED and s.state is SessionState.ESTABLISHED
    net.advance(0.5)
    assert c.buffered == 0 and s.buffered == 0


def test_make_before_break_server_data_acked_on_old_path_while_request_in_flight() -> None:
    """The old path keeps working while the request travels a slow new path.

    The client builds its request (stating what it has received), then receives
    and acknowledges more on the old link; the request reaches the server after
    that ack. The request's statement is merely older than the ack, not a sign
    of lost data: the session must survive and nothing may be lost.
    """
    net, _ = established(seed=11)
    c = net.client.session
    s = net.server_session()
    sid = c.open_stream()
    send_all(net, "client", sid, b"hello")
    net.pump()
    send_all(net, "server", sid, b"world")
    net.pump()
    wire2 = net.connect()
    wire2.hold_to_server = True  # the new path is slow
    send_all(net, "server", sid, b"D" * 100)
    net.pump()  # delivered and acknowledged on the old path
    assert got(net, "client", sid) == b"world" + b"D" * 100
    wire2.hold_to_server = False
    net.pump()
    net.advance(0.5)
    assert not net.events_of("server", SessionLost)
    assert s.state is SessionState.ESTABLISHED
    assert c.state is SessionState.ESTABLISHED
    send_all(net, "server", sid, b"after")
    send_all(net, "client", sid, b"after")
    net.pump()
    assert got(net, "client", sid) == b"world" + b"D" * 100 + b"after"
    assert got(net, "server", sid) == b"hello" + b"after"


def test_make_before_break_client_data_acked_on_old_path_while_accept_in_flight() -> None:
    """Mirror image: the server's accept states an older position than it later acked."""
    net, _ = established(seed=12)
    c = net.client.session
    s = net.server_session()
    sid = c.open_stream()
    send_all(net, "client", sid, b"hello")
    net.pump()
    wire2 = net.connect()
    wire2.hold_to_client = True  # the accept travels slowly
    net.pump()
    assert s.state is SessionState.MIGRATING
    send_all(net, "client", sid, b"E" * 100)
    net.pump()  # goes on the old link, acknowledged there
    assert got(net, "server", sid) == b"hello" + b"E" * 100
    wire2.hold_to_client = False
    net.pump()
    net.advance(0.5)
    assert not net.events_of("client", SessionLost)
    assert c.state is SessionState.ESTABLISHED
    assert s.state is SessionState.ESTABLISHED
    send_all(net, "client", sid, b"after")
    net.pump()
    assert got(net, "server", sid) == b"hello" + b"E" * 100 + b"after"


def test_make_before_break_ack_lost_on_old_path_is_restated() -> None:
    """Data the server received on the old link after answering, whose ack died with that
    link, must still be acknowledged on the new one (else it sits in the client's replay
    buffer forever, eating its send capacity)."""
    net, wire1 = established(seed=13)
    c = net.client.session
    sid = c.open_stream()
    send_all(net, "client", sid, b"hello")
    net.pump()
    wire2 = net.connect()
    wire2.hold_to_client = True
    net.pump()  # the server has answered; the accept is held
    wire1.hold_to_client = True  # and so is everything on the old path from now on
    send_all(net, "client", sid, b"F" * 100)
    net.pump()  # reaches the server on the old link; its ack is held
    wire2.hold_to_client = False
    net.pump()  # the client switches, closes the old link; the held ack is gone
    net.advance(2.0)
    assert got(net, "server", sid) == b"hello" + b"F" * 100
    assert c.unacknowledged(sid) == 0
    assert c.buffered == 0
    assert c.send_capacity == net.config.replay_buffer


# --- dead path detection ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "config",
    [
        SessionConfig(),
        SessionConfig(dead_timeout=5.0, min_dead_timeout=3.0, keepalive_interval=1.0),
    ],
    ids=["default", "slow"],
)
def test_blackholed_link_declared_dead_within_dead_timeout(config: SessionConfig) -> None:
    net, wire = established(seed=14, config=config)
    c = net.client.session
    net.advance(1.0)  # some keepalives: RTT samples
    assert c.rtt.srtt is not None and c.rtt.samples >= 2
    wire.blackholed = True
    start = net.now
    # The bound each side applies: clamp(keepalive + 3 RTO) within [min, dead_timeout].
    bound = {
        "client": config.dead_after(c.rtt.rto),
        "server": config.dead_after(net.server_session().rtt.rto),
    }
    dead_at: dict[str, float] = {}
    while len(dead_at) < 2 and net.now - start < 3 * config.dead_timeout:
        net.advance(STEP)
        for side in ("client", "server"):
            if side not in dead_at and net.events_of(side, Disconnected):
                dead_at[side] = net.now - start
    assert set(dead_at) == {"client", "server"}
    for side, took in dead_at.items():
        assert took <= config.dead_timeout + STEP, (side, took)
        # Something authenticated arrived at most one keepalive (+ a step) before `start`.
        assert bound[side] - config.keepalive_interval - STEP <= took <= bound[side] + STEP, (
            side, took, bound[side],
        )
    assert c.state is SessionState.DISCONNECTED
    assert net.server_session().state is SessionState.DISCONNECTED
    (failed,) = net.events_of("client", LinkFailed)
    assert failed.link == wire.client_link
    # Re-attach afterwards: an RTT estimate is reported.
    net.connect()
    net.pump()
    (rc,) = reattached(net, "client")
    assert rc.rtt is not None and rc.rtt >= 0


def test_dead_link_keeps_session_and_data() -> None:
    net, wire = established(seed=15)
    c = net.client.session
    sid = c.open_stream()
    wire.blackholed = True
    send_all(net, "client", sid, b"queued while dead")
    net.advance(net.config.dead_timeout + 0.5)
    assert c.state is SessionState.DISCONNECTED
    net.connect()
    net.pump()
    assert got(net, "server", sid) == b"queued while dead"


# --- linger ----------------------------------------------------------------------------------


def test_server_forgets_session_after_linger() -> None:
    config = SessionConfig(linger=5.0)
    net, wire = established(seed=16, config=config)
    sid = net.server_session().id
    net.cut(wire)
    cut_at = net.now
    net.advance(4.8)
    assert sid in net.server.sessions
    assert net.server.sessions[sid].state is SessionState.DISCONNECTED
    assert not net.events_of("server", SessionLost)
    net.advance(0.4)
    (lost,) = net.events_of("server", SessionLost)
    assert isinstance(lost, SessionLost) and lost.session_id == sid
    assert net.server.sessions == {}
    assert net.now - cut_at >= config.linger
    net.advance(1.0)
    assert len(net.events_of("server", SessionLost)) == 1


def test_reattach_within_linger_keeps_session() -> None:
    config = SessionConfig(linger=5.0)
    net, wire = established(seed=17, config=config)
    c = net.client.session
    sid = c.open_stream()
    send_all(net, "client", sid, b"one")
    net.pump()
    net.cut(wire)
    net.advance(4.0)
    send_all(net, "client", sid, b"two")
    net.connect()
    net.pump()
    net.advance(3.0)  # past the first linger deadline: it no longer applies
    assert not net.events_of("server", SessionLost)
    assert got(net, "server", sid) == b"onetwo"


# --- orderly close ---------------------------------------------------------------------------


@pytest.mark.parametrize("closer", ["client", "server"])
def test_orderly_close(closer: str) -> None:
    net, wire = established(seed=18)
    c = net.client.session
    s = net.server_session()
    sid = c.open_stream()
    send_all(net, "client", sid, b"first")
    net.pump()
    send_all(net, "server", sid, b"reply" * 1000)
    net.pump()
    # The closer's data queued just before close() goes out before the close.
    send_all(net, closer, sid, b"last words" * 1000)
    (c if closer == "client" else s).close(7, "done")
    net.pump()
    tail = b"last words" * 1000
    assert got(net, "server", sid) == b"first" + (tail if closer == "client" else b"")
    assert got(net, "client", sid) == b"reply" * 1000 + (tail if closer == "server" else b"")
    other = "server" if closer == "client" else "client"
    (mine,) = net.events_of(closer, SessionClosed)
    (theirs,) = net.events_of(other, SessionClosed)
    assert isinstance(mine, SessionClosed) and isinstance(theirs, SessionClosed)
    assert not mine.by_peer and theirs.by_peer
    assert theirs.code == 7 and theirs.reason == "done"
    assert c.state is SessionState.CLOSED and s.state is SessionState.CLOSED
    assert net.server.sessions == {}
    assert wire.closed
    with pytest.raises(StreamStateError):
        c.send(sid, b"x")
    net.advance(5.0)
    assert not net.events_of("client", Disconnected) and not net.events_of("server", SessionLost)


# --- back-pressure ---------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["blackholed", "cut"])
def test_back_pressure_with_server_gone(how: str) -> None:
    config = SessionConfig(replay_buffer=64 * 1024)
    net, wire = established(seed=19, config=config)
    c = net.client.session
    sids = [c.open_stream(), c.open_stream()]
    if how == "cut":
        net.cut(wire)
    else:
        wire.blackholed = True
    rng = random.Random(19)
    accepted: dict[int, bytearray] = {sid: bytearray() for sid in sids}
    refused = 0
    for i in range(40):
        sid = sids[i % 2]
        data = payload(rng, rng.randrange(1, 9000))
        taken = c.send(sid, data)
        assert 0 <= taken <= len(data)
        accepted[sid] += data[:taken]
        if taken == 0:
            refused += 1
        assert c.buffered <= config.replay_buffer
        assert c.send_capacity == config.replay_buffer - c.buffered
        net.advance(0.1)
    total = sum(map(len, accepted.values()))
    assert total == config.replay_buffer
    assert c.buffered == config.replay_buffer
    assert refused > 0
    assert c.send(sids[0], b"more") == 0
    if how == "blackholed":
        assert c.state is SessionState.DISCONNECTED  # declared dead meanwhile
    net.connect()
    net.pump()
    net.advance(0.2)
    for sid in sids:
        assert got(net, "server", sid) == bytes(accepted[sid])
    assert c.buffered == 0
    assert c.send(sids[0], b"more") == 4


def test_back_pressure_partial_write_keeps_end_stream_pending() -> None:
    config = SessionConfig(replay_buffer=2048)
    net, wire = established(seed=20, config=config)
    c = net.client.session
    sid = c.open_stream()
    net.cut(wire)
    assert c.send(sid, b"x" * 3000, end_stream=True) == 2048  # the end is not recorded
    net.connect()
    net.pump()
    assert ("server", sid) not in net.ended
    assert c.send(sid, b"y" * 952, end_stream=True) == 952
    net.pump()
    assert got(net, "server", sid) == b"x" * 2048 + b"y" * 952
    assert ("server", sid) in net.ended


# --- a new session whose confirm was lost ----------------------------------------------------


def _established_without_confirm(seed: int) -> tuple[Net, Wire]:
    """The client holds the session's keys; the server never saw the client's confirm."""
    net = Net(seed=seed)
    wire = net.connect()
    while net.client.session.state is not SessionState.ESTABLISHED:
        assert net.step()
    wire.hold_to_server = True  # the confirm (and anything after it) is held
    net.pump()
    assert net.server.sessions == {}
    return net, wire


def test_lost_confirm_session_completed_by_reattach() -> None:
    net, wire = _established_without_confirm(seed=22)
    c = net.client.session
    sid = c.open_stream()
    send_all(net, "client", sid, b"written before the server knew")
    net.pump()
    net.cut(wire)
    net.connect()
    net.pump()
    s = net.server_session()
    assert s.id == c.id
    assert s.state is SessionState.ESTABLISHED and c.state is SessionState.ESTABLISHED
    assert got(net, "server", sid) == b"written before the server knew"
    ssid = s.open_stream()
    send_all(net, "server", ssid, b"and back")
    net.pump()
    assert got(net, "client", ssid) == b"and back"
    assert len(net.events_of("server", SessionEstablished)) == 1


@pytest.mark.parametrize("early_data", [False, True])
def test_late_confirm_after_reattach_does_not_replace_the_session(early_data: bool) -> None:
    """The confirm on the first link is only late, not lost: a make-before-break re-attach
    completes the session first, then the confirm arrives. The server must keep one session
    (not create a second with the same id) and never raise out of an input method."""
    net, wire1 = _established_without_confirm(seed=23)
    c = net.client.session
    sid = c.open_stream()
    early = b"early" if early_data else b""
    if early_data:
        send_all(net, "client", sid, early)
    wire2 = net.connect()
    wire2.hold_to_client = True  # the accept is slow
    net.pump()
    assert len(net.server.sessions) == 1
    first = net.server_session()
    wire1.hold_to_server = False  # the late confirm arrives
    net.pump()
    wire2.hold_to_client = False
    net.pump()
    net.advance(1.0)
    assert len(net.events_of("server", SessionEstablished)) == 1
    assert net.server.sessions.get(c.id) is first
    assert first.state is SessionState.ESTABLISHED
    assert c.state is SessionState.ESTABLISHED
    send_all(net, "client", sid, b"late")
    net.pump()
    assert got(net, "server", sid) == early + b"late"

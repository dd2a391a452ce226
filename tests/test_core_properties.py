"""Rule-based exploration of the core over the in-memory harness.

A client and a server write on several streams while the network is cut,
blackholed, healed, re-dialled, delayed, delivered in odd chunks, while an
attacker replays captured attach requests, and (SuspendingNetMachine) while
either end is suspended to a snapshot and resumed in a new endpoint. Whatever happens, each side has
received a prefix of what the other wrote on each stream (in order, no
duplicates), and once a fresh link is up everything written arrives exactly once.
"""

from __future__ import annotations

import random

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from continuations.protocol import ClientEndpoint, ServerEndpoint, SessionLost, SessionState
from continuations.protocol.session import Session
from continuations.protocol.snapshot import SessionSnapshot
from continuations.protocol.states import RecordType
from continuations.protocol.wire import RecordDecoder
from sansio import Net, Wire

# Derandomized so that every run explores the same sequences (a failure reproduces), and
# without the shrink phase so that a failing run stays short; to get a minimal failing
# sequence while debugging, add Phase.shrink (expect tens of seconds).
MACHINE_SETTINGS = settings(
    max_examples=100,
    stateful_step_count=30,
    deadline=None,
    database=None,
    derandomize=True,  # the same sequences on every run: a failure is reproducible
    phases=[Phase.explicit, Phase.generate],  # no shrinking: keeps a failing run short
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

SIZES = st.sampled_from([0, 1, 7, 300, 1500, 20_000, 70_000])


def first_record(data: bytes) -> tuple[RecordType, bytes] | None:
    dec = RecordDecoder()
    dec.feed(data)
    rec = dec.next_record()
    return None if rec is None else (rec[0], rec[2])


class NetMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.net: Net
        self.server: Session
        self.rng: random.Random
        self.written: dict[tuple[str, int], bytearray] = {}
        self.c_sids: list[int] = []
        self.s_sids: list[int] = []

    @initialize(seed=st.integers(min_value=0, max_value=2**16))
    def setup(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.net = Net(seed=seed)
        self.net.connect()
        self.net.pump()
        c = self.net.client.session
        assert c.state is SessionState.ESTABLISHED
        self.server = self.net.server_session()
        self.c_sids = [c.open_stream() for _ in range(2)]
        self.s_sids = [self.server.open_stream() for _ in range(2)]
        for sid in self.c_sids + self.s_sids:
            self.written[("client", sid)] = bytearray()
            self.written[("server", sid)] = bytearray()

    # --- helpers ------------------------------------------------------------------------------

    def _client_wires(self) -> list[Wire]:
        return [w for w in self.net.wires if not w.closed and w.client_link >= 0]

    def _write(self, side: str, session: Session, index: int, size: int) -> None:
        sids = self.c_sids + self.s_sids
        sid = sids[index % len(sids)]
        if sid not in session.streams:
            return  # a stream of the peer's that this side has not heard of yet
        data = self.rng.randbytes(size)
        taken = session.send(sid, data)
        assert 0 <= taken <= size
        self.written[(side, sid)] += data[:taken]

    def _alive(self) -> bool:
        return not self.net.client.session.finished

    # --- rules --------------------------------------------------------------------------------

    @precondition(lambda self: self._alive())
    @rule(index=st.integers(0, 3), size=SIZES)
    def client_writes(self, index: int, size: int) -> None:
        self._write("client", self.net.client.session, index, size)

    @precondition(lambda self: not self.server.finished)
    @rule(index=st.integers(0, 3), size=SIZES)
    def server_writes(self, index: int, size: int) -> None:
        self._write("server", self.server, index, size)

    @precondition(lambda self: bool(self._client_wires()))
    @rule(index=st.integers(0, 5))
    def cut(self, index: int) -> None:
        wires = self._client_wires()
        self.net.cut(wires[index % len(wires)])

    @precondition(lambda self: bool(self._client_wires()))
    @rule(index=st.integers(0, 5))
    def blackhole(self, index: int) -> None:
        wires = self._client_wires()
        wires[index % len(wires)].blackholed = True

    @precondition(lambda self: any(w.blackholed for w in self._client_wires()))
    @rule()
    def heal(self) -> None:
        for wire in self._client_wires():
            wire.blackholed = False

    @precondition(lambda self: self._alive())
    @rule()
    def reconnect(self) -> None:
        self.net.connect()

    @rule(seconds=st.sampled_from([0.01, 0.05, 0.2, 0.5, 1.0, 2.5]))
    def advance(self, seconds: float) -> None:
        self.net.advance(seconds)

    @rule(chunking=st.booleans())
    def pump(self, chunking: bool) -> None:
        self.net.chunking = chunking
        self.net.pump()

    @rule()
    def step(self) -> None:
        """One round only: what is queued moves once, answers stay queued."""
        self.net.step()

    @rule(index=st.integers(0, 20), deliver=st.booleans())
    def replay_attach_request(self, index: int, deliver: bool) -> None:
        requests = []
        for wire in self.net.wires:
            rec = first_record(bytes(wire.captured_to_server))
            if rec is not None and rec[0] is RecordType.ATTACH_REQUEST:
                requests.append(bytes(wire.captured_to_server[: 4 + len(rec[1])]))
        if not requests:
            return
        raw = self.net.raw_wire()
        raw.to_server += requests[index % len(requests)]
        if deliver:
            self.net.pump()

    # --- invariants ---------------------------------------------------------------------------

    @invariant()
    def received_is_prefix_of_written(self) -> None:
        for (side, sid), data in self.written.items():
            other = "server" if side == "client" else "client"
            got = bytes(self.net.received.get((other, sid), b""))
            assert data.startswith(got), (side, sid, len(got), len(data))

    @invariant()
    def session_survives(self) -> None:
        assert not self.net.events_of("client", SessionLost)
        assert not self.net.events_of("server", SessionLost)
        assert self.net.server.sessions.get(self.server.id) is self.server
        cap = self.net.config.replay_buffer
        assert 0 <= self.net.client.session.buffered <= cap
        assert 0 <= self.server.buffered <= cap

    def teardown(self) -> None:
        net = getattr(self, "net", None)
        if net is None or net.client.session.finished or self.server.finished:
            return  # already reported by an invariant
        net.chunking = False
        for wire in list(net.wires):
            net.cut(wire)
        net.pump()
        net.connect()
        net.pump()
        net.advance(1.0)
        assert net.client.session.state is SessionState.ESTABLISHED
        assert self.server.state is SessionState.ESTABLISHED
        for (side, sid), data in self.written.items():
            other = "server" if side == "client" else "client"
            assert bytes(net.received.get((other, sid), b"")) == bytes(data), (side, sid)
        assert net.client.session.buffered == 0 and self.server.buffered == 0


NetMachine.TestCase.settings = MACHINE_SETTINGS
TestNetMachine = NetMachine.TestCase


class AsymmetricNetMachine(NetMachine):
    """The same, plus one-way delays: a path may hold bytes in one direction only (as a
    slow or asymmetric route does) while the other direction, and other paths, move."""

    @precondition(lambda self: bool(self._client_wires()))
    @rule(index=st.integers(0, 5), to_server=st.booleans())
    def hold_one_way(self, index: int, to_server: bool) -> None:
        wires = self._client_wires()
        wire = wires[index % len(wires)]
        if to_server:
            wire.hold_to_server = True
        else:
            wire.hold_to_client = True

    @precondition(lambda self: any(w.hold_to_server or w.hold_to_client for w in self.net.wires))
    @rule()
    def release_holds(self) -> None:
        for wire in self.net.wires:
            wire.hold_to_server = wire.hold_to_client = False


AsymmetricNetMachine.TestCase.settings = MACHINE_SETTINGS
TestAsymmetricNetMachine = AsymmetricNetMachine.TestCase


class SuspendingNetMachine(NetMachine):
    """The same, plus either end suspended to a snapshot and resumed in a new endpoint (a
    new process): the model's suspend and resume actions, on the real core."""

    @precondition(lambda self: self._alive()
                  and self.net.client.session.state is not SessionState.CONNECTING)
    @rule()
    def suspend_and_resume_client(self) -> None:
        snapshot = self.net.client.suspend()
        for wire in list(self.net.wires):
            self.net.cut(wire)
        self.net.client = ClientEndpoint(
            config=self.net.config, rng=self.net.rand.randbytes, now=self.net.now,
            verify_host_key=lambda key: None,
            snapshot=SessionSnapshot.decode(snapshot.encode()),
        )

    @precondition(lambda self: not self.server.finished)
    @rule()
    def suspend_and_resume_server(self) -> None:
        snapshot = self.net.server.suspend_session(self.server.id)
        for wire in list(self.net.wires):
            self.net.cut(wire)
        self.net.server = ServerEndpoint(
            config=self.net.config, rng=self.net.rand.randbytes, now=self.net.now,
            host_key=Ed25519PrivateKey.from_private_bytes(self.net.rand.randbytes(32)),
        )
        self.server = self.net.server.restore_session(
            SessionSnapshot.decode(snapshot.encode()), self.net.now
        )


SuspendingNetMachine.TestCase.settings = MACHINE_SETTINGS
TestSuspendingNetMachine = SuspendingNetMachine.TestCase

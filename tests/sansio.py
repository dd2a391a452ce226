"""A client and a server core wired through in-memory links, with a virtual clock.

Each wire is an ordered byte pipe per direction, like a TCP connection. The
harness can cut a wire (both ends see it close, bytes in flight are lost),
blackhole it (bytes stop moving, nobody is told), deliver in odd chunk sizes,
and advance time. Nothing here reads the real clock or the OS's randomness.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from continuations.protocol import (
    ClientEndpoint,
    Event,
    ServerEndpoint,
    SessionConfig,
    StreamDataReceived,
)


@dataclass
class Wire:
    client_link: int
    server_link: int
    to_server: bytearray = field(default_factory=bytearray)
    to_client: bytearray = field(default_factory=bytearray)
    blackholed: bool = False
    closed: bool = False
    captured_to_server: bytearray = field(default_factory=bytearray)
    # Additions for the protocol tests: what the server sent (a raw wire's client end
    # otherwise drops it), and one-way holds (bytes queue up in that direction only).
    captured_to_client: bytearray = field(default_factory=bytearray)
    hold_to_server: bool = False
    hold_to_client: bool = False


class Net:
    def __init__(
        self,
        seed: int = 0,
        config: SessionConfig | None = None,
        verify_host_key: Callable[[bytes], None] | None = None,
    ) -> None:
        self.rand = random.Random(seed)
        self.now = 1000.0
        self.config = config or SessionConfig()
        host_key = Ed25519PrivateKey.from_private_bytes(self.rand.randbytes(32))
        self.server = ServerEndpoint(
            config=self.config, rng=self.rand.randbytes, now=self.now, host_key=host_key
        )
        self.client = ClientEndpoint(
            config=self.config, rng=self.rand.randbytes, now=self.now,
            verify_host_key=verify_host_key or (lambda key: None),
        )
        self.wires: list[Wire] = []
        self.client_events: list[Event] = []
        self.server_events: list[Event] = []
        self.received: dict[tuple[str, int], bytearray] = {}
        self.ended: set[tuple[str, int]] = set()
        self.chunking = False

    # --- wiring -----------------------------------------------------------------------

    def connect(self) -> Wire:
        server_link = self.server.new_link(self.now)
        client_link = self.client.new_link(self.now)
        wire = Wire(client_link, server_link)
        self.wires.append(wire)
        return wire

    def raw_wire(self) -> Wire:
        """A server link whose client end the test writes by hand (an attacker)."""
        wire = Wire(-1, self.server.new_link(self.now))
        self.wires.append(wire)
        return wire

    def cut(self, wire: Wire) -> None:
        if wire.closed:
            return
        wire.closed = True
        wire.to_server.clear()
        wire.to_client.clear()
        if wire.client_link >= 0:
            self.client.link_closed(wire.client_link, self.now)
        self.server.link_closed(wire.server_link, self.now)

    def _by_link(self, side: str, link: int) -> Wire | None:
        for wire in self.wires:
            if not wire.closed and (
                wire.client_link == link if side == "client" else wire.server_link == link
            ):
                return wire
        return None

    # --- moving bytes -------------------------------------------------------------------

    def _collect(self) -> bool:
        moved = False
        for side, endpoint in (("client", self.client), ("server", self.server)):
            for tx in endpoint.transmit(self.now):
                wire = self._by_link(side, tx.link)
                if wire is None:
                    continue
                if tx.data:
                    moved = True
                    if side == "client":
                        wire.to_server += tx.data
                        wire.captured_to_server += tx.data
                    else:
                        wire.to_client += tx.data
                        wire.captured_to_client += tx.data
                if tx.close:
                    # The closing side's bytes still arrive, then the other end sees EOF.
                    self._deliver(wire)
                    self.cut(wire)
                    moved = True
        return moved

    def _deliver(self, wire: Wire) -> bool:
        if wire.closed or wire.blackholed:
            return False
        moved = False
        for buf, endpoint, link, held in (
            (wire.to_server, self.server, wire.server_link, wire.hold_to_server),
            (wire.to_client, self.client, wire.client_link, wire.hold_to_client),
        ):
            if held:
                continue
            while buf and link >= 0:
                n = len(buf)
                if self.chunking:
                    n = min(n, self.rand.choice((1, 3, 7, 64, 1000, 70000)))
                data = bytes(buf[:n])
                del buf[:n]
                endpoint.receive_data(link, data, self.now)
                moved = True
                if wire.closed:
                    return moved
            if link < 0:
                buf.clear()
        return moved

    def _drain_events(self) -> None:
        for name, endpoint, sink in (
            ("client", self.client, self.client_events),
            ("server", self.server, self.server_events),
        ):
            while (event := endpoint.next_event()) is not None:
                sink.append(event)
                if isinstance(event, StreamDataReceived):
                    self.received.setdefault((name, event.stream_id), bytearray()).extend(
                        event.data
                    )
                    endpoint_session = (
                        self.client.session if name == "client"
                        else self.server.session(event.session_id)
                    )
                    if endpoint_session is not None:
                        endpoint_session.stream_consumed(event.stream_id, len(event.data))
                    if event.end_stream:
                        self.ended.add((name, event.stream_id))

    def step(self) -> bool:
        """One round of pump(): transmit, deliver, drain events; True if bytes moved."""
        moved = self._collect()
        for wire in list(self.wires):
            moved |= self._deliver(wire)
        self._drain_events()
        return moved

    def pump(self, rounds: int = 10_000) -> None:
        for _ in range(rounds):
            moved = self._collect()
            for wire in list(self.wires):
                moved |= self._deliver(wire)
            self._drain_events()
            if not moved:
                return
        raise AssertionError("network did not settle")

    def advance(self, seconds: float, step: float = 0.05) -> None:
        """Let virtual time pass, firing timers as they fall due."""
        end = self.now + seconds
        while self.now < end:
            self.now = min(end, self.now + step)
            for endpoint in (self.client, self.server):
                timer = endpoint.get_timer()
                if timer is not None and timer <= self.now:
                    endpoint.handle_timer(self.now)
            self.pump()

    # --- helpers ------------------------------------------------------------------------

    def server_session(self):  # type: ignore[no-untyped-def]
        (session,) = self.server.sessions.values()
        return session

    def events_of(self, side: str, kind: type) -> list[Event]:
        events = self.client_events if side == "client" else self.server_events
        return [e for e in events if isinstance(e, kind)]

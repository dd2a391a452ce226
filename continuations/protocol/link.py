"""One transport connection as the core sees it: decoder, keys, output, timers."""

from __future__ import annotations

from dataclasses import dataclass, field

from continuations.protocol.events import LinkId
from continuations.protocol.handshake import Secrets
from continuations.protocol.keys import Ephemeral, Opener, Sealer, TrafficKeys
from continuations.protocol.states import LinkState, LinkTrigger, next_link_state
from continuations.protocol.wire import AttachRequest, ClientHello, RecordDecoder


@dataclass(slots=True)
class PendingHello:
    """Client: a new-session hello in flight."""

    eph: Ephemeral
    hello: ClientHello


@dataclass(slots=True)
class PendingAttach:
    """Client: a re-attach request in flight."""

    eph: Ephemeral
    request: AttachRequest


@dataclass(slots=True)
class PendingNewSession:
    """Server: a hello answered; the session exists once the client confirms."""

    session_id: bytes
    secrets: Secrets
    host_key: bytes


Handshake = PendingHello | PendingAttach | PendingNewSession | None


@dataclass(slots=True, eq=False)
class Link:
    id: LinkId
    created: float
    decoder: RecordDecoder
    state: LinkState = LinkState.NEW
    session_id: bytes = b""  # server: set once the link is bound to a session
    attach_version: int = 0
    replayed: int = 0  # server: bytes rewound for resending when this attach was accepted
    handshake: Handshake = None
    sealer: Sealer | None = None
    opener: Opener | None = None
    out: list[bytes | bytearray] = field(default_factory=list)  # whole records, in order
    writable: bool = True
    last_received: float = 0.0
    last_sent: float = 0.0
    last_peer_ping: float = float("-inf")  # when the peer's latest keepalive arrived
    answered_at: float = 0.0  # when our hello/accept/request left, for an RTT sample
    ping_id: int = 0
    pings: dict[int, float] = field(default_factory=dict)  # outstanding ping id -> sent at
    pong_due: list[int] = field(default_factory=list)
    needs_confirm: bool = False
    keyed_at: float = 0.0  # when this attachment's traffic keys came into use
    bytes_protected: int = 0  # sealed and opened under them, both directions
    rekey_asked: bool = False

    def move(self, trigger: LinkTrigger) -> None:
        self.state = next_link_state(self.state, trigger)

    def install(self, keys: TrafficKeys, *, client: bool, now: float) -> None:
        send, recv = (
            (keys.client_to_server, keys.server_to_client)
            if client
            else (keys.server_to_client, keys.client_to_server)
        )
        self.sealer = Sealer(send)
        self.opener = Opener(recv)
        self.keyed_at = now
        self.bytes_protected = 0

    def next_ping(self, now: float) -> int:
        """Allocate a ping id; several may be outstanding on a long path."""
        self.ping_id += 1
        self.pings[self.ping_id] = now
        if len(self.pings) > 8:
            del self.pings[min(self.pings)]
        return self.ping_id

    @property
    def closed(self) -> bool:
        return self.state is LinkState.CLOSED

"""The sans-I/O protocol core: no sockets, no clock, no ambient randomness."""

from continuations.protocol.config import SessionConfig
from continuations.protocol.endpoint import ClientEndpoint, ServerEndpoint, Transmit
from continuations.protocol.events import (
    AttachRejected,
    Disconnected,
    Event,
    LinkFailed,
    LinkId,
    ParkedSessionWanted,
    Reattached,
    RekeyDue,
    SessionClosed,
    SessionEstablished,
    SessionLost,
    StreamDataReceived,
    StreamOpened,
)
from continuations.protocol.session import PathDeadError, Role, Session
from continuations.protocol.states import LinkState, SessionState

__all__ = [
    "AttachRejected",
    "ClientEndpoint",
    "Disconnected",
    "Event",
    "LinkFailed",
    "LinkId",
    "LinkState",
    "ParkedSessionWanted",
    "PathDeadError",
    "Reattached",
    "RekeyDue",
    "Role",
    "ServerEndpoint",
    "Session",
    "SessionClosed",
    "SessionConfig",
    "SessionEstablished",
    "SessionLost",
    "SessionState",
    "StreamDataReceived",
    "StreamOpened",
    "Transmit",
]

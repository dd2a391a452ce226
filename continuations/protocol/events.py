"""Typed events the sans-I/O core hands to its driver, one at a time."""

from __future__ import annotations

from dataclasses import dataclass

from continuations.errors import RemoteError
from continuations.protocol.wire import AttachRequest

LinkId = int


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionEstablished:
    session_id: bytes
    link: LinkId
    host_key: bytes  # the server's Ed25519 public key (raw)


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamOpened:
    """The peer opened a stream (its first frame arrived, or a higher id implied it)."""

    session_id: bytes
    stream_id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamDataReceived:
    session_id: bytes
    stream_id: int
    data: bytes
    end_stream: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class Disconnected:
    """The session has no usable link; it is kept, and may re-attach."""

    session_id: bytes
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Reattached:
    """A new attachment is current. ``replayed`` counts bytes this side sent again."""

    session_id: bytes
    link: LinkId
    attach_version: int
    rtt: float | None
    replayed: int
    offline: float  # seconds without a usable link before this attachment


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionClosed:
    session_id: bytes
    code: int
    reason: str
    by_peer: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionLost:
    session_id: bytes
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkFailed:
    """A link ended because of the peer or the path; the session (if any) lives on."""

    link: LinkId
    session_id: bytes | None
    error: RemoteError


@dataclass(frozen=True, slots=True, kw_only=True)
class AttachRejected:
    """The server refused a re-attach. ``authentic``: signed by the pinned host key."""

    link: LinkId
    session_id: bytes
    code: int
    reason: str
    authentic: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class RekeyDue:
    """Client: the current attachment's keys reached their byte or age limit; re-attach
    (make-before-break) to get fresh ones. Emitted once per attachment."""

    session_id: bytes
    link: LinkId


@dataclass(frozen=True, slots=True, kw_only=True)
class ParkedSessionWanted:
    """A client tried to re-attach to a session this server parked (suspended to disk).

    It was told to retry; a driver that resumes the session now lets the retry in. The
    request is unverified (the resume key is not in memory): check its proof against
    the stored key before doing anything costly."""

    session_id: bytes
    request: AttachRequest


Event = (
    SessionEstablished
    | StreamOpened
    | StreamDataReceived
    | Disconnected
    | Reattached
    | SessionClosed
    | SessionLost
    | LinkFailed
    | AttachRejected
    | ParkedSessionWanted
    | RekeyDue
)

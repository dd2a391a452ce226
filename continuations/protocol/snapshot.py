"""A session's state frozen for suspend-to-disk, and thawed in another process.

A snapshot holds the session id and resume key (so it is secret: the store
keeps it encrypted), the attach versions, and for every stream the bytes not
yet acknowledged by the peer and the receive position, so that after resume
each side retransmits exactly what the other is missing.

Encoding: a JSON header, a newline, then the streams' raw bytes concatenated
in header order. Decoding checks every length and type; anything malformed
is a ``SessionLostError`` (a snapshot comes out of an authenticated store, so
damage there means the state to resume is gone).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from continuations.errors import SessionLostError

FORMAT = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamSnapshot:
    stream_id: int
    # Send half: bytes from position `base` on, not yet acknowledged (acked >= base; the
    # FIN's own position, if acknowledged, makes acked = base + len(unacked) + 1).
    acked: int
    base: int
    unacked: bytes
    fin: bool
    limit: int
    # Receive half.
    received: int
    final: int | None
    consumed: int
    window: int
    limit_sent: int
    # Bytes the application had been handed by the core but had not read yet.
    unread: bytes = b""


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionSnapshot:
    role: str
    session_id: bytes
    resume_key: bytes
    host_key: bytes
    attach_version: int
    attempted_version: int
    own_opened: int
    peer_opened: int
    streams: tuple[StreamSnapshot, ...]

    @property
    def unacknowledged(self) -> int:
        return sum(len(s.unacked) for s in self.streams)

    def encode(self) -> bytes:
        header: dict[str, Any] = {
            "format": FORMAT,
            "role": self.role,
            "session_id": self.session_id.hex(),
            "resume_key": self.resume_key.hex(),
            "host_key": self.host_key.hex(),
            "attach_version": self.attach_version,
            "attempted_version": self.attempted_version,
            "own_opened": self.own_opened,
            "peer_opened": self.peer_opened,
            "streams": [
                {
                    "id": s.stream_id, "acked": s.acked, "base": s.base,
                    "unacked": len(s.unacked), "fin": s.fin, "limit": s.limit,
                    "received": s.received, "final": s.final, "consumed": s.consumed,
                    "window": s.window, "limit_sent": s.limit_sent, "unread": len(s.unread),
                }
                for s in self.streams
            ],
        }
        blobs = b"".join(s.unacked + s.unread for s in self.streams)
        return json.dumps(header, separators=(",", ":")).encode() + b"\n" + blobs

    @classmethod
    def decode(cls, data: bytes) -> SessionSnapshot:
        try:
            head, _, blobs = data.partition(b"\n")
            header = json.loads(head)
            if header.get("format") != FORMAT:
                raise ValueError(f"unknown snapshot format {header.get('format')!r}")
            streams = []
            pos = 0
            for s in header["streams"]:
                sizes = (_int(s["unacked"]), _int(s["unread"]))
                if pos + sum(sizes) > len(blobs):
                    raise ValueError("stream data truncated")
                unacked = blobs[pos : pos + sizes[0]]
                unread = blobs[pos + sizes[0] : pos + sizes[0] + sizes[1]]
                pos += sum(sizes)
                streams.append(
                    StreamSnapshot(
                        stream_id=_int(s["id"]), acked=_int(s["acked"]), base=_int(s["base"]),
                        unacked=unacked, fin=bool(s["fin"]), limit=_int(s["limit"]),
                        received=_int(s["received"]),
                        final=None if s["final"] is None else _int(s["final"]),
                        consumed=_int(s["consumed"]), window=_int(s["window"]),
                        limit_sent=_int(s["limit_sent"]), unread=unread,
                    )
                )
            if pos != len(blobs):
                raise ValueError("trailing bytes after stream data")
            role = header["role"]
            if role not in ("client", "server"):
                raise ValueError(f"bad role {role!r}")
            return cls(
                role=role,
                session_id=bytes.fromhex(header["session_id"]),
                resume_key=bytes.fromhex(header["resume_key"]),
                host_key=bytes.fromhex(header["host_key"]),
                attach_version=_int(header["attach_version"]),
                attempted_version=_int(header["attempted_version"]),
                own_opened=_int(header["own_opened"]),
                peer_opened=_int(header["peer_opened"]),
                streams=tuple(streams),
            )
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            raise SessionLostError(f"session snapshot is damaged: {exc}") from exc


def _int(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"expected a non-negative integer, got {value!r}")
    return value

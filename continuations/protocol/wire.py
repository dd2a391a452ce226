"""Wire format: outer records, handshake messages and the frames inside sealed records.

Every length is checked against its limit before anything is read or buffered
for it. All decoding errors are ``FrameError`` (or ``VersionError``); nothing
else escapes a decoder, whatever the input. The layout is specified in
``docs/protocol.md``.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

from continuations.errors import FrameError, VersionError
from continuations.protocol.states import RecordType

MAGIC = b"CNTN"
PROTOCOL_VERSION = 1

RECORD_HEADER = 4  # type u8, body length u24
MAX_RECORD_BODY = 65536  # hard ceiling; a config may lower it, never raise it
AEAD_TAG = 16
MAX_PLAINTEXT = MAX_RECORD_BODY - AEAD_TAG

KEY_LEN = 32
NONCE_LEN = 32
SESSION_ID_LEN = 16
PROOF_LEN = 32
SIGNATURE_LEN = 64
MAX_STREAMS_LISTED = 4096
MAX_REASON = 256

_U8 = struct.Struct("!B")
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")
_STREAM_HDR = struct.Struct("!BIQBI")  # type, stream id, offset, flags, length
_ACK = struct.Struct("!BIQQ")  # type, stream id, received, limit
_PING = struct.Struct("!BQ")
_OFFSET = struct.Struct("!IQ")

FLAG_FIN = 0x01
MAX_OFFSET = 2**62  # far beyond any real transfer; keeps offset arithmetic in range


def record_header(rtype: int, length: int) -> bytes:
    return bytes((rtype, (length >> 16) & 0xFF, (length >> 8) & 0xFF, length & 0xFF))


def encode_record(rtype: RecordType, body: bytes) -> bytes:
    if len(body) > MAX_RECORD_BODY:
        raise FrameError(f"record body of {len(body)} bytes exceeds {MAX_RECORD_BODY}")
    return record_header(rtype, len(body)) + body


class RecordDecoder:
    """Splits a byte stream into records, refusing oversized or unknown ones early."""

    __slots__ = ("_buf", "_max_body", "_pos")

    def __init__(self, max_body: int = MAX_RECORD_BODY) -> None:
        self._buf = bytearray()
        self._pos = 0  # records before this offset are consumed
        self._max_body = min(max_body, MAX_RECORD_BODY)

    def feed(self, data: bytes) -> None:
        if self._pos:
            # Drop what was consumed now and then, not after every record: shifting the
            # buffer once per record would copy it over and over.
            if self._pos == len(self._buf):
                self._buf.clear()
                self._pos = 0
            elif self._pos >= 1 << 20:
                del self._buf[: self._pos]
                self._pos = 0
        self._buf += data

    def buffered(self) -> int:
        return len(self._buf) - self._pos

    def next_record(self) -> tuple[RecordType, bytes, bytes] | None:
        """Return (type, header, body) of the next whole record, or None if more is needed."""
        buf = self._buf
        pos = self._pos
        if len(buf) - pos < RECORD_HEADER:
            return None
        raw_type = buf[pos]
        try:
            rtype = RecordType(raw_type)
        except ValueError:
            raise FrameError(f"unknown record type 0x{raw_type:02x}") from None
        length = (buf[pos + 1] << 16) | (buf[pos + 2] << 8) | buf[pos + 3]
        if length > self._max_body:
            raise FrameError(f"record length {length} exceeds the limit {self._max_body}")
        end = pos + RECORD_HEADER + length
        if len(buf) < end:
            return None
        header = bytes(buf[pos : pos + RECORD_HEADER])
        body = bytes(buf[pos + RECORD_HEADER : end])
        self._pos = end
        return rtype, header, body


class _Reader:
    """Bounds-checked cursor over a message body."""

    __slots__ = ("_data", "_pos", "_what")

    def __init__(self, data: bytes | memoryview, what: str) -> None:
        self._data = memoryview(data)
        self._pos = 0
        self._what = what

    def take(self, n: int) -> bytes:
        end = self._pos + n
        if n < 0 or end > len(self._data):
            raise FrameError(f"truncated {self._what}")
        out = bytes(self._data[self._pos : end])
        self._pos = end
        return out

    def u8(self) -> int:
        return int(_U8.unpack(self.take(1))[0])

    def u16(self) -> int:
        return int(_U16.unpack(self.take(2))[0])

    def u32(self) -> int:
        return int(_U32.unpack(self.take(4))[0])

    def u64(self) -> int:
        return int(_U64.unpack(self.take(8))[0])

    def position(self) -> int:
        return self._pos

    def done(self) -> None:
        if self._pos != len(self._data):
            raise FrameError(f"{len(self._data) - self._pos} trailing bytes after {self._what}")


def _check_version(r: _Reader) -> None:
    if r.take(4) != MAGIC:
        raise FrameError("bad magic: not a continuations peer")
    version = r.u8()
    if version != PROTOCOL_VERSION:
        raise VersionError(
            f"protocol version {version} not supported (we speak {PROTOCOL_VERSION})"
        )


# --- handshake messages -------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientHello:
    client_random: bytes
    client_public: bytes

    def encode(self) -> bytes:
        return MAGIC + bytes((PROTOCOL_VERSION,)) + self.client_random + self.client_public

    @classmethod
    def decode(cls, body: bytes) -> ClientHello:
        r = _Reader(body, "client hello")
        _check_version(r)
        msg = cls(client_random=r.take(NONCE_LEN), client_public=r.take(KEY_LEN))
        r.done()
        return msg


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerHello:
    session_id: bytes
    server_random: bytes
    server_public: bytes
    host_key: bytes
    signature: bytes

    def signed_part(self) -> bytes:
        return self.session_id + self.server_random + self.server_public + self.host_key

    def encode(self) -> bytes:
        return self.signed_part() + self.signature

    @classmethod
    def decode(cls, body: bytes) -> ServerHello:
        r = _Reader(body, "server hello")
        msg = cls(
            session_id=r.take(SESSION_ID_LEN),
            server_random=r.take(NONCE_LEN),
            server_public=r.take(KEY_LEN),
            host_key=r.take(KEY_LEN),
            signature=r.take(SIGNATURE_LEN),
        )
        r.done()
        return msg


@dataclass(frozen=True, slots=True, kw_only=True)
class ResumePoint:
    """What one side has received, stated when an attachment starts.

    ``peer_streams_seen`` is one more than the highest stream id opened by the
    other side that this side has seen (0: none). A stream of the other side's
    below that and not listed has been received completely and forgotten.
    """

    peer_streams_seen: int
    received: tuple[tuple[int, int], ...]  # (stream id, received offset)

    def encode(self) -> bytes:
        parts = [_U32.pack(self.peer_streams_seen), _U16.pack(len(self.received))]
        parts.extend(_OFFSET.pack(sid, off) for sid, off in self.received)
        return b"".join(parts)

    @classmethod
    def read(cls, r: _Reader) -> ResumePoint:
        seen = r.u32()
        count = r.u16()
        if count > MAX_STREAMS_LISTED:
            raise FrameError(f"resume point lists {count} streams, limit {MAX_STREAMS_LISTED}")
        received = []
        ids = set()
        for _ in range(count):
            sid = r.u32()
            off = r.u64()
            if sid in ids or off > MAX_OFFSET:
                raise FrameError("resume point lists a stream twice or an offset out of range")
            ids.add(sid)
            received.append((sid, off))
        return cls(peer_streams_seen=seen, received=tuple(received))


@dataclass(frozen=True, slots=True, kw_only=True)
class AttachRequest:
    session_id: bytes
    attach_version: int
    client_nonce: bytes
    client_public: bytes
    resume: ResumePoint
    proof: bytes

    def proved_part(self) -> bytes:
        return (
            MAGIC
            + bytes((PROTOCOL_VERSION,))
            + self.session_id
            + _U64.pack(self.attach_version)
            + self.client_nonce
            + self.client_public
            + self.resume.encode()
        )

    def encode(self) -> bytes:
        return self.proved_part() + self.proof

    @classmethod
    def decode(cls, body: bytes) -> AttachRequest:
        r = _Reader(body, "attach request")
        _check_version(r)
        msg = cls(
            session_id=r.take(SESSION_ID_LEN),
            attach_version=r.u64(),
            client_nonce=r.take(NONCE_LEN),
            client_public=r.take(KEY_LEN),
            resume=ResumePoint.read(r),
            proof=r.take(PROOF_LEN),
        )
        r.done()
        return msg


@dataclass(frozen=True, slots=True, kw_only=True)
class AttachAccept:
    server_nonce: bytes
    server_public: bytes
    resume: ResumePoint
    proof: bytes

    def proved_part(self) -> bytes:
        return self.server_nonce + self.server_public + self.resume.encode()

    def encode(self) -> bytes:
        return self.proved_part() + self.proof

    @classmethod
    def decode(cls, body: bytes) -> AttachAccept:
        r = _Reader(body, "attach accept")
        msg = cls(
            server_nonce=r.take(NONCE_LEN),
            server_public=r.take(KEY_LEN),
            resume=ResumePoint.read(r),
            proof=r.take(PROOF_LEN),
        )
        r.done()
        return msg


class RejectCode:
    UNKNOWN_SESSION = 1
    STALE_VERSION = 2
    BAD_PROOF = 3
    UNSUPPORTED_VERSION = 4
    BUSY = 5
    MALFORMED = 6
    SUSPENDED = 7


REJECT_REASONS = {
    RejectCode.UNKNOWN_SESSION: "unknown session id (expired, or never existed)",
    RejectCode.STALE_VERSION: "stale attach version (a newer attachment exists)",
    RejectCode.BAD_PROOF: "attach proof did not verify",
    RejectCode.UNSUPPORTED_VERSION: "unsupported protocol version",
    RejectCode.BUSY: "server busy (too many pending handshakes)",
    RejectCode.MALFORMED: "malformed handshake",
    RejectCode.SUSPENDED: "session suspended to disk on the server; try again later",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Reject:
    """A refusal in plaintext. Unsigned, it is only a hint; a refusal of an attach
    request carries the host key's signature over the request's nonce, session id
    and code, which the client can verify against the key it pinned."""

    code: int
    reason: str
    signature: bytes = b""

    def encode(self) -> bytes:
        text = self.reason.encode()[:MAX_REASON]
        return bytes((self.code,)) + _U16.pack(len(text)) + text + self.signature

    @classmethod
    def decode(cls, body: bytes) -> Reject:
        r = _Reader(body, "reject")
        code = r.u8()
        length = r.u16()
        if length > MAX_REASON:
            raise FrameError("reject reason too long")
        reason = r.take(length).decode("utf-8", "replace")
        rest = len(body) - r.position()
        signature = r.take(SIGNATURE_LEN) if rest == SIGNATURE_LEN else b""
        r.done()
        return cls(code=code, reason=reason, signature=signature)


# --- frames inside sealed records ---------------------------------------------------------


class FrameType:
    STREAM = 0x01
    ACK = 0x02
    PING = 0x03
    PONG = 0x04
    CLOSE = 0x05


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamFrame:
    stream_id: int
    offset: int
    data: bytes
    fin: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class AckFrame:
    stream_id: int
    received: int
    limit: int  # the sender may send up to (not including) this offset


@dataclass(frozen=True, slots=True, kw_only=True)
class PingFrame:
    ping_id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class PongFrame:
    ping_id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class CloseFrame:
    code: int
    reason: str


Frame = StreamFrame | AckFrame | PingFrame | PongFrame | CloseFrame

STREAM_FRAME_OVERHEAD = _STREAM_HDR.size


def stream_frame_header(stream_id: int, offset: int, length: int, fin: bool) -> bytes:
    return _STREAM_HDR.pack(FrameType.STREAM, stream_id, offset, FLAG_FIN if fin else 0, length)


def encode_ack(stream_id: int, received: int, limit: int) -> bytes:
    return _ACK.pack(FrameType.ACK, stream_id, received, limit)


def encode_ping(ping_id: int) -> bytes:
    return _PING.pack(FrameType.PING, ping_id)


def encode_pong(ping_id: int) -> bytes:
    return _PING.pack(FrameType.PONG, ping_id)


def encode_close(code: int, reason: str) -> bytes:
    text = reason.encode()[:MAX_REASON]
    return bytes((FrameType.CLOSE,)) + _U16.pack(code) + _U16.pack(len(text)) + text


def decode_frames(plaintext: bytes) -> Iterator[Frame]:
    """Yield the frames of one record's plaintext; FrameError on anything malformed."""
    view = memoryview(plaintext)
    pos = 0
    end = len(view)
    while pos < end:
        ftype = view[pos]
        if ftype == FrameType.STREAM:
            if pos + _STREAM_HDR.size > end:
                raise FrameError("truncated stream frame")
            _, sid, offset, flags, length = _STREAM_HDR.unpack_from(view, pos)
            pos += _STREAM_HDR.size
            if length > end - pos:
                raise FrameError("stream frame length exceeds its record")
            if flags & ~FLAG_FIN or offset + length > MAX_OFFSET:
                raise FrameError("stream frame with unknown flags or offset out of range")
            yield StreamFrame(
                stream_id=sid, offset=offset, data=bytes(view[pos : pos + length]),
                fin=bool(flags & FLAG_FIN),
            )
            pos += length
        elif ftype == FrameType.ACK:
            if pos + _ACK.size > end:
                raise FrameError("truncated ack frame")
            _, sid, received, limit = _ACK.unpack_from(view, pos)
            pos += _ACK.size
            if received > MAX_OFFSET or limit > MAX_OFFSET:
                raise FrameError("ack offset out of range")
            yield AckFrame(stream_id=sid, received=received, limit=limit)
        elif ftype in (FrameType.PING, FrameType.PONG):
            if pos + _PING.size > end:
                raise FrameError("truncated ping frame")
            _, ping_id = _PING.unpack_from(view, pos)
            pos += _PING.size
            yield PingFrame(ping_id=ping_id) if ftype == FrameType.PING else PongFrame(
                ping_id=ping_id
            )
        elif ftype == FrameType.CLOSE:
            r = _Reader(view[pos + 1 :], "close frame")
            code = r.u16()
            length = r.u16()
            if length > MAX_REASON:
                raise FrameError("close reason too long")
            reason = r.take(length).decode("utf-8", "replace")
            pos += 1 + r.position()
            yield CloseFrame(code=code, reason=reason)
        else:
            raise FrameError(f"unknown frame type 0x{ftype:02x}")

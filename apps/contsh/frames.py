"""The terminal stream, server to client: framed output, compressed with zlib.

Records are ``type (u8) | length (u32) | payload``:

- ``DATA``: output. With compression on, a piece of one raw deflate stream ending
  in a sync flush, so the client can show it at once; with it off, raw bytes.
- ``RESET``: ``level (u8)``. A new zlib stream starts here at that level (0 = no
  compression), with the last 32 KiB of output so far as its preset dictionary.
  Both ends keep that history, so after a suspension the new compressor starts
  as good as the old one ended instead of cold (the ratio survives resume), and
  nothing but the level travels. The server sends one when it resumes a session
  (to adapt the level to the network it finds) and when a new client takes a
  shell over (without history: that client has none).

The client to server direction is raw keystrokes: too small to be worth it.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from continuations.errors import ProtocolError

DATA = 1
RESET = 2
HEADER = struct.Struct("!BI")
HISTORY = 32 * 1024  # zlib's window: the most a preset dictionary can help
MAX_RECORD = 1024 * 1024  # more than any one PTY read compresses to
# Raw deflate, no zlib header: every record ends on a sync flush (a byte-aligned block
# boundary), so a fresh inflater given the last 32 KiB of output as its dictionary
# carries on exactly where the old one stopped. A suspended client resumes mid-stream.
RAW = -15


class FrameError(ProtocolError):
    """The terminal stream carried something that is not a valid record."""


def _record(kind: int, payload: bytes) -> bytes:
    return HEADER.pack(kind, len(payload)) + payload


def _remember(history: bytes, data: bytes) -> bytes:
    return (history + data)[-HISTORY:] if len(data) < HISTORY else data[-HISTORY:]


class OutputEncoder:
    """The server's end: output in, records out."""

    def __init__(self, level: int, history: bytes = b"") -> None:
        self.history = history[-HISTORY:]
        self.level = 0
        self._z: zlib._Compress | None = None
        self._start(level)

    def _start(self, level: int) -> None:
        if not 0 <= level <= 9:
            raise ValueError(f"zlib level {level} is not in 0..9")
        self.level = level
        if level == 0:
            self._z = None
        elif self.history:
            self._z = zlib.compressobj(level, wbits=RAW, zdict=self.history)
        else:
            self._z = zlib.compressobj(level, wbits=RAW)

    def encode(self, data: bytes) -> bytes:
        self.history = _remember(self.history, data)
        if self._z is None:
            return _record(DATA, data)
        return _record(DATA, self._z.compress(data) + self._z.flush(zlib.Z_SYNC_FLUSH))

    def reset(self, level: int, *, keep_history: bool = True) -> bytes:
        """Start a new zlib stream; returns the record that tells the client."""
        if not keep_history:
            self.history = b""
        self._start(level)
        return _record(RESET, bytes([level, int(keep_history)]))


@dataclass
class DecodeStats:
    wire: int = 0
    output: int = 0


class OutputDecoder:
    """The client's end: bytes from the stream in (any split), output out."""

    def __init__(self, level: int = 0, history: bytes = b"") -> None:
        self.history = history[-HISTORY:]
        self.level = level
        self.stats = DecodeStats()
        self._buffer = bytearray()
        self._z: zlib._Decompress | None = self._new(level)

    def _new(self, level: int) -> zlib._Decompress | None:
        if level == 0:
            return None
        if self.history:
            return zlib.decompressobj(wbits=RAW, zdict=self.history)
        return zlib.decompressobj(wbits=RAW)

    @property
    def partial(self) -> bytes:
        """Bytes of a record not complete yet (kept across a suspension)."""
        return bytes(self._buffer)

    def restore_partial(self, data: bytes) -> None:
        self._buffer = bytearray(data)

    def feed(self, data: bytes) -> bytes:
        """Decode what is complete; keep the rest for later. Raises ``FrameError``."""
        self._buffer += data
        self.stats.wire += len(data)
        out = []
        while len(self._buffer) >= HEADER.size:
            kind, length = HEADER.unpack_from(self._buffer)
            if length > MAX_RECORD:
                raise FrameError(f"terminal record of {length} bytes (limit {MAX_RECORD})")
            if len(self._buffer) < HEADER.size + length:
                break
            payload = bytes(self._buffer[HEADER.size:HEADER.size + length])
            del self._buffer[:HEADER.size + length]
            if kind == DATA:
                chunk = payload if self._z is None else self._inflate(payload)
                self.history = _remember(self.history, chunk)
                out.append(chunk)
            elif kind == RESET:
                if length != 2 or payload[0] > 9 or payload[1] > 1:
                    raise FrameError("malformed compression reset")
                if not payload[1]:
                    self.history = b""
                self.level = payload[0]
                self._z = self._new(self.level)
            else:
                raise FrameError(f"unknown terminal record type {kind}")
        result = b"".join(out)
        self.stats.output += len(result)
        return result

    def _inflate(self, payload: bytes) -> bytes:
        assert self._z is not None
        try:
            # Output is bounded by what the server read from the PTY in one go; a
            # decompression bomb still cannot exceed this cap per record.
            chunk = self._z.decompress(payload, 64 * MAX_RECORD)
        except zlib.error as exc:
            raise FrameError(f"corrupt compressed output: {exc}") from exc
        if self._z.unconsumed_tail:
            raise FrameError("a compressed record expands beyond the limit")
        return chunk

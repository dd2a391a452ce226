"""The two halves of a reliable byte stream: the replay buffer and the receiver.

Offsets are 64-bit byte positions in the stream. As in TCP, the end of stream
(FIN) takes one position of its own, just after the last byte, so a single
"received" number says both how many bytes arrived and whether the end did.
"""

from __future__ import annotations

from collections import deque

from continuations.errors import FrameError, SessionLostError, StreamStateError


class SendStream:
    """Every byte not yet acknowledged, and where sending on the current link stands.

    The bytes are kept as the chunks the application wrote (no growing buffer to
    copy, no front to trim): an ack drops whole chunks, and ``take`` hands out a
    zero-copy view when the span lies in one chunk.
    """

    __slots__ = ("_base", "_chunks", "_size", "acked", "fin", "limit", "next")

    def __init__(self, initial_limit: int) -> None:
        self._chunks: deque[memoryview] = deque()  # data from position `_base` onwards
        self._size = 0
        self._base = 0  # = min(acked, written): the FIN's position holds no byte
        self.acked = 0  # the peer has received everything below this position
        self.next = 0  # next position to send on the current link
        self.limit = initial_limit  # the peer's flow-control limit (data positions)
        self.fin = False  # end of stream was written

    @classmethod
    def restore(cls, *, acked: int, base: int, unacked: bytes, fin: bool, limit: int) -> SendStream:
        if not base <= acked <= base + len(unacked) + (1 if fin else 0):
            raise FrameError("inconsistent send-stream snapshot")
        stream = cls(limit)
        stream._base = base
        if unacked:
            stream._chunks.append(memoryview(unacked))
            stream._size = len(unacked)
        stream.acked = acked
        stream.next = acked
        stream.fin = fin
        return stream

    @property
    def base(self) -> int:
        return self._base

    def unacked_bytes(self) -> bytes:
        return b"".join(self._chunks)

    @property
    def written(self) -> int:
        return self._base + self._size

    @property
    def end(self) -> int:
        """One past the last position that must be acknowledged."""
        return self.written + (1 if self.fin else 0)

    @property
    def buffered(self) -> int:
        return self._size

    def write(self, data: bytes, fin: bool) -> None:
        if self.fin:
            raise StreamStateError("stream already ended; cannot write")
        if data:
            self._chunks.append(memoryview(data))
            self._size += len(data)
        self.fin = fin

    def done(self) -> bool:
        return self.fin and self.acked == self.end

    def has_pending(self) -> bool:
        if self.next < self.written:
            return self.next < self.limit
        return self.fin and self.next == self.written

    def take(self, max_len: int) -> tuple[int, bytes | memoryview, bool]:
        """Next chunk to send: (offset, data, fin). Call only when has_pending()."""
        start = self.next
        stop = min(self.written, self.limit, start + max_len)
        data: bytes | memoryview = b""
        if stop > start:
            data = self._slice(start - self._base, stop - self._base)
        fin = self.fin and stop == self.written
        self.next = stop + (1 if fin else 0)
        return start, data, fin

    def _slice(self, lo: int, hi: int) -> bytes | memoryview:
        pos = 0
        parts: list[memoryview] = []
        for chunk in self._chunks:
            end = pos + len(chunk)
            if end > lo:
                part = chunk[max(0, lo - pos) : min(len(chunk), hi - pos)]
                if not parts and end >= hi:
                    return part  # the common case: one chunk, no copy
                parts.append(part)
                if end >= hi:
                    break
            pos = end
        return b"".join(parts)

    def on_ack(self, received: int, limit: int) -> None:
        """The peer has everything below `received` and accepts data below `limit`."""
        if received > self.end:
            raise FrameError("peer acknowledged data that was never sent")
        if received > self.acked:
            drop = min(received, self.written) - self._base
            chunks = self._chunks
            while drop and chunks:
                first = chunks[0]
                if len(first) <= drop:
                    chunks.popleft()
                    drop -= len(first)
                    self._size -= len(first)
                    self._base += len(first)
                else:
                    chunks[0] = first[drop:]
                    self._size -= drop
                    self._base += drop
                    drop = 0
            self.acked = received
            self.next = max(self.next, received)
        self.limit = max(self.limit, limit)

    def rewind(self, received: int) -> None:
        """A new attachment starts; the peer stated it has everything below `received`."""
        if received < self.acked:
            raise FrameError(
                f"peer states {received} received, below {self.acked} it acknowledged before"
            )
        self.on_ack(received, self.limit)
        self.next = received


class RecvStream:
    """Accepts data only at exactly the next expected position."""

    __slots__ = ("consumed", "final", "limit_sent", "received", "window")

    def __init__(self, window: int, initial_limit: int) -> None:
        self.received = 0  # positions received in order, the FIN included
        self.final: int | None = None  # data length, once the FIN arrived
        self.consumed = 0  # bytes the application has taken
        self.window = window
        self.limit_sent = initial_limit

    def on_frame(self, offset: int, data: bytes, fin: bool) -> tuple[bytes, bool]:
        """Return the new bytes to deliver and whether the end arrived just now.

        Overlap with what was received is trimmed and a duplicate ignored.
        """
        end = offset + len(data)
        if end > self.limit_sent:
            raise FrameError("peer sent beyond the flow-control limit")
        if self.final is not None:
            if end > self.final or (fin and end != self.final):
                raise FrameError("peer sent data past the end of the stream")
            return b"", False
        if offset > self.received:
            # Senders resume from a position we stated or acknowledged, both at most what we
            # hold: data beyond it means we hold less than we once did (resumed from older
            # state than the peer saw). What is in between is gone.
            raise SessionLostError(
                f"stream data from position {offset} but we hold only {self.received}: this "
                "side resumed from older state than the peer saw; the bytes between are lost"
            )
        if fin and end < self.received:
            raise FrameError("peer moved the end of stream below data already received")
        fresh = data[self.received - offset :] if end > self.received else b""
        self.received = max(self.received, end)
        if fin:
            self.final = end
            self.received = end + 1
        return fresh, fin

    def consume(self, n: int) -> None:
        self.consumed += n

    def wants_limit_update(self) -> bool:
        return self.final is None and self.consumed + self.window - self.limit_sent >= (
            self.window // 4
        )

    def new_limit(self) -> int:
        self.limit_sent = max(self.limit_sent, self.consumed + self.window)
        return self.limit_sent

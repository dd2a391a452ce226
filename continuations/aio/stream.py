"""A session stream with the shape of asyncio's StreamReader and StreamWriter.

Writes go into the session's replay buffer; what does not fit waits here and
``drain()`` blocks until it is in, so a writer that awaits ``drain()`` holds at
most one write beyond the replay buffer's cap. Reads hand flow-control credit
back to the peer as the application consumes data.
"""

from __future__ import annotations

import asyncio
from collections import deque
from types import TracebackType
from typing import TYPE_CHECKING

from continuations.errors import ProtocolError, StreamStateError

if TYPE_CHECKING:
    from continuations.aio.session import AsyncSession


class SessionStream:
    def __init__(self, session: AsyncSession, stream_id: int) -> None:
        self._session = session
        self.stream_id = stream_id
        self._chunks: deque[bytes | memoryview] = deque()  # received, not yet read
        self._buffered = 0
        self._eof = False
        self._read_waiter: asyncio.Future[None] | None = None
        self._pending: deque[bytes] = deque()
        self._pending_eof = False
        self._eof_written = False
        self._drain_waiters: list[asyncio.Future[None]] = []

    # --- reading --------------------------------------------------------------------------

    def _feed(self, data: bytes, end: bool) -> None:
        if data:
            self._chunks.append(data)
            self._buffered += len(data)
        if end:
            self._eof = True
        self._wake_reader()

    def _wake_reader(self) -> None:
        waiter = self._read_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait_for_data(self) -> None:
        self._session._raise_if_failed()
        self._read_waiter = self._session._loop.create_future()
        try:
            await self._read_waiter
        finally:
            self._read_waiter = None
        self._session._raise_if_failed(allow_closed=True)

    def _take(self, n: int) -> bytes:
        """Up to ``n`` buffered bytes; a whole chunk is handed over without a copy."""
        chunks = self._chunks
        parts: list[bytes | memoryview] = []
        want = n
        while want and chunks:
            first = chunks[0]
            if len(first) <= want:
                parts.append(chunks.popleft())
                want -= len(first)
            else:
                view = memoryview(first)  # the rest stays a view: no copy per partial read
                parts.append(view[:want])
                chunks[0] = view[want:]
                want = 0
        only = parts[0] if len(parts) == 1 else None
        data = only if isinstance(only, bytes) else b"".join(parts)
        if data:
            self._buffered -= len(data)
            self._session._consumed(self.stream_id, len(data))
        return data

    def _peek_all(self) -> bytes:
        """Everything buffered, as one bytes object (kept, so the next peek is free)."""
        chunks = self._chunks
        if len(chunks) == 1 and isinstance(chunks[0], bytes):
            return chunks[0]
        joined = b"".join(chunks)
        chunks.clear()
        if joined:
            chunks.append(joined)
        return joined

    async def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (all until end of stream if ``n`` < 0); b"" at end of stream."""
        if n == 0:
            return b""
        if n < 0:
            # Take what arrives as it arrives: holding it unread until the end would keep
            # the peer's flow-control window shut, and a stream longer than the window
            # would never end.
            parts = []
            while not self._eof:
                if self._buffered:
                    parts.append(self._take(self._buffered))
                await self._wait_for_data()
            parts.append(self._take(self._buffered))
            return b"".join(parts)
        while not self._buffered and not self._eof:
            await self._wait_for_data()
        return self._take(n)

    async def readexactly(self, n: int) -> bytes:
        while self._buffered < n:
            if self._eof:
                partial = self._take(self._buffered)
                raise asyncio.IncompleteReadError(partial, n)
            await self._wait_for_data()
        return self._take(n)

    async def readline(self, limit: int | None = None) -> bytes:
        """One line, newline included (less at the end of the stream). With ``limit``,
        a peer's line longer than that raises ``ProtocolError`` instead of growing the
        buffer without bound."""
        searched = 0
        while True:
            pending = self._peek_all()
            end = pending.find(b"\n", searched)
            if end >= 0 and (limit is None or end < limit):
                return self._take(end + 1)
            if limit is not None and (end >= limit or len(pending) > limit):
                raise ProtocolError(f"line longer than {limit} bytes on stream "
                                    f"{self.stream_id}")
            searched = len(pending)
            if self._eof:
                return self._take(self._buffered)
            await self._wait_for_data()

    def _finished(self) -> bool:
        """Both ends closed, nothing buffered either way, nobody waiting."""
        return (
            self._eof and not self._buffered and self._eof_written and not self._pending
            and (self._read_waiter is None or self._read_waiter.done())
            and not self._drain_waiters
        )

    def at_eof(self) -> bool:
        return self._eof and not self._buffered

    # --- writing --------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self._pending_eof or self._eof_written:
            raise StreamStateError("write after write_eof()")
        self._session._raise_if_failed()
        if data:
            self._pending.append(bytes(data))
            self._push()

    def writelines(self, lines: list[bytes]) -> None:
        for line in lines:
            self.write(line)

    def write_eof(self) -> None:
        if self._pending_eof or self._eof_written:
            return
        self._session._raise_if_failed()
        self._pending_eof = True
        self._push()

    def can_write_eof(self) -> bool:
        return True

    def _push(self) -> None:
        """Move what fits into the replay buffer; called again whenever room appears."""
        core = self._session._core
        while self._pending:
            chunk = self._pending[0]
            taken = core.send(self.stream_id, chunk)
            if taken < len(chunk):
                self._pending[0] = chunk[taken:]
                self._session._waiting_for_room(self)
                break
            self._pending.popleft()
        if not self._pending and self._pending_eof and not self._eof_written:
            core.send(self.stream_id, b"", end_stream=True)
            self._eof_written = True
        self._session._driver.kick()
        if not self._pending:
            for waiter in self._drain_waiters:
                if not waiter.done():
                    waiter.set_result(None)
            self._drain_waiters.clear()

    async def drain(self) -> None:
        """Wait until everything written is in the session's replay buffer."""
        while self._pending:
            self._session._raise_if_failed()
            waiter = self._session._loop.create_future()
            self._drain_waiters.append(waiter)
            await waiter
        self._session._raise_if_failed()

    @property
    def unacknowledged(self) -> int:
        """Bytes written that the peer has not yet acknowledged."""
        return self._session._core.unacknowledged(self.stream_id) + sum(map(len, self._pending))

    def close(self) -> None:
        self.write_eof()

    async def wait_closed(self) -> None:
        await self.drain()

    def _fail(self) -> None:
        self._wake_reader()
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._drain_waiters.clear()

    async def __aenter__(self) -> SessionStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._session.finished:
            self.close()
            await self.drain()

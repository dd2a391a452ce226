"""The local ends a tunnel stream is spliced to: TCP connections, stdin and stdout.

A ``Source`` is read from and a ``Sink`` written to; both report trouble with
the local program as ``OSError``. stdin and stdout are asyncio pipe transports
when the kernel can poll them (pipes, sockets, terminals, which is what ssh's
ProxyCommand gives); regular files and devices such as /dev/null, which cannot
be polled and never block for long, are read and written directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import selectors
import socket
import stat
import struct
from typing import Protocol

__all__ = ["Sink", "SocketEnd", "Source", "open_stdio"]

CHUNK = 64 * 1024
_LINGER_ZERO = struct.pack("ii", 1, 0)


class Source(Protocol):
    async def read(self, n: int) -> bytes:
        """Up to ``n`` bytes; b"" at end of input."""
        ...


class Sink(Protocol):
    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None:
        """Wait while the local program is slow to take what was written."""
        ...

    def write_eof(self) -> None:
        """Half-close: the local program reads end of input, and may keep writing."""
        ...

    async def close(self, timeout: float) -> None:
        """Flush (for at most ``timeout`` seconds) and close."""
        ...

    def abort(self) -> None:
        """Close at once, with a reset where the transport has one."""
        ...


class SocketEnd:
    """A TCP connection as both source and sink."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def read(self, n: int) -> bytes:
        return await self.reader.read(n)

    def write(self, data: bytes) -> None:
        if self.writer.transport.is_closing():
            raise BrokenPipeError("local connection closed")
        self.writer.write(data)

    async def drain(self) -> None:
        await self.writer.drain()

    def write_eof(self) -> None:
        if not self.writer.transport.is_closing() and self.writer.can_write_eof():
            self.writer.write_eof()

    async def close(self, timeout: float) -> None:
        self.writer.close()
        try:
            await asyncio.wait_for(self.writer.wait_closed(), timeout)
        except (OSError, TimeoutError):
            self.abort()

    def abort(self) -> None:
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
        self.writer.transport.abort()


# --- stdin / stdout -----------------------------------------------------------------------


class _PipeSource:
    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader

    async def read(self, n: int) -> bytes:
        return await self._reader.read(n)


class _WriteProtocol(asyncio.Protocol):
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.paused = False
        self.lost = False
        self.closed: asyncio.Future[None] = loop.create_future()
        self._waiters: list[asyncio.Future[None]] = []

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if not self.closed.done():
            self.closed.set_result(None)
        self._wake()

    def _wake(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()

    async def drain(self) -> None:
        while self.paused and not self.lost:
            waiter = self._loop.create_future()
            self._waiters.append(waiter)
            await waiter
        if self.lost:
            raise BrokenPipeError("output closed")


class _PipeSink:
    """stdout as an asyncio write-pipe transport over a duplicate of fd 1.

    At end of stream fd 1 itself is pointed at /dev/null, so the duplicate,
    closed by the transport once flushed, is our last reference to the pipe and
    the reader sees end of file.
    """

    def __init__(self, transport: asyncio.WriteTransport, protocol: _WriteProtocol,
                 fd: int) -> None:
        self._transport = transport
        self._protocol = protocol
        self._fd = fd
        self._aborted = False

    def write(self, data: bytes) -> None:
        if self._protocol.lost or self._transport.is_closing():
            raise BrokenPipeError("output closed")
        self._transport.write(data)

    async def drain(self) -> None:
        await self._protocol.drain()

    def _release_fd(self) -> None:
        if self._fd >= 0:
            _point_at_devnull(self._fd)
            self._fd = -1

    def write_eof(self) -> None:
        self._release_fd()
        if not self._transport.is_closing():
            self._transport.write_eof()  # closes the pipe once the buffer is flushed

    async def close(self, timeout: float) -> None:
        self._release_fd()
        if not self._transport.is_closing():
            self._transport.close()
        try:
            await asyncio.wait_for(asyncio.shield(self._protocol.closed), timeout)
        except TimeoutError:
            self.abort()

    def abort(self) -> None:
        self._release_fd()
        # asyncio's pipe transport fails on a second close, so only the first one counts.
        if not self._aborted and not self._protocol.lost:
            self._aborted = True
            self._transport.abort()


class _FileSource:
    """A regular file or device that cannot be polled: plain reads, which never block long."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._eof = False

    async def read(self, n: int) -> bytes:
        if self._eof:
            return b""
        await asyncio.sleep(0)  # let the session run between reads
        data = os.read(self._fd, n)
        self._eof = not data
        return data


class _FileSink:
    def __init__(self, fd: int) -> None:
        self._fd = fd

    def write(self, data: bytes) -> None:
        if self._fd < 0:
            raise BrokenPipeError("output closed")
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]

    async def drain(self) -> None:
        await asyncio.sleep(0)

    def write_eof(self) -> None:
        if self._fd >= 0:
            _point_at_devnull(self._fd)
            self._fd = -1

    async def close(self, timeout: float) -> None:
        self.write_eof()

    def abort(self) -> None:
        self.write_eof()


def _point_at_devnull(fd: int) -> None:
    null = os.open(os.devnull, os.O_RDWR)
    try:
        os.dup2(null, fd)
    finally:
        os.close(null)


def _pollable(fd: int, events: int) -> bool:
    try:
        mode = os.fstat(fd).st_mode
        if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode)):
            return False
        with selectors.DefaultSelector() as selector:
            selector.register(fd, events)
        return True
    except (OSError, ValueError):
        return False


def _same_socket(a: int, b: int) -> bool:
    try:
        sa, sb = os.fstat(a), os.fstat(b)
    except OSError:
        return False
    return stat.S_ISSOCK(sa.st_mode) and (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


async def open_stdio(stdin: int = 0, stdout: int = 1) -> tuple[Source, Sink]:
    """stdin as a source and stdout as a sink, the way ssh's ProxyCommand wires them."""
    loop = asyncio.get_running_loop()
    if _same_socket(stdin, stdout):  # inetd style: one socket on both descriptors
        sock = socket.socket(fileno=os.dup(stdin))
        reader, writer = await asyncio.open_connection(sock=sock, limit=CHUNK)
        end = SocketEnd(reader, writer)
        return end, end
    source: Source
    if _pollable(stdin, selectors.EVENT_READ):
        reader = asyncio.StreamReader(limit=CHUNK, loop=loop)
        pipe_in = os.fdopen(os.dup(stdin), "rb", buffering=0)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe_in)
        source = _PipeSource(reader)
    else:
        source = _FileSource(stdin)
    sink: Sink
    if _pollable(stdout, selectors.EVENT_WRITE):
        pipe_out = os.fdopen(os.dup(stdout), "wb", buffering=0)
        transport, protocol = await loop.connect_write_pipe(lambda: _WriteProtocol(loop),
                                                            pipe_out)
        sink = _PipeSink(transport, protocol, stdout)
    else:
        sink = _FileSink(stdout)
    return source, sink

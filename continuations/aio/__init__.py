"""The asyncio layer: ``connect()``, ``serve()`` and stream objects."""

from continuations.aio.client import ClientSession, connect, resume
from continuations.aio.server import Server, ServerSession, serve
from continuations.aio.session import AsyncSession
from continuations.aio.stream import SessionStream

__all__ = [
    "AsyncSession",
    "ClientSession",
    "Server",
    "ServerSession",
    "SessionStream",
    "connect",
    "resume",
    "serve",
]

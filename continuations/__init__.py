"""continuations: sessions that survive network changes, outages and suspend/resume.

The public surface is what ``__all__`` lists; everything else is private. The
sans-I/O protocol core is in ``continuations.protocol`` and the loopback
impairment relay for tests and demos in ``continuations.testing``.
"""

from continuations.aio import (
    AsyncSession,
    ClientSession,
    Server,
    ServerSession,
    SessionStream,
    connect,
    serve,
)
from continuations.errors import (
    AttachRejectedError,
    AuthenticationError,
    ConfigError,
    ConnectError,
    ContinuationsError,
    FrameError,
    HostKeyMismatchError,
    InvalidTransitionError,
    LocalError,
    ProtocolError,
    RemoteError,
    SessionClosedError,
    SessionError,
    SessionLostError,
    StreamStateError,
    VersionError,
)
from continuations.hostkeys import KnownHosts, fingerprint, load_or_create_host_key
from continuations.protocol import (
    Disconnected,
    Reattached,
    SessionClosed,
    SessionConfig,
    SessionLost,
    SessionState,
)

__version__ = "0.1.0"

__all__ = [
    "AsyncSession",
    "AttachRejectedError",
    "AuthenticationError",
    "ClientSession",
    "ConfigError",
    "ConnectError",
    "ContinuationsError",
    "Disconnected",
    "FrameError",
    "HostKeyMismatchError",
    "InvalidTransitionError",
    "KnownHosts",
    "LocalError",
    "ProtocolError",
    "Reattached",
    "RemoteError",
    "Server",
    "ServerSession",
    "SessionClosed",
    "SessionClosedError",
    "SessionConfig",
    "SessionError",
    "SessionLost",
    "SessionLostError",
    "SessionState",
    "SessionStream",
    "StreamStateError",
    "VersionError",
    "connect",
    "fingerprint",
    "load_or_create_host_key",
    "serve",
]

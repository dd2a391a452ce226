"""continuations: sessions that survive network changes, outages and suspend/resume.

The public surface is what ``__all__`` lists; everything else is private. The
sans-I/O protocol core is in ``continuations.protocol`` and the loopback
impairment relay for tests and demos in ``continuations.testing``.
"""

from typing import TYPE_CHECKING

from continuations._lazy import exports

# Loaded on first use (continuations/_lazy.py). Names -> defining modules.
_EXPORTS = {
    "AsyncSession": "continuations.aio",
    "AttachRejectedError": "continuations.errors",
    "AuthenticationError": "continuations.errors",
    "ClientSession": "continuations.aio",
    "ConfigError": "continuations.errors",
    "ConnectError": "continuations.errors",
    "ContinuationsError": "continuations.errors",
    "Disconnected": "continuations.protocol",
    "FrameError": "continuations.errors",
    "HostKeyMismatchError": "continuations.errors",
    "InvalidTransitionError": "continuations.errors",
    "KnownHosts": "continuations.hostkeys",
    "LocalError": "continuations.errors",
    "ProtocolError": "continuations.errors",
    "Reattached": "continuations.protocol",
    "RemoteError": "continuations.errors",
    "Server": "continuations.aio",
    "ServerSession": "continuations.aio",
    "SessionClosed": "continuations.protocol",
    "SessionClosedError": "continuations.errors",
    "SessionConfig": "continuations.protocol",
    "SessionError": "continuations.errors",
    "SessionLost": "continuations.protocol",
    "SessionLostError": "continuations.errors",
    "SessionState": "continuations.protocol",
    "SessionStream": "continuations.aio",
    "StreamStateError": "continuations.errors",
    "VersionError": "continuations.errors",
    "connect": "continuations.aio",
    "fingerprint": "continuations.hostkeys",
    "load_or_create_host_key": "continuations.hostkeys",
    "serve": "continuations.aio",
}


__getattr__ = exports(__name__, _EXPORTS)

if TYPE_CHECKING:
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

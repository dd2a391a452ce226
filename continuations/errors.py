"""The one error tree of `continuations`.

::

    ContinuationsError
    ├── LocalError                  we misused the API; always raised
    │   ├── InvalidTransitionError  a state change the state table does not allow
    │   ├── StreamStateError        e.g. writing after end of stream, unknown stream id
    │   └── ConfigError             a setting out of range
    ├── RemoteError                 the peer (or the network) misbehaved
    │   ├── ProtocolError           malformed or illegal input: ends that link only
    │   │   ├── FrameError          bad length, unknown type, truncated field
    │   │   └── VersionError        a protocol version we do not speak
    │   ├── AuthenticationError     bad record tag, bad attach proof, bad signature
    │   ├── AttachRejectedError     the server refused a re-attach (stale, unknown, proof)
    │   └── HostKeyMismatchError    the server's host key differs from the pinned one
    ├── SessionError                the session as a whole cannot go on
    │   ├── SessionClosedError      closed in order (by us or the peer)
    │   ├── SessionLostError        expired, or state needed to resume is gone
    │   └── ConnectError            the first handshake could not be completed
    ├── ContinuationError           suspend or resume could not complete
    │   ├── ResourceError           a resource could not be released or reacquired
    │   └── GeneratorError          a continuation generator failed or missed its deadline
    └── StoreError                  the shared attribute store refused an operation
        ├── IntegrityError          a row failed authentication: tampered or foreign
        ├── ConflictError           compare-and-set lost: the key's version moved on
        ├── NotFoundError           no such session, attribute or continuation
        └── SchemaError             the database is from a newer version, or corrupt

Inside the sans-I/O core a peer's fault never raises out of an input method: it
closes that transport link and surfaces as a ``LinkFailed`` event. Only local
misuse raises. The asyncio layer turns session-level outcomes into the
``SessionError`` branch for callers.
"""

from __future__ import annotations


class ContinuationsError(Exception):
    """Base of every error raised by this package."""


class LocalError(ContinuationsError):
    """The caller used the API in a way it does not allow."""


class InvalidTransitionError(LocalError):
    """A state transition that the state table does not list."""


class StreamStateError(LocalError):
    """A stream operation that the stream's state forbids."""


class ConfigError(LocalError, ValueError):
    """A configuration value outside its allowed range."""


class RemoteError(ContinuationsError):
    """The peer, or something on the path, sent what the protocol forbids."""


class ProtocolError(RemoteError):
    """Malformed or illegal input; ends the transport link, never the session."""


class FrameError(ProtocolError):
    """A frame or record that cannot be decoded within the limits."""


class VersionError(ProtocolError):
    """The peer speaks a protocol version this implementation does not."""


class AuthenticationError(RemoteError):
    """Integrity or authenticity check failed (record tag, proof, signature)."""


class AttachRejectedError(RemoteError):
    """The server refused a re-attach request; the reason is in the message."""

    def __init__(self, reason: str, code: int = 0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


class HostKeyMismatchError(RemoteError):
    """The server presented a host key that differs from the pinned one."""

    def __init__(self, host: str, expected: str, presented: str, known_hosts: str) -> None:
        super().__init__(
            f"host key for {host} does not match the one pinned in {known_hosts}: "
            f"expected {expected}, server presented {presented}. Someone may be "
            f"intercepting the connection; if the key changed on purpose, remove the "
            f"line for {host} from {known_hosts}."
        )
        self.host = host
        self.expected = expected
        self.presented = presented
        self.known_hosts = known_hosts


class SessionError(ContinuationsError):
    """The session as a whole cannot continue."""


class SessionClosedError(SessionError):
    """The session was closed in order, by this side or the peer."""


class SessionLostError(SessionError):
    """The session expired or cannot be resumed."""


class ConnectError(SessionError):
    """The first handshake with the server failed."""


class ContinuationError(ContinuationsError):
    """Suspending or resuming an application could not complete."""


class ResourceError(ContinuationError):
    """A file, port, socket or child process could not be released or reacquired."""


class GeneratorError(ContinuationError):
    """A continuation generator raised, returned something else than a continuation or
    BLOCK, or did not finish within its deadline."""


class StoreError(ContinuationsError):
    """The shared attribute store refused an operation."""


class IntegrityError(StoreError):
    """A stored row failed authentication (tampered, or copied from elsewhere).

    Raised before anything in the row is deserialised.
    """


class ConflictError(StoreError):
    """A compare-and-set found a different version than expected."""

    def __init__(self, message: str, expected: int | None, actual: int | None) -> None:
        super().__init__(message)
        self.expected = expected
        self.actual = actual


class NotFoundError(StoreError, KeyError):
    """No such session, attribute or continuation in the store."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "not found"


class SchemaError(StoreError):
    """The store's schema is newer than this code, or damaged."""


__all__ = [
    "AttachRejectedError",
    "AuthenticationError",
    "ConfigError",
    "ConflictError",
    "ConnectError",
    "ContinuationError",
    "ContinuationsError",
    "FrameError",
    "GeneratorError",
    "HostKeyMismatchError",
    "IntegrityError",
    "InvalidTransitionError",
    "LocalError",
    "NotFoundError",
    "ProtocolError",
    "RemoteError",
    "ResourceError",
    "SchemaError",
    "SessionClosedError",
    "SessionError",
    "SessionLostError",
    "StoreError",
    "StreamStateError",
    "VersionError",
]

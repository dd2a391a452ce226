"""Resumable tunnels for unmodified programs: TCP over a session that survives the path.

``continuations tunnel-server`` accepts sessions and turns each stream into a
connection to an allowed target; ``continuations tunnel`` is the client, as an
OpenSSH ProxyCommand (stdin/stdout) or as a local port forwarder. See
docs/tunnels.md.
"""

from continuations.tunnel.client import Forwarder, Relay, SessionRelay, TunnelClient, relay_on
from continuations.tunnel.ends import Sink, SocketEnd, Source, open_stdio
from continuations.tunnel.header import (
    VERSION,
    HeaderError,
    TunnelRefusedError,
    decode_reply,
    decode_request,
    encode_reply,
    encode_request,
)
from continuations.tunnel.server import TunnelServer, TunnelStats, serve_tunnel
from continuations.tunnel.splice import SpliceResult, splice
from continuations.tunnel.targets import DEFAULT_ALLOWED, AllowList, Forward, Target

__all__ = [
    "AllowList",
    "DEFAULT_ALLOWED",
    "Forward",
    "Forwarder",
    "HeaderError",
    "Relay",
    "SessionRelay",
    "Sink",
    "SocketEnd",
    "Source",
    "SpliceResult",
    "Target",
    "TunnelClient",
    "TunnelRefusedError",
    "TunnelServer",
    "TunnelStats",
    "VERSION",
    "decode_reply",
    "decode_request",
    "encode_reply",
    "encode_request",
    "open_stdio",
    "relay_on",
    "serve_tunnel",
    "splice",
]

"""Follow the host's network through the kernel's rtnetlink notifications (Linux).

``NetWatcher`` keeps a ``NetworkView`` of links and IPv4 addresses current from
link, address and route notifications; ``NetworkFollower`` moves a client
session to the preferred usable address as soon as the one in use goes away or
a better one appears. ``messages`` and ``view`` are sans-I/O: bytes in, events
and state out. Guide: docs/sessions.md.
"""

from continuations.netwatch.follow import Migration, NetworkFollower
from continuations.netwatch.messages import (
    AddressEvent,
    DumpDone,
    LinkEvent,
    NetlinkEvent,
    NetlinkFailure,
    RouteEvent,
    dump_request,
    parse,
)
from continuations.netwatch.view import Choice, NetworkView
from continuations.netwatch.watcher import Change, NetWatcher

__all__ = [
    "AddressEvent",
    "Change",
    "Choice",
    "DumpDone",
    "LinkEvent",
    "Migration",
    "NetWatcher",
    "NetlinkEvent",
    "NetlinkFailure",
    "NetworkFollower",
    "NetworkView",
    "RouteEvent",
    "dump_request",
    "parse",
]

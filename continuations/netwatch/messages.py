"""rtnetlink messages, sans-I/O: build dump requests, parse what the kernel sends.

Only what a mobile client needs to follow its network is decoded: links (name,
administratively up, operational), IPv4 addresses, and IPv4 routes. Everything
else the kernel may send on the same socket is skipped. Layouts are from
``linux/netlink.h``, ``linux/rtnetlink.h``, ``linux/if_link.h`` and
``linux/if_addr.h``; integers are in the host's byte order.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass

from continuations.errors import FrameError

# Multicast groups (the legacy bitmask form that bind() takes).
RTMGRP_LINK = 0x1
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV4_ROUTE = 0x40
GROUPS = RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE

NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLMSG_OVERRUN = 4
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26

NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300

IFF_UP = 0x1
IFF_LOOPBACK = 0x8
IFF_RUNNING = 0x40  # operational (RFC 2863 "up"): carrier, and not dormant
IFF_LOWER_UP = 0x10000

IFLA_IFNAME = 3
IFA_ADDRESS, IFA_LOCAL, IFA_LABEL = 1, 2, 3
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY, RTA_TABLE = 1, 4, 5, 6, 15
RTNH_F_LINKDOWN = 0x10
RT_SCOPE_HOST = 254

_HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, seq, pid
_IFINFO = struct.Struct("=BxHiII")  # ifinfomsg: family, type, index, flags, change
_IFADDR = struct.Struct("=BBBBI")  # ifaddrmsg: family, prefixlen, flags, scope, index
_RTMSG = struct.Struct("=BBBBBBBBI")  # rtmsg: family, dst_len, src_len, tos, table,
#                                       protocol, scope, type, flags
_RTATTR = struct.Struct("=HH")  # rtattr: length, type
_ERROR = struct.Struct("=i")


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkEvent:
    """A link appeared, changed or went away (RTM_NEWLINK / RTM_DELLINK)."""

    index: int
    name: str
    flags: int
    removed: bool

    @property
    def up(self) -> bool:
        """Administratively up (``ip link set NAME up``)."""
        return bool(self.flags & IFF_UP)

    @property
    def running(self) -> bool:
        """Operational: up and with a carrier (the peer is there, the radio associated)."""
        return bool(self.flags & IFF_UP) and bool(self.flags & IFF_RUNNING)

    @property
    def loopback(self) -> bool:
        return bool(self.flags & IFF_LOOPBACK)


@dataclass(frozen=True, slots=True, kw_only=True)
class AddressEvent:
    """An IPv4 address was added to or removed from a link (RTM_NEWADDR / RTM_DELADDR)."""

    index: int
    address: str
    prefixlen: int
    scope: int
    label: str
    removed: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteEvent:
    """An IPv4 route was added or removed (RTM_NEWROUTE / RTM_DELROUTE)."""

    destination: str  # "0.0.0.0/0" for a default route
    gateway: str | None
    oif: int | None  # the outgoing link's index
    table: int
    priority: int | None
    linkdown: bool  # the kernel flagged the next hop's link as down
    removed: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class DumpDone:
    """The end of a dump this socket asked for (``seq`` echoes the request)."""

    seq: int


@dataclass(frozen=True, slots=True, kw_only=True)
class NetlinkFailure:
    """The kernel answered a request with an error (``errno`` is positive)."""

    seq: int
    errno: int


NetlinkEvent = LinkEvent | AddressEvent | RouteEvent | DumpDone | NetlinkFailure


def dump_request(kind: int, seq: int) -> bytes:
    """An RTM_GET* dump request: ``kind`` is RTM_GETLINK, RTM_GETADDR or RTM_GETROUTE."""
    if kind == RTM_GETLINK:
        body = _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
    elif kind == RTM_GETADDR:
        body = _IFADDR.pack(socket.AF_INET, 0, 0, 0, 0)
    elif kind == RTM_GETROUTE:
        body = _RTMSG.pack(socket.AF_INET, 0, 0, 0, 0, 0, 0, 0, 0)
    else:
        raise ValueError(f"not a dump request type: {kind}")
    return _HEADER.pack(_HEADER.size + len(body), kind, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body


def _align(n: int) -> int:
    return (n + 3) & ~3


def _attributes(data: bytes, offset: int, end: int) -> dict[int, bytes]:
    """rtattrs from ``offset`` to ``end``; the last of a repeated type wins."""
    attrs: dict[int, bytes] = {}
    while offset + _RTATTR.size <= end:
        length, kind = _RTATTR.unpack_from(data, offset)
        if length < _RTATTR.size or offset + length > end:
            raise FrameError(f"rtattr of length {length} overruns its message")
        attrs[kind & 0x3FFF] = data[offset + _RTATTR.size : offset + length]  # drop NLA_F_*
        offset += _align(length)
    return attrs


def _text(raw: bytes | None) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace") if raw else ""


def _ipv4(raw: bytes | None) -> str | None:
    return str(ipaddress.IPv4Address(raw)) if raw is not None and len(raw) == 4 else None


def _u32(raw: bytes | None) -> int | None:
    return struct.unpack("=I", raw)[0] if raw is not None and len(raw) == 4 else None


def _link(data: bytes, offset: int, end: int, kind: int) -> LinkEvent:
    _, _, index, flags, _ = _IFINFO.unpack_from(data, offset)
    attrs = _attributes(data, offset + _IFINFO.size, end)
    return LinkEvent(index=index, name=_text(attrs.get(IFLA_IFNAME)), flags=flags,
                     removed=kind == RTM_DELLINK)


def _address(data: bytes, offset: int, end: int, kind: int) -> AddressEvent | None:
    family, prefixlen, _, scope, index = _IFADDR.unpack_from(data, offset)
    if family != socket.AF_INET:
        return None
    attrs = _attributes(data, offset + _IFADDR.size, end)
    # IFA_LOCAL is this host's address; IFA_ADDRESS is the peer's on point-to-point links.
    address = _ipv4(attrs.get(IFA_LOCAL)) or _ipv4(attrs.get(IFA_ADDRESS))
    if address is None:
        return None
    return AddressEvent(index=index, address=address, prefixlen=prefixlen, scope=scope,
                        label=_text(attrs.get(IFA_LABEL)), removed=kind == RTM_DELADDR)


def _route(data: bytes, offset: int, end: int, kind: int) -> RouteEvent | None:
    family, dst_len, _, _, table, _, _, _, flags = _RTMSG.unpack_from(data, offset)
    if family != socket.AF_INET:
        return None
    attrs = _attributes(data, offset + _RTMSG.size, end)
    destination = _ipv4(attrs.get(RTA_DST)) or "0.0.0.0"
    return RouteEvent(
        destination=f"{destination}/{dst_len}", gateway=_ipv4(attrs.get(RTA_GATEWAY)),
        oif=_u32(attrs.get(RTA_OIF)), table=_u32(attrs.get(RTA_TABLE)) or table,
        priority=_u32(attrs.get(RTA_PRIORITY)), linkdown=bool(flags & RTNH_F_LINKDOWN),
        removed=kind == RTM_DELROUTE,
    )


_BODY_SIZE = {
    RTM_NEWLINK: _IFINFO.size, RTM_DELLINK: _IFINFO.size,
    RTM_NEWADDR: _IFADDR.size, RTM_DELADDR: _IFADDR.size,
    RTM_NEWROUTE: _RTMSG.size, RTM_DELROUTE: _RTMSG.size,
}


def parse(data: bytes) -> list[NetlinkEvent]:
    """Every event in one datagram read from a NETLINK_ROUTE socket, in order.

    Raises ``FrameError`` for a datagram that does not hold whole messages.
    """
    events: list[NetlinkEvent] = []
    offset = 0
    while offset + _HEADER.size <= len(data):
        length, kind, _, seq, _ = _HEADER.unpack_from(data, offset)
        if length < _HEADER.size or offset + length > len(data):
            raise FrameError(f"netlink message of length {length} at offset {offset} "
                             f"overruns a {len(data)}-byte datagram")
        body, end = offset + _HEADER.size, offset + length
        event: NetlinkEvent | None = None
        if kind in _BODY_SIZE:
            if end - body < _BODY_SIZE[kind]:
                raise FrameError(f"netlink message type {kind} is {length} bytes, too short")
            if kind in (RTM_NEWLINK, RTM_DELLINK):
                event = _link(data, body, end, kind)
            elif kind in (RTM_NEWADDR, RTM_DELADDR):
                event = _address(data, body, end, kind)
            else:
                event = _route(data, body, end, kind)
        elif kind == NLMSG_DONE:
            event = DumpDone(seq=seq)
        elif kind == NLMSG_ERROR:
            if end - body < _ERROR.size:
                raise FrameError("truncated netlink error message")
            (error,) = _ERROR.unpack_from(data, body)
            if error:  # zero is an acknowledgement
                event = NetlinkFailure(seq=seq, errno=-error)
        if event is not None:
            events.append(event)
        offset += _align(length)
    if offset < len(data) and any(data[offset:]):
        raise FrameError(f"{len(data) - offset} stray bytes after the last netlink message")
    return events

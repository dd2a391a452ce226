"""rtnetlink parsing and the network view (bytes in, events and state out), and the
watcher against a real kernel inside a network namespace the test creates."""

from __future__ import annotations

import json
import os
import select
import shutil
import socket
import struct
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator

import pytest

import continuations.netwatch as netwatch
from continuations.errors import FrameError
from continuations.netwatch import (
    AddressEvent,
    DumpDone,
    LinkEvent,
    NetlinkFailure,
    NetworkView,
    RouteEvent,
    dump_request,
    parse,
)
from continuations.netwatch.messages import (
    IFF_LOOPBACK,
    IFF_LOWER_UP,
    IFF_RUNNING,
    IFF_UP,
    NLMSG_DONE,
    NLMSG_ERROR,
    RTM_DELADDR,
    RTM_GETADDR,
    RTM_GETLINK,
    RTM_NEWADDR,
    RTM_NEWLINK,
    RTM_NEWROUTE,
)

RUNNING = IFF_UP | IFF_RUNNING | IFF_LOWER_UP


def attr(kind: int, payload: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(payload), kind) + payload
    return raw + b"\0" * (-len(raw) % 4)


def message(kind: int, body: bytes, seq: int = 0) -> bytes:
    raw = struct.pack("=IHHII", 16 + len(body), kind, 0, seq, 0) + body
    return raw + b"\0" * (-len(raw) % 4)


def link(index: int, name: str, flags: int, kind: int = RTM_NEWLINK) -> bytes:
    body = struct.pack("=BxHiII", socket.AF_UNSPEC, 1, index, flags, 0xFFFFFFFF)
    return message(kind, body + attr(3, name.encode() + b"\0"))


def address(index: int, addr: str, kind: int = RTM_NEWADDR, scope: int = 0) -> bytes:
    body = struct.pack("=BBBBI", socket.AF_INET, 24, 0, scope, index)
    packed = socket.inet_aton(addr)
    return message(kind, body + attr(1, packed) + attr(2, packed) + attr(3, b"wifi\0"))


def test_the_public_surface_is_sorted() -> None:
    assert netwatch.__all__ == sorted(netwatch.__all__)
    for name in netwatch.__all__:
        assert hasattr(netwatch, name)


def test_links_addresses_routes_and_dump_ends_are_decoded() -> None:
    route_body = struct.pack("=BBBBBBBBI", socket.AF_INET, 0, 0, 0, 254, 3, 0, 1, 0x10)
    route = message(RTM_NEWROUTE, route_body + attr(5, socket.inet_aton("10.0.0.1"))
                    + attr(4, struct.pack("=I", 7)) + attr(6, struct.pack("=I", 100)))
    error = message(NLMSG_ERROR, struct.pack("=i", -16) + b"\0" * 16, seq=9)
    ack = message(NLMSG_ERROR, struct.pack("=i", 0) + b"\0" * 16, seq=10)
    data = (link(7, "wifi", RUNNING) + address(7, "10.201.1.2") + route
            + message(NLMSG_DONE, struct.pack("=i", 0), seq=5) + error + ack)
    events = parse(data)
    assert events == [
        LinkEvent(index=7, name="wifi", flags=RUNNING, removed=False),
        AddressEvent(index=7, address="10.201.1.2", prefixlen=24, scope=0, label="wifi",
                     removed=False),
        RouteEvent(destination="0.0.0.0/0", gateway="10.0.0.1", oif=7, table=254,
                   priority=100, linkdown=True, removed=False),
        DumpDone(seq=5),
        NetlinkFailure(seq=9, errno=16),
    ]
    assert isinstance(events[0], LinkEvent) and events[0].running


def test_ipv6_and_unknown_messages_are_skipped() -> None:
    v6 = message(RTM_NEWADDR, struct.pack("=BBBBI", socket.AF_INET6, 64, 0, 0, 2)
                 + attr(1, b"\0" * 16))
    other = message(0x7FF, b"whatever")
    assert parse(v6 + other) == []


@pytest.mark.parametrize("data", [
    struct.pack("=IHHII", 200, RTM_NEWLINK, 0, 0, 0),  # longer than the datagram
    struct.pack("=IHHII", 8, RTM_NEWLINK, 0, 0, 0),  # shorter than its own header
    message(RTM_NEWLINK, b"\0" * 8),  # body shorter than an ifinfomsg
    message(RTM_NEWLINK, struct.pack("=BxHiII", 0, 1, 3, 0, 0) + struct.pack("=HH", 40, 3)),
    message(NLMSG_DONE, b"") + b"\x01\x02",  # trailing garbage
])
def test_malformed_datagrams_raise_frame_error(data: bytes) -> None:
    with pytest.raises(FrameError):
        parse(data)


def test_dump_requests_have_the_documented_layout() -> None:
    request = dump_request(RTM_GETADDR, 42)
    length, kind, flags, seq, pid = struct.unpack_from("=IHHII", request)
    assert (length, kind, flags, seq, pid) == (len(request), RTM_GETADDR, 0x301, 42, 0)
    assert len(dump_request(RTM_GETLINK, 1)) == 32
    with pytest.raises(ValueError):
        dump_request(RTM_NEWLINK, 1)


def test_the_view_tracks_usable_addresses_and_chooses_by_preference() -> None:
    view = NetworkView()
    # An address may arrive before its link (a dump of addresses racing a new link).
    assert not view.apply(parse(address(3, "10.201.2.2")))
    assert view.apply(parse(link(3, "cellular", RUNNING) + link(2, "wifi", RUNNING)
                            + address(2, "10.201.1.2") + link(1, "lo", RUNNING | IFF_LOOPBACK)
                            + address(1, "127.0.0.1", scope=254)))
    assert view.usable() == {"cellular": ("10.201.2.2",), "wifi": ("10.201.1.2",)}
    assert view.choose(["wifi", "cellular"]) == netwatch.Choice("wifi", "10.201.1.2")

    # Carrier lost on wifi: the address stays, but it is not usable.
    assert view.apply(parse(link(2, "wifi", IFF_UP)))
    assert view.addresses("wifi") == ["10.201.1.2"]
    assert not view.is_usable("10.201.1.2")
    assert view.choose(["wifi", "cellular"]) == netwatch.Choice("cellular", "10.201.2.2")
    assert not view.apply(parse(link(2, "wifi", IFF_UP)))  # repeated: no change

    # Carrier back, then cellular's address goes away, then the link itself.
    assert view.apply(parse(link(2, "wifi", RUNNING)))
    assert view.apply(parse(address(3, "10.201.2.2", kind=RTM_DELADDR)))
    assert view.usable() == {"wifi": ("10.201.1.2",)}
    assert view.apply(parse(link(2, "wifi", RUNNING, kind=17)))
    assert view.usable() == {} and view.choose(["wifi"]) is None
    assert view.interfaces() == {"cellular": True, "lo": True}


# --- against the kernel ------------------------------------------------------------------

WATCH = textwrap.dedent("""
    import asyncio, json, sys
    from continuations.netwatch import NetWatcher

    async def main():
        watcher = NetWatcher()
        watcher.add_listener(lambda c: print(json.dumps(c.usable), flush=True))
        await watcher.start()
        print(json.dumps(watcher.view.usable()), flush=True)
        await asyncio.sleep(float(sys.argv[1]))
        watcher.close()

    asyncio.run(main())
""")


@pytest.fixture
def namespace() -> Iterator[str]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 to create a network namespace")
    name = f"cnw-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=30)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=True, timeout=30)


def test_the_watcher_sees_links_and_addresses_change(namespace: str) -> None:
    def ip(*args: str) -> None:
        subprocess.run(["ip", "-n", namespace, *args], check=True, timeout=30)

    ip("link", "add", "name", "wifi", "type", "veth", "peer", "name", "wifi-ap")
    ip("addr", "add", "10.9.1.2/24", "dev", "wifi")
    ip("link", "set", "wifi-ap", "up")
    watcher = subprocess.Popen(
        ["ip", "netns", "exec", namespace, sys.executable, "-c", WATCH, "30"],
        stdout=subprocess.PIPE, bufsize=0,
    )
    lines = Lines(watcher)
    try:
        assert lines.next() == {}  # wifi is down
        ip("link", "set", "wifi", "up")
        assert lines.next() == {"wifi": ["10.9.1.2"]}
        ip("link", "set", "wifi-ap", "down")  # the peer goes: carrier lost
        assert lines.next() == {}
        ip("link", "set", "wifi-ap", "up")
        assert lines.next() == {"wifi": ["10.9.1.2"]}
        ip("addr", "add", "10.9.1.3/24", "dev", "wifi")
        assert lines.next() == {"wifi": ["10.9.1.2", "10.9.1.3"]}
        ip("addr", "del", "10.9.1.2/24", "dev", "wifi")
        # Deleting the primary address may take the secondary with it (promote_secondaries
        # is off in a new namespace); either way the deleted one is gone.
        assert lines.next() in ({"wifi": ["10.9.1.3"]}, {})
    finally:
        watcher.kill()
        watcher.wait(timeout=10)


class Lines:
    """JSON lines from a child's stdout, each waited for at most ``timeout`` seconds."""

    def __init__(self, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
        assert proc.stdout is not None
        self.fd = proc.stdout.fileno()
        self.timeout = timeout
        self.buffer = b""

    def next(self) -> object:
        deadline = time.monotonic() + self.timeout
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.fd], [], [], max(0.0, left))
            if not ready:
                raise TimeoutError(f"no line within {self.timeout:g} s")
            chunk = os.read(self.fd, 4096)
            if not chunk:
                raise EOFError("the watcher exited")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)

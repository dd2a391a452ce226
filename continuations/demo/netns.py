"""The ``--netns`` demo's network: two namespaces joined by a "wifi" and a "cellular" link.

::

    namespace cdemo-PID-mobile               namespace cdemo-PID-server
    wifi      10.201.1.2/24  <-- veth -->  wifi-ap  10.201.1.1/24
    cellular  10.201.2.2/24  <-- veth -->  cell-bs  10.201.2.1/24
                                           lo       10.201.0.1/32 (the service)

Both ends of both veth pairs are created inside the demo's namespaces, and every
address lives there too: the host's own interfaces, addresses and routes are
never touched. The mobile side routes by source address (one table per link,
as a multi-homed phone does), so the address a socket is bound to picks the link.
The demo's own thread enters the server namespace (``enter``); the client runs
in the mobile one (``ip netns exec``). ``destroy`` deletes both namespaces,
which destroys the veth pairs with them.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import subprocess
from dataclasses import dataclass

from continuations.errors import LocalError
from continuations.runtime.resources import pid_alive

PREFIX = "cdemo"
_NAME = re.compile(rf"^{PREFIX}-(\d+)-(server|mobile)$")
_CLONE_NEWNET = 0x40000000
SERVICE = "10.201.0.1"


@dataclass(frozen=True, slots=True)
class Link:
    name: str  # the mobile side's interface
    peer: str  # the server side's interface
    address: str  # the mobile side's address
    gateway: str  # the server side's address
    table: int
    metric: int
    index: int  # the mobile side's interface index; the peer's is index + 10


# Distinct interface indexes on the two ends: the kernel reports a veth's carrier
# change at once only if its index differs from its peer's (linkwatch), and fresh
# namespaces would number both ends alike; otherwise it may batch the report for up
# to a second, as it does for ordinary NICs.
LINKS = (
    Link("wifi", "wifi-ap", "10.201.1.2", "10.201.1.1", 101, 100, 11),
    Link("cellular", "cell-bs", "10.201.2.2", "10.201.2.1", 102, 200, 12),
)


def unavailable() -> str | None:
    """Why ``--netns`` cannot run here, or None if it can."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "--netns needs root (it creates network namespaces and veth links)"
    if shutil.which("ip") is None:
        return "--netns needs iproute2's `ip` command (apt-get install iproute2)"
    return None


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise LocalError(f"`ip {' '.join(args)}` failed: {done.stderr.strip()}")


def _namespaces() -> list[str]:
    done = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=30)
    return [line.split()[0] for line in done.stdout.splitlines() if line.strip()]



def remove_stale() -> list[str]:
    """Delete namespaces left by an earlier demo that was killed (its pid is gone)."""
    removed = []
    for name in _namespaces():
        match = _NAME.match(name)
        if match and int(match.group(1)) != os.getpid() and not pid_alive(int(match.group(1))):
            with contextlib.suppress(LocalError):
                _ip("netns", "del", name)
                removed.append(name)
    return removed


def _setns(fd: int) -> None:
    setns = getattr(os, "setns", None)  # Python 3.12+
    if setns is not None:
        setns(fd, _CLONE_NEWNET)
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, _CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


class Namespaces:
    def __init__(self) -> None:
        tag = f"{PREFIX}-{os.getpid()}"
        self.server = f"{tag}-server"
        self.mobile = f"{tag}-mobile"
        self._made: list[str] = []
        self._home: int | None = None

    @property
    def names(self) -> list[str]:
        return [self.mobile, self.server]

    def create(self) -> None:
        """Build the two namespaces and links; on failure remove whatever was made."""
        try:
            for name in (self.server, self.mobile):
                _ip("netns", "add", name)
                self._made.append(name)
                _ip("-n", name, "link", "set", "lo", "up")
            s, m = self.server, self.mobile
            _ip("-n", s, "addr", "add", f"{SERVICE}/32", "dev", "lo")
            for link in LINKS:
                _ip("-n", m, "link", "add", "name", link.name, "index", str(link.index),
                    "type", "veth", "peer", "name", link.peer, "index", str(link.index + 10),
                    "netns", s)
                _ip("-n", m, "addr", "add", f"{link.address}/24", "dev", link.name)
                _ip("-n", s, "addr", "add", f"{link.gateway}/24", "dev", link.peer)
                # The access point announces itself (gratuitous ARP) whenever it comes up, as
                # real ones do: the phone's stale ARP entry for it is then fixed at once,
                # instead of at the next ARP retry up to a second later.
                _ip("netns", "exec", s, "sh", "-c",
                    f"echo 1 > /proc/sys/net/ipv4/conf/{link.peer}/arp_notify")
                _ip("-n", m, "link", "set", link.name, "up")
                _ip("-n", s, "link", "set", link.peer, "up")
                # Source-address routing: a socket bound to this link's address leaves by it.
                _ip("-n", m, "rule", "add", "from", link.address, "table", str(link.table))
                _ip("-n", m, "route", "add", f"{SERVICE}/32", "via", link.gateway, "dev",
                    link.name, "table", str(link.table))
                _ip("-n", m, "route", "add", f"{SERVICE}/32", "via", link.gateway, "dev",
                    link.name, "metric", str(link.metric))
        except BaseException:
            self.destroy()
            raise

    def enter(self) -> None:
        """Move the calling thread (and the threads and processes it starts later) into
        the server namespace; ``leave`` comes back."""
        self._home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(f"/run/netns/{self.server}", os.O_RDONLY)
        try:
            _setns(target)
        except OSError as exc:
            raise LocalError(f"cannot enter namespace {self.server}: {exc}") from exc
        finally:
            os.close(target)

    def leave(self) -> None:
        if self._home is not None:
            with contextlib.suppress(OSError):
                _setns(self._home)
            os.close(self._home)
            self._home = None

    def in_mobile(self) -> list[str]:
        """The command prefix that runs a program in the mobile namespace."""
        return ["ip", "netns", "exec", self.mobile]

    def set_link_command(self, link: Link, up: bool) -> list[str]:
        """Take the server side of a link down or up: the mobile side loses or regains
        its carrier, as a phone walking out of and back into a wifi's range."""
        return ["ip", "-n", self.server, "link", "set", link.peer, "up" if up else "down"]

    def pids(self) -> list[int]:
        """Processes in the mobile namespace: the clients and the resumer the demo started
        there (the demo itself sits in the server one)."""
        if self.mobile not in self._made:
            return []
        done = subprocess.run(["ip", "netns", "pids", self.mobile], capture_output=True,
                              text=True, timeout=30)
        return [int(p) for p in done.stdout.split() if p.isdigit() and int(p) != os.getpid()]

    def destroy(self) -> None:
        """Delete the namespaces (and with them the veth pairs). Idempotent."""
        self.leave()
        for name in reversed(self._made):
            with contextlib.suppress(LocalError):
                _ip("netns", "del", name)
        self._made.clear()

    def leftovers(self) -> list[str]:
        """Namespaces of this demo that still exist (empty after ``destroy``)."""
        mine = set(self.names)
        return [name for name in _namespaces() if name in mine]

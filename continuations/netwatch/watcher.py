"""An asyncio watcher of the kernel's link, address and route notifications (Linux).

It opens a ``NETLINK_ROUTE`` socket subscribed to the link, IPv4 address and
IPv4 route groups, reads the current state with dumps, then applies every
notification to a ``NetworkView`` and tells its listeners when the set of
usable addresses changes. If the kernel had to drop notifications (the socket's
buffer overran, ``ENOBUFS``) it reads the whole state again, so the view never
stays wrong.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass

from continuations.errors import FrameError, LocalError
from continuations.netwatch.messages import (
    GROUPS,
    RTM_GETADDR,
    RTM_GETLINK,
    RTM_GETROUTE,
    DumpDone,
    NetlinkEvent,
    NetlinkFailure,
    dump_request,
    parse,
)
from continuations.netwatch.view import NetworkView

log = logging.getLogger("continuations.netwatch")

RECEIVE_BUFFER = 1 << 20
DUMP_TIMEOUT = 5.0
_MAX_DATAGRAM = 1 << 16


@dataclass(frozen=True, slots=True, kw_only=True)
class Change:
    """The usable addresses changed. ``at`` is the loop time the notification was read."""

    at: float
    events: tuple[NetlinkEvent, ...]
    usable: dict[str, tuple[str, ...]]


Listener = Callable[[Change], None]


class NetWatcher:
    """``await watcher.start()``; then ``watcher.view`` stays current and every listener
    added with ``add_listener`` is called with a ``Change`` when usable addresses change.
    ``close()`` when done. Raises ``LocalError`` where rtnetlink is not available."""

    def __init__(self) -> None:
        self.view = NetworkView()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sock: socket.socket | None = None
        self._listeners: list[Listener] = []
        self._seq = 0
        self._dumps: dict[int, asyncio.Future[None]] = {}
        self._resync: asyncio.Task[None] | None = None
        self._staging: NetworkView | None = None  # the state read again after an overrun

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        self._listeners.remove(listener)

    async def start(self) -> None:
        if self._sock is not None:
            raise LocalError("the watcher is already started")
        netlink = getattr(socket, "AF_NETLINK", None)
        if netlink is None:
            raise LocalError("rtnetlink is not available on this system (Linux only)")
        try:
            sock = socket.socket(netlink, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        except OSError as exc:
            raise LocalError(f"cannot open a netlink socket: {exc}") from exc
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
            sock.bind((0, GROUPS))  # subscribe before the dump: no change falls in between
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise LocalError(f"cannot subscribe to rtnetlink notifications: {exc}") from exc
        self._sock = sock
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._readable)
        try:
            await self._dump_all()
        except BaseException:
            self.close()
            raise

    async def _dump_all(self) -> None:
        # One dump at a time: the kernel refuses a second one on a socket mid-dump.
        for kind in (RTM_GETLINK, RTM_GETADDR, RTM_GETROUTE):
            assert self._sock is not None and self._loop is not None
            self._seq += 1
            done = self._dumps[self._seq] = self._loop.create_future()
            try:
                self._sock.send(dump_request(kind, self._seq))
                await asyncio.wait_for(done, DUMP_TIMEOUT)
            except (OSError, TimeoutError) as exc:
                raise LocalError(f"rtnetlink dump failed: {exc}") from exc
            finally:
                self._dumps.pop(self._seq, None)

    def _readable(self) -> None:
        assert self._sock is not None and self._loop is not None
        now = self._loop.time()
        events: list[NetlinkEvent] = []
        for _ in range(64):  # bounded: let the loop breathe during a storm
            try:
                data = self._sock.recv(_MAX_DATAGRAM)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:  # notifications were lost: read it all again
                    log.warning("rtnetlink receive buffer overran; reading the state again")
                    self._start_resync()
                    continue
                raise
            try:
                events.extend(parse(data))
            except FrameError as exc:
                log.warning("ignored a malformed rtnetlink datagram: %s", exc)
        for event in events:
            if isinstance(event, DumpDone | NetlinkFailure):
                waiter = self._dumps.get(event.seq)
                if waiter is not None and not waiter.done():
                    if isinstance(event, NetlinkFailure):
                        waiter.set_exception(OSError(event.errno, f"netlink: errno {event.errno}"))
                    else:
                        waiter.set_result(None)
        if self._staging is not None:
            self._staging.apply(events)
        if self.view.apply(events):
            self._notify(now, events)

    def _notify(self, now: float, events: list[NetlinkEvent]) -> None:
        change = Change(at=now, events=tuple(events), usable=self.view.usable())
        for listener in list(self._listeners):
            listener(change)

    def _start_resync(self) -> None:
        if self._resync is None or self._resync.done():
            assert self._loop is not None
            self._resync = self._loop.create_task(self._resync_now())

    async def _resync_now(self) -> None:
        # Read into a fresh view: links removed while notifications were lost must go,
        # and the old view stays in use until the new one is complete.
        self._staging = NetworkView()
        try:
            await self._dump_all()
        except LocalError as exc:
            log.warning("could not read the network state again: %s", exc)
            return
        finally:
            staging, self._staging = self._staging, None
        before, self.view = self.view.usable(), staging
        if staging.usable() != before:
            assert self._loop is not None
            self._notify(self._loop.time(), [])

    def close(self) -> None:
        if self._resync is not None:
            self._resync.cancel()
        if self._sock is not None:
            if self._loop is not None:
                with contextlib.suppress(Exception):
                    self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None

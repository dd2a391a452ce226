"""What the host's network looks like, kept up to date from rtnetlink events (sans-I/O)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from continuations.netwatch.messages import (
    RT_SCOPE_HOST,
    AddressEvent,
    LinkEvent,
    NetlinkEvent,
    RouteEvent,
)


@dataclass(frozen=True, slots=True)
class Choice:
    """A local address to send from, and the link it belongs to."""

    interface: str
    address: str


@dataclass
class _Link:
    name: str
    flags: int
    running: bool
    loopback: bool
    addresses: dict[str, int] = field(default_factory=dict)  # address -> prefix length


class NetworkView:
    """Links and their IPv4 addresses, from a dump and then from notifications.

    ``apply`` takes events in the order the kernel sent them. An address is
    *usable* when its link is administratively up and operational (has a
    carrier), it is not a loopback link, and the address is not host-scoped.
    """

    def __init__(self) -> None:
        self._links: dict[int, _Link] = {}
        self._orphans: dict[int, dict[str, int]] = {}  # addresses seen before their link
        self.routes: dict[tuple[str, int, int | None], RouteEvent] = {}

    def apply(self, events: Iterable[NetlinkEvent]) -> bool:
        """Take events in; True if the set of usable addresses changed."""
        before = self.usable()
        for event in events:
            if isinstance(event, LinkEvent):
                self._link(event)
            elif isinstance(event, AddressEvent):
                self._address(event)
            elif isinstance(event, RouteEvent):
                key = (event.destination, event.table, event.oif)
                if event.removed:
                    self.routes.pop(key, None)
                else:
                    self.routes[key] = event
        return self.usable() != before

    def _link(self, event: LinkEvent) -> None:
        if event.removed:
            self._links.pop(event.index, None)
            self._orphans.pop(event.index, None)
            return
        link = self._links.get(event.index)
        if link is None:
            link = self._links[event.index] = _Link(event.name, event.flags, event.running,
                                                    event.loopback)
            link.addresses.update(self._orphans.pop(event.index, {}))
        link.name = event.name or link.name
        link.flags, link.running, link.loopback = event.flags, event.running, event.loopback

    def _address(self, event: AddressEvent) -> None:
        link = self._links.get(event.index)
        addresses = link.addresses if link is not None else self._orphans.setdefault(
            event.index, {})
        if event.removed:
            addresses.pop(event.address, None)
        elif event.scope != RT_SCOPE_HOST:
            addresses[event.address] = event.prefixlen

    def interfaces(self) -> dict[str, bool]:
        """Every known link by name, with whether it is operational."""
        return {link.name: link.running for link in self._links.values()}

    def addresses(self, interface: str) -> list[str]:
        """The IPv4 addresses on ``interface``, usable or not."""
        for link in self._links.values():
            if link.name == interface:
                return sorted(link.addresses)
        return []

    def usable(self) -> dict[str, tuple[str, ...]]:
        """Usable addresses by interface name (interfaces without one are left out)."""
        return {
            link.name: tuple(sorted(link.addresses))
            for link in self._links.values()
            if link.running and not link.loopback and link.addresses
        }

    def choose(self, prefer: Sequence[str] = ()) -> Choice | None:
        """The address to use: on the first usable interface in ``prefer``, else on any
        usable interface (by name, so the answer is stable); None if there is none."""
        usable = self.usable()
        for name in [*prefer, *sorted(set(usable) - set(prefer))]:
            if usable.get(name):
                return Choice(name, usable[name][0])
        return None

    def is_usable(self, address: str) -> bool:
        return any(address in found for found in self.usable().values())

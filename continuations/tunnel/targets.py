"""Addresses on the command line: ``HOST:PORT`` targets, forwarding specs, allow lists."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from continuations.errors import ConfigError

__all__ = ["AllowList", "DEFAULT_ALLOWED", "Forward", "Target", "parse_listen"]

_MAX_HOST = 253


def _split(text: str) -> list[str]:
    """Split on ':' outside square brackets (so ``[::1]:22`` is two parts)."""
    parts: list[str] = []
    current = ""
    depth = 0
    for ch in text:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        if ch == ":" and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    return parts


def _host(text: str, what: str) -> str:
    host = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    if not host or len(host) > _MAX_HOST or any(c.isspace() or c in "[]/" for c in host):
        raise ConfigError(f"bad {what} {text!r}")
    return host


def _port(text: str, what: str, allow_zero: bool = False) -> int:
    if not text.isdigit() or not (0 if allow_zero else 1) <= int(text) <= 65535:
        raise ConfigError(f"bad {what} {text!r} (expected a number up to 65535)")
    return int(text)


@dataclass(frozen=True, slots=True)
class Target:
    """A TCP endpoint on the tunnel server's side, written ``HOST:PORT`` (``[V6]:PORT``)."""

    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Target:
        parts = _split(text.strip())
        if len(parts) != 2:
            raise ConfigError(f"bad target {text!r} (expected HOST:PORT)")
        return cls(_host(parts[0], "host in target"), _port(parts[1], "port in target"))

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def key(self) -> tuple[str, int]:
        """Identity for allow checks: host names are case-insensitive."""
        return self.host.lower(), self.port


DEFAULT_ALLOWED = (Target("127.0.0.1", 22),)


class AllowList:
    """The targets a tunnel server connects to; anything else is refused."""

    def __init__(self, targets: Iterable[Target] = DEFAULT_ALLOWED, *,
                 everything: bool = False) -> None:
        # everything=True is ssh's AllowTcpForwarding: for servers whose clients are
        # authenticated users (the shell), not for the unauthenticated tunnel server.
        self.targets = tuple(dict.fromkeys(targets))
        self.everything = everything
        self._keys = {t.key() for t in self.targets}

    def allows(self, target: Target) -> bool:
        return self.everything or target.key() in self._keys

    def __str__(self) -> str:
        if self.everything:
            return "any target"
        return ", ".join(map(str, self.targets)) or "nothing"


@dataclass(frozen=True, slots=True)
class Forward:
    """``[BIND:]LPORT:HOST:PORT``: listen on BIND:LPORT, forward to HOST:PORT over there."""

    bind: str
    port: int
    target: Target

    @classmethod
    def parse(cls, text: str) -> Forward:
        parts = _split(text.strip())
        if len(parts) == 3:
            bind = "127.0.0.1"
        elif len(parts) == 4:
            bind = _host(parts.pop(0), "bind address in forward")
        else:
            raise ConfigError(f"bad forward {text!r} (expected [BIND:]LPORT:HOST:PORT)")
        port = _port(parts[0], "local port in forward", allow_zero=True)
        target = Target(_host(parts[1], "host in forward"), _port(parts[2], "port in forward"))
        return cls(bind, port, target)



def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` to listen on; port 0 picks a free one."""
    parts = _split(text.strip())
    if len(parts) != 2:
        raise ConfigError(f"bad listen address {text!r} (expected HOST:PORT)")
    return _host(parts[0], "listen host"), _port(parts[1], "listen port", allow_zero=True)

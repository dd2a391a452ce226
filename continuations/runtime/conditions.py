"""What the network looks like after a resume, so an application can adapt."""

from __future__ import annotations

from dataclasses import dataclass

Address = tuple[str, int]

# Compression against bandwidth: on a fast path compression costs more CPU time than it
# saves in transfer; on a slow one every byte saved is worth the work.
_LEVELS = ((50e6, 1), (5e6, 3), (0.5e6, 6))


@dataclass(frozen=True, slots=True, kw_only=True)
class NetworkConditions:
    """Measured on the new attachment when a continuation is invoked.

    ``rtt`` comes from the re-attach handshake; ``bandwidth`` (bytes/s) from the
    session's acknowledged-delivery rate, None until something was measured;
    ``offline`` is the time without a usable path; ``path_changed`` says whether
    the local or remote address differs from the one before the disconnection.
    """

    rtt: float | None
    bandwidth: float | None
    local_address: Address | None
    remote_address: Address | None
    offline: float
    path_changed: bool

    def compression_level(self) -> int:
        """A zlib level (1-9) suited to the bandwidth: 1 above 50 MB/s, 3 above 5 MB/s,
        6 above 0.5 MB/s, 9 below; 6 when the bandwidth is unknown."""
        if self.bandwidth is None:
            return 6
        for floor, level in _LEVELS:
            if self.bandwidth >= floor:
                return level
        return 9

    def refresh_interval(self, base: float = 0.05) -> float:
        """How often to repaint or poll: never faster than a quarter of the RTT."""
        return max(base, (self.rtt or 0.0) / 4)

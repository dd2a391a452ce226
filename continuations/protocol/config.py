"""Tunable limits and timeouts of a session, validated once."""

from __future__ import annotations

from dataclasses import dataclass

from continuations.errors import ConfigError
from continuations.protocol.wire import MAX_PLAINTEXT, MAX_STREAMS_LISTED


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionConfig:
    """Every bound the core enforces. Times in seconds, sizes in bytes.

    Dead-path detection: a link on which nothing authenticated has arrived for
    ``clamp(keepalive_interval + 3 * RTO, min_dead_timeout, dead_timeout)`` is
    declared dead. The client sends a PING after ``keepalive_interval`` without
    sending; each side answers each PING at once; the server sends PINGs of its
    own only while the client's have stopped for 1.5 intervals (an idle session
    then costs one PING and one PONG per interval). On a healthy path something
    arrives at least every ``keepalive_interval + RTT``.
    """

    keepalive_interval: float = 0.25
    dead_timeout: float = 2.0
    min_dead_timeout: float = 1.0
    handshake_timeout: float = 10.0
    linger: float = 86400.0
    stream_window: int = 4 * 1024 * 1024
    replay_buffer: int = 16 * 1024 * 1024
    max_streams: int = 1024
    max_record_plaintext: int = MAX_PLAINTEXT
    max_pending_handshakes: int = 1024
    reconnect_initial_delay: float = 0.05
    reconnect_max_delay: float = 2.0
    # Key lifetime: an attachment whose keys protected this many bytes, or are this old,
    # is replaced by a make-before-break re-attach, which brings fresh keys.
    rekey_after_bytes: int = 1 << 36
    rekey_after_seconds: float = 3600.0

    def __post_init__(self) -> None:
        if not 0 < self.keepalive_interval < self.dead_timeout:
            raise ConfigError("keepalive_interval must be positive and below dead_timeout")
        if not 0 < self.min_dead_timeout <= self.dead_timeout:
            raise ConfigError("min_dead_timeout must be positive and at most dead_timeout")
        if self.handshake_timeout <= 0 or self.linger <= 0:
            raise ConfigError("handshake_timeout and linger must be positive")
        if not 0 < self.reconnect_initial_delay <= self.reconnect_max_delay:
            raise ConfigError("need 0 < reconnect_initial_delay <= reconnect_max_delay")
        if self.stream_window < 1024 or self.replay_buffer < 1024:
            raise ConfigError("stream_window and replay_buffer must be at least 1 KiB")
        if not 1 <= self.max_streams <= MAX_STREAMS_LISTED:
            raise ConfigError(f"max_streams must be in 1..{MAX_STREAMS_LISTED}")
        if not 256 <= self.max_record_plaintext <= MAX_PLAINTEXT:
            raise ConfigError(f"max_record_plaintext must be in 256..{MAX_PLAINTEXT}")
        if self.rekey_after_bytes < 1 << 20 or self.rekey_after_seconds < 1:
            raise ConfigError("rekey_after_bytes must be >= 1 MiB and rekey_after_seconds >= 1")
        if self.max_pending_handshakes < 1:
            raise ConfigError("max_pending_handshakes must be at least 1")

    def reconnect_delay(self, attempt: int, uniform: float) -> float:
        """Capped exponential backoff with "equal jitter": half fixed, half random.

        ``uniform`` is a random number in [0, 1) supplied by the caller.
        """
        growth = float(2 ** min(attempt, 30))
        ceiling = min(self.reconnect_max_delay, self.reconnect_initial_delay * growth)
        return ceiling / 2 + uniform * ceiling / 2

    def dead_after(self, rto: float) -> float:
        return min(self.dead_timeout, max(self.min_dead_timeout, self.keepalive_interval + 3 * rto))

"""Round-trip time estimation, RFC 6298 style (smoothed RTT and variance)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class RttEstimator:
    """SRTT/RTTVAR with RFC 6298's gains (1/8, 1/4); RTO = SRTT + 4 RTTVAR, clamped."""

    min_rto: float = 0.2
    max_rto: float = 60.0
    srtt: float | None = None
    rttvar: float = 0.0
    latest: float | None = None
    samples: int = 0

    def update(self, sample: float) -> None:
        if sample < 0:
            return  # a clock that went backwards says nothing about the path
        self.latest = sample
        self.samples += 1
        if self.srtt is None:
            self.srtt = sample
            self.rttvar = sample / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - sample)
            self.srtt = 0.875 * self.srtt + 0.125 * sample

    @property
    def rto(self) -> float:
        if self.srtt is None:
            return 1.0  # RFC 6298's initial RTO
        return min(self.max_rto, max(self.min_rto, self.srtt + 4 * self.rttvar))

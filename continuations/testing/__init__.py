"""Test and benchmark helpers (network impairment relay)."""

from continuations.testing.relay import ImpairmentRelay, RelayStats

__all__ = ["ImpairmentRelay", "RelayStats"]

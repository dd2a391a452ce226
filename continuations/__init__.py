"""continuations: sessions that survive network changes and suspend/resume."""

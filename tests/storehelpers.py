"""Shared pieces of the store tests."""

from __future__ import annotations

from typing import Any

from continuations.store import SessionRecord

S1 = "a1" * 8
S2 = "b2" * 8


def session(sid: str, **overrides: Any) -> SessionRecord:
    """A session row with plausible defaults; override any field."""
    fields: dict[str, Any] = {
        "id": sid,
        "app": "demo",
        "role": "server",
        "state": "attached",
        "peer": "127.0.0.1:7000",
        "created": 100.0,
        "updated": 100.0,
    }
    fields.update(overrides)
    return SessionRecord(**fields)

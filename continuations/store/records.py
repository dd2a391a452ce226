"""The records the store hands out: plain frozen dataclasses, no database handles."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from continuations.errors import LocalError

_HEX = re.compile(r"[0-9a-f]{1,128}")


def check_session_id(session_id: str) -> str:
    if not isinstance(session_id, str) or not _HEX.fullmatch(session_id):
        raise LocalError(f"session id must be 1 to 128 lowercase hex digits, not {session_id!r}")
    return session_id


def check_name(what: str, name: str) -> str:
    if not isinstance(name, str) or not name:
        raise LocalError(f"{what} must be a non-empty string, not {name!r}")
    return name


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionRecord:
    """One row of the sessions table; times are Unix seconds."""

    id: str
    app: str
    role: str
    state: str
    peer: str
    created: float
    updated: float
    expires: float | None = None
    pid: int | None = None
    control_socket: str | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)


SESSION_FIELDS = tuple(SessionRecord.__dataclass_fields__)
"""Column order of the sessions table, as the dataclass declares it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ContinuationInfo:
    """What is known about a session's saved continuation without loading it."""

    session_id: str
    tree: Any
    size: int
    stored_bytes: int
    saved: float

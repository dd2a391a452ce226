"""The continuations runtime: continuation generators, managed resources, suspend/resume.

Guide: docs/runtime.md.
"""

from typing import TYPE_CHECKING

from continuations._lazy import exports

# Loaded on first use (continuations/_lazy.py). Names -> defining modules.
_EXPORTS = {
    "BLOCK": "continuations.runtime.continuation",
    "Continuation": "continuations.runtime.continuation",
    "DISCONNECT_SIGNAL": "continuations.runtime.resources",
    "ManagedFile": "continuations.runtime.resources",
    "ManagedListener": "continuations.runtime.resources",
    "ManagedProcess": "continuations.runtime.resources",
    "ManagedSocket": "continuations.runtime.resources",
    "NetworkConditions": "continuations.runtime.conditions",
    "Policy": "continuations.runtime.runtime",
    "RESUME_SIGNAL": "continuations.runtime.resources",
    "Resource": "continuations.runtime.resources",
    "Runtime": "continuations.runtime.runtime",
    "SessionContext": "continuations.runtime.context",
    "SuspendResult": "continuations.runtime.runtime",
    "register_kind": "continuations.runtime.resources",
}
__getattr__ = exports(__name__, _EXPORTS)

if TYPE_CHECKING:
    from continuations.runtime.conditions import NetworkConditions
    from continuations.runtime.context import SessionContext
    from continuations.runtime.continuation import BLOCK, Continuation
    from continuations.runtime.resources import (
        DISCONNECT_SIGNAL,
        RESUME_SIGNAL,
        ManagedFile,
        ManagedListener,
        ManagedProcess,
        ManagedSocket,
        Resource,
        register_kind,
    )
    from continuations.runtime.runtime import Policy, Runtime, SuspendResult

__all__ = [
    "BLOCK",
    "Continuation",
    "DISCONNECT_SIGNAL",
    "ManagedFile",
    "ManagedListener",
    "ManagedProcess",
    "ManagedSocket",
    "NetworkConditions",
    "Policy",
    "RESUME_SIGNAL",
    "Resource",
    "Runtime",
    "SessionContext",
    "SuspendResult",
    "register_kind",
]

"""The continuations runtime: continuation generators, managed resources, suspend/resume.

Guide: docs/runtime.md.
"""

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

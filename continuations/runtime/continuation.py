"""Continuations: what an application leaves behind to be resumed with.

A continuation generator, called when disconnection is notified, returns either
a ``Continuation`` (a callable with its state, serialised with dill) or
``BLOCK`` (stay frozen in memory, resources kept: for short outages).
Generation is recursive: a continuation carries its children's, and resuming
invokes the parent first, then the children in order.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from continuations.runtime.conditions import NetworkConditions

if TYPE_CHECKING:
    from continuations.runtime.context import SessionContext

ContinuationFn = Callable[[Any, NetworkConditions, "SessionContext"], Awaitable[Any] | Any]


class _Block:
    """Returned by a generator that wants to stay frozen in memory instead."""

    _instance: _Block | None = None

    def __new__(cls) -> _Block:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "BLOCK"

    def __reduce__(self) -> str:
        return "BLOCK"  # unpickles as this module's singleton


BLOCK: Final = _Block()


@dataclass(slots=True)
class Continuation:
    """``fn(state, conditions, ctx)`` resumes the work; ``children`` resume after it, in
    order. ``ctx`` is the resumed session's context: its session, attributes and the
    resources the runtime reacquired."""

    fn: ContinuationFn
    state: Any = None
    name: str = ""
    children: list[Continuation] = field(default_factory=list)

    async def invoke(self, conditions: NetworkConditions, ctx: SessionContext) -> Any:
        """Run this continuation, then its children; the result is this one's (an
        ``int`` from the root becomes the exit status of a process that resumes it)."""
        result = self.fn(self.state, conditions, ctx)
        if inspect.isawaitable(result):
            result = await result
        for child in self.children:
            await child.invoke(conditions, ctx)
        return result

    def tree(self) -> dict[str, Any]:
        """A JSON-able outline for ``continuations show``."""
        return {
            "name": self.name,
            "callable": getattr(self.fn, "__qualname__", type(self.fn).__name__),
            "state": type(self.state).__name__,
            "children": [child.tree() for child in self.children],
        }

    def count(self) -> int:
        return 1 + sum(child.count() for child in self.children)

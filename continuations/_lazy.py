"""Package attributes loaded on first use (PEP 562).

A package whose ``__init__`` imports everything makes every submodule import pay
for cryptography, asyncio and the store: ``contsh --resume`` and a command's
``--help`` would start in a quarter of a second instead of a few milliseconds.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def exports(package: str, names: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that imports ``names[attr]`` (a module) on first use."""

    def __getattr__(attr: str) -> Any:
        module = names.get(attr)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {attr!r}")
        value = getattr(importlib.import_module(module), attr)
        setattr(importlib.import_module(package), attr, value)
        return value

    return __getattr__

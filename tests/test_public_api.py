"""The public surface is explicit, sorted, and importable."""

from __future__ import annotations

import importlib

import pytest

PACKAGES = [
    "continuations",
    "continuations.aio",
    "continuations.protocol",
    "continuations.testing",
    "continuations.errors",
    "continuations.runtime",
    "continuations.store",
    "continuations.tunnel",
]


@pytest.mark.parametrize("name", PACKAGES)
def test_all_is_sorted_and_complete(name: str) -> None:
    module = importlib.import_module(name)
    exported = module.__all__
    assert exported == sorted(exported)
    for symbol in exported:
        assert hasattr(module, symbol), f"{name}.{symbol} listed but missing"


def test_errors_form_one_tree() -> None:
    import continuations.errors as errors

    for symbol in errors.__all__:
        cls = getattr(errors, symbol)
        assert issubclass(cls, errors.ContinuationsError)
    assert issubclass(errors.ProtocolError, errors.RemoteError)
    assert issubclass(errors.InvalidTransitionError, errors.LocalError)
    assert issubclass(errors.SessionLostError, errors.SessionError)

"""Attributes: encoding round trips, versions, compare-and-set, isolation, transactions."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from continuations.errors import ConflictError, LocalError, NotFoundError, StoreError
from continuations.store import Store, ValueKind
from storehelpers import S1, S2, session

pytestmark = pytest.mark.timeout(60)



@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "store.db") as opened:
        opened.put_session(session(S1))
        opened.put_session(session(S2))
        yield opened


class Point:
    def __init__(self, x: int, y: int) -> None:
        self.x, self.y = x, y

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Point) and (self.x, self.y) == (other.x, other.y)

    __hash__ = None  # type: ignore[assignment]


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        0,
        -(2**70),
        1.5,
        -0.0,
        "text é \u2603",
        [],
        [1, "two", None, [3.0]],
        {"a": {"b": [1, 2, {"c": None}]}},
    ],
)
def test_json_values_round_trip_as_json(store: Store, value: Any) -> None:
    attrs = store.attributes(S1)
    attrs.set("k", value)
    got = attrs.get("k")
    assert got == value and type(got) is type(value)
    assert attrs.kind("k") is ValueKind.JSON


@pytest.mark.parametrize(
    "value",
    [
        (1, 2),
        {1: "int key"},
        {"s": {1, 2}},
        b"bytes",
        float("inf"),
        Point(1, 2),
        [("nested", "tuple")],
        10**5000,  # past the int/str conversion limit json would need
    ],
    ids=["tuple", "int-keys", "set", "bytes", "inf", "object", "tuple-in-list", "huge-int"],
)
def test_values_json_cannot_reproduce_go_to_dill(store: Store, value: Any) -> None:
    attrs = store.attributes(S1)
    attrs.set("k", value)
    got = attrs.get("k")
    assert got == value and type(got) is type(value)
    assert attrs.kind("k") is ValueKind.DILL


def test_cyclic_list_round_trips(store: Store) -> None:
    cyclic: list[Any] = [1]
    cyclic.append(cyclic)
    attrs = store.attributes(S1)
    attrs.set("k", cyclic)
    got = attrs.get("k")
    assert got[0] == 1 and got[1] is got


def test_closure_keeps_its_captured_state(store: Store) -> None:
    def make_counter(start: int) -> Any:
        count = [start]

        def step(by: int) -> int:
            count[0] += by
            return count[0]

        return step

    counter = make_counter(10)
    counter(5)
    attrs = store.attributes(S1)
    attrs.set("counter", counter)
    restored = attrs.get("counter")
    assert restored(1) == 16
    assert restored(1) == 17
    assert attrs.get("counter")(100) == 115  # each load starts from the stored state


def test_unpicklable_value_is_a_store_error(store: Store) -> None:
    with pytest.raises(StoreError, match="cannot store"):
        store.attributes(S1).set("k", (n for n in range(3)))


def test_versions_increment_and_get_versioned(store: Store) -> None:
    attrs = store.attributes(S1)
    assert attrs.get_versioned("k") == (None, 0)
    assert attrs.get_versioned("k", default="d") == ("d", 0)
    assert attrs.set("k", "a") == 1
    assert attrs.set("k", "b") == 2
    assert attrs.get_versioned("k") == ("b", 2)
    assert attrs.version("k") == 2


def test_compare_and_set(store: Store) -> None:
    attrs = store.attributes(S1)
    assert attrs.set("k", 1, expect_version=0) == 1
    with pytest.raises(ConflictError) as info:
        attrs.set("k", 2, expect_version=0)
    assert (info.value.expected, info.value.actual) == (0, 1)
    assert S1 in str(info.value) and "'k'" in str(info.value)
    assert attrs.set("k", 2, expect_version=1) == 2
    with pytest.raises(ConflictError):
        attrs.set("k", 3, expect_version=1)
    assert attrs.get("k") == 2


def test_delete_and_versions_never_repeat(store: Store) -> None:
    attrs = store.attributes(S1)
    attrs.set("k", "old")
    attrs.set("k", "old2")
    with pytest.raises(ConflictError):
        attrs.delete("k", expect_version=1)
    attrs.delete("k", expect_version=2)
    assert attrs.get("k", "gone") == "gone"
    assert "k" not in attrs and "k" not in attrs.keys()  # noqa: SIM118
    with pytest.raises(NotFoundError):
        attrs.delete("k")
    # A CAS from before the delete must not succeed against a new value (ABA).
    assert attrs.set("k", "new", expect_version=0) == 4
    with pytest.raises(ConflictError):
        attrs.set("k", "x", expect_version=2)


def test_keys_items_and_kinds(store: Store) -> None:
    attrs = store.attributes(S1)
    attrs.set("b", [1])
    attrs.set("a", (1,))
    attrs.set_secret("c", b"s3cret")
    assert attrs.keys() == ["a", "b", "c"]
    assert attrs.items() == {"a": (1,), "b": [1], "c": b"s3cret"}
    assert attrs.kinds() == {"a": ValueKind.DILL, "b": ValueKind.JSON, "c": ValueKind.SECRET}
    shown = attrs.items_with_kinds()
    assert shown["c"] == (ValueKind.SECRET, None)
    assert shown["b"] == (ValueKind.JSON, [1])
    assert attrs.items_with_kinds(reveal_secrets=True)["c"] == (ValueKind.SECRET, b"s3cret")
    assert attrs.is_secret("c") and not attrs.is_secret("b") and not attrs.is_secret("zz")
    assert "a" in attrs and "zz" not in attrs


def test_secret_api(store: Store) -> None:
    attrs = store.attributes(S1)
    assert attrs.set_secret("tok", b"one") == 1
    assert attrs.get_secret("tok") == b"one"
    assert attrs.get("tok") == b"one"
    with pytest.raises(StoreError, match="is a secret"):
        attrs.set("tok", b"in the clear")
    assert attrs.set_secret("tok", bytearray(b"two"), expect_version=1) == 2
    assert attrs.get_secret("tok") == b"two"
    attrs.set("plain", 1)
    with pytest.raises(StoreError, match="not a secret"):
        attrs.get_secret("plain")
    with pytest.raises(NotFoundError):
        attrs.get_secret("missing")
    with pytest.raises(StoreError, match="must be bytes"):
        attrs.set_secret("tok", "text")  # type: ignore[arg-type]


def test_namespaces_and_sessions_are_isolated(store: Store) -> None:
    app1, auth1 = store.attributes(S1), store.attributes(S1, namespace="auth")
    app2 = store.attributes(S2)
    app1.set("k", "app1")
    auth1.set("k", "auth1")
    app2.set("k", "app2")
    assert (app1.get("k"), auth1.get("k"), app2.get("k")) == ("app1", "auth1", "app2")
    app1.delete("k")
    assert auth1.get("k") == "auth1" and app2.get("k") == "app2"
    assert app1.keys() == [] and auth1.keys() == ["k"]


def test_attribute_of_unknown_session_is_not_found(store: Store) -> None:
    attrs = store.attributes("ff" * 8)
    assert attrs.get("k", 5) == 5
    with pytest.raises(NotFoundError, match="no session"):
        attrs.set("k", 1)


def test_bad_names_are_local_errors(store: Store) -> None:
    with pytest.raises(LocalError):
        store.attributes("NOT-HEX")
    with pytest.raises(LocalError):
        store.attributes(S1, namespace="")
    with pytest.raises(LocalError):
        store.attributes(S1).set("", 1)


def test_update_is_read_modify_write(store: Store) -> None:
    attrs = store.attributes(S1)
    assert attrs.update("n", lambda v: v + 1, default=0) == 1
    assert attrs.update("n", lambda v: v * 10) == 10
    assert attrs.get_versioned("n") == (10, 2)
    attrs.set_secret("s", b"a")
    attrs.update("s", lambda v: v + b"b")
    assert attrs.get_secret("s") == b"ab"


def test_update_retries_after_losing_a_race(store: Store) -> None:
    attrs = store.attributes(S1)
    attrs.set("n", 0)
    calls = itertools.count()

    def interfering(value: int) -> int:
        # The first two attempts lose to a concurrent write made while fn runs.
        if next(calls) < 2:
            attrs.set("n", attrs.get("n") + 100)
        return value + 1

    assert attrs.update("n", interfering) == 201
    assert attrs.get("n") == 201


def test_update_falls_back_to_the_lock_after_bounded_retries(store: Store) -> None:
    attrs = store.attributes(S1)
    attrs.set("n", 0)
    seen: list[int] = []

    def always_interfering(value: int) -> int:
        seen.append(value)
        if len(seen) <= 3:
            attrs.set("n", value + 100)
        return value + 1

    # retries=3: three optimistic attempts lose, the fourth runs under the lock.
    assert attrs.update("n", always_interfering, retries=3) == 301
    assert len(seen) == 4


def test_transaction_is_atomic_and_nests(store: Store) -> None:
    attrs = store.attributes(S1)
    with pytest.raises(RuntimeError), store.transaction():
        attrs.set("a", 1)
        attrs.set("b", 2)
        raise RuntimeError("abort")
    assert attrs.keys() == []

    with store.transaction():
        attrs.set("a", 1)
        with pytest.raises(RuntimeError), store.transaction():
            attrs.set("b", 2)
            raise RuntimeError("inner only")
        with pytest.raises(ConflictError):
            attrs.set("a", 5, expect_version=0)  # a failed CAS undoes only itself
        attrs.set("c", 3)
    assert attrs.items() == {"a": 1, "c": 3}


def test_snapshot_is_read_only(store: Store) -> None:
    attrs = store.attributes(S1)
    attrs.set("a", 1)
    with store.snapshot():
        assert attrs.get("a") == 1
        with pytest.raises(LocalError, match="snapshot"):
            attrs.set("a", 2)
    assert attrs.set("a", 2) == 2


def test_closed_store_refuses_use(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    store.close()
    store.close()  # idempotent
    assert store.closed
    with pytest.raises(LocalError, match="closed"):
        store.get_session(S1)


def test_threads_share_one_store(store: Store) -> None:
    attrs = store.attributes(S1)

    def work() -> None:
        for _ in range(50):
            attrs.update("n", lambda v: v + 1, default=0)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert attrs.get("n") == 200


# -- model-based: random set/delete/CAS sequences against a dict ----------------------------

KEYS = st.sampled_from(["a", "b", "c"])
VALUES = st.one_of(
    st.none(),
    st.integers(),
    st.text(max_size=5),
    st.floats(allow_nan=False),
    st.tuples(st.integers()),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.frozensets(st.integers(), max_size=2),
)
EXPECT = st.one_of(st.none(), st.integers(0, 4))
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("set"), KEYS, VALUES, EXPECT),
        st.tuples(st.just("secret"), KEYS, st.binary(max_size=8), EXPECT),
        st.tuples(st.just("delete"), KEYS, st.none(), EXPECT),
    ),
    max_size=25,
)


def test_random_operations_match_a_dict_model(tmp_path: Path) -> None:
    ids = (f"{n:08x}" for n in itertools.count(1))
    with Store(tmp_path / "model.db") as store:

        @settings(
            max_examples=150,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow],
        )
        @given(ops=OPS)
        def run(ops: list[tuple[str, str, Any, int | None]]) -> None:
            sid = next(ids)
            store.put_session(session(sid))
            attrs = store.attributes(sid)
            values: dict[str, Any] = {}
            secret: set[str] = set()
            last: dict[str, int] = {}
            live: dict[str, int] = {}
            with store.transaction():
                for op, key, value, expect in ops:
                    current = live.get(key, 0)
                    conflict = expect is not None and expect != current
                    if op == "delete":
                        if conflict:
                            with pytest.raises(ConflictError):
                                attrs.delete(key, expect_version=expect)
                        elif key not in values:
                            with pytest.raises(NotFoundError):
                                attrs.delete(key, expect_version=expect)
                        else:
                            attrs.delete(key, expect_version=expect)
                            del values[key], live[key]
                            secret.discard(key)
                            last[key] += 1
                        continue
                    if conflict:
                        with pytest.raises(ConflictError):
                            if op == "set":
                                attrs.set(key, value, expect_version=expect)
                            else:
                                attrs.set_secret(key, value, expect_version=expect)
                        continue
                    if op == "set" and key in secret:
                        with pytest.raises(StoreError, match="is a secret"):
                            attrs.set(key, value, expect_version=expect)
                        continue
                    if op == "set":
                        version = attrs.set(key, value, expect_version=expect)
                        secret.discard(key)
                    else:
                        version = attrs.set_secret(key, value, expect_version=expect)
                        secret.add(key)
                    last[key] = last.get(key, 0) + 1
                    assert version == last[key]
                    values[key], live[key] = value, version
            got = attrs.items()
            assert got == values
            assert all(type(got[k]) is type(values[k]) for k in values)
            assert {k: attrs.version(k) for k in "abc"} == {k: live.get(k, 0) for k in "abc"}
            assert {k for k, kind in attrs.kinds().items() if kind is ValueKind.SECRET} == secret

        run()

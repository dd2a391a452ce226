"""Sessions, continuations, resources and protocol state; lookups at 100,000 sessions."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dill  # type: ignore[import-untyped]
import pytest

from continuations.errors import LocalError, NotFoundError
from continuations.store import ContinuationInfo, Store
from storehelpers import S1, S2, session

pytestmark = pytest.mark.timeout(60)



@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "store.db") as opened:
        yield opened


def test_put_get_round_trip(store: Store) -> None:
    record = session(
        S1, expires=500.5, pid=4242, control_socket="/run/x.sock", meta={"argv": ["a", 1]}
    )
    store.put_session(record)
    assert store.get_session(S1) == record
    with pytest.raises(NotFoundError, match=S2):
        store.get_session(S2)


def test_put_replaces_the_row_but_keeps_attributes(store: Store) -> None:
    store.put_session(session(S1))
    store.attributes(S1).set("k", 1)
    store.save_continuation(S1, b"blob", tree={})
    store.put_session(session(S1, state="detached", updated=200.0))
    assert store.get_session(S1).state == "detached"
    assert store.attributes(S1).get("k") == 1
    assert store.load_continuation(S1) == b"blob"


def test_bad_records_are_local_errors(store: Store) -> None:
    with pytest.raises(LocalError, match="hex"):
        store.put_session(session("Not Hex"))
    with pytest.raises(LocalError, match="JSON"):
        store.put_session(session(S1, meta={"x": object()}))
    store.put_session(session(S1))
    with pytest.raises(LocalError, match="cannot update"):
        store.update_session(S1, id=S2)
    with pytest.raises(LocalError, match="cannot update"):
        store.update_session(S1, colour="red")


def test_list_sessions_filters(store: Store) -> None:
    rows = [
        session("01", app="a", state="attached", created=3.0),
        session("02", app="a", state="detached", created=1.0),
        session("03", app="b", state="attached", created=2.0),
    ]
    for row in rows:
        store.put_session(row)
    assert [r.id for r in store.list_sessions()] == ["02", "03", "01"]
    assert [r.id for r in store.list_sessions(app="a")] == ["02", "01"]
    assert [r.id for r in store.list_sessions(state="attached")] == ["03", "01"]
    assert [r.id for r in store.list_sessions(app="a", state="attached")] == ["01"]
    assert store.list_sessions(app="zzz") == []


def test_update_session(store: Store) -> None:
    store.put_session(session(S1))
    before = time.time()
    updated = store.update_session(S1, state="detached", pid=None, meta={"n": 1})
    assert updated.state == "detached" and updated.meta == {"n": 1}
    assert updated.updated >= before
    assert store.get_session(S1) == updated
    assert store.update_session(S1, updated=5.0).updated == 5.0
    with pytest.raises(NotFoundError):
        store.update_session(S2, state="x")


def test_delete_session_cascades(store: Store, tmp_path: Path) -> None:
    for sid in (S1, S2):
        store.put_session(session(sid))
        store.attributes(sid).set("k", 1)
        store.attributes(sid, namespace="auth").set_secret("t", b"x")
        store.save_continuation(sid, b"blob", tree={"n": 1})
        store.save_resources(sid, [{"fd": 3}])
        store.save_protocol_state(sid, b"keys")
    store.attributes(S1).delete("k")  # leaves a tombstone, which must go too
    store.delete_session(S1)
    with pytest.raises(NotFoundError):
        store.delete_session(S1)
    conn = sqlite3.connect(tmp_path / "store.db")
    try:
        for table in ("attributes", "continuations", "resources", "protocol_state"):
            count = conn.execute(
                f"SELECT count(*) FROM {table} WHERE session_id = ?", (S1,)
            ).fetchone()[0]
            assert count == 0, table
    finally:
        conn.close()
    assert store.attributes(S2).get("k") == 1
    assert store.load_continuation(S2) == b"blob"


def test_expire_sessions_removes_exactly_the_expired(store: Store) -> None:
    store.put_session(session("01", expires=99.0))
    store.put_session(session("02", expires=100.0))  # not < now: stays
    store.put_session(session("03", expires=101.0))
    store.put_session(session("04", expires=None))  # never expires
    store.put_session(session("05", expires=-5.0))
    store.attributes("01").set("k", 1)
    assert store.expire_sessions(100.0) == ["01", "05"]
    assert [r.id for r in store.list_sessions()] == ["02", "03", "04"]
    assert store.attributes("01").keys() == []
    assert store.expire_sessions(100.0) == []
    assert store.expire_sessions(1e12) == ["02", "03"]
    assert [r.id for r in store.list_sessions()] == ["04"]


def test_continuation_round_trip(store: Store) -> None:
    store.put_session(session(S1))
    captured = {"total": 0}

    def step(n: int) -> int:
        captured["total"] += n
        return captured["total"]

    blob = dill.dumps(step)
    store.save_continuation(S1, blob, tree={"frames": ["main", "step"]}, size=7)
    assert store.load_continuation(S1) == blob
    restored = store.load_continuation_object(S1)
    assert restored(5) == 5 and restored(2) == 7
    info = store.continuation_info(S1)
    assert info == ContinuationInfo(
        session_id=S1,
        tree={"frames": ["main", "step"]},
        size=7,
        stored_bytes=len(blob),
        saved=info.saved,
    )
    store.save_continuation(S1, b"second", tree=None)
    assert store.load_continuation(S1) == b"second"
    assert store.continuation_info(S1).size == len(b"second")
    store.delete_continuation(S1)
    with pytest.raises(NotFoundError, match="no continuation"):
        store.load_continuation(S1)
    with pytest.raises(NotFoundError, match="no session"):
        store.save_continuation(S2, b"x", tree={})
    with pytest.raises(LocalError, match="JSON"):
        store.save_continuation(S1, b"x", tree={"f": object()})


def test_resources_and_protocol_state(store: Store) -> None:
    store.put_session(session(S1))
    assert store.load_resources(S1) == []
    resources: list[dict[str, Any]] = [
        {"kind": "fd", "n": 3},
        {"kind": "socket", "addr": ("::1", 22)},
    ]
    store.save_resources(S1, resources)
    assert store.load_resources(S1) == resources
    store.save_resources(S1, [])
    assert store.load_resources(S1) == []
    with pytest.raises(NotFoundError):
        store.load_resources(S2)
    with pytest.raises(NotFoundError, match="no protocol state"):
        store.load_protocol_state(S1)
    store.save_protocol_state(S1, b"\x00keys\xff")
    assert store.load_protocol_state(S1) == b"\x00keys\xff"
    with pytest.raises(NotFoundError, match="no session"):
        store.save_protocol_state(S2, b"x")


def test_lookup_by_id_stays_flat_at_100000_sessions(tmp_path: Path) -> None:
    db = tmp_path / "store.db"

    def rows(start: int, stop: int) -> Iterator[tuple[Any, ...]]:
        for n in range(start, stop):
            state = "detached" if n % 100 == 0 else "attached"
            yield (f"{n:032x}", f"app{n % 10}", "server", state, "p", n, n, None, "{}")

    def mean_lookup(store: Store, count: int) -> float:
        ids = [f"{n:032x}" for n in range(0, count, max(1, count // 500))]
        started = time.perf_counter()
        for _ in range(3):
            for sid in ids:
                store.get_session(sid)
        return (time.perf_counter() - started) / (3 * len(ids))

    def bulk(start: int, stop: int) -> None:
        # Raw inserts: 100,000 put_session calls would dominate the test's run time.
        conn = sqlite3.connect(db)
        with conn:
            conn.executemany(
                "INSERT INTO sessions (id, app, role, state, peer, created, updated, expires,"
                " meta) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows(start, stop),
            )
        conn.close()

    Store(db).close()
    bulk(0, 1_000)
    with Store(db) as store:
        mean_lookup(store, 1_000)  # warm up
        small = mean_lookup(store, 1_000)
    bulk(1_000, 100_000)
    statements: list[tuple[str, Any]] = []
    with Store(db, tracer=lambda sql, params: statements.append((sql, params))) as store:
        mean_lookup(store, 100_000)
        large = mean_lookup(store, 100_000)
        statements.clear()
        store.get_session(f"{5:032x}")
        assert len(store.list_sessions(app="app0", state="detached")) == 1_000
        assert len(store.list_sessions(state="detached")) == 1_000
        assert store.list_sessions(app="app3", state="detached") == []
    conn = sqlite3.connect(db)
    try:
        for sql, params in statements:
            plan = " ".join(row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params))
            assert "USING" in plan and "INDEX" in plan, (sql, plan)
    finally:
        conn.close()
    assert large < small * 3 + 50e-6, f"{small * 1e6:.1f} us at 1k, {large * 1e6:.1f} us at 100k"

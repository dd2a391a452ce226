"""The store's files: location, permissions, key file, schema migrations."""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlite_utils

import continuations.store as store_package
from continuations.errors import LocalError, SchemaError
from continuations.store import Registry, Store, default_path
from continuations.store.database import Connection
from continuations.store.migrations import MIGRATIONS
from storehelpers import S1, session

pytestmark = pytest.mark.timeout(60)



def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def test_public_names_are_sorted_and_present() -> None:
    assert store_package.__all__ == sorted(store_package.__all__)
    for name in store_package.__all__:
        assert hasattr(store_package, name)


@pytest.mark.parametrize("mask", [0o022, 0o000], ids=["umask-022", "umask-000"])
def test_files_are_private_whatever_the_umask(tmp_path: Path, mask: int) -> None:
    old = os.umask(mask)
    try:
        db = tmp_path / "state" / "store.db"
        with Store(db) as store:
            store.put_session(session(S1))
            store.attributes(S1).set("k", 1)
            files = [db, db.with_name("store.db.key"), db.with_name("store.db-wal")]
            files.append(db.with_name("store.db-shm"))
            for path in files:
                assert path.exists(), path
                assert mode(path) == 0o600, f"{path.name} is {oct(mode(path))}"
        assert mode(db) == 0o600
    finally:
        os.umask(old)


def test_loose_files_are_tightened_on_open(tmp_path: Path, umask: None) -> None:
    db = tmp_path / "store.db"
    Store(db).close()
    db.chmod(0o644)
    db.with_name("store.db.key").chmod(0o644)
    Store(db).close()
    assert mode(db) == 0o600
    assert mode(db.with_name("store.db.key")) == 0o600


def test_key_file_created_once_then_reused(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    key_file = db.with_name("store.db.key")
    with Store(db, random=lambda n: b"\x07" * n) as store:
        assert store.key_path == key_file
    assert key_file.read_bytes() == b"\x07" * 32
    with Store(db, random=os.urandom):
        pass
    assert key_file.read_bytes() == b"\x07" * 32
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_default_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONTINUATIONS_STORE", raising=False)
    monkeypatch.setenv("CONTINUATIONS_STATE_DIR", str(tmp_path / "state"))
    assert default_path() == tmp_path / "state" / "store.db"
    monkeypatch.setenv("CONTINUATIONS_STORE", str(tmp_path / "elsewhere.db"))
    with Store() as store:
        assert store.path == tmp_path / "elsewhere.db"
    assert (tmp_path / "elsewhere.db.key").exists()


def test_pragmas(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    with Store(db):
        conn = sqlite3.connect(db)
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        conn.close()


def test_not_a_database(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    db.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(SchemaError, match="not a continuations store"):
        Store(db)


# -- migrations -----------------------------------------------------------------------------


def ledger(db: Path) -> list[tuple[int, str]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT version, name FROM migrations ORDER BY version").fetchall()
    finally:
        conn.close()


def test_fresh_store_is_at_the_latest_version(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    with Store(db) as store:
        assert store.schema_version == MIGRATIONS.latest >= 1
    assert [v for v, _ in ledger(db)] == list(range(1, MIGRATIONS.latest + 1))


def test_reopening_is_idempotent(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    with Store(db) as store:
        store.put_session(session(S1))
        store.attributes(S1).set("k", "v")
    before = ledger(db)
    for _ in range(3):
        with Store(db) as store:
            assert store.schema_version == MIGRATIONS.latest
            assert store.attributes(S1).get("k") == "v"
    assert ledger(db) == before


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    Store(db).close()
    newer = MIGRATIONS.latest + 1
    conn = sqlite3.connect(db)
    with conn:
        conn.execute(
            "INSERT INTO migrations (version, name, applied) VALUES (?, 'future', 0)", (newer,)
        )
    conn.close()
    with pytest.raises(SchemaError) as info:
        Store(db)
    assert str(info.value) == (
        f"store schema version {newer} is newer than this version of continuations "
        f"understands ({MIGRATIONS.latest})"
    )


def test_registry_rejects_duplicate_numbers() -> None:
    registry = Registry()

    @registry(1)
    def first(db: sqlite_utils.Database) -> None:
        pass

    with pytest.raises(LocalError, match="registered twice"):

        @registry(1)
        def again(db: sqlite_utils.Database) -> None:
            pass

    with pytest.raises(LocalError):
        registry(0)


def test_registry_applies_in_order_and_pending_is_read_only(tmp_path: Path) -> None:
    registry = Registry()
    order: list[int] = []

    @registry(2)
    def add_column(db: sqlite_utils.Database) -> None:
        order.append(2)
        db.execute("ALTER TABLE things ADD COLUMN colour TEXT")

    @registry(1)
    def create_things(db: sqlite_utils.Database) -> None:
        order.append(1)
        db.execute("CREATE TABLE things (id INTEGER PRIMARY KEY)")

    conn = Connection(tmp_path / "custom.db")
    try:
        assert [m.version for m in registry.pending(conn)] == [1, 2]
        assert registry.pending(conn) and registry.applied(conn) == set()
        assert registry.apply(conn) == 2
        assert order == [1, 2]
        assert registry.pending(conn) == []
        assert registry.apply(conn) == 2
        assert order == [1, 2]

        @registry(3)
        def broken(db: sqlite_utils.Database) -> None:
            db.execute("CREATE TABLE half (id INTEGER)")
            raise RuntimeError("migration bug")

        with pytest.raises(RuntimeError):
            registry.apply(conn)
        # The failed migration left nothing behind and is still pending.
        assert conn.fetchone("SELECT name FROM sqlite_master WHERE name = 'half'") is None
        assert [m.version for m in registry.pending(conn)] == [3]
    finally:
        conn.close()

"""Authentication and encryption at rest: tampered or foreign rows never get unpickled."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dill  # type: ignore[import-untyped]
import pytest

from continuations.errors import IntegrityError, SchemaError
from continuations.store import Store
from storehelpers import S1, S2, session

pytestmark = pytest.mark.timeout(60)



@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "store.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[Store]:
    with Store(db_path) as opened:
        opened.put_session(session(S1))
        opened.put_session(session(S2))
        yield opened


def raw(db_path: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """What an attacker with write access to the file can do."""
    with sqlite3.connect(db_path) as conn:
        rows = conn.execute(sql, params).fetchall()
    conn.close()
    return rows


def stored(db_path: Path, sid: str, key: str, namespace: str = "app") -> tuple[Any, ...]:
    rows = raw(
        db_path,
        "SELECT version, kind, value, mac FROM attributes "
        "WHERE session_id = ? AND namespace = ? AND key = ?",
        (sid, namespace, key),
    )
    assert len(rows) == 1
    return rows[0]


def overwrite(
    db_path: Path, sid: str, key: str, row: tuple[Any, ...], namespace: str = "app"
) -> None:
    version, kind, value, mac = row
    raw(
        db_path,
        "INSERT INTO attributes (session_id, namespace, key, version, kind, value, mac, updated) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, 0) ON CONFLICT (session_id, namespace, key) DO UPDATE SET "
        "version = excluded.version, kind = excluded.kind, value = excluded.value, "
        "mac = excluded.mac",
        (sid, namespace, key, version, kind, value, mac),
    )


def flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


def touch_marker(path: str) -> str:
    Path(path).write_text("the blob's code ran")
    return "unpickled"


class Trap:
    """Unpickling this runs ``touch_marker``: stands in for an attacker's payload."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (touch_marker, (str(self.marker),))


def test_flipped_byte_in_a_dill_blob_is_caught_before_unpickling(
    store: Store, db_path: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "marker"
    attrs = store.attributes(S1)
    attrs.set("trap", Trap(marker))
    # Control: loading the untampered blob does run the payload.
    assert attrs.get("trap") == "unpickled" and marker.exists()
    marker.unlink()

    version, kind, value, mac = stored(db_path, S1, "trap")
    assert kind == "dill"
    # The last byte is pickle's STOP: everything before it, the payload included,
    # still executes if this blob were ever handed to dill.
    tampered = flip(bytes(value), len(value) - 1)
    overwrite(db_path, S1, "trap", (version, kind, tampered, mac))

    with pytest.raises(IntegrityError) as info:
        attrs.get("trap")
    assert S1 in str(info.value) and "'trap'" in str(info.value)
    with pytest.raises(IntegrityError):
        attrs.items()
    assert not marker.exists(), "the tampered blob was unpickled"

    # Proof the tampered bytes were still dangerous.
    with pytest.raises(Exception):  # noqa: B017 - any unpickling error
        dill.loads(tampered)
    assert marker.exists()


def test_flipped_byte_in_the_middle_of_a_value(store: Store, db_path: Path) -> None:
    attrs = store.attributes(S1)
    attrs.set("obj", {"set": {1, 2, 3}})
    attrs.set("json", {"balance": 100})
    for key in ("obj", "json"):
        version, kind, value, mac = stored(db_path, S1, key)
        overwrite(db_path, S1, key, (version, kind, flip(bytes(value), len(value) // 2), mac))
        with pytest.raises(IntegrityError, match="failed authentication"):
            attrs.get(key)


def test_tampered_version_or_kind_is_caught(store: Store, db_path: Path) -> None:
    attrs = store.attributes(S1)
    attrs.set("k", [1, 2])
    version, kind, value, mac = stored(db_path, S1, "k")
    overwrite(db_path, S1, "k", (version + 1, kind, value, mac))
    with pytest.raises(IntegrityError):
        attrs.get("k")
    overwrite(db_path, S1, "k", (version, "dill", value, mac))
    with pytest.raises(IntegrityError):
        attrs.get("k")


def test_missing_mac(store: Store, db_path: Path) -> None:
    attrs = store.attributes(S1)
    attrs.set("k", (1, 2))
    raw(db_path, "UPDATE attributes SET mac = NULL WHERE key = 'k'")
    with pytest.raises(IntegrityError, match="has no MAC"):
        attrs.get("k")


def test_row_copied_to_another_key_session_or_namespace(store: Store, db_path: Path) -> None:
    a1, a2 = store.attributes(S1), store.attributes(S2)
    auth1 = store.attributes(S1, namespace="auth")
    a1.set("role", ("admin",))
    a1.set("other", ("guest",))
    a2.set("role", ("guest",))
    auth1.set("role", ("guest",))
    row = stored(db_path, S1, "role")

    overwrite(db_path, S1, "other", row)
    overwrite(db_path, S2, "role", row)
    overwrite(db_path, S1, "role", row, namespace="auth")
    for attrs, key in ((a1, "other"), (a2, "role"), (auth1, "role")):
        with pytest.raises(IntegrityError) as info:
            attrs.get(key)
        assert attrs.session_id in str(info.value) and repr(key) in str(info.value)
    # The original row is untouched and still loads.
    assert a1.get("role") == ("admin",)


def test_row_from_another_store_is_foreign(tmp_path: Path, store: Store, db_path: Path) -> None:
    with Store(tmp_path / "other.db") as other:
        other.put_session(session(S1))
        other.attributes(S1).set("role", ("admin",))
        foreign = stored(tmp_path / "other.db", S1, "role")
    attrs = store.attributes(S1)
    attrs.set("role", ("guest",))
    attrs.set("keep", ("fine",))
    store.attributes(S2).set("role", ("fine",))
    overwrite(db_path, S1, "role", foreign)
    with pytest.raises(IntegrityError):
        attrs.get("role")
    # Other rows and sessions are unaffected.
    assert attrs.get("keep") == ("fine",)
    assert store.attributes(S2).get("role") == ("fine",)


def test_tampered_continuation_resources_and_protocol_state(store: Store, db_path: Path) -> None:
    store.save_continuation(S1, dill.dumps({"frame": 1}), tree={"frames": 1})
    store.save_continuation(S2, dill.dumps({"frame": 2}), tree={"frames": 1})
    store.save_resources(S1, [{"fd": 3}])
    store.save_protocol_state(S1, b"keys")

    blob = raw(db_path, "SELECT blob FROM continuations WHERE session_id = ?", (S1,))[0][0]
    raw(db_path, "UPDATE continuations SET blob = ? WHERE session_id = ?", (flip(blob, 3), S1))
    with pytest.raises(IntegrityError, match=S1):
        store.load_continuation(S1)
    with pytest.raises(IntegrityError):
        store.load_continuation_object(S1)
    assert store.load_continuation_object(S2) == {"frame": 2}

    # A continuation copied between sessions, or a summary edited, is foreign too.
    raw(
        db_path,
        "UPDATE continuations SET blob = (SELECT blob FROM continuations WHERE session_id = ?), "
        "mac = (SELECT mac FROM continuations WHERE session_id = ?) WHERE session_id = ?",
        (S2, S2, S1),
    )
    with pytest.raises(IntegrityError):
        store.load_continuation(S1)
    raw(db_path, "UPDATE continuations SET tree = '{\"frames\":9}' WHERE session_id = ?", (S2,))
    with pytest.raises(IntegrityError):
        store.continuation_info(S2)

    for table in ("resources", "protocol_state"):
        value = raw(db_path, f"SELECT value FROM {table} WHERE session_id = ?", (S1,))[0][0]
        raw(db_path, f"UPDATE {table} SET value = ? WHERE session_id = ?", (flip(value, 0), S1))
    with pytest.raises(IntegrityError):
        store.load_resources(S1)
    with pytest.raises(IntegrityError):
        store.load_protocol_state(S1)


def file_bytes(db_path: Path) -> bytes:
    data = b""
    for suffix in ("", "-wal"):
        path = db_path.with_name(db_path.name + suffix)
        if path.exists():
            data += path.read_bytes()
    return data


def test_secrets_never_reach_the_file(store: Store, db_path: Path) -> None:
    secret = b"correct-horse-" + os.urandom(8).hex().encode()
    keys = b"protocol-keys-" + os.urandom(8).hex().encode()
    attrs = store.attributes(S1, namespace="auth")
    attrs.set_secret("token", secret)
    attrs.set_secret("token", secret + b"-v2")
    store.save_protocol_state(S1, keys)
    assert db_path.with_name("store.db-wal").exists()
    on_disk = file_bytes(db_path)
    assert secret not in on_disk and keys not in on_disk
    # Sanity: a plain value written the same way does show up.
    plain = "plain-marker-" + os.urandom(8).hex()
    attrs.set("plain", plain)
    assert plain.encode() in file_bytes(db_path)
    assert attrs.get_secret("token") == secret + b"-v2"
    assert store.load_protocol_state(S1) == keys
    store.close()
    assert secret not in file_bytes(db_path) and keys not in file_bytes(db_path)


def test_same_secret_encrypts_differently_each_time(store: Store, db_path: Path) -> None:
    store.attributes(S1).set_secret("a", b"same")
    store.attributes(S2).set_secret("a", b"same")
    assert stored(db_path, S1, "a")[2] != stored(db_path, S2, "a")[2]


def test_wrong_key_file_is_refused_at_open(db_path: Path) -> None:
    with Store(db_path) as store:
        store.put_session(session(S1))
        store.attributes(S1).set_secret("token", b"x")
    key_file = db_path.with_name("store.db.key")
    original = key_file.read_bytes()
    key_file.write_bytes(os.urandom(32))
    with pytest.raises(IntegrityError, match="does not belong to store"):
        Store(db_path)
    key_file.write_bytes(original[:16])
    with pytest.raises(SchemaError, match="holds 16 bytes, not 32"):
        Store(db_path)
    key_file.unlink()
    with pytest.raises(SchemaError, match=r"key file .* is missing"):
        Store(db_path)
    assert not key_file.exists(), "a store with data must never get a fresh key"
    key_file.write_bytes(original)
    with Store(db_path) as store:
        assert store.attributes(S1).get_secret("token") == b"x"


def test_rows_under_a_different_key_fail_row_by_row(tmp_path: Path) -> None:
    # Even if the key check were bypassed (a copied database), no row verifies.
    first, second = tmp_path / "one.db", tmp_path / "two.db"
    for path in (first, second):
        with Store(path) as store:
            store.put_session(session(S1))
            store.attributes(S1).set("k", (1,))
    raw(
        second,
        "UPDATE store_meta SET value = ? WHERE name = 'key_check'",
        (raw(first, "SELECT value FROM store_meta WHERE name = 'key_check'")[0][0],),
    )
    second.with_name("two.db.key").write_bytes(first.with_name("one.db.key").read_bytes())
    with Store(second) as store, pytest.raises(IntegrityError):
        store.attributes(S1).get("k")


def test_columns_of_the_wrong_type_are_integrity_errors(store: Store, db_path: Path) -> None:
    attrs = store.attributes(S1)
    for sql in (
        "UPDATE attributes SET value = CAST(value AS TEXT) WHERE key = 'k'",
        "UPDATE attributes SET mac = 'not a blob' WHERE key = 'k'",
        "UPDATE attributes SET version = 'one' WHERE key = 'k'",
        "UPDATE attributes SET kind = 'pickle' WHERE key = 'k'",
    ):
        attrs.set("k", ["v"])
        raw(db_path, sql)
        with pytest.raises(IntegrityError):
            attrs.get("k")
        with pytest.raises(IntegrityError):
            attrs.items_with_kinds()
        raw(db_path, "DELETE FROM attributes WHERE key = 'k'")

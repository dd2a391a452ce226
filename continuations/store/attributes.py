"""Per-session, namespaced attributes with a version per key.

Versions only go up. Deleting a key leaves a tombstone row that keeps its version, so
a key deleted and set again gets a version it never had before: a compare-and-set
holding a version from before the delete fails instead of succeeding against a
different value that happens to carry the same number (the ABA problem).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

from continuations.errors import ConflictError, IntegrityError, NotFoundError, StoreError
from continuations.store.codec import (
    TOMBSTONE,
    Codec,
    ValueKind,
    as_blob,
    context,
    decode,
    encode,
    value_kind,
)
from continuations.store.database import Connection
from continuations.store.records import check_name, check_session_id

UPDATE_RETRIES = 8

_SELECT = (
    "SELECT key, version, kind, value, mac FROM attributes WHERE session_id = ? AND namespace = ?"
)
_UPSERT = (
    "INSERT INTO attributes (session_id, namespace, key, version, kind, value, mac, updated) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (session_id, namespace, key) DO UPDATE SET version = excluded.version, "
    "kind = excluded.kind, value = excluded.value, mac = excluded.mac, "
    "updated = excluded.updated"
)

Row = tuple[str, int, str, bytes, bytes | None]


class Attributes:
    """The attributes of one session in one namespace; get one from ``Store.attributes``."""

    def __init__(self, conn: Connection, codec: Codec, session_id: str, namespace: str) -> None:
        self._conn = conn
        self._codec = codec
        self.session_id = check_session_id(session_id)
        self.namespace = check_name("namespace", namespace)

    def __repr__(self) -> str:
        return f"<Attributes session={self.session_id} namespace={self.namespace!r}>"

    # -- reading ------------------------------------------------------------------------

    def _what(self, key: str) -> str:
        return f"attribute {key!r} in namespace {self.namespace!r} of session {self.session_id}"

    def _context(self, key: str, kind: str, version: int) -> bytes:
        return context("attributes", self.session_id, self.namespace, key, kind, version)

    def _row(self, key: str) -> Row | None:
        row = self._conn.fetchone(f"{_SELECT} AND key = ?", (self.session_id, self.namespace, key))
        if row is None or row[2] == TOMBSTONE:
            return None
        return self._parse(row)

    def _parse(self, row: tuple[Any, ...]) -> Row:
        key, version, kind, blob, mac = row
        what = self._what(str(key))
        if type(version) is not int or not isinstance(kind, str):
            raise IntegrityError(f"{what} has a malformed version or kind column")
        return (str(key), version, kind, as_blob(blob, what), mac)

    def _open(self, row: Row) -> Any:
        """Verify a row's MAC, then decrypt or deserialise it (never the other way round)."""
        key, version, kind, blob, mac = row
        what = self._what(key)
        ctx = self._context(key, kind, version)
        self._codec.verify(ctx, blob, mac, what)
        if kind == ValueKind.SECRET:
            return self._codec.decrypt(ctx, blob, what)
        return decode(kind, blob, what)

    def _rows(self) -> list[Row]:
        rows = self._conn.fetchall(
            f"{_SELECT} AND kind != ? ORDER BY key", (self.session_id, self.namespace, TOMBSTONE)
        )
        return [self._parse(row) for row in rows]

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self._row(key) is not None

    def get(self, key: str, default: Any = None) -> Any:
        """The value of ``key`` (a secret comes back decrypted), or ``default``."""
        row = self._row(key)
        return default if row is None else self._open(row)

    def get_versioned(self, key: str, default: Any = None) -> tuple[Any, int]:
        """``(value, version)``; a missing key is ``(default, 0)``, ready for a CAS."""
        row = self._row(key)
        return (default, 0) if row is None else (self._open(row), row[1])

    def version(self, key: str) -> int:
        """The key's version without reading its value; 0 when it does not exist."""
        row = self._row(key)
        return 0 if row is None else row[1]

    def kind(self, key: str) -> ValueKind | None:
        row = self._row(key)
        return None if row is None else value_kind(row[2], self._what(key))

    def is_secret(self, key: str) -> bool:
        return self.kind(key) is ValueKind.SECRET

    def get_secret(self, key: str) -> bytes:
        row = self._row(key)
        if row is None:
            raise NotFoundError(f"no {self._what(key)}")
        if row[2] != ValueKind.SECRET:
            raise StoreError(f"{self._what(key)} is not a secret")
        value: bytes = self._open(row)
        return value

    def keys(self) -> list[str]:
        rows = self._conn.fetchall(
            "SELECT key FROM attributes WHERE session_id = ? AND namespace = ? AND kind != ? "
            "ORDER BY key",
            (self.session_id, self.namespace, TOMBSTONE),
        )
        return [str(row[0]) for row in rows]

    def items(self) -> dict[str, Any]:
        """Every key and its value, secrets decrypted; one consistent read."""
        return {row[0]: self._open(row) for row in self._rows()}

    def kinds(self) -> dict[str, ValueKind]:
        """Every key and how it is stored, without verifying or loading any value."""
        return {row[0]: value_kind(row[2], self._what(row[0])) for row in self._rows()}

    def items_with_kinds(self, *, reveal_secrets: bool = False) -> dict[str, tuple[ValueKind, Any]]:
        """Every key as ``(kind, value)``; a secret's value is None unless revealed.

        Secrets are still authenticated when hidden, so a listing notices tampering.
        """
        result: dict[str, tuple[ValueKind, Any]] = {}
        for row in self._rows():
            kind = value_kind(row[2], self._what(row[0]))
            if kind is ValueKind.SECRET and not reveal_secrets:
                key, version, _, blob, mac = row
                self._codec.verify(self._context(key, kind, version), blob, mac, self._what(key))
                result[key] = (kind, None)
            else:
                result[row[0]] = (kind, self._open(row))
        return result

    # -- writing ------------------------------------------------------------------------

    def _versions(self, key: str) -> tuple[int, int, str | None]:
        """(live version or 0, last version ever used, live kind or None)."""
        row = self._conn.fetchone(
            "SELECT version, kind FROM attributes "
            "WHERE session_id = ? AND namespace = ? AND key = ?",
            (self.session_id, self.namespace, key),
        )
        if row is None:
            return 0, 0, None
        if type(row[0]) is not int:
            raise IntegrityError(f"{self._what(key)} has a malformed version column")
        if row[1] == TOMBSTONE:
            return 0, int(row[0]), None
        return int(row[0]), int(row[0]), str(row[1])

    def _check(self, key: str, expected: int | None, actual: int) -> None:
        if expected is not None and expected != actual:
            raise ConflictError(
                f"{self._what(key)} is at version {actual}, not {expected}", expected, actual
            )

    def _store(self, key: str, kind: str, payload: bytes, version: int) -> None:
        ctx = self._context(key, kind, version)
        blob = self._codec.encrypt(ctx, payload) if kind == ValueKind.SECRET else payload
        self._conn.write(
            _UPSERT,
            (
                self.session_id,
                self.namespace,
                key,
                version,
                kind,
                blob,
                self._codec.mac(ctx, blob),
                time.time(),
            ),
            session_id=self.session_id,
        )

    def set(self, key: str, value: Any, *, expect_version: int | None = None) -> int:
        """Store ``value``; returns the new version.

        ``expect_version`` makes it a compare-and-set: ``ConflictError`` unless the key is
        at that version now (0: the key must not exist).
        """
        check_name("key", key)
        kind, payload = encode(value)  # outside the write lock: pickling may be slow
        with self._conn.transaction():
            live, last, live_kind = self._versions(key)
            self._check(key, expect_version, live)
            if live_kind == ValueKind.SECRET:
                raise StoreError(
                    f"{self._what(key)} is a secret: overwrite it with set_secret(), or "
                    f"delete it first (refusing to store its replacement in the clear)"
                )
            self._store(key, kind, payload, last + 1)
            return last + 1

    def set_secret(
        self, key: str, secret: bytes | bytearray | memoryview, *, expect_version: int | None = None
    ) -> int:
        """Store ``secret`` encrypted at rest; returns the new version."""
        check_name("key", key)
        if not isinstance(secret, bytes | bytearray | memoryview):
            raise StoreError(f"a secret must be bytes, not {type(secret).__name__}")
        with self._conn.transaction():
            live, last, _ = self._versions(key)
            self._check(key, expect_version, live)
            self._store(key, ValueKind.SECRET, bytes(secret), last + 1)
            return last + 1

    def delete(self, key: str, *, expect_version: int | None = None) -> None:
        """Remove ``key``; ``NotFoundError`` if it does not exist."""
        with self._conn.transaction():
            live, last, _ = self._versions(key)
            self._check(key, expect_version, live)
            if live == 0:
                raise NotFoundError(f"no {self._what(key)}")
            self._store(key, TOMBSTONE, b"", last + 1)

    def update(
        self,
        key: str,
        fn: Callable[[Any], Any],
        *,
        default: Any = None,
        retries: int = UPDATE_RETRIES,
    ) -> Any:
        """Atomically replace the value with ``fn(value)`` and return the new value.

        ``fn`` runs outside the write lock and the result is written with a
        compare-and-set, retried on conflict; so ``fn`` may run more than once and must
        not have side effects. After ``retries`` lost races the last attempt runs under
        the write lock, which cannot lose, so every call finishes. A secret stays a
        secret (``fn`` gets and returns bytes).
        """
        for attempt in range(retries + 1):
            locked = attempt == retries
            guard = self._conn.transaction() if locked else contextlib.nullcontext()
            with guard:
                row = self._row(key)
                value = default if row is None else self._open(row)
                version = 0 if row is None else row[1]
                new = fn(value)
                try:
                    if row is not None and row[2] == ValueKind.SECRET:
                        self.set_secret(key, new, expect_version=version)
                    else:
                        self.set(key, new, expect_version=version)
                except ConflictError:
                    if locked:
                        raise
                    continue
                return new
        raise AssertionError("unreachable")  # pragma: no cover

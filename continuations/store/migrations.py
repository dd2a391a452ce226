"""Numbered schema migrations, applied in order at open and recorded in the database.

A migration, once released, never changes: a later schema change is a new number.
The ``migrations`` table records which numbers ran, so :meth:`Registry.pending` can say
what an open would do without doing it, and a database written by a newer release
(a number we do not know) is refused instead of being half-understood.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import sqlite_utils

from continuations.errors import LocalError, SchemaError
from continuations.store.database import Connection

MigrationFn = Callable[[sqlite_utils.Database], None]

_LEDGER = """
CREATE TABLE IF NOT EXISTS migrations (
    version INTEGER PRIMARY KEY NOT NULL,
    name TEXT NOT NULL,
    applied REAL NOT NULL
)
"""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    fn: MigrationFn


class Registry:
    """Migrations by number; registering a number twice is a bug caught at import."""

    def __init__(self) -> None:
        self._migrations: dict[int, Migration] = {}

    def __call__(self, version: int) -> Callable[[MigrationFn], MigrationFn]:
        """Decorator: ``@registry(3)`` registers the function as migration 3."""
        if version < 1:
            raise LocalError(f"migration numbers start at 1, not {version}")

        def register(fn: MigrationFn) -> MigrationFn:
            if version in self._migrations:
                taken = self._migrations[version].name
                raise LocalError(
                    f"migration {version} is registered twice ({taken} and {fn.__name__})"
                )
            self._migrations[version] = Migration(version, fn.__name__, fn)
            return fn

        return register

    @property
    def latest(self) -> int:
        return max(self._migrations, default=0)

    def migrations(self) -> list[Migration]:
        return [self._migrations[n] for n in sorted(self._migrations)]

    def applied(self, conn: Connection) -> set[int]:
        """Numbers recorded in the database (read-only; empty for a new file)."""
        exists = conn.fetchone(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'migrations'"
        )
        if exists is None:
            return set()
        return {int(row[0]) for row in conn.fetchall("SELECT version FROM migrations")}

    def pending(self, conn: Connection) -> list[Migration]:
        """What :meth:`apply` would run, without running it."""
        done = self.applied(conn)
        return [m for m in self.migrations() if m.version not in done]

    def apply(self, conn: Connection) -> int:
        """Bring the schema up to date in one transaction; returns the schema version.

        The transaction takes the write lock first, so two processes opening a new
        store at once apply each migration exactly once: the second sees the first's
        ledger when it gets the lock.
        """
        with conn.transaction():
            conn.write(_LEDGER)
            done = self.applied(conn)
            newest = max(done, default=0)
            if newest > self.latest:
                raise SchemaError(
                    f"store schema version {newest} is newer than this version of "
                    f"continuations understands ({self.latest})"
                )
            for migration in self.migrations():
                if migration.version in done:
                    continue
                migration.fn(conn.db)
                conn.write(
                    "INSERT INTO migrations (version, name, applied) VALUES (?, ?, ?)",
                    (migration.version, migration.name, time.time()),
                )
            return max(self.applied(conn), default=0)


MIGRATIONS = Registry()
migration = MIGRATIONS


@migration(1)
def create_tables(db: sqlite_utils.Database) -> None:
    db.execute(
        """
        CREATE TABLE store_meta (
            name TEXT PRIMARY KEY NOT NULL,
            value BLOB NOT NULL
        )"""
    )
    db.execute(
        """
        CREATE TABLE sessions (
            id TEXT PRIMARY KEY NOT NULL,
            app TEXT NOT NULL,
            role TEXT NOT NULL,
            state TEXT NOT NULL,
            peer TEXT NOT NULL,
            created REAL NOT NULL,
            updated REAL NOT NULL,
            expires REAL,
            pid INTEGER,
            control_socket TEXT,
            meta TEXT NOT NULL DEFAULT '{}'
        )"""
    )
    # The row key is (session, namespace, key); WITHOUT ROWID stores rows in that
    # order, so a namespace's items are one contiguous range.
    db.execute(
        """
        CREATE TABLE attributes (
            session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
            namespace TEXT NOT NULL,
            key TEXT NOT NULL,
            version INTEGER NOT NULL,
            kind TEXT NOT NULL,
            value BLOB NOT NULL,
            mac BLOB,
            updated REAL NOT NULL,
            PRIMARY KEY (session_id, namespace, key)
        ) WITHOUT ROWID"""
    )
    db.execute(
        """
        CREATE TABLE continuations (
            session_id TEXT PRIMARY KEY NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
            blob BLOB NOT NULL,
            mac BLOB,
            tree TEXT NOT NULL,
            size INTEGER NOT NULL,
            saved REAL NOT NULL
        )"""
    )
    for table in ("resources", "protocol_state"):
        db.execute(
            f"""
            CREATE TABLE {table} (
                session_id TEXT PRIMARY KEY NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
                kind TEXT NOT NULL,
                value BLOB NOT NULL,
                mac BLOB,
                saved REAL NOT NULL
            )"""
        )


@migration(2)
def index_sessions(db: sqlite_utils.Database) -> None:
    # Lookup by id uses the primary key; these serve list_sessions() and the expiry sweep.
    db.execute("CREATE INDEX sessions_by_app_state ON sessions (app, state)")
    db.execute("CREATE INDEX sessions_by_state ON sessions (state)")
    db.execute("CREATE INDEX sessions_by_expiry ON sessions (expires) WHERE expires IS NOT NULL")

"""The store's SQLite file: created private, opened in WAL mode, written only in transactions.

Every write goes through :meth:`Connection.transaction`, which starts the outermost
transaction with ``BEGIN IMMEDIATE``. A deferred ``BEGIN`` would let two processes both
read a version and then race to upgrade to a write lock; one of them would get
``SQLITE_BUSY`` at once (the busy handler cannot help a deadlocked upgrade) and, worse,
a read-modify-write could be computed from a value that is stale by the time it lands.
Taking the write lock up front makes concurrent writers queue behind ``busy_timeout``
instead. Nested blocks are savepoints, so a failing inner block undoes only itself.

One connection is shared by the threads of a process, guarded by a re-entrant lock held
for the whole of a transaction: SQLite transactions belong to a connection, not to a
thread, so two threads interleaving statements would otherwise share one transaction.
"""

from __future__ import annotations

import contextlib
import enum
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import sqlite_utils
from sqlite_utils.db import Tracer

from continuations.errors import LocalError, NotFoundError, SchemaError, StoreError

BUSY_TIMEOUT = 10.0
"""Seconds a writer waits for another process's transaction before giving up."""

SIDECARS = ("-wal", "-shm", "-journal")

Params = Sequence[Any]


class _Mode(enum.Enum):
    IDLE = "idle"
    WRITE = "write"
    SNAPSHOT = "snapshot"


def create_private(path: Path) -> None:
    """Create ``path`` (if missing) with mode 0600 before SQLite ever opens it.

    SQLite would create the file with 0644 minus the umask; creating it ourselves and
    fixing the mode with ``fchmod`` makes the result independent of the umask. SQLite
    gives the -wal and -shm files the mode of the database file, so they follow.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) != 0o600:
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def tighten(path: Path) -> None:
    """Make an existing file 0600 (a copy restored from a backup may be looser)."""
    try:
        if stat.S_IMODE(path.stat().st_mode) != 0o600:
            path.chmod(0o600)
    except FileNotFoundError:
        pass


@contextlib.contextmanager
def translated(path: Path) -> Iterator[None]:
    """Turn ``sqlite3`` exceptions into the ``StoreError`` branch, naming the file."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        message = str(exc)
        if "locked" in message or "busy" in message:
            raise StoreError(
                f"store {path} is busy: another process held its write lock for more "
                f"than {BUSY_TIMEOUT:g} s"
            ) from exc
        raise StoreError(f"store {path}: {message}") from exc
    except sqlite3.IntegrityError as exc:
        raise StoreError(f"store {path}: constraint failed: {exc}") from exc
    except sqlite3.ProgrammingError as exc:
        raise LocalError(f"store {path}: {exc}") from exc
    except sqlite3.DatabaseError as exc:
        # "file is not a database", "database disk image is malformed", ...
        raise SchemaError(f"store {path} is damaged or not a continuations store: {exc}") from exc


class Connection:
    """One SQLite connection to the store file, with the store's transaction rules."""

    def __init__(self, path: Path, *, tracer: Tracer | None = None) -> None:
        self.path = path
        self._lock = threading.RLock()
        self._mode = _Mode.IDLE
        self._depth = 0
        self.closed = False
        create_private(path)
        with translated(path):
            # isolation_level=None: the driver must never open a transaction behind our
            # back; every BEGIN/COMMIT below is explicit.
            raw = sqlite3.connect(
                str(path), timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
            )
        try:
            with translated(path):
                # Plugins are arbitrary code run on every connection; this one holds keys.
                self.db = sqlite_utils.Database(raw, tracer=tracer, execute_plugins=False)
                self.db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}")
                self.db.execute("PRAGMA foreign_keys = ON")
                # FULL: a commit is on disk when it returns, so state persisted just
                # before a suspend survives a power loss during it.
                self.db.execute("PRAGMA synchronous = FULL")
                self._enable_wal()
        except BaseException:
            raw.close()
            raise

    def _enable_wal(self) -> None:
        # Switching to WAL needs an exclusive lock, and a second process opening the
        # same new file at the same moment can make it fail outright rather than wait.
        deadline = time.monotonic() + BUSY_TIMEOUT
        while True:
            try:
                mode = self.db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
                continue
            if str(mode).lower() != "wal":
                raise SchemaError(f"store {self.path}: cannot enable WAL mode (got {mode!r})")
            return

    def tighten_sidecars(self) -> None:
        for suffix in SIDECARS:
            tighten(self.path.with_name(self.path.name + suffix))

    def close(self) -> None:
        with self._lock:
            if self._mode is not _Mode.IDLE:
                raise LocalError("cannot close the store inside a transaction")
            if not self.closed:
                self.closed = True
                self.db.close()

    def _check_open(self) -> None:
        if self.closed:
            raise LocalError(f"store {self.path} is closed")

    # -- statements ---------------------------------------------------------------------

    def write(self, sql: str, params: Params = (), *, session_id: str | None = None) -> int:
        """Run one write statement inside the current transaction; returns rows changed.

        With ``session_id``, a foreign-key failure means that session does not exist.
        """
        with self._lock:
            if self._mode is not _Mode.WRITE:
                raise LocalError("store writes must run inside a transaction")
            with translated(self.path):
                try:
                    return self.db.execute(sql, params).rowcount
                except sqlite3.IntegrityError as exc:
                    if session_id is not None and "FOREIGN KEY" in str(exc):
                        raise NotFoundError(f"no session {session_id} in the store") from exc
                    raise

    def write_one(self, sql: str, params: Params = (), *, session_id: str | None = None) -> int:
        """Run one write statement, in its own transaction unless one is open.

        A single statement is atomic by itself, so inside an open transaction it needs
        no savepoint of its own (that would cost two more statements per write).
        """
        with self._lock:
            if self._mode is _Mode.WRITE:
                return self.write(sql, params, session_id=session_id)
            with self.transaction():
                return self.write(sql, params, session_id=session_id)

    def fetchone(self, sql: str, params: Params = ()) -> tuple[Any, ...] | None:
        with self._lock, translated(self.path):
            self._check_open()
            row: tuple[Any, ...] | None = self.db.execute(sql, params).fetchone()
            return row

    def fetchall(self, sql: str, params: Params = ()) -> list[tuple[Any, ...]]:
        with self._lock, translated(self.path):
            self._check_open()
            return list(self.db.execute(sql, params).fetchall())

    # -- transactions -------------------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Atomic block; the outermost takes the write lock, inner ones are savepoints."""
        with self._lock:
            self._check_open()
            if self._mode is _Mode.SNAPSHOT:
                raise LocalError("cannot write inside store.snapshot(); use transaction()")
            if self._mode is _Mode.WRITE:
                yield from self._savepoint()
                return
            with translated(self.path):
                self.db.conn.execute("BEGIN IMMEDIATE")
            self._mode = _Mode.WRITE
            try:
                yield
            except BaseException:
                self._rollback()
                raise
            else:
                try:
                    with translated(self.path):
                        self.db.conn.execute("COMMIT")
                except BaseException:
                    self._rollback()
                    raise
            finally:
                self._mode = _Mode.IDLE

    def _savepoint(self) -> Iterator[None]:
        self._depth += 1
        name = f"continuations_{self._depth}"
        try:
            with translated(self.path):
                self.db.conn.execute(f"SAVEPOINT {name}")
            try:
                yield
            except BaseException:
                # An error such as SQLITE_FULL may have ended the whole transaction.
                if self.db.conn.in_transaction:
                    with translated(self.path):
                        self.db.conn.execute(f"ROLLBACK TO {name}")
                        self.db.conn.execute(f"RELEASE {name}")
                raise
            else:
                with translated(self.path):
                    self.db.conn.execute(f"RELEASE {name}")
        finally:
            self._depth -= 1

    def _rollback(self) -> None:
        if self.db.conn.in_transaction:
            with translated(self.path):
                self.db.conn.execute("ROLLBACK")

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[None]:
        """Consistent reads: every read in the block sees the same committed state.

        In WAL mode a deferred transaction pins the snapshot at its first read and
        never blocks writers. Inside a write transaction this is a no-op (that
        transaction already sees a consistent state, plus its own writes).
        """
        with self._lock:
            self._check_open()
            if self._mode is not _Mode.IDLE:
                yield
                return
            with translated(self.path):
                self.db.conn.execute("BEGIN DEFERRED")
            self._mode = _Mode.SNAPSHOT
            try:
                yield
            finally:
                self._mode = _Mode.IDLE
                self._rollback()

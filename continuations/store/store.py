"""``Store``: the one object the runtime and the CLI use to reach the database."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

from sqlite_utils.db import Tracer

from continuations import paths
from continuations.store import blobs, sessions
from continuations.store.attributes import Attributes
from continuations.store.codec import Random
from continuations.store.database import Connection
from continuations.store.keyfile import key_path, unlock
from continuations.store.migrations import MIGRATIONS
from continuations.store.records import ContinuationInfo, SessionRecord

STORE_ENV = "CONTINUATIONS_STORE"


def default_path() -> Path:
    """``$CONTINUATIONS_STORE``, else ``store.db`` in the state directory."""
    explicit = os.environ.get(STORE_ENV)
    return Path(explicit) if explicit else paths.state_dir() / "store.db"


class Store:
    """The shared attribute store: one SQLite file plus its key file.

    Open it once per process (a connection must not cross ``fork``); any number of
    processes may open the same file at once. Every method is atomic on its own;
    ``with store.transaction():`` makes a group of them atomic.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        tracer: Tracer | None = None,
        random: Random = os.urandom,
    ) -> None:
        self.path = Path(path) if path is not None else default_path()
        self.key_path = key_path(self.path)
        self._conn = Connection(self.path, tracer=tracer)
        try:
            with self._conn.transaction():
                self._schema_version = MIGRATIONS.apply(self._conn)
                self._codec = unlock(self._conn, self.key_path, random)
            self._conn.tighten_sidecars()
        except BaseException:
            self._conn.close()
            raise

    def __repr__(self) -> str:
        state = "closed" if self._conn.closed else f"schema {self._schema_version}"
        return f"<Store {self.path} ({state})>"

    @property
    def schema_version(self) -> int:
        return self._schema_version

    @property
    def closed(self) -> bool:
        return self._conn.closed

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- transactions -------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Make every store operation in the block one atomic write.

        The outermost block takes the database's write lock at once (``BEGIN
        IMMEDIATE``): writers in other processes wait for it (up to 10 s) rather than
        interleave. Nested blocks are savepoints: an exception leaving one undoes
        only what it did. Keep blocks short; they hold the lock for all processes.
        """
        with self._conn.transaction():
            yield

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """Read-only block whose reads all see one committed state; never blocks writers."""
        with self._conn.snapshot():
            yield

    # -- sessions -----------------------------------------------------------------------

    def put_session(self, record: SessionRecord) -> None:
        """Insert or replace a session row (its attributes and blobs are kept)."""
        sessions.put(self._conn, record)

    def get_session(self, session_id: str) -> SessionRecord:
        return sessions.get(self._conn, session_id)

    def list_sessions(
        self, app: str | None = None, state: str | None = None
    ) -> list[SessionRecord]:
        return sessions.listing(self._conn, app, state)

    def update_session(self, session_id: str, **fields: Any) -> SessionRecord:
        """Change some fields; ``updated`` is set to now unless given. Returns the row."""
        return sessions.update(self._conn, session_id, fields)

    def delete_session(self, session_id: str) -> None:
        """Remove a session and everything stored for it."""
        sessions.delete(self._conn, session_id)

    def expire_sessions(self, now: float) -> list[str]:
        """Remove every session with ``expires < now``; returns their ids."""
        return sessions.expire(self._conn, now)

    # -- attributes ---------------------------------------------------------------------

    def attributes(self, session_id: str, namespace: str = "app") -> Attributes:
        return Attributes(self._conn, self._codec, session_id, namespace)

    # -- continuations, resources, protocol state ---------------------------------------

    def save_continuation(
        self, session_id: str, blob: bytes, *, tree: Any, size: int | None = None
    ) -> None:
        """Save (replacing) the session's pickled continuation with a JSON summary.

        ``size`` defaults to ``len(blob)``.
        """
        blobs.save_continuation(self._conn, self._codec, session_id, blob, tree=tree, size=size)

    def load_continuation(self, session_id: str) -> bytes:
        """The continuation's bytes, authenticated; unpickle them yourself."""
        return blobs.load_continuation(self._conn, self._codec, session_id)

    def load_continuation_object(self, session_id: str) -> Any:
        """Authenticate, then ``dill.loads`` the continuation."""
        return blobs.load_continuation_object(self._conn, self._codec, session_id)

    def continuation_info(self, session_id: str) -> ContinuationInfo:
        """The continuation's summary and sizes, authenticated, without unpickling."""
        return blobs.continuation_info(self._conn, self._codec, session_id)

    def delete_continuation(self, session_id: str) -> None:
        blobs.delete_continuation(self._conn, session_id)

    def save_resources(self, session_id: str, resources: list[dict[str, Any]]) -> None:
        blobs.save_resources(self._conn, self._codec, session_id, resources)

    def load_resources(self, session_id: str) -> list[dict[str, Any]]:
        """The saved resource records; ``[]`` if none were saved."""
        return blobs.load_resources(self._conn, self._codec, session_id)

    def save_protocol_state(self, session_id: str, data: bytes) -> None:
        """Save the session's protocol state, encrypted (it holds the session keys)."""
        blobs.save_protocol_state(self._conn, self._codec, session_id, data)

    def load_protocol_state(self, session_id: str) -> bytes:
        return blobs.load_protocol_state(self._conn, self._codec, session_id)

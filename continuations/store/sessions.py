"""The sessions table: one row per session, the parent of everything else stored for it.

Session rows are bookkeeping (who, which app, state, expiry, where its control socket
is); nothing in them is unpickled, so they carry no MAC. Deleting a row deletes the
session's attributes, continuation, resources and protocol state through
``ON DELETE CASCADE``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from continuations.errors import LocalError, NotFoundError, SchemaError
from continuations.store.database import Connection
from continuations.store.records import SESSION_FIELDS, SessionRecord, check_session_id

_COLUMNS = ", ".join(SESSION_FIELDS)
_UPDATABLE = frozenset(SESSION_FIELDS) - {"id"}
# An upsert, not INSERT OR REPLACE: REPLACE deletes the old row first, and the cascade
# would take the session's attributes and saved state with it.
_UPSERT = (
    f"INSERT INTO sessions ({_COLUMNS}) VALUES ({', '.join('?' for _ in SESSION_FIELDS)}) "
    f"ON CONFLICT (id) DO UPDATE SET "
    + ", ".join(f"{name} = excluded.{name}" for name in SESSION_FIELDS if name != "id")
)


def _meta_json(meta: Mapping[str, Any]) -> str:
    try:
        return json.dumps(dict(meta), separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise LocalError(f"session meta must be JSON-serialisable: {exc}") from exc


def _row(record: SessionRecord) -> tuple[Any, ...]:
    values = [getattr(record, name) for name in SESSION_FIELDS]
    values[SESSION_FIELDS.index("meta")] = _meta_json(record.meta)
    return tuple(values)


def _record(row: tuple[Any, ...]) -> SessionRecord:
    fields = dict(zip(SESSION_FIELDS, row, strict=True))
    try:
        fields["meta"] = json.loads(fields["meta"])
    except ValueError as exc:
        raise SchemaError(f"session {fields['id']}: meta column is not JSON: {exc}") from exc
    return SessionRecord(**fields)


def put(conn: Connection, record: SessionRecord) -> None:
    check_session_id(record.id)
    conn.write_one(_UPSERT, _row(record))


def get(conn: Connection, session_id: str) -> SessionRecord:
    row = conn.fetchone(f"SELECT {_COLUMNS} FROM sessions WHERE id = ?", (session_id,))
    if row is None:
        raise NotFoundError(f"no session {session_id} in the store")
    return _record(row)


def listing(conn: Connection, app: str | None, state: str | None) -> list[SessionRecord]:
    where: list[str] = []
    params: list[Any] = []
    if app is not None:
        where.append("app = ?")
        params.append(app)
    if state is not None:
        where.append("state = ?")
        params.append(state)
    clause = f" WHERE {' AND '.join(where)}" if where else ""
    rows = conn.fetchall(f"SELECT {_COLUMNS} FROM sessions{clause} ORDER BY created, id", params)
    return [_record(row) for row in rows]


def update(conn: Connection, session_id: str, fields: Mapping[str, Any]) -> SessionRecord:
    unknown = set(fields) - _UPDATABLE
    if unknown:
        raise LocalError(f"cannot update session field(s) {', '.join(sorted(unknown))}")
    changes = dict(fields)
    changes.setdefault("updated", time.time())
    if "meta" in changes:
        changes["meta"] = _meta_json(changes["meta"])
    assignments = ", ".join(f"{name} = ?" for name in changes)
    with conn.transaction():
        changed = conn.write(
            f"UPDATE sessions SET {assignments} WHERE id = ?", (*changes.values(), session_id)
        )
        if changed == 0:
            raise NotFoundError(f"no session {session_id} in the store")
        return get(conn, session_id)


def delete(conn: Connection, session_id: str) -> None:
    if conn.write_one("DELETE FROM sessions WHERE id = ?", (session_id,)) == 0:
        raise NotFoundError(f"no session {session_id} in the store")


def expire(conn: Connection, now: float) -> list[str]:
    """Mark every session whose ``expires < now`` as lost, then remove it."""
    with conn.transaction():
        ids = [
            str(row[0])
            for row in conn.fetchall(
                "SELECT id FROM sessions WHERE expires IS NOT NULL AND expires < ? ORDER BY id",
                (now,),
            )
        ]
        if ids:
            # Marked before removal so a tracer (or a trigger added later) sees the state
            # these sessions ended in; both statements see the same rows in this transaction.
            conn.write(
                "UPDATE sessions SET state = 'lost', updated = ? "
                "WHERE expires IS NOT NULL AND expires < ?",
                (now, now),
            )
            conn.write("DELETE FROM sessions WHERE expires IS NOT NULL AND expires < ?", (now,))
        return ids

"""Per-session blobs: the saved continuation, resource records, protocol state.

Each session has at most one row in each table; saving replaces it. Every row is
MAC'd like an attribute (bound to table, session and what describes the blob), and
protocol state, which holds the session's keys, is also encrypted.
"""

from __future__ import annotations

import json
import time
from typing import Any

import dill  # type: ignore[import-untyped]

from continuations.errors import LocalError, NotFoundError, StoreError
from continuations.store.codec import Codec, ValueKind, as_blob, context, decode, encode
from continuations.store.database import Connection
from continuations.store.records import ContinuationInfo, check_session_id


def _require_session(conn: Connection, session_id: str) -> None:
    if conn.fetchone("SELECT 1 FROM sessions WHERE id = ?", (session_id,)) is None:
        raise NotFoundError(f"no session {session_id} in the store")


# -- continuations -----------------------------------------------------------------------


def _continuation_context(session_id: str, tree_json: str, size: int) -> bytes:
    return context("continuations", session_id, tree_json, size)


def save_continuation(
    conn: Connection,
    codec: Codec,
    session_id: str,
    blob: bytes,
    *,
    tree: Any,
    size: int | None,
) -> None:
    check_session_id(session_id)
    try:
        tree_json = json.dumps(tree, separators=(",", ":"), allow_nan=False, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise LocalError(f"continuation tree summary must be JSON-serialisable: {exc}") from exc
    blob = bytes(blob)
    size = len(blob) if size is None else int(size)
    mac = codec.mac(_continuation_context(session_id, tree_json, size), blob)
    conn.write_one(
        "INSERT INTO continuations (session_id, blob, mac, tree, size, saved) "
        "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (session_id) DO UPDATE SET "
        "blob = excluded.blob, mac = excluded.mac, tree = excluded.tree, "
        "size = excluded.size, saved = excluded.saved",
        (session_id, blob, mac, tree_json, size, time.time()),
        session_id=session_id,
    )


def _continuation_row(conn: Connection, codec: Codec, session_id: str) -> tuple[Any, ...]:
    row = conn.fetchone(
        "SELECT blob, mac, tree, size, saved FROM continuations WHERE session_id = ?",
        (session_id,),
    )
    if row is None:
        raise NotFoundError(f"no continuation saved for session {session_id}")
    blob, mac, tree_json, size, saved = row
    what = f"continuation of session {session_id}"
    blob = as_blob(blob, what)
    codec.verify(_continuation_context(session_id, tree_json, size), blob, mac, what)
    return (blob, mac, tree_json, size, saved)


def load_continuation(conn: Connection, codec: Codec, session_id: str) -> bytes:
    blob: bytes = _continuation_row(conn, codec, session_id)[0]
    return blob


def load_continuation_object(conn: Connection, codec: Codec, session_id: str) -> Any:
    blob = load_continuation(conn, codec, session_id)  # verified before unpickling
    try:
        return dill.loads(blob)
    except Exception as exc:
        raise StoreError(
            f"continuation of session {session_id} is authentic but cannot be unpickled: {exc}"
        ) from exc


def continuation_info(conn: Connection, codec: Codec, session_id: str) -> ContinuationInfo:
    blob, _, tree_json, size, saved = _continuation_row(conn, codec, session_id)
    return ContinuationInfo(
        session_id=session_id,
        tree=json.loads(tree_json),
        size=int(size),
        stored_bytes=len(blob),
        saved=float(saved),
    )


def delete_continuation(conn: Connection, session_id: str) -> None:
    if conn.write_one("DELETE FROM continuations WHERE session_id = ?", (session_id,)) == 0:
        raise NotFoundError(f"no continuation saved for session {session_id}")


# -- resources and protocol state: one sealed value per session ---------------------------


def _save_sealed(
    conn: Connection, codec: Codec, table: str, session_id: str, kind: str, payload: bytes
) -> None:
    check_session_id(session_id)
    ctx = context(table, session_id, kind)
    blob = codec.encrypt(ctx, payload) if kind == ValueKind.SECRET else payload
    conn.write_one(
        f"INSERT INTO {table} (session_id, kind, value, mac, saved) VALUES (?, ?, ?, ?, ?) "
        f"ON CONFLICT (session_id) DO UPDATE SET kind = excluded.kind, "
        f"value = excluded.value, mac = excluded.mac, saved = excluded.saved",
        (session_id, kind, blob, codec.mac(ctx, blob), time.time()),
        session_id=session_id,
    )


def _load_sealed(
    conn: Connection, codec: Codec, table: str, session_id: str, what: str
) -> tuple[str, bytes] | None:
    """The verified (and decrypted) payload, or None if the session has no row."""
    row = conn.fetchone(f"SELECT kind, value, mac FROM {table} WHERE session_id = ?", (session_id,))
    if row is None:
        return None
    kind, blob, mac = str(row[0]), as_blob(row[1], what), row[2]
    ctx = context(table, session_id, kind)
    codec.verify(ctx, blob, mac, what)
    if kind == ValueKind.SECRET:
        return kind, codec.decrypt(ctx, blob, what)
    return kind, blob


def save_resources(
    conn: Connection, codec: Codec, session_id: str, resources: list[dict[str, Any]]
) -> None:
    kind, payload = encode(list(resources))
    _save_sealed(conn, codec, "resources", session_id, kind, payload)


def load_resources(conn: Connection, codec: Codec, session_id: str) -> list[dict[str, Any]]:
    what = f"resource records of session {session_id}"
    found = _load_sealed(conn, codec, "resources", session_id, what)
    if found is None:
        _require_session(conn, session_id)
        return []
    resources: list[dict[str, Any]] = decode(found[0], found[1], what)
    return resources


def save_protocol_state(conn: Connection, codec: Codec, session_id: str, data: bytes) -> None:
    _save_sealed(conn, codec, "protocol_state", session_id, ValueKind.SECRET, bytes(data))


def load_protocol_state(conn: Connection, codec: Codec, session_id: str) -> bytes:
    what = f"protocol state of session {session_id}"
    found = _load_sealed(conn, codec, "protocol_state", session_id, what)
    if found is None:
        raise NotFoundError(f"no protocol state saved for session {session_id}")
    if found[0] != ValueKind.SECRET:
        raise StoreError(f"{what} is stored unencrypted; refusing it")
    return found[1]

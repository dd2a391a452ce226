"""The store key: 32 random bytes in ``<db path>.key`` (0600), next to the database.

Without the key file nothing in the database can be verified or decrypted, so it is
never replaced: it is created once, exclusively, and a database that already has data
refuses to open without the key it was written with. The database keeps a key check
value (a MAC under a key derived from the store key) to tell a wrong key file at open,
instead of failing row by row later.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from continuations.errors import IntegrityError, SchemaError
from continuations.paths import private_file
from continuations.store.codec import KEY_SIZE, Codec, Random, as_blob
from continuations.store.database import Connection, tighten

_KEY_CHECK = "key_check"


def key_path(db_path: Path) -> Path:
    return db_path.with_name(db_path.name + ".key")


def read_key(path: Path) -> bytes | None:
    """The key in ``path``, or None if there is no key file."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    if len(data) != KEY_SIZE:
        raise SchemaError(
            f"store key file {path} holds {len(data)} bytes, not {KEY_SIZE}: it is damaged "
            f"or not a continuations store key; restore the key file that was created "
            f"with this store"
        )
    tighten(path)
    return data


def create_key(path: Path, random: Random) -> bytes:
    """Create the key file unless it exists; returns the key that ends up in it.

    ``private_file`` writes atomically with ``os.replace``, which would silently overwrite
    a key another process created a moment ago (and orphan everything it wrote). So the
    new key is staged under a unique name and hard-linked into place: ``link`` fails if
    the name exists, and the loser reads the winner's key.
    """
    key = random(KEY_SIZE)
    if len(key) != KEY_SIZE:
        raise ValueError(f"random({KEY_SIZE}) returned {len(key)} bytes")
    staged = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    private_file(staged, key)
    try:
        os.link(staged, path)
    except FileExistsError:
        existing = read_key(path)
        if existing is None:  # pragma: no cover - removed between link and read
            raise SchemaError(f"store key file {path} vanished while opening") from None
        return existing
    finally:
        staged.unlink(missing_ok=True)
    _fsync_dir(path.parent)
    return key


def _fsync_dir(directory: Path) -> None:
    # The new name must survive a crash too, or the next open would make a new key.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def unlock(conn: Connection, path: Path, random: Random) -> Codec:
    """Load (or on first open create) the store key and check it against the database.

    Runs inside the opening transaction, so the check value and the key file are
    created by the same process that holds the write lock.
    """
    with conn.transaction():
        row = conn.fetchone("SELECT value FROM store_meta WHERE name = ?", (_KEY_CHECK,))
        key = read_key(path)
        if key is None:
            if row is not None:
                raise SchemaError(
                    f"store {conn.path} has data but its key file {path} is missing: "
                    f"restore the key file that was created with this store (without it "
                    f"nothing stored can be verified or decrypted)"
                )
            key = create_key(path, random)
        codec = Codec(key, random=random)
        if row is None:
            conn.write(
                "INSERT INTO store_meta (name, value) VALUES (?, ?)",
                (_KEY_CHECK, codec.key_check),
            )
        elif not secrets.compare_digest(as_blob(row[0], "store key check"), codec.key_check):
            raise IntegrityError(
                f"store key file {path} does not belong to store {conn.path}: the key "
                f"check stored in the database does not match; restore the key file that "
                f"was created with this store"
            )
        return codec

"""How values become bytes in the store, and how those bytes are authenticated.

Encoding: a value is stored as JSON when JSON gives back exactly the same value with
exactly the same types (so a tuple, a dict with int keys or a str subclass go to dill),
otherwise with dill. Secrets are bytes, encrypted with ChaCha20-Poly1305.

Authentication: every stored blob carries ``HMAC-SHA256(mac_key, context || blob)``,
where the context names the row it belongs to (table, session, namespace, key, kind,
version). A blob copied onto another row, another session or another store fails the
check. The check runs before any byte is handed to ``dill``: unpickling attacker bytes
runs the attacker's code, so a row must prove it was written by this store first.

Keys: the 32-byte store key never signs or encrypts anything itself; HKDF derives one
key for MACs and one for encryption, so neither use can be turned against the other.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import json
import os
import struct
from collections.abc import Callable
from typing import Any

import dill  # type: ignore[import-untyped]
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from continuations.errors import IntegrityError, StoreError

KEY_SIZE = 32
NONCE_SIZE = 12
MAC_SIZE = 32
_CONTEXT_LABEL = b"continuations-store-v1"
_JSON_MAX_DEPTH = 200

Random = Callable[[int], bytes]


class ValueKind(enum.StrEnum):
    """How a stored value is encoded; ``SECRET`` values must be redacted when shown."""

    JSON = "json"
    DILL = "dill"
    SECRET = "secret"


TOMBSTONE = "deleted"
"""Kind of a deleted attribute's row, kept so its version never goes backwards."""


def derive(store_key: bytes, purpose: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=_CONTEXT_LABEL, info=purpose).derive(
        store_key
    )


def context(*fields: str | int) -> bytes:
    """An unambiguous encoding of the fields a MAC binds a blob to.

    Each field is length-prefixed, so ("ab", "c") and ("a", "bc") differ.
    """
    parts = [_CONTEXT_LABEL]
    for field in fields:
        data = str(field).encode("utf-8", "surrogatepass")
        parts.append(struct.pack(">I", len(data)))
        parts.append(data)
    return b"".join(parts)


class Codec:
    """MACs and encryption under keys derived from one store key."""

    def __init__(self, store_key: bytes, *, random: Random = os.urandom) -> None:
        if len(store_key) != KEY_SIZE:
            raise ValueError(f"store key must be {KEY_SIZE} bytes")
        self._mac_key = derive(store_key, b"mac")
        self._aead = ChaCha20Poly1305(derive(store_key, b"aead"))
        self._check = hmac.digest(derive(store_key, b"key-check"), b"key-check", "sha256")
        self._random = random

    @property
    def key_check(self) -> bytes:
        """A value stored in the database so a wrong key file is caught at open."""
        return self._check

    def mac(self, ctx: bytes, blob: bytes) -> bytes:
        return hmac.digest(self._mac_key, ctx + blob, "sha256")

    def verify(self, ctx: bytes, blob: bytes, mac: object, what: str) -> None:
        """Raise ``IntegrityError`` unless ``mac`` authenticates ``blob`` for ``ctx``."""
        if mac is None or mac == b"":
            raise IntegrityError(f"{what} has no MAC: it was not written by this store")
        if not hmac.compare_digest(self.mac(ctx, blob), as_blob(mac, f"MAC of {what}")):
            raise IntegrityError(
                f"{what} failed authentication: the stored bytes were modified, or "
                f"copied from another key, session or store"
            )

    def encrypt(self, ctx: bytes, plaintext: bytes) -> bytes:
        nonce = self._random(NONCE_SIZE)
        return nonce + self._aead.encrypt(nonce, plaintext, ctx)

    def decrypt(self, ctx: bytes, sealed: bytes, what: str) -> bytes:
        try:
            return self._aead.decrypt(sealed[:NONCE_SIZE], sealed[NONCE_SIZE:], ctx)
        except InvalidTag as exc:
            raise IntegrityError(f"{what} could not be decrypted: wrong key or tampered") from exc


def as_blob(value: object, what: str) -> bytes:
    """A column this store writes as a BLOB; any other type means someone else wrote it."""
    if isinstance(value, bytes):
        return value
    raise IntegrityError(
        f"{what} holds a {type(value).__name__} where this store writes bytes: "
        f"it was not written by this store"
    )


def value_kind(kind: object, what: str) -> ValueKind:
    try:
        return ValueKind(str(kind))
    except ValueError:
        raise IntegrityError(f"{what} has unknown encoding {kind!r}") from None


def _is_exact_json(value: object) -> bool:
    """True when ``json.loads(json.dumps(value))`` is ``value``, types included."""
    stack: list[tuple[object, int]] = [(value, 0)]
    seen: set[int] = set()
    while stack:
        item, depth = stack.pop()
        kind = type(item)
        if item is None or kind in (str, int, bool):
            continue
        if kind is float:
            if item != item or item in (float("inf"), float("-inf")):
                return False
            continue
        if kind not in (list, dict) or depth >= _JSON_MAX_DEPTH:
            return False
        if id(item) in seen:
            # Shared or cyclic references: JSON would duplicate or refuse them.
            return False
        seen.add(id(item))
        if kind is dict:
            assert isinstance(item, dict)
            for key, child in item.items():
                if type(key) is not str:
                    return False
                stack.append((child, depth + 1))
        else:
            assert isinstance(item, list)
            stack.extend((child, depth + 1) for child in item)
    return True


def encode(value: object) -> tuple[ValueKind, bytes]:
    """Serialise a value: JSON when that is exact, dill otherwise."""
    if _is_exact_json(value):
        try:
            return ValueKind.JSON, json.dumps(value, separators=(",", ":")).encode("ascii")
        except ValueError:
            pass  # e.g. an int past sys.get_int_max_str_digits(); dill keeps it
    try:
        return ValueKind.DILL, bytes(dill.dumps(value))
    except Exception as exc:
        raise StoreError(
            f"cannot store a {type(value).__name__}: dill cannot pickle it ({exc})"
        ) from exc


def decode(kind: str, payload: bytes, what: str) -> Any:
    """Deserialise an *already verified* payload."""
    if kind == ValueKind.JSON:
        return json.loads(payload)
    if kind == ValueKind.DILL:
        try:
            return dill.loads(payload)
        except Exception as exc:
            # Authenticated bytes that fail to load: usually code that moved or changed
            # since the value was stored (a class renamed, a module gone).
            raise StoreError(f"{what} is authentic but cannot be unpickled: {exc}") from exc
    raise IntegrityError(f"{what} has unknown encoding {kind!r}")


def fingerprint(data: bytes) -> str:
    """Short digest of a blob for listings (not a secret, not a MAC)."""
    return hashlib.sha256(data).hexdigest()[:16]

"""Key schedule, record protection and attach proofs.

New session: X25519 ephemeral agreement; HKDF-SHA256 with the handshake
transcript hash as salt yields the session's resume key and the first
attachment's traffic keys. Re-attach: a fresh X25519 agreement, mixed with the
resume key, yields fresh traffic keys for every attachment, so a record counter
never repeats under one key and a leaked resume key does not reveal past
traffic. Records are sealed with ChaCha20-Poly1305; the nonce is the record's
counter in that direction, which both sides track (records ride on TCP, in order).
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from continuations.errors import AuthenticationError
from continuations.protocol.states import RecordType
from continuations.protocol.wire import KEY_LEN, RECORD_HEADER, record_header

Random = Callable[[int], bytes]

_LABEL = b"continuations/1 "
_NONCE = struct.Struct("!4xQ")
# Far below ChaCha20-Poly1305's limits; reaching it ends the link and the re-attach
# that follows brings fresh keys.
MAX_RECORDS_PER_KEY = 2**48


def _hkdf(ikm: bytes, salt: bytes, label: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_LEN, salt=salt, info=_LABEL + label).derive(
        ikm
    )


def channel_binding(resume_key: bytes) -> bytes:
    """A value unique to one session and known only to its two ends, for applications
    that sign something bound to the session (user authentication): a signature made
    for one session is worthless in any other, even one with the same server."""
    return _hkdf(resume_key, b"", b"channel binding")


def transcript_hash(*parts: bytes) -> bytes:
    h = hashlib.sha256(_LABEL + b"transcript")
    for part in parts:
        h.update(struct.pack("!I", len(part)))
        h.update(part)
    return h.digest()


class Ephemeral:
    """One X25519 key pair made from injected randomness."""

    __slots__ = ("_private", "public")

    def __init__(self, rng: Random) -> None:
        self._private = X25519PrivateKey.from_private_bytes(rng(KEY_LEN))
        self.public = self._private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    def agree(self, peer_public: bytes) -> bytes:
        try:
            shared = self._private.exchange(X25519PublicKey.from_public_bytes(peer_public))
        except ValueError as exc:  # low-order point: the all-zero shared secret
            raise AuthenticationError("peer sent an invalid X25519 public key") from exc
        return shared


@dataclass(frozen=True, slots=True)
class TrafficKeys:
    client_to_server: bytes
    server_to_client: bytes


def new_session_secrets(shared: bytes, th: bytes) -> tuple[bytes, TrafficKeys]:
    """Resume key and first traffic keys of a new session."""
    resume_key = _hkdf(shared, th, b"resume key")
    keys = TrafficKeys(_hkdf(shared, th, b"c2s traffic"), _hkdf(shared, th, b"s2c traffic"))
    return resume_key, keys


def attach_traffic_keys(resume_key: bytes, shared: bytes, th: bytes) -> TrafficKeys:
    ikm = shared + resume_key
    return TrafficKeys(_hkdf(ikm, th, b"c2s attach"), _hkdf(ikm, th, b"s2c attach"))


def prove(resume_key: bytes, label: bytes, message: bytes) -> bytes:
    return hmac.new(resume_key, _LABEL + label + message, hashlib.sha256).digest()


def check_proof(resume_key: bytes, label: bytes, message: bytes, proof: bytes) -> bool:
    return hmac.compare_digest(prove(resume_key, label, message), proof)


def host_signature_payload(th: bytes) -> bytes:
    return _LABEL + b"host signature" + th


def sign_host(host_key: Ed25519PrivateKey, th: bytes) -> bytes:
    return host_key.sign(host_signature_payload(th))


def verify_host(host_public: bytes, th: bytes, signature: bytes) -> None:
    try:
        Ed25519PublicKey.from_public_bytes(host_public).verify(
            signature, host_signature_payload(th)
        )
    except (InvalidSignature, ValueError) as exc:
        raise AuthenticationError("server's host key signature does not verify") from exc


def reject_payload(client_nonce: bytes, session_id: bytes, code: int) -> bytes:
    return _LABEL + b"reject" + client_nonce + session_id + bytes((code,))


def sign_reject(host_key: Ed25519PrivateKey, client_nonce: bytes, session_id: bytes,
                code: int) -> bytes:
    return host_key.sign(reject_payload(client_nonce, session_id, code))


def reject_is_authentic(host_public: bytes, client_nonce: bytes, session_id: bytes, code: int,
                        signature: bytes) -> bool:
    """A refusal signed by the pinned host key, over this request's fresh nonce."""
    if len(signature) != 64 or len(host_public) != 32:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(host_public).verify(
            signature, reject_payload(client_nonce, session_id, code)
        )
    except (InvalidSignature, ValueError):
        return False
    return True


class Sealer:
    """Seals records in one direction of one attachment."""

    __slots__ = ("_aead", "_counter")

    def __init__(self, key: bytes) -> None:
        self._aead = ChaCha20Poly1305(key)
        self._counter = 0

    def seal(self, parts: Sequence[bytes | memoryview]) -> bytearray:
        """One whole record: the frames in ``parts``, encrypted straight into it."""
        if self._counter >= MAX_RECORDS_PER_KEY:
            raise AuthenticationError("record counter exhausted for this key")
        plaintext = b"".join(parts) if len(parts) != 1 else parts[0]
        size = len(plaintext) + 16
        header = record_header(RecordType.SEALED, size)
        record = bytearray(RECORD_HEADER + size)
        record[:RECORD_HEADER] = header
        nonce = _NONCE.pack(self._counter)
        self._counter += 1
        self._aead.encrypt_into(nonce, plaintext, header, memoryview(record)[RECORD_HEADER:])
        return record


class Opener:
    """Opens records in one direction of one attachment."""

    __slots__ = ("_aead", "_counter")

    def __init__(self, key: bytes) -> None:
        self._aead = ChaCha20Poly1305(key)
        self._counter = 0

    def open(self, header: bytes, body: bytes) -> bytes:
        if len(header) != RECORD_HEADER or self._counter >= MAX_RECORDS_PER_KEY:
            raise AuthenticationError("record counter exhausted for this key")
        try:
            plaintext = self._aead.decrypt(_NONCE.pack(self._counter), body, header)
        except InvalidTag as exc:
            raise AuthenticationError("record failed authentication") from exc
        self._counter += 1
        return plaintext


def public_bytes(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

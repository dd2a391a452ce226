"""User authentication: OpenSSH public keys, and optionally a password hashed with scrypt.

The client signs the session's channel binding (``AsyncSession.channel_binding``),
so a signature made for one session is worthless in any other, even one with the
same server. Keys are OpenSSH's own formats, read with ``cryptography``'s SSH
loaders: private keys as ``ssh-keygen`` writes them (``~/.ssh/id_ed25519``,
passphrase-protected or not), public keys as lines of ``authorized_keys``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from continuations.errors import AuthenticationError, ConfigError

log = logging.getLogger("contsh.auth")

PublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey | rsa.RSAPublicKey
PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

_CONTEXT = b"contsh user authentication v1\0"
KEY_TYPES = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
             "ssh-rsa")
DEFAULT_IDENTITIES = ("id_ed25519", "id_ecdsa", "id_rsa")
# scrypt at N=2^15, r=8 (128 * r * N = 32 MiB) costs ~0.1 s here: cheap for one login,
# expensive for a guesser with a stolen password file.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 1 << 15, 8, 1
_SCRYPT_MAXMEM = 64 * 1024 * 1024


def signed_data(binding: bytes, user: str) -> bytes:
    """What a client signs: a fixed context, the session's binding, the user name."""
    return _CONTEXT + binding + user.encode()


def public_line(key: PublicKey) -> str:
    """The key as an ``authorized_keys`` line would hold it (type and base64)."""
    return key.public_bytes(serialization.Encoding.OpenSSH,
                            serialization.PublicFormat.OpenSSH).decode()


def key_fingerprint(key: PublicKey) -> str:
    """``SHA256:...`` as ``ssh-keygen -l`` prints it."""
    blob = base64.b64decode(public_line(key).split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def parse_public_key(text: str) -> PublicKey:
    try:
        key = serialization.load_ssh_public_key(text.encode())
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise AuthenticationError(f"not an OpenSSH public key: {exc}") from exc
    if not isinstance(key, PublicKey):
        raise AuthenticationError(f"unsupported key type {type(key).__name__}")
    return key


@dataclass(frozen=True, slots=True)
class AuthorizedKey:
    key: PublicKey
    comment: str
    line: int


def parse_authorized_keys(text: str, source: str = "authorized_keys") -> list[AuthorizedKey]:
    """Every usable key in an ``authorized_keys`` text.

    Lines with options (``from=``, ``command=``, ...) restrict what a key may do; we
    cannot honour those restrictions, so such keys are skipped (with a warning)
    rather than granted more than their owner meant. Unparsable lines are skipped too,
    as sshd does.
    """
    keys = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        if fields[0] not in KEY_TYPES:
            log.warning("%s:%d: key options or type %r not supported; line skipped",
                        source, number, fields[0][:40])
            continue
        if len(fields) < 2:
            log.warning("%s:%d: no key data; line skipped", source, number)
            continue
        try:
            key = parse_public_key(f"{fields[0]} {fields[1]}")
        except AuthenticationError as exc:
            log.warning("%s:%d: %s; line skipped", source, number, exc)
            continue
        keys.append(AuthorizedKey(key, " ".join(fields[2:]), number))
    return keys


def load_authorized_keys(path: Path) -> list[AuthorizedKey]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    return parse_authorized_keys(text, str(path))


def _ecdsa_hash(curve: ec.EllipticCurve) -> hashes.HashAlgorithm:
    # RFC 5656: the hash follows the curve size.
    return {256: hashes.SHA256(), 384: hashes.SHA384()}.get(curve.key_size, hashes.SHA512())


def sign(key: PrivateKey, data: bytes) -> bytes:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(data)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(data, ec.ECDSA(_ecdsa_hash(key.curve)))
    return key.sign(data, padding.PKCS1v15(), hashes.SHA256())


def verify(key: PublicKey, signature: bytes, data: bytes) -> bool:
    try:
        if isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, data)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, data, ec.ECDSA(_ecdsa_hash(key.curve)))
        else:
            key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        return False
    return True


def find_authorized(keys: list[AuthorizedKey], offered: PublicKey) -> AuthorizedKey | None:
    line = public_line(offered).encode()
    for entry in keys:
        # Public, but compare in constant time anyway: nothing to learn from timing.
        if hmac.compare_digest(public_line(entry.key).encode(), line):
            return entry
    return None


def default_identity(ssh_dir: Path | None = None) -> Path | None:
    folder = ssh_dir or Path.home() / ".ssh"
    for name in DEFAULT_IDENTITIES:
        if (folder / name).is_file():
            return folder / name
    return None


def load_private_key(path: Path, passphrase: Callable[[], str] | None = None) -> PrivateKey:
    """An OpenSSH (or PEM) private key; ``passphrase()`` is asked for only if needed."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read identity {path}: {exc}") from exc
    loader = (serialization.load_ssh_private_key if b"OPENSSH PRIVATE KEY" in data
              else serialization.load_pem_private_key)
    try:
        try:
            key = loader(data, None)
        except TypeError:  # encrypted: "password was not given"
            if passphrase is None:
                raise ConfigError(f"identity {path} is encrypted and no passphrase "
                                  "can be asked for") from None
            key = loader(data, passphrase().encode())
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ConfigError(f"cannot load identity {path}: {exc}") from exc
    if not isinstance(key, PrivateKey):
        raise ConfigError(f"identity {path}: unsupported key type {type(key).__name__}")
    return key


# --- passwords ------------------------------------------------------------------------------


def hash_password(password: str, salt: bytes | None = None) -> str:
    salt = salt if salt is not None else os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P,
                            maxmem=_SCRYPT_MAXMEM, dklen=32)
    b64 = base64.b64encode
    return (f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}$"
            f"{b64(salt).decode()}${b64(digest).decode()}")


def check_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.strip().split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest, validate=True)
        got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt, validate=True),
                             n=int(n), r=int(r), p=int(p), maxmem=_SCRYPT_MAXMEM,
                             dklen=len(expected))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, expected)

"""Server host keys on disk and the client's known-hosts pinning (trust on first use).

The host key is an Ed25519 private key in OpenSSH's PEM format, file mode 0600.
The known-hosts file has one line per server: ``host:port ed25519 BASE64``,
where BASE64 is the raw 32-byte public key; lines starting with ``#`` are
comments. A fingerprint is ``SHA256:`` and the unpadded base64 of the key's
SHA-256, as OpenSSH prints it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from continuations.errors import ConfigError, HostKeyMismatchError
from continuations.paths import private_file, state_dir


def fingerprint(public_key: bytes) -> str:
    digest = hashlib.sha256(public_key).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def load_or_create_host_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """Load the host key at ``path``, or make one there (0600) if there is none."""
    target = Path(path)
    if target.exists():
        try:
            key = serialization.load_ssh_private_key(target.read_bytes(), password=None)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{target}: not an unencrypted OpenSSH private key") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigError(f"{target}: host key must be Ed25519")
        return key
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    private_file(target, pem)
    return key


def default_known_hosts() -> Path:
    return state_dir() / "known_hosts"


class KnownHosts:
    """Pins each server's host key the first time it is seen; refuses a different one."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else default_known_hosts()

    def _entries(self) -> dict[str, bytes]:
        entries: dict[str, bytes] = {}
        if not self.path.exists():
            return entries
        for number, line in enumerate(self.path.read_text().splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split()
            if len(parts) != 3 or parts[1] != "ed25519":
                raise ConfigError(f"{self.path}:{number}: expected 'host:port ed25519 KEY'")
            try:
                key = base64.b64decode(parts[2], validate=True)
            except ValueError as exc:
                raise ConfigError(f"{self.path}:{number}: bad base64 key") from exc
            entries[parts[0]] = key
        return entries

    def lookup(self, host: str) -> bytes | None:
        return self._entries().get(host)

    def check(self, host: str, public_key: bytes) -> None:
        """Accept a pinned match; pin an unknown host; raise on a mismatch."""
        pinned = self.lookup(host)
        if pinned is None:
            self.add(host, public_key)
        elif not hmac.compare_digest(pinned, public_key):
            raise HostKeyMismatchError(
                host, fingerprint(pinned), fingerprint(public_key), str(self.path)
            )

    def add(self, host: str, public_key: bytes) -> None:
        line = f"{host} ed25519 {base64.b64encode(public_key).decode()}\n"
        existing = self.path.read_text() if self.path.exists() else ""
        private_file(self.path, (existing + line).encode())

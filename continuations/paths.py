"""Where files live (XDG base directories) and how secret files are written."""

from __future__ import annotations

import os
import socket
from pathlib import Path

STATE_ENV = "CONTINUATIONS_STATE_DIR"
RUNTIME_ENV = "CONTINUATIONS_RUNTIME_DIR"


def state_dir() -> Path:
    """``$CONTINUATIONS_STATE_DIR``, else ``$XDG_STATE_HOME/continuations``, else
    ``~/.local/state/continuations``; created 0700."""
    explicit = os.environ.get(STATE_ENV)
    if explicit:
        path = Path(explicit)
    else:
        base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
        path = Path(base) / "continuations"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def runtime_dir() -> Path:
    """``$CONTINUATIONS_RUNTIME_DIR``, else ``$XDG_RUNTIME_DIR/continuations``, else a
    per-user directory under the system temp dir; created 0700."""
    explicit = os.environ.get(RUNTIME_ENV)
    if explicit:
        path = Path(explicit)
    elif os.environ.get("XDG_RUNTIME_DIR"):
        path = Path(os.environ["XDG_RUNTIME_DIR"]) / "continuations"
    else:
        import tempfile  # rarely needed; launchers that import this module start faster

        path = Path(tempfile.gettempdir()) / f"continuations-{os.getuid()}"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def private_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, readable by the owner only (0600)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    import tempfile

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def private_unix_socket(path: Path) -> socket.socket:
    """A Unix stream socket bound at ``path`` (a stale one there is replaced), born
    0600: there is no moment at which another user could connect."""
    path.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    except OSError:
        sock.close()
        raise
    finally:
        os.umask(old)
    return sock

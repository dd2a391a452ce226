"""The control socket through which the CLI reaches live sessions of a process.

A Unix-domain stream socket, mode 0600, in the runtime directory. One request
per connection: a JSON object on one line (at most 64 KiB), answered by one JSON
line: ``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``. Operations:
``ping``, ``show`` (live details of a session), ``suspend``, ``drop``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

from continuations.errors import ContinuationsError
from continuations.paths import private_unix_socket, runtime_dir

if TYPE_CHECKING:
    from continuations.runtime.runtime import Runtime

MAX_REQUEST = 64 * 1024


class ControlServer:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.path = runtime_dir() / f"{runtime.app}-{os.getpid()}.sock"
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> Path:
        self._server = await asyncio.start_unix_server(
            self._handle, sock=private_unix_socket(self.path), limit=MAX_REQUEST
        )
        return self.path

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 10)
            request = json.loads(line)
            if not isinstance(request, dict):
                raise ValueError("request must be a JSON object")
            reply: dict[str, Any] = {"ok": True, **await self._dispatch(request)}
        except (ValueError, TimeoutError, asyncio.LimitOverrunError) as exc:
            reply = {"ok": False, "error": f"bad request: {exc}"}
        except ContinuationsError as exc:
            reply = {"ok": False, "error": str(exc)}
        except Exception as exc:
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        with contextlib.suppress(ConnectionError):
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        writer.close()

    async def _dispatch(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        runtime = self.runtime
        if op == "ping":
            return {"pid": os.getpid(), "app": runtime.app, "sessions": sorted(runtime.contexts)}
        sid = request.get("session")
        ctx = runtime.contexts.get(sid) if isinstance(sid, str) else None
        if ctx is None:
            raise ContinuationsError(f"session {sid} is not live in pid {os.getpid()}")
        if op == "show":
            local, remote = ctx.session.path
            return {
                "state": ctx.session.state.value,
                "rtt": ctx.session.rtt,
                "local": local,
                "remote": remote,
                "attach_version": ctx.session.attach_version,
                "unacknowledged": ctx.session.buffered,
                "streams": ctx.session.stream_ids,
                "resources": {name: res.describe() for name, res in ctx.resources.items()},
                "generators": list(runtime.generators),
            }
        if op == "suspend":
            result = await runtime.suspend(ctx.session_id, reason="requested from the CLI")
            return {"status": result.status, "continuation_bytes": result.continuation_bytes,
                    "protocol_bytes": result.protocol_bytes, "elapsed": result.elapsed}
        if op == "drop":
            ctx.session.abort("dropped from the CLI")
            return {"dropped": ctx.session_id}
        raise ContinuationsError(f"unknown operation {op!r}")

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self.path.unlink(missing_ok=True)


def request(path: str | os.PathLike[str], message: dict[str, Any],
            timeout: float = 30.0) -> dict[str, Any]:
    """Send one request to a control socket and return its answer (blocking)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(os.fspath(path))
        except OSError as exc:
            raise ContinuationsError(
                f"cannot reach the owning process at {path}: {exc.strerror or exc}"
            ) from exc
        sock.sendall(json.dumps(message).encode() + b"\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
            if chunk.endswith(b"\n"):
                break
    try:
        reply = json.loads(b"".join(chunks))
    except ValueError as exc:
        raise ContinuationsError(f"bad answer from {path}") from exc
    if not isinstance(reply, dict):
        raise ContinuationsError(f"bad answer from {path}")
    if not reply.get("ok"):
        raise ContinuationsError(str(reply.get("error", "refused")))
    return reply

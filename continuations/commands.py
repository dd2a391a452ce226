"""The session commands of the CLI: list, show, suspend, resume, drop, gc.

Suspended sessions are read from the store directly; live ones are reached
through their owning process's control socket.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from continuations.errors import ContinuationError, ContinuationsError, NotFoundError
from continuations.paths import state_dir
from continuations.runtime.control import request
from continuations.runtime.forkserver import fork_resume
from continuations.runtime.resources import pid_alive
from continuations.store import SessionRecord, Store, ValueKind

LIVE = ("established", "disconnected", "resuming")
RESUME_WAIT = 30.0



def find(store: Store, prefix: str) -> SessionRecord:
    """A session by id or unique id prefix (at least 4 characters)."""
    prefix = prefix.lower()
    try:
        return store.get_session(prefix)
    except NotFoundError:
        pass
    if len(prefix) < 4:
        raise NotFoundError(f"no session {prefix!r} (give at least 4 characters of the id)")
    matches = [r for r in store.list_sessions() if r.id.startswith(prefix)]
    if not matches:
        raise NotFoundError(f"no session matches {prefix!r}")
    if len(matches) > 1:
        raise ContinuationsError(f"{prefix!r} matches {len(matches)} sessions; give more of it")
    return matches[0]


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def cmd_list(store: Store, as_json: bool) -> int:
    rows = store.list_sessions()
    now = time.time()
    if as_json:
        print(json.dumps([
            {"id": r.id, "app": r.app, "role": r.role, "state": r.state, "peer": r.peer,
             "pid": r.pid, "created": r.created, "updated": r.updated, "expires": r.expires}
            for r in rows
        ], indent=2))
        return 0
    if not rows:
        print("no sessions")
        return 0
    print(f"{'ID':<34}{'APP':<14}{'ROLE':<8}{'STATE':<14}{'PEER':<24}{'PID':<8}{'UPDATED':<8}")
    for r in rows:
        state = r.state if r.state not in LIVE or pid_alive(r.pid) else f"{r.state}?"
        print(f"{r.id:<34}{r.app[:13]:<14}{r.role:<8}{state:<14}{r.peer[:23]:<24}"
              f"{r.pid or '-'!s:<8}{_age(now - r.updated) + ' ago':<8}")
    return 0


def cmd_show(store: Store, prefix: str, as_json: bool) -> int:
    record = find(store, prefix)
    info: dict[str, Any] = {
        "id": record.id, "app": record.app, "role": record.role, "state": record.state,
        "peer": record.peer, "pid": record.pid, "control_socket": record.control_socket,
        "created": record.created, "updated": record.updated, "expires": record.expires,
    }
    attrs = store.attributes(record.id, "app")
    info["attributes"] = {
        key: "<secret>" if kind is ValueKind.SECRET else value
        for key, (kind, value) in attrs.items_with_kinds().items()
    }
    if record.state == "suspended":
        cont = store.continuation_info(record.id)
        info["continuation"] = {"tree": cont.tree, "bytes": cont.size}
        info["protocol_state_bytes"] = len(store.load_protocol_state(record.id))
        info["resources"] = store.load_resources(record.id)
    elif record.control_socket and pid_alive(record.pid):
        live = request(record.control_socket, {"op": "show", "session": record.id})
        live.pop("ok", None)
        info["live"] = live
        info["resources"] = live.get("resources", {})
    if as_json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    width = max(len(k) for k in info)
    for key, value in info.items():
        if isinstance(value, dict | list):
            value = json.dumps(value, default=str)
        print(f"{key:<{width}}  {value}")
    return 0


def cmd_suspend(store: Store, prefix: str) -> int:
    record = find(store, prefix)
    if record.state == "suspended":
        raise ContinuationError(f"session {record.id} is already suspended")
    if record.state not in LIVE or not record.control_socket or not pid_alive(record.pid):
        raise ContinuationError(
            f"session {record.id} is {record.state} and its owning process "
            f"({record.pid or 'none'}) is not running; nothing to suspend"
        )
    reply = request(record.control_socket, {"op": "suspend", "session": record.id})
    if reply.get("status") == "blocked":
        raise ContinuationError(
            f"session {record.id}: the application asked to stay in memory (BLOCK)"
        )
    print(f"suspended {record.id}: continuation {reply['continuation_bytes']} bytes, "
          f"protocol state {reply['protocol_bytes']} bytes, in "
          f"{reply['elapsed'] * 1000:.0f} ms")
    return 0


def cmd_resume(store: Store, prefix: str, local_host: str | None, foreground: bool) -> int:
    record = find(store, prefix)
    if record.state != "suspended":
        raise ContinuationError(f"session {record.id} is {record.state}, not suspended")
    if foreground:
        args = [sys.executable, "-m", "continuations.runtime.launch", record.id,
                "--store", str(store.path)]
        if local_host:
            args += ["--local-host", local_host]
        return subprocess.call(args, cwd=record.meta.get("cwd"))
    logs = state_dir() / "logs"
    logs.mkdir(mode=0o700, exist_ok=True)
    log_path = logs / f"{record.id}.log"
    # A new process forked from the resumer, which has everything imported already.
    pid = fork_resume({"session": record.id, "store": str(store.path),
                       "local_host": local_host, "log": str(log_path),
                       "cwd": record.meta.get("cwd")})
    deadline = time.monotonic() + RESUME_WAIT
    while time.monotonic() < deadline:
        current = store.get_session(record.id)
        if current.state in ("established", "disconnected") and current.pid == pid:
            print(f"resumed {record.id} in pid {pid} (log: {log_path})")
            return 0
        if not pid_alive(pid):
            tail = Path(log_path).read_text(errors="replace").strip().splitlines()[-1:]
            raise ContinuationError(
                f"resume of {record.id} failed: {tail[0] if tail else 'no output'} "
                f"(log: {log_path})"
            )
        time.sleep(0.01)
    raise ContinuationError(f"resume of {record.id} did not finish in {RESUME_WAIT:g} s "
                            f"(pid {pid}, log: {log_path})")


def cmd_drop(store: Store, prefix: str) -> int:
    record = find(store, prefix)
    if record.state in LIVE and record.control_socket and pid_alive(record.pid):
        request(record.control_socket, {"op": "drop", "session": record.id})
    store.delete_session(record.id)
    print(f"dropped {record.id}")
    return 0


def cmd_gc(store: Store) -> int:
    expired = store.expire_sessions(time.time())
    orphaned = []
    for record in store.list_sessions():
        if record.state in LIVE and not pid_alive(record.pid):
            store.delete_session(record.id)
            orphaned.append(record.id)
    print(f"removed {len(expired)} expired and {len(orphaned)} orphaned sessions "
          "(owner died without suspending)")
    return 0


def cmd_attr(store: Store, prefix: str, key: str | None, value: str | None, incr: int | None,
             namespace: str) -> int:
    record = find(store, prefix)
    attrs = store.attributes(record.id, namespace)
    if key is None:
        for name, (kind, current) in sorted(attrs.items_with_kinds().items()):
            shown = "<secret>" if kind is ValueKind.SECRET else json.dumps(current, default=str)
            print(f"{name} = {shown}  (v{attrs.version(name)})")
        return 0
    if incr is not None:
        def add(current: Any) -> Any:
            if current is not None and not isinstance(current, int | float):
                raise ContinuationsError(f"{key} is not a number")
            return (current or 0) + incr

        result = attrs.update(key, add, default=None)
        print(json.dumps(result))
        return 0
    if value is None:
        if attrs.is_secret(key):
            print("<secret>")
        else:
            print(json.dumps(attrs.get(key, None), default=str))
        return 0
    try:
        parsed = json.loads(value)
    except ValueError:
        parsed = value
    version = attrs.set(key, parsed)
    print(f"{key} = {json.dumps(parsed)}  (v{version})")
    return 0

"""Several processes on one store: no lost update, no half-written suspension."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from continuations.protocol.snapshot import SessionSnapshot
from continuations.store import SessionRecord, Store

INCREMENTER = """
import sys, time
from continuations.store import Store
store = Store(sys.argv[1])
attrs = store.attributes(sys.argv[2], "app")
for _ in range(int(sys.argv[3])):
    attrs.update("hits", lambda n: (n or 0) + 1, default=0)
print("done", flush=True)
"""


def test_app_and_cli_incrementing_at_once_lose_no_update(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    sid = "ab" * 16
    with Store(db) as store:
        now = time.time()
        store.put_session(SessionRecord(id=sid, app="counter", role="client",
                                        state="established", peer="", created=now,
                                        updated=now))
    app = subprocess.Popen([sys.executable, "-c", INCREMENTER, str(db), sid, "300"],
                           stdout=subprocess.PIPE, text=True)
    for _ in range(15):  # the CLI, as a separate process each time, meanwhile
        done = subprocess.run(
            [sys.executable, "-m", "continuations", "--store", str(db), "attr", sid[:6],
             "hits", "--incr", "1"],
            capture_output=True, text=True, timeout=60,
        )
        assert done.returncode == 0, done.stderr
    assert app.wait(timeout=120) == 0
    with Store(db) as store:
        assert store.attributes(sid).get("hits") == 315


PERSISTER = """
import asyncio, sys
from pathlib import Path
from continuations.aio import connect, serve
from continuations.protocol import SessionConfig
from continuations.runtime import Continuation, Runtime

def nothing(state, conditions, ctx):
    pass

async def handler(session):
    await session.wait_closed()

async def main(workdir):
    server = await serve(handler, host_key=workdir / "hk")
    runtime = Runtime("persister", workdir / "store.db")
    runtime.on_disconnect("g")(lambda ctx: Continuation(nothing, {"pad": "x" * 200_000}))
    for i in range(10_000):
        session = await connect(*server.address, known_hosts=workdir / "kh")
        ctx = runtime.manage(session)
        ctx.open_file(workdir / f"f{i % 5}", "a", name="f")
        session.open_stream().write(b"y" * 100_000)
        await runtime.suspend(ctx.session_id)
        print(i, flush=True)

asyncio.run(main(Path(sys.argv[1])))
"""


def test_kill_9_during_persistence_never_leaves_a_half_written_session(tmp_path: Path) -> None:
    rand = random.Random(5)
    suspended_seen = 0
    for _round in range(4):
        proc = subprocess.Popen([sys.executable, "-c", PERSISTER, str(tmp_path)],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        proc.stdout.readline()  # it has persisted at least once this round
        time.sleep(rand.uniform(0.05, 0.6))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        db = sqlite3.connect(tmp_path / "store.db")
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        db.close()
        with Store(tmp_path / "store.db") as store:
            for record in store.list_sessions():
                has_continuation = has_state = True
                try:
                    store.load_continuation(record.id)  # authenticated, whole
                except Exception:
                    has_continuation = False
                try:
                    SessionSnapshot.decode(store.load_protocol_state(record.id))
                except Exception:
                    has_state = False
                resources = store.load_resources(record.id)
                if record.state == "suspended":
                    suspended_seen += 1
                    assert has_continuation and has_state and len(resources) == 1
                else:  # killed before its suspension committed: none of it is there
                    assert record.state == "established"
                    assert not has_continuation and not has_state and resources == []
    assert suspended_seen > 4

"""Several processes on one store: no lost updates, no torn reads, crash safety."""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from continuations.store import SessionRecord, Store
from continuations.store.migrations import MIGRATIONS

SPAWN = multiprocessing.get_context("spawn")
SID = "c0ffee00" * 2


def session(sid: str, **meta: Any) -> SessionRecord:
    return SessionRecord(
        id=sid,
        app="demo",
        role="server",
        state="attached",
        peer="p",
        created=1.0,
        updated=1.0,
        meta=meta,
    )


def run_all(processes: list[Any], timeout: float) -> None:
    for process in processes:
        process.start()
    deadline = time.monotonic() + timeout
    for process in processes:
        process.join(max(0.1, deadline - time.monotonic()))
    for process in processes:
        if process.is_alive():
            process.kill()
            process.join()
    assert [p.exitcode for p in processes] == [0] * len(processes)


# -- workers (module level so 'spawn' children can import them) ----------------------------


def _increment(path: str, count: int) -> None:
    with Store(path) as store:
        attrs = store.attributes(SID)
        for n in range(count):
            if n % 2:
                attrs.update("counter", lambda value: value + 1, default=0)
            else:
                with store.transaction():
                    attrs.set("counter", attrs.get("counter", 0) + 1)


def _write_pairs(path: str, stop: Any, count: int) -> None:
    with Store(path) as store:
        attrs = store.attributes(SID)
        for n in range(1, count + 1):
            if stop.is_set():
                break
            with store.transaction():
                attrs.set("left", n)
                attrs.set("right", n)


def _open_and_write(path: str, barrier: Any, name: str) -> None:
    barrier.wait(timeout=30)
    with Store(path) as store:
        store.put_session(session(f"{int(name):02x}"))
        store.attributes(f"{int(name):02x}").set_secret("who", name.encode())


# -- tests ----------------------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_no_lost_updates_across_processes(tmp_path: Path) -> None:
    path = str(tmp_path / "store.db")
    with Store(path) as store:
        store.put_session(session(SID))
    workers = [SPAWN.Process(target=_increment, args=(path, 300)) for _ in range(4)]
    run_all(workers, timeout=75)
    with Store(path) as store:
        value, version = store.attributes(SID).get_versioned("counter")
    assert value == 1200
    assert version == 1200


@pytest.mark.timeout(60)
def test_a_transaction_is_never_seen_half_done(tmp_path: Path) -> None:
    path = str(tmp_path / "store.db")
    with Store(path) as store:
        store.put_session(session(SID))
        attrs = store.attributes(SID)
        with store.transaction():
            attrs.set("left", 0)
            attrs.set("right", 0)
        stop = SPAWN.Event()
        writer = SPAWN.Process(target=_write_pairs, args=(path, stop, 100_000))
        writer.start()
        try:
            seen: set[int] = set()
            deadline = time.monotonic() + 20
            while len(seen) < 50 and time.monotonic() < deadline:
                items = attrs.items()
                assert items["left"] == items["right"], items
                with store.snapshot():
                    left = attrs.get("left")
                    time.sleep(0.0005)  # give the writer a chance to commit in between
                    right = attrs.get("right")
                assert left == right
                seen.add(left)
            assert len(seen) >= 50, "the writer made too little progress to test anything"
        finally:
            stop.set()
            writer.join(30)
    assert writer.exitcode == 0


@pytest.mark.timeout(60)
def test_processes_opening_a_new_store_at_once(tmp_path: Path) -> None:
    path = str(tmp_path / "store.db")
    barrier = SPAWN.Barrier(4)
    workers = [
        SPAWN.Process(target=_open_and_write, args=(path, barrier, str(n))) for n in range(4)
    ]
    run_all(workers, timeout=50)
    with Store(path) as store:
        # All four used the same key: every secret verifies and decrypts here.
        for n in range(4):
            assert store.attributes(f"{n:02x}").get_secret("who") == str(n).encode()
    conn = sqlite3.connect(path)
    try:
        versions = [r[0] for r in conn.execute("SELECT version FROM migrations ORDER BY 1")]
    finally:
        conn.close()
    assert versions == list(range(1, MIGRATIONS.latest + 1))


CRASHING_WRITER = textwrap.dedent(
    """
    import sys
    from continuations.store import SessionRecord, Store

    path, first = sys.argv[1], int(sys.argv[2])
    store = Store(path)
    print("ready", flush=True)
    seq = first
    while True:
        seq += 1
        sid = f"{seq % 5:02x}"
        with store.transaction():
            store.put_session(SessionRecord(
                id=sid, app="crash", role="server", state="attached", peer="p",
                created=1.0, updated=float(seq), meta={"seq": seq},
            ))
            attrs = store.attributes(sid)
            for n in range(50):
                attrs.set(f"k{n:02d}", (seq, n) if n % 2 else seq)
            store.save_continuation(
                sid, b"seq=%d;" % seq + b"x" * (seq % 4096), tree={"seq": seq}
            )
            if seq % 7 == 0:
                store.attributes(sid, namespace="auth").set_secret("key", b"%d" % seq)
    """
)


def check_complete(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()
    highest = 0
    with Store(path) as store:
        for record in store.list_sessions(app="crash"):
            seq = record.meta["seq"]
            highest = max(highest, seq)
            assert record.updated == float(seq)
            items = store.attributes(record.id).items()
            assert sorted(items) == [f"k{n:02d}" for n in range(50)], record.id
            for n in range(50):
                assert items[f"k{n:02d}"] == ((seq, n) if n % 2 else seq)
            blob = store.load_continuation(record.id)
            assert blob.startswith(b"seq=%d;" % seq) and len(blob) == len(b"seq=%d;" % seq) + (
                seq % 4096
            )
            assert store.continuation_info(record.id).tree == {"seq": seq}
    return highest


@pytest.mark.timeout(90)
def test_kill_9_during_persistence_leaves_whole_transactions(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    rng = random.Random(os.getpid())
    highest = 0
    for _ in range(5):
        child = subprocess.Popen(
            [sys.executable, "-c", CRASHING_WRITER, str(path), str(highest)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            assert child.stdout is not None
            line = child.stdout.readline()
            assert line == b"ready\n", child.stderr.read() if child.stderr else line
            time.sleep(rng.uniform(0.05, 0.6))
            assert child.poll() is None, "writer died on its own"
            os.kill(child.pid, signal.SIGKILL)
        finally:
            child.kill()
            child.wait(10)
            child.stdout and child.stdout.close()
            child.stderr and child.stderr.close()
        assert child.returncode == -signal.SIGKILL
        now = check_complete(path)
        assert now >= highest
        highest = now
    assert highest > 0, "no transaction ever committed"

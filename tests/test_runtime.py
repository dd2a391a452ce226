"""The runtime's rules: generators, BLOCK, policy, integrity of what it stores."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import dill
import pytest

from aiohelpers import FAST, echo_handler, run
from continuations.aio import connect, serve
from continuations.errors import GeneratorError, IntegrityError, LocalError
from continuations.runtime import (
    BLOCK,
    Continuation,
    NetworkConditions,
    Policy,
    Runtime,
    SessionContext,
)


def noop(state: Any, conditions: NetworkConditions, ctx: SessionContext) -> None:
    ctx.runtime.last_state = state  # type: ignore[attr-defined]


class Bomb:
    """Unpickling this creates a file: proof that unpickling happened."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


async def live(tmp_path: Path, runtime: Runtime, name: str = "s") -> SessionContext:
    server = await serve(echo_handler, host_key=tmp_path / "hk", config=FAST)
    session = await connect(*server.address, known_hosts=tmp_path / "kh", config=FAST)
    runtime._test_servers = [*getattr(runtime, "_test_servers", []), server]  # type: ignore[attr-defined]
    return runtime.manage(session)


def test_generator_names_are_unique_and_parents_must_exist(tmp_path: Path) -> None:
    async def main() -> None:
        runtime = Runtime("app", tmp_path / "store.db")
        runtime.on_disconnect("a")(lambda ctx: BLOCK)
        with pytest.raises(LocalError, match="named 'a' exists"):
            runtime.on_disconnect("a")(lambda ctx: BLOCK)
        with pytest.raises(LocalError, match="parent generator 'zzz'"):
            runtime.on_disconnect("b", parent="zzz")(lambda ctx: BLOCK)
        runtime.close()

    run(main())


def test_block_keeps_the_session_live_and_its_resources(tmp_path: Path) -> None:
    async def main() -> tuple[str, str, bool]:
        runtime = Runtime("app", tmp_path / "store.db")
        ctx = await live(tmp_path, runtime)
        handle = ctx.open_file(tmp_path / "f", "w", name="f")
        runtime.on_disconnect("stay")(lambda ctx: BLOCK)
        result = await runtime.suspend(ctx.session_id)
        state = runtime.store.get_session(ctx.session_id).state
        closed = handle.closed
        await ctx.session.close()
        runtime.close()
        return result.status, state, closed

    assert run(main()) == ("blocked", "established", False)


def test_failing_slow_or_wrong_generators_give_clear_errors(tmp_path: Path) -> None:
    async def main() -> list[str]:
        runtime = Runtime("app", tmp_path / "store.db", policy=Policy(generator_deadline=0.2))
        ctx = await live(tmp_path, runtime)
        errors = []
        for fn in (
            lambda c: 1 / 0,
            lambda c: "not a continuation",
        ):
            runtime.generators.clear()
            runtime.on_disconnect("g")(fn)
            with pytest.raises(GeneratorError) as caught:
                await runtime.suspend(ctx.session_id)
            errors.append(str(caught.value))

        async def slow(c: SessionContext) -> Continuation:
            await asyncio.sleep(5)
            return Continuation(noop)

        runtime.generators.clear()
        runtime.on_disconnect("slow")(slow)
        with pytest.raises(GeneratorError) as caught:
            await runtime.suspend(ctx.session_id)
        errors.append(str(caught.value))
        assert runtime.store.get_session(ctx.session_id).state == "established"
        await ctx.session.close()
        runtime.close()
        return errors

    errors = run(main())
    assert "failed: division by zero" in errors[0]
    assert "returned str, not a Continuation or BLOCK" in errors[1]
    assert "did not finish within 0.2 s" in errors[2]


def test_nested_continuations_resume_parent_first_then_children_in_order(
    tmp_path: Path,
) -> None:
    # The continuation is serialised (closures by value), so it reports through a file,
    # not through this process's memory.
    record = tmp_path / "order.txt"

    def step(name: str) -> Any:
        def fn(state: Any, conditions: NetworkConditions, ctx: SessionContext) -> None:
            with open(record, "a") as out:
                out.write(name + "\n")
        return fn

    async def main() -> None:
        runtime = Runtime("app", tmp_path / "store.db")
        ctx = await live(tmp_path, runtime)
        runtime.on_disconnect("session")(lambda c: Continuation(step("session")))
        runtime.on_disconnect("channel-1", parent="session")(lambda c: Continuation(step("1")))
        runtime.on_disconnect("channel-2", parent="session")(lambda c: Continuation(step("2")))
        await runtime.suspend(ctx.session_id)
        tree = runtime.store.continuation_info(ctx.session_id).tree
        assert [c["name"] for c in tree["children"]] == ["channel-1", "channel-2"]
        again = Runtime("app", runtime.store)
        resumed, task = await again.resume(ctx.session_id)
        await task
        await resumed.session.close()
        again.close()

    run(main())
    assert record.read_text().split() == ["session", "1", "2"]


def test_a_long_outage_suspends_automatically(tmp_path: Path) -> None:
    from continuations.testing import ImpairmentRelay

    async def main() -> tuple[str, bool]:
        runtime = Runtime("app", tmp_path / "store.db", policy=Policy(suspend_after=0.5))
        server = await serve(echo_handler, host_key=tmp_path / "hk", config=FAST)
        relay = ImpairmentRelay(target=server.address)
        await relay.start()
        session = await connect(*relay.address, known_hosts=tmp_path / "kh", config=FAST)
        ctx = runtime.manage(session)
        handle = ctx.open_file(tmp_path / "f", "w", name="f")
        runtime.on_disconnect("g")(lambda c: Continuation(noop, {"x": 1}))
        relay.blackhole()  # silent: detected as dead, then frozen, then suspended
        await asyncio.wait_for(runtime.wait_idle(), 20)
        state = runtime.store.get_session(ctx.session_id).state
        await relay.close()
        server.close()
        runtime.close()
        return state, handle.closed

    assert run(main()) == ("suspended", True)


def test_tampered_continuation_is_refused_before_unpickling(tmp_path: Path) -> None:
    marker = tmp_path / "bomb-went-off"

    async def main() -> tuple[str, str]:
        runtime = Runtime("app", tmp_path / "store.db")
        victim = await live(tmp_path, runtime)
        other = await live(tmp_path / ".." / tmp_path.name, runtime)
        runtime.on_disconnect("g")(
            lambda c: Continuation(noop, {"pad": "A" * 4096, "bomb": Bomb(marker)})
        )
        await runtime.suspend(victim.session_id)
        await runtime.suspend(other.session_id)
        runtime.close()
        return victim.session_id, other.session_id

    victim, other = run(main())
    db = sqlite3.connect(tmp_path / "store.db")
    (blob,) = db.execute("SELECT blob FROM continuations WHERE session_id = ?",
                         (victim,)).fetchone()
    # Positive control: this blob really does run code when unpickled.
    dill.loads(blob)
    assert marker.exists()
    marker.unlink()
    pad = blob.index(b"A" * 64)
    tampered = blob[: pad + 10] + b"B" + blob[pad + 11 :]
    db.execute("UPDATE continuations SET blob = ? WHERE session_id = ?", (tampered, victim))
    db.commit()
    db.close()

    done = subprocess.run(
        [sys.executable, "-m", "continuations", "--store", str(tmp_path / "store.db"),
         "resume", victim, "--foreground"],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 1
    assert "failed authentication" in done.stderr or "IntegrityError" in done.stderr or (
        "tampered" in done.stderr
    ), done.stderr
    assert not marker.exists()  # no code of the tampered blob ran

    from continuations.store import Store

    with Store(tmp_path / "store.db") as store:
        assert store.get_session(victim).state == "suspended"  # refused, nothing changed
        with pytest.raises(IntegrityError):
            store.load_continuation(victim)
        assert store.continuation_info(other).size > 0  # the other session is fine
        assert store.load_continuation(other)


def test_unserialisable_continuation_fails_cleanly_and_leaves_the_session_live(
    tmp_path: Path,
) -> None:
    async def main() -> tuple[str, str, bool]:
        runtime = Runtime("app", tmp_path / "store.db")
        ctx = await live(tmp_path, runtime)
        task = asyncio.ensure_future(asyncio.sleep(60))
        runtime.on_disconnect("g")(lambda c: Continuation(noop, {"task": task}))
        with pytest.raises(GeneratorError) as caught:
            await runtime.suspend(ctx.session_id)
        state = runtime.store.get_session(ctx.session_id).state
        stream = ctx.session.open_stream()
        stream.write(b"still attached")
        stream.write_eof()
        echoed = await stream.read()
        task.cancel()
        await ctx.session.close()
        runtime.close()
        return str(caught.value), state, echoed == b"still attached"

    message, state, works = run(main())
    assert "cannot be serialised" in message
    assert state == "established" and works


def test_control_socket_is_private_and_answers_only_for_live_sessions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import stat

    from continuations.errors import ContinuationsError
    from continuations.runtime.control import request

    monkeypatch.setenv("CONTINUATIONS_RUNTIME_DIR", str(tmp_path / "run"))

    async def main() -> tuple[int, int, dict[str, Any], str]:
        runtime = Runtime("app", tmp_path / "store.db")
        path = Path(await runtime.start_control())
        mode = stat.S_IMODE(path.stat().st_mode)
        dir_mode = stat.S_IMODE(path.parent.stat().st_mode)
        ping = await asyncio.to_thread(request, path, {"op": "ping"})
        try:
            await asyncio.to_thread(request, path, {"op": "suspend", "session": "ab" * 16})
            refused = ""
        except ContinuationsError as exc:
            refused = str(exc)
        runtime.close()
        return mode, dir_mode, ping, refused

    mode, dir_mode, ping, refused = run(main())
    assert mode == 0o600 and dir_mode == 0o700
    assert ping["app"] == "app" and ping["sessions"] == []
    assert "not live" in refused


def test_resume_reports_a_changed_path(tmp_path: Path) -> None:
    """Regression: the local address was read after detaching (always None), so
    ``path_changed`` was never true."""
    seen = tmp_path / "conditions.txt"

    def report(state: Any, conditions: NetworkConditions, ctx: SessionContext) -> None:
        seen.write_text(f"{conditions.path_changed} {conditions.local_address}")

    async def main() -> str:
        runtime = Runtime("app", tmp_path / "store.db")
        ctx = await live(tmp_path, runtime)
        before = ctx.session.path[0]
        assert before is not None and before[0] == "127.0.0.1"
        runtime.on_disconnect("s")(lambda c: Continuation(report))
        await runtime.suspend(ctx.session_id)
        again = Runtime("app", runtime.store)
        resumed, task = await again.resume(ctx.session_id, local_host="127.0.0.2")
        await task
        await resumed.session.close()
        again.close()
        return seen.read_text()

    assert run(main()).startswith("True ('127.0.0.2'")

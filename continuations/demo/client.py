"""The demo's mobile client, in its own process, under a ``Runtime``.

``python -m continuations.demo.mobile HOST:PORT --work DIR (--local-hosts A,B | --prefer IF,IF)``

It opens one session with two streams (``audio`` and ``file``), writes what it
receives to files and reports to ``DIR/client-events.jsonl`` (see telemetry.py).
The received files and the report file are opened through the runtime, so a
suspension releases them and the process that resumes reopens them where they
were. It moves between networks in one of two ways:

* ``--local-hosts``: on SIGUSR1 it migrates, make-before-break, to the next
  address of the list (the loopback demo);
* ``--prefer``: it follows the kernel's rtnetlink notifications and keeps the
  session on the first usable interface of the list (the ``--netns`` demo).

``continuations suspend`` makes this process exit; ``continuations resume``
runs ``resume_streams`` in a new one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from continuations.aio import ClientSession, connect
from continuations.demo import telemetry
from continuations.errors import ContinuationsError
from continuations.netwatch import Change, Migration, NetWatcher, NetworkFollower
from continuations.protocol import Disconnected, Event, Reattached
from continuations.runtime import (
    Continuation,
    ManagedFile,
    NetworkConditions,
    Runtime,
    SessionContext,
)

APP = "continuations-demo"
STREAMS = ("audio", "file")
READ_SIZE = 64 * 1024
PROGRESS_INTERVAL = 0.1
TELEMETRY = "client-events.jsonl"


def process_age() -> float | None:
    """Seconds since this process was started (forked), from /proc; None elsewhere.

    The kernel counts in clock ticks (10 ms on most systems), so this is as coarse."""
    try:
        stat = Path("/proc/self/stat").read_text()
        ticks = int(stat.rpartition(")")[2].split()[19])  # field 22: starttime
        since_boot = time.clock_gettime(time.CLOCK_BOOTTIME)
    except (OSError, ValueError, IndexError, AttributeError):
        return None
    return max(0.0, since_boot - ticks / os.sysconf("SC_CLK_TCK"))


def _file(ctx: SessionContext, name: str) -> IO[Any]:
    resource = ctx.resource(name)
    if not isinstance(resource, ManagedFile):
        raise ContinuationsError(f"resource {name!r} is not a file")
    return resource.file


class Receiver:
    """The live half of the client: readers, progress reports, the network triggers.

    Everything it needs to carry on elsewhere is in ``state`` (plain data); ``stop``
    ends the live half so a continuation can capture it.
    """

    def __init__(self, ctx: SessionContext, state: dict[str, Any], *,
                 announce_first: bool = False) -> None:
        self.ctx = ctx
        self.state = state
        session = ctx.session
        assert isinstance(session, ClientSession)
        self.session = session
        self.log = _file(ctx, "telemetry")
        self._tasks: list[asyncio.Task[None]] = []
        # After a resume the first byte read is reported too: data flowing again.
        self._version_seen = -1 if announce_first else session.attach_version
        self._watcher: NetWatcher | None = None
        self._follower: NetworkFollower | None = None
        self._moves: set[asyncio.Task[None]] = set()
        self.finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def emit(self, ev: str, **fields: Any) -> None:
        telemetry.write(self.log, ev, **fields)

    async def start(self) -> None:
        self.session.add_listener(self._on_event)
        loop = asyncio.get_running_loop()
        for name in STREAMS:
            if not self.state["streams"][name]["done"]:
                self._tasks.append(loop.create_task(self._read(name)))
        self._tasks.append(loop.create_task(self._report()))
        if self.state["prefer"]:
            self._watcher = NetWatcher()
            self._watcher.add_listener(self._on_change)
            await self._watcher.start()
            self._follower = NetworkFollower(self.session, self._watcher,
                                             prefer=self.state["prefer"],
                                             on_migration=self._on_migration)
            self._follower.start()
        else:
            loop.add_signal_handler(signal.SIGUSR1, self._move)
        self._check_finished()

    # --- receiving ------------------------------------------------------------------------

    async def _read(self, name: str) -> None:
        entry = self.state["streams"][name]
        stream = self.session.stream(entry["id"])
        out = _file(self.ctx, name)
        # No await between a read and the bookkeeping after it: cancelled at the read,
        # nothing is lost (unread bytes stay in the stream and travel in the snapshot).
        while data := await stream.read(READ_SIZE):
            entry["received"] += len(data)
            out.write(self._sabotage(name, data))
            if self.session.attach_version != self._version_seen:
                self._version_seen = self.session.attach_version
                self.emit("first_data", version=self._version_seen, stream=name)
        entry["done"] = True
        out.flush()
        self._check_finished()

    def _sabotage(self, name: str, data: bytes) -> bytes:
        """Test-only: damage one byte of the file stream, to prove the check can fail."""
        mode = self.state["sabotage"]
        if not mode or name != "file" or self.state["sabotaged"] or len(data) < 2:
            return data
        self.state["sabotaged"] = True
        self.emit("sabotaged", mode=mode, stream=name)
        return data[1:] if mode == "drop" else data[:1] + data

    def _check_finished(self) -> None:
        if all(self.state["streams"][n]["done"] for n in STREAMS) and not self.finished.done():
            self.finished.set_result(None)

    async def _report(self) -> None:
        while True:
            local = self.session.path[0]
            self.emit("progress", state=self.session.state.value,
                      local=local[0] if local else None,
                      **{n: self.state["streams"][n]["received"] for n in STREAMS})
            await asyncio.sleep(PROGRESS_INTERVAL)

    # --- the session and the network ------------------------------------------------------

    def _on_event(self, event: Event) -> None:
        if isinstance(event, Disconnected):
            self.emit("disconnected", reason=event.reason)
        elif isinstance(event, Reattached):
            local = self.session.path[0]
            self.emit("reattached", version=event.attach_version, replayed=event.replayed,
                      offline=event.offline, rtt=event.rtt, local=local[0] if local else None)

    def _move(self) -> None:
        """SIGUSR1: make-before-break to the next address of the list."""
        hosts: list[str] = self.state["local_hosts"]
        current = self.session.local_host
        target = hosts[(hosts.index(current) + 1) % len(hosts)] if current in hosts else hosts[0]
        task = asyncio.get_running_loop().create_task(self._migrate(current, target))
        self._moves.add(task)
        task.add_done_callback(self._moves.discard)

    async def _migrate(self, old: str | None, new: str) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        error = None
        try:
            await self.session.migrate(local_host=new)
        except (OSError, TimeoutError, ContinuationsError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        self.emit("migrated", trigger="signal", old=old, new=new, notified=started,
                  started=started, finished=loop.time(), version=self.session.attach_version,
                  connected=self.session.link_opened_at if error is None else None,
                  error=error)

    def _on_change(self, change: Change) -> None:
        self.emit("netlink", at=change.at, usable={k: list(v) for k, v in change.usable.items()})

    def _on_migration(self, move: Migration) -> None:
        self.emit("migrated", trigger="netlink", old=move.old, new=move.new,
                  interface=move.interface, reason=move.reason, notified=move.notified_at,
                  started=move.started_at, finished=move.finished_at,
                  connected=move.connected_at, version=move.attach_version, error=move.error)

    # --- stopping, for a suspension or at the end -----------------------------------------

    async def stop(self) -> None:
        """End the live half: after this, ``state`` is what the session's work is."""
        with contextlib.suppress(ValueError):
            self.session.remove_listener(self._on_event)
        if self._follower is not None:
            await self._follower.wait_closed()
        if self._watcher is not None:
            self._watcher.close()
        if not self.state["prefer"]:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGUSR1)
        for task in [*self._tasks, *self._moves]:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._moves, return_exceptions=True)


def install_generator(runtime: Runtime, receiver: Receiver) -> None:
    # A closure over live objects: not carried in the continuation, so a resumed process
    # registers it again (replacing the one it loaded, if any).
    runtime.generators.pop("demo", None)

    @runtime.on_disconnect("demo")
    async def suspend_streams(ctx: SessionContext) -> Continuation:
        receiver.emit("suspending", reason=ctx.reason)
        await receiver.stop()
        state = {**receiver.state, "process": receiver.state["process"] + 1}
        return Continuation(resume_streams, state)


async def finish(receiver: Receiver, ctx: SessionContext) -> None:
    """Both streams have ended: say so, then close the session for both sides."""
    await receiver.stop()
    receiver.emit("done", **{n: receiver.state["streams"][n]["received"] for n in STREAMS})
    await ctx.session.close()


async def resume_streams(state: dict[str, Any], conditions: NetworkConditions,
                         ctx: SessionContext) -> None:
    """The continuation: picks the streams up in whichever process resumes the session."""
    receiver = Receiver(ctx, state, announce_first=True)
    await receiver.start()
    install_generator(ctx.runtime, receiver)
    local = ctx.session.path[0]
    receiver.emit("resumed", process=state["process"], age=process_age(),
                  version=ctx.session.attach_version,
                  offline=conditions.offline, rtt=conditions.rtt,
                  local=local[0] if local else None, path_changed=conditions.path_changed,
                  **{n: state["streams"][n]["received"] for n in STREAMS})
    await receiver.finished
    await finish(receiver, ctx)


async def run(host: str, port: int, work: Path, local_hosts: list[str], prefer: list[str],
              sabotage: str | None) -> int:
    runtime = Runtime(APP)
    await runtime.start_control()
    try:
        local_host = local_hosts[0] if local_hosts else None
        if prefer:
            # Start from the preferred network that is up, as a phone would.
            probe = NetWatcher()
            await probe.start()
            choice = probe.view.choose(prefer)
            probe.close()
            if choice is None:
                raise ContinuationsError(f"none of {', '.join(prefer)} is usable")
            local_host = choice.address
        session = await connect(host, port, known_hosts=work / "known_hosts",
                                local_host=local_host)
        ctx = runtime.manage(session, meta={"demo": str(work)})
        ctx.open_file(work / TELEMETRY, "a", name="telemetry")
        received = work / "received"
        received.mkdir(exist_ok=True)
        streams: dict[str, Any] = {}
        for name in STREAMS:
            ctx.open_file(received / f"{name}.bin", "wb", name=name)
            stream = session.open_stream()
            stream.write(name.encode() + b"\n")
            streams[name] = {"id": stream.stream_id, "received": 0, "done": False}
        state = {"streams": streams, "local_hosts": local_hosts, "prefer": prefer,
                 "sabotage": sabotage, "sabotaged": False, "process": 1}
        receiver = Receiver(ctx, state)
        await receiver.start()
        install_generator(runtime, receiver)
        local = session.path[0]
        receiver.emit("hello", session=session.id_hex, local=local[0] if local else None,
                      rtt=session.rtt, control=runtime.control_path)
        idle = asyncio.ensure_future(runtime.wait_idle())
        await asyncio.wait({receiver.finished, idle}, return_when=asyncio.FIRST_COMPLETED)
        if receiver.finished.done() and ctx.session_id in runtime.contexts:
            await finish(receiver, ctx)
        else:  # suspended: the runtime released everything; this process is done
            await asyncio.wait_for(idle, 60)
        idle.cancel()
    except ContinuationsError as exc:
        print(f"demo client: {exc}", file=sys.stderr)
        with contextlib.suppress(OSError), open(work / TELEMETRY, "a") as handle:
            telemetry.write(handle, "error", message=str(exc))
        return 1
    finally:
        runtime.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m continuations.demo.mobile",
                                     description="The mobile client of `continuations demo`.")
    parser.add_argument("server", metavar="HOST:PORT")
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--local-hosts", default="", help="comma-separated; SIGUSR1 moves on")
    parser.add_argument("--prefer", default="", help="interfaces to follow, best first")
    parser.add_argument("--sabotage", choices=("drop", "duplicate"))
    args = parser.parse_args(argv)
    logging.getLogger("asyncio").setLevel(logging.ERROR)  # see scenario.py
    host, _, port = args.server.rpartition(":")
    split = [x for x in args.local_hosts.split(",") if x], [x for x in args.prefer.split(",") if x]
    try:
        return asyncio.run(run(host, int(port), args.work, *split, args.sabotage))
    except KeyboardInterrupt:
        return 130

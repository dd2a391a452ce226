"""Command line of the counting service: ``python -m apps.counter {server,client}``."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from continuations import ServerSession, SessionStream, connect, serve
from continuations.paths import state_dir
from continuations.runtime import Continuation, NetworkConditions, Runtime, SessionContext
from continuations.store import SessionRecord, Store


async def run_server(host: str, port: int, store_path: str, host_key: str) -> None:
    # The server's own store: when both ends of one session run on one machine as one
    # user, a shared store would hold two rows for the same session id.
    store = Store(store_path)

    async def handler(session: ServerSession) -> None:
        now = time.time()
        peer = session.path[1]
        store.put_session(SessionRecord(
            id=session.id_hex, app="counter-server", role="server", state="established",
            peer=f"{peer[0]}:{peer[1]}" if peer else "", created=now, updated=now,
            pid=os.getpid(),
        ))
        counts = store.attributes(session.id_hex, "counter")
        stream = await session.accept_stream()
        while line := await stream.readline():
            # The count lives in the store: it outlives this process and any path.
            value = counts.update("count", lambda n: n + 1, default=0)
            stream.write(b"%d %s" % (value, line))
        stream.write_eof()

    server = await serve(handler, host, port, host_key=host_key)
    print(f"counter server on {server.address[0]}:{server.address[1]}, host key "
          f"{server.host_key_fingerprint}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        server.close()
        store.close()


async def count(state: dict[str, Any], stream: SessionStream, stop: asyncio.Event) -> None:
    """Send increments and check every reply, from wherever ``state`` stands.

    ``sent`` and ``acked`` move right after the write and the read, with no await in
    between, so the state is consistent at every point the task can be stopped: a
    request sent but not answered is never sent again, its reply is read instead.
    """
    while state["acked"] < state["total"]:
        if state["sent"] == state["acked"]:
            if stop.is_set():
                return
            stream.write(b"incr %d\n" % state["sent"])
            state["sent"] += 1
        reply = await stream.readline()
        if not reply:
            raise SystemExit("the server ended the stream early")
        value, _, echoed = reply.decode().partition(" incr ")
        if int(echoed) != state["acked"]:
            raise SystemExit(f"reply to request {echoed.strip()}, expected {state['acked']}")
        state["acked"] += 1
        state["count"] = int(value)
        if state["pace"]:
            await asyncio.sleep(state["pace"])


async def report(state: dict[str, Any], ctx: SessionContext) -> None:
    print(json.dumps({"session": ctx.session_id, "acked": state["acked"],
                      "count": state["count"]}), flush=True)
    await ctx.session.close()


async def resumed(state: dict[str, Any], conditions: NetworkConditions,
                  ctx: SessionContext) -> None:
    """The continuation: runs in whatever process resumes the session."""
    print(f"resumed at request {state['acked']} after {conditions.offline:.1f} s offline, "
          f"rtt {(conditions.rtt or 0) * 1000:.1f} ms", flush=True)
    stop = asyncio.Event()
    work = asyncio.ensure_future(count(state, ctx.session.stream(state["stream"]), stop))
    install_generator(ctx.runtime, state, work, stop)
    await work
    await report(state, ctx)


def install_generator(runtime: Runtime, state: dict[str, Any], work: asyncio.Task[None],
                      stop: asyncio.Event) -> None:
    runtime.generators.pop("counter", None)  # a resumed process replaces the saved one

    @runtime.on_disconnect("counter")
    async def suspend_counting(ctx: SessionContext) -> Continuation:
        # Don't suspend until it's convenient: let the request in flight be answered.
        stop.set()
        try:
            await asyncio.wait_for(asyncio.shield(work), ctx.time_left() * 0.8)
        except TimeoutError:
            work.cancel()  # the path is down; the unanswered request's reply comes later
        return Continuation(resumed, dict(state))


async def run_client(host: str, port: int, total: int, pace: float, store: str | None,
                     known_hosts: str | None) -> None:
    runtime = Runtime("counter-client", store)
    await runtime.start_control()
    session = await connect(host, port, known_hosts=known_hosts)
    ctx = runtime.manage(session)
    stream = session.open_stream()
    state = {"stream": stream.stream_id, "sent": 0, "acked": 0, "count": 0, "total": total,
             "pace": pace}
    stop = asyncio.Event()
    work = asyncio.ensure_future(count(state, stream, stop))
    install_generator(runtime, state, work, stop)
    print(f"session {ctx.session_id}; suspend it with: continuations suspend "
          f"{ctx.session_id[:8]}", flush=True)
    idle = asyncio.ensure_future(runtime.wait_idle())
    await asyncio.wait({work, idle}, return_when=asyncio.FIRST_COMPLETED)
    if stop.is_set():  # a suspension stopped the work: let it finish writing the store
        await asyncio.wait({idle}, timeout=60)
    if not stop.is_set():
        await report(state, ctx)
    elif not idle.done():
        print("suspension did not complete; the session stays here", flush=True)
    else:
        print(f"suspended at request {state['acked']}; resume with: continuations resume "
              f"{ctx.session_id[:8]}", flush=True)
    idle.cancel()
    runtime.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m apps.counter",
                                     description="The counting service on continuations.")
    sub = parser.add_subparsers(dest="role", required=True)
    srv = sub.add_parser("server", help="serve counters")
    srv.add_argument("--host", default="127.0.0.1")
    srv.add_argument("--port", type=int, default=7001)
    srv.add_argument("--store", default=str(state_dir() / "counter-server.db"))
    srv.add_argument("--host-key", default=str(state_dir() / "counter-server.key"))
    cli = sub.add_parser("client", help="count, surviving whatever happens")
    cli.add_argument("--host", default="127.0.0.1")
    cli.add_argument("--port", type=int, default=7001)
    cli.add_argument("--count", type=int, default=1000, help="increments to send")
    cli.add_argument("--pace", type=float, default=0.01, help="seconds between requests")
    cli.add_argument("--store", help="the client's store (default: the user's store)")
    cli.add_argument("--known-hosts")
    args = parser.parse_args(argv)
    try:
        if args.role == "server":
            asyncio.run(run_server(args.host, args.port, args.store, args.host_key))
        else:
            asyncio.run(run_client(args.host, args.port, args.count, args.pace, args.store,
                                   args.known_hosts))
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

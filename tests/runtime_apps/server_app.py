"""A server whose sessions outlive the server process.

``serve``: answer each line on stream 0 with "ok N" and log it; suspendable through
the runtime (``continuations suspend ID``), and resumed when the client comes back.
On SIGTERM it stops accepting, suspends every session and exits. ``resume``: a new
server process on the same port; each suspended session is taken back when its
client comes back.
"""

import asyncio
import signal
import sys
from pathlib import Path

from continuations import ServerSession, serve
from continuations.runtime import Continuation, NetworkConditions, Runtime, SessionContext

WORKDIR = Path(sys.argv[2])


async def answer(stream, log_path: Path) -> None:  # type: ignore[no-untyped-def]
    with open(log_path, "a", buffering=1) as log:
        while line := await stream.readline():
            log.write(line.decode())
            stream.write(b"ok " + line)


def generate(ctx: SessionContext) -> Continuation:
    return Continuation(carry_on, {"log": str(WORKDIR / "server.log")})


async def carry_on(state: dict, conditions: NetworkConditions, ctx: SessionContext) -> None:
    (WORKDIR / "resumed").write_text(f"{conditions.rtt}")
    await answer(ctx.session.stream(0), Path(state["log"]))


async def main(mode: str, port: int, store: str) -> None:
    runtime = Runtime("line-server", store)
    await runtime.start_control()
    runtime.on_disconnect("lines")(generate)

    async def handler(session: ServerSession) -> None:
        runtime.manage(session, server=server)
        (WORKDIR / "session.id").write_text(session.id_hex)
        await answer(await session.accept_stream(), WORKDIR / "server.log")

    server = await serve(handler, "127.0.0.1", port, host_key=WORKDIR / "host_key")
    # Suspended sessions (from a previous run, or suspended while we run) come back by
    # themselves when their clients do.
    parked = runtime.serve_parked(server)
    (WORKDIR / f"{mode}.parked").write_text(str(parked))
    (WORKDIR / f"{mode}.port").write_text(str(server.address[1]))
    stopping = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopping.set)
    await asyncio.wait_for(stopping.wait(), 300)
    # A restart that keeps every session: stop accepting first (so clients cannot come
    # back here), suspend everything to the store, then go.
    server.stop_accepting()
    await runtime.suspend_all("server restart")
    runtime.close()


asyncio.run(main(sys.argv[1], int(sys.argv[3]), sys.argv[4]))

"""A server whose sessions outlive the server process.

``serve``: answer each line on stream 0 with "ok N" and log it; suspendable through
the runtime (``continuations suspend ID``). ``resume``: a new server process on the
same port takes every suspended session back and carries on.
"""

import asyncio
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
    (WORKDIR / f"{mode}.port").write_text(str(server.address[1]))
    if mode == "resume":
        for record in runtime.store.list_sessions(state="suspended"):
            await runtime.resume_server_session(server, record.id)
    await asyncio.sleep(300)


asyncio.run(main(sys.argv[1], int(sys.argv[3]), sys.argv[4]))

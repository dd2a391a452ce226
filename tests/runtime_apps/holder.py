"""A test application that holds one of each resource the runtime manages.

It streams numbers to the peer and to a log file, listens on a status port,
keeps a TCP connection to a sink, and has a child process. Suspended (by the
CLI), it exits; its continuation carries on from the next number in whatever
process resumes it.
"""

import asyncio
import json
import sys
from pathlib import Path

from continuations import connect
from continuations.runtime import Continuation, NetworkConditions, Runtime, SessionContext

TOTAL = 3000


async def finish(state: dict, conditions: NetworkConditions, ctx: SessionContext) -> None:
    workdir = Path(state["workdir"])
    (workdir / "conditions.json").write_text(json.dumps({
        "rtt": conditions.rtt, "offline": conditions.offline,
        "local": conditions.local_address, "remote": conditions.remote_address,
        "path_changed": conditions.path_changed, "bandwidth": conditions.bandwidth,
    }))
    ctx.resource("sink").socket.sendall(b"resumed\n")  # type: ignore[union-attr]
    status = ctx.resource("status").socket  # type: ignore[union-attr]
    loop = asyncio.get_running_loop()
    conn, _ = await loop.sock_accept(status)
    await loop.sock_sendall(conn, b"status: resumed\n")
    conn.close()
    log = ctx.resource("log").file  # type: ignore[union-attr]
    stream = ctx.session.stream(0)
    for n in range(state["next"], TOTAL):
        stream.write(b"%d\n" % n)
        log.write(f"{n}\n")
        await stream.drain()
    log.flush()
    stream.write_eof()
    assert await stream.readline() == b"bye\n"
    await ctx.session.close()


async def main(workdir: Path, store: str) -> None:
    runtime = Runtime("holder", store)
    await runtime.start_control()
    peer_port = int((workdir / "peer.port").read_text())
    session = await connect("127.0.0.1", peer_port, known_hosts=workdir / "known_hosts",
                            local_host="127.0.0.2")
    ctx = runtime.manage(session)
    log = ctx.open_file(workdir / "app.log", "w", name="log")
    status = ctx.listen("127.0.0.1", 0, name="status")
    (workdir / "status.port").write_text(str(status.getsockname()[1]))
    sink_port = int((workdir / "sink.port").read_text())
    ctx.connect("127.0.0.1", sink_port, name="sink").sendall(b"started\n")
    ctx.spawn([sys.executable, str(Path(__file__).with_name("child.py")),
               str(workdir / "child.log")], name="helper")
    stream = session.open_stream()
    state = {"next": 0, "workdir": str(workdir)}
    paused = asyncio.Event()

    @runtime.on_disconnect("producer")
    async def generate(ctx: SessionContext) -> Continuation:
        paused.set()  # stop the work first, then capture where it stands
        ctx.resource("log").file.flush()  # type: ignore[union-attr]
        return Continuation(finish, dict(state))

    (workdir / "session.id").write_text(ctx.session_id)
    while state["next"] < TOTAL and not paused.is_set():
        stream.write(b"%d\n" % state["next"])
        log.write(f"{state['next']}\n")
        state["next"] += 1
        await asyncio.sleep(0.002)
    await runtime.wait_idle()
    (workdir / "suspended").write_text("yes")
    await asyncio.sleep(1.5)  # stay a moment so the test can inspect /proc/PID/fd


asyncio.run(main(Path(sys.argv[1]), sys.argv[2]))

"""The far end for runtime tests: logs every line it receives on stream 0, once each."""

import asyncio
import sys
from pathlib import Path

from continuations.aio import ServerSession, serve


async def main(workdir: Path) -> None:
    done = asyncio.Event()

    async def handler(session: ServerSession) -> None:
        stream = await session.accept_stream()
        with open(workdir / "peer.log", "a", buffering=1) as log:
            while line := await stream.readline():
                log.write(line.decode())
        stream.write(b"bye\n")
        stream.write_eof()
        await session.wait_closed(timeout=30)
        done.set()

    server = await serve(handler, "127.0.0.1", 0, host_key=workdir / "peer_host_key")
    (workdir / "peer.port").write_text(str(server.address[1]))
    await asyncio.wait_for(done.wait(), 300)
    server.close()
    await server.wait_closed()


asyncio.run(main(Path(sys.argv[1])))

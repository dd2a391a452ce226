"""The demo's server side: a session server behind an impairment relay.

The server runs in the demo's own process (so the demo sees what the server
sees: its disconnections, re-attachments and replayed bytes); the client does
not. Each session gets two streams, named by the client's first line: ``audio``
(live, until the demo says the programme is over) and ``file`` (a download).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from continuations.aio import Server, ServerSession, SessionStream, serve
from continuations.demo.streams import Outgoing, audio_frames, file_chunks, send_paced
from continuations.errors import SessionError
from continuations.protocol import Disconnected, Event, Reattached, SessionState
from continuations.testing import ImpairmentRelay

log = logging.getLogger("continuations.demo")


@dataclass(frozen=True, slots=True)
class ServerEvent:
    """A lifecycle event of the server's session, stamped with ``time.monotonic()``."""

    t: float
    kind: str  # "disconnected" or "reattached"
    attach_version: int = 0
    replayed: int = 0


class DemoServer:
    def __init__(self, *, workdir: Path, file_path: Path, audio_rate: int,
                 file_rate: float) -> None:
        self.workdir = workdir
        self.file_path = file_path
        self.audio_rate = audio_rate
        self.file_rate = file_rate
        self.outgoing = {"audio": Outgoing("audio"), "file": Outgoing("file")}
        self.stop_audio = asyncio.Event()
        self.events: list[ServerEvent] = []
        self.session: ServerSession | None = None
        self.server: Server | None = None
        self.relay: ImpairmentRelay | None = None
        self._senders: set[asyncio.Task[None]] = set()
        self.failure: str | None = None

    async def start(self, *, server_host: str, relay_host: str, rtt: float) -> None:
        self.server = await serve(self._handle, server_host, 0,
                                  host_key=self.workdir / "host_key")
        # Half the round trip each way, as a real path of that RTT would.
        self.relay = ImpairmentRelay(target=self.server.address, listen_host=relay_host,
                                     delay=rtt / 2)
        await self.relay.start()

    async def _handle(self, session: ServerSession) -> None:
        if self.session is not None:
            session.abort("this demo server takes one session")
            return
        self.session = session
        session.add_listener(self._on_event)
        for _ in range(2):
            stream = await session.accept_stream()
            name = (await stream.readline()).strip().decode("ascii", "replace")
            task = asyncio.ensure_future(self._send(name, stream))
            self._senders.add(task)
            task.add_done_callback(self._senders.discard)

    async def _send(self, name: str, stream: SessionStream) -> None:
        try:
            if name == "audio":
                await send_paced(stream, audio_frames(self.audio_rate), self.outgoing[name],
                                 self.audio_rate, self.stop_audio)
            elif name == "file":
                await send_paced(stream, file_chunks(self.file_path), self.outgoing[name],
                                 self.file_rate)
            else:
                stream.write_eof()
        except SessionError as exc:  # the session ended under the sender
            self.failure = f"{name} stream: {exc}"
            log.info("%s stream ended early: %s", name, exc)

    def _on_event(self, event: Event) -> None:
        now = time.monotonic()
        if isinstance(event, Disconnected):
            self.events.append(ServerEvent(now, "disconnected"))
        elif isinstance(event, Reattached):
            self.events.append(ServerEvent(now, "reattached", event.attach_version,
                                           event.replayed))

    def first(self, kind: str, after: float) -> ServerEvent | None:
        return next((e for e in self.events if e.kind == kind and e.t >= after), None)

    def replayed(self, attach_version: int) -> int | None:
        """Bytes the server sent again when the client attached with this version."""
        return next((e.replayed for e in self.events
                     if e.kind == "reattached" and e.attach_version == attach_version), None)

    async def wait_for(self, kind: str, after: float, timeout: float) -> ServerEvent | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            found = self.first(kind, after)
            if found is not None:
                return found
            await asyncio.sleep(0.01)
        return None

    @property
    def lingering(self) -> bool:
        """The server still holds the session, waiting for its client to come back."""
        session = self.session
        return (session is not None and self.server is not None
                and session.id in self.server.sessions
                and session.state is SessionState.DISCONNECTED)

    async def close(self) -> None:
        for task in list(self._senders):
            task.cancel()
        if self.relay is not None:
            await self.relay.close()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

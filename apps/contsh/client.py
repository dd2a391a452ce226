"""contsh: the client. Logs in, relays the terminal, survives whatever the network does.

A login is a session managed by the runtime (app ``contsh``, the user's store),
so ``continuations list`` shows it. The session re-attaches by itself after a
cut or an address change; ``~^Z`` suspends it to disk (the continuation holds
the stream ids and the decompressor's place; the session's keys and unsent
bytes are the runtime's) and ``contsh --resume ID`` brings it back in a new
process. After the client was killed (kill -9, a crash, a reboot of the laptop)
there is nothing to resume, but the shell lives on in the server: ``--resume``
then logs in again and takes the shell over.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import getpass
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from apps.contsh import messages, userauth
from apps.contsh.frames import OutputDecoder
from apps.contsh.terminal import (
    ESCAPE_HELP,
    HELP,
    QUIT,
    SUSPEND,
    EscapeParser,
    ScreenTracker,
    StatusLine,
    raw_mode,
    read_secret,
    window_size,
)
from continuations import ClientSession, SessionStream, connect
from continuations.errors import (
    AttachRejectedError,
    AuthenticationError,
    ConfigError,
    ConnectError,
    ContinuationError,
    ContinuationsError,
    ProtocolError,
    SessionError,
)
from continuations.paths import state_dir
from continuations.protocol import Disconnected, Event, Reattached, SessionLost
from continuations.protocol.wire import RejectCode
from continuations.runtime import Continuation, NetworkConditions, Runtime, SessionContext
from continuations.runtime.resources import ManagedListener, pid_alive
from continuations.tunnel import Forward, Forwarder, SessionRelay

log = logging.getLogger("contsh.client")

APP = "contsh"
STDIN, STDOUT = 0, 1
EXIT_DISCONNECTED = 255  # as ssh: the session ended without the shell's exit status


@dataclass
class Login:
    host: str
    port: int
    user: str = field(default_factory=getpass.getuser)
    identities: list[str] = field(default_factory=list)
    password: bool = False  # ask for a password if keys fail (or first, with no keys)
    known_hosts: str | None = None
    command: str | None = None
    forwards: list[str] = field(default_factory=list)
    compression: bool = True
    local_host: str | None = None


class Client:
    """One interactive session in this process: terminal in, terminal out."""

    live: ClassVar[dict[str, Client]] = {}  # by session id, for the generator

    def __init__(self, ctx: SessionContext, login: Login, shell_id: str,
                 control: SessionStream, tty: SessionStream, decoder: OutputDecoder) -> None:
        self.ctx = ctx
        self.shell_id = shell_id
        self.session = ctx.session
        assert isinstance(self.session, ClientSession)
        self.login = login
        self.control = control
        self.tty = tty
        self.decoder = decoder
        self.escapes = EscapeParser()
        self.screen = ScreenTracker()
        self.status = StatusLine(STDOUT, self.screen)
        self.exit_status: int | None = None
        self.output_ended = False
        self.outcome: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.forwarders: list[Forwarder] = []
        self._offline_since: float | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        Client.live[ctx.session_id] = self

    # --- running --------------------------------------------------------------------------

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled() or self.outcome.done():
            return
        exc = task.exception()
        if exc is not None:
            self.outcome.set_exception(exc)

    def _end(self, how: str) -> None:
        if not self.outcome.done():
            self.outcome.set_result(how)

    async def run(self) -> int:
        """Relay until the shell exits, the user quits or suspends; the exit status."""
        loop = asyncio.get_running_loop()
        Client.live[self.ctx.session_id] = self
        if self.outcome.done():  # again, after a suspension that failed
            self.outcome = loop.create_future()
        self.session.add_listener(self._on_event)
        loop.add_signal_handler(signal.SIGWINCH, self.send_window)
        await self._start_forwards()
        with raw_mode(STDIN):
            try:
                loop.add_reader(STDIN, self._keyboard)
            except (PermissionError, ValueError):  # a file or /dev/null: nothing to type
                with contextlib.suppress(SessionError):
                    self.tty.write_eof()
            self._spawn(self._output())
            self._spawn(self._controls())
            self._spawn(self._ticker())
            try:
                how = await self.outcome
            finally:
                with contextlib.suppress(ValueError, OSError):
                    loop.remove_reader(STDIN)
                loop.remove_signal_handler(signal.SIGWINCH)
                self.session.remove_listener(self._on_event)
                self.status.clear()
            if how == SUSPEND:
                return await self._suspend()
        await self._stop_forwards()
        Client.live.pop(self.ctx.session_id, None)
        await self._cancel_tasks()
        if how == QUIT:
            await self.session.close("the user quit")
            _say("\r\nconnection closed (~.)")
            return EXIT_DISCONNECTED
        with contextlib.suppress(SessionError):
            await self.session.close()
        if how == "lost":
            # The server forgot the session (it crashed, or was replaced without
            # suspending): the shell lives on in its keeper. Take it over.
            _say("\r\ncontsh: the server lost this session; logging in again to take "
                 "the shell over")
            return await open_shell(self.ctx.runtime, self.login, attach=self.shell_id)
        return self.exit_status if self.exit_status is not None else EXIT_DISCONNECTED

    async def _cancel_tasks(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=5.0)

    def _keyboard(self) -> None:
        try:
            data = os.read(STDIN, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # our input is gone (the terminal closed): nothing more to type
            asyncio.get_running_loop().remove_reader(STDIN)
            with contextlib.suppress(SessionError):
                self.tty.write_eof()
            return
        data = self.screen.input(data)
        keys, actions = self.escapes.feed(data)
        if keys:
            with contextlib.suppress(SessionError):
                self.tty.write(keys)  # buffered by the session while offline: sent once
        for action in actions:
            if action == HELP:
                _write_out(ESCAPE_HELP)
            else:
                self._end(action)

    async def _output(self) -> None:
        while data := await self.tty.read(256 * 1024):
            # Decoded and shown with no await between: a pause never loses a read.
            shown = self.decoder.feed(data)
            if shown:
                self.screen.output(shown)
                _write_out(shown)
        self.output_ended = True
        if self.exit_status is not None:
            self._end("exit")

    async def _controls(self) -> None:
        while (message := await messages.read(self.control)) is not None:
            if message["t"] == "exit":
                self.exit_status = messages.field(message, "status", int)
                if self.output_ended:
                    self._end("exit")
            elif message["t"] == "error":
                _say(f"\r\ncontsh: server: {message.get('error')}")

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self._draw_status()

    def _draw_status(self) -> None:
        if self._offline_since is not None:
            offline = time.monotonic() - self._offline_since
            self.status.show(f"contsh: connection lost, reconnecting, {offline:.0f} s "
                             f"(~. quits, ~^Z suspends)")

    def _on_event(self, event: Event) -> None:
        if isinstance(event, Disconnected):
            self._offline_since = time.monotonic()
            self._draw_status()
        elif isinstance(event, Reattached):
            self._offline_since = None
            if self.status.clear():
                with contextlib.suppress(SessionError):
                    self.control.write(messages.encode("redraw"))
            self.send_window()
        elif isinstance(event, SessionLost):
            self._end("lost")

    def send_window(self) -> None:
        cols, rows = window_size(STDOUT)
        with contextlib.suppress(SessionError):
            self.control.write(messages.encode("resize", cols=cols, rows=rows))

    # --- -L forwards ----------------------------------------------------------------------

    async def _start_forwards(self) -> None:
        for spec in self.login.forwards:
            forward = Forward.parse(spec)
            name = f"forward {spec}"
            resource = self.ctx.resources.get(name)
            if resource is None:
                self.ctx.listen(forward.bind, forward.port, name=name)
                resource = self.ctx.resources[name]
            assert isinstance(resource, ManagedListener)
            forwarder = Forwarder(SessionRelay(self.session), forward)
            await forwarder.start(sock=resource.socket)
            self.forwarders.append(forwarder)

    async def _stop_forwards(self) -> None:
        for forwarder in self.forwarders:
            await forwarder.close()
        self.forwarders.clear()

    # --- suspending -----------------------------------------------------------------------

    async def _suspend(self) -> int:
        sid = self.ctx.session_id
        try:
            result = await self.ctx.runtime.suspend(sid, reason="~^Z")
        except ContinuationsError as exc:
            _say(f"contsh: cannot suspend: {exc}")
            return await self.run()
        _say(f"\r\ncontsh: session {sid[:8]} suspended to disk "
             f"({result.continuation_bytes + result.protocol_bytes} bytes); "
             f"resume with: contsh --resume {sid[:8]}")
        return 0

    async def pause(self) -> dict[str, Any]:
        """Stop at a clean point for the continuation; what it needs to carry on."""
        await self._stop_forwards()
        await self._cancel_tasks()
        Client.live.pop(self.ctx.session_id, None)
        compression = self.ctx.runtime.store.attributes(self.ctx.session_id, "compression")
        compression.set("state", {"level": self.decoder.level, "history": self.decoder.history})
        forwards = messages.forwarded_streams(self.session, self.control, self.tty)
        return {"login": asdict(self.login), "shell": self.shell_id,
                "control": self.control.stream_id,
                "tty": self.tty.stream_id, "partial": self.decoder.partial,
                "exit": self.exit_status, "output_ended": self.output_ended,
                "escape_line_start": self.escapes.at_line_start, "forwards": forwards}


def log_to_file() -> None:
    """The terminal belongs to the shell: the client logs to $STATE/logs/contsh.log
    (also when resumed by ``continuations resume --foreground``, which logs to stderr)."""
    logs = state_dir() / "logs"
    logs.mkdir(mode=0o700, parents=True, exist_ok=True)
    logging.basicConfig(filename=logs / "contsh.log", level=logging.INFO, force=True,
                        format="%(asctime)s %(process)d %(name)s %(message)s")


def _write_out(data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(STDOUT, view):]
        except BlockingIOError:
            time.sleep(0.001)  # a full terminal: it is the back pressure we want


def _say(text: str) -> None:
    _write_out(text.encode() + b"\r\n")


async def suspend_client(ctx: SessionContext) -> Continuation:
    client = Client.live.get(ctx.session_id)
    if client is None:
        raise ContinuationError(f"session {ctx.session_id} has no client in this process")
    return Continuation(resume_client, await client.pause())


async def resume_client(state: dict[str, Any], conditions: NetworkConditions,
                        ctx: SessionContext) -> int:
    """The continuation: the same session, in a new process, on this terminal; the
    result is the exit status (the shell's, as for a login)."""
    if not os.isatty(STDIN):
        # Resumed without a terminal (the resumer): the user cannot type. Put it back.
        print(f"contsh: session {ctx.session_id[:8]} needs a terminal; resume it with "
              f"contsh --resume {ctx.session_id[:8]}", file=sys.stderr)
        Client.live.pop(ctx.session_id, None)
        await _resuspend(ctx, state)
        return 0
    log_to_file()
    session = ctx.session
    saved = ctx.runtime.store.attributes(ctx.session_id, "compression").get("state") or {}
    decoder = OutputDecoder(int(saved.get("level", 0)), bytes(saved.get("history", b"")))
    decoder.restore_partial(bytes(state["partial"]))
    login = Login(**state["login"])
    client = Client(ctx, login, state["shell"], session.stream(state["control"]),
                    session.stream(state["tty"]), decoder)
    client.exit_status = state["exit"]
    client.output_ended = state["output_ended"]
    client.escapes.at_line_start = state["escape_line_start"]
    messages.end_streams(session, state["forwards"])  # connections cut by the suspension
    _install(ctx.runtime)
    client.send_window()
    client.control.write(messages.encode("redraw"))
    if conditions.rtt is not None:
        log.info("resumed after %.1f s offline, rtt %.1f ms", conditions.offline,
                 conditions.rtt * 1000)
    return await client.run()


async def _resuspend(ctx: SessionContext, state: dict[str, Any]) -> None:
    async def same(ctx: SessionContext) -> Continuation:
        return Continuation(resume_client, state)

    ctx.runtime.generators.pop("terminal", None)
    ctx.runtime.on_disconnect("terminal")(same)
    await ctx.runtime.suspend(ctx.session_id, reason="no terminal to resume on")


def _install(runtime: Runtime) -> None:
    if "terminal" not in runtime.generators:
        runtime.on_disconnect("terminal")(suspend_client)


# --- logging in -----------------------------------------------------------------------------


def _identities(login: Login) -> list[Path]:
    if login.identities:
        return [Path(p).expanduser() for p in login.identities]
    found = userauth.default_identity()
    return [found] if found else []


def _passphrase_for(path: Path) -> Callable[[], str]:
    return lambda: read_secret(f"Enter passphrase for key '{path}': ")


async def authenticate(session: ClientSession, control: SessionStream, login: Login) -> str:
    """Try each identity, then a password if allowed; the method that worked."""
    errors = []
    methods: list[str] = ["publickey", "password"]
    binding = session.channel_binding
    for path in _identities(login):
        # In a thread, like every prompt here: a blocked loop would miss keepalives.
        key = await asyncio.to_thread(userauth.load_private_key, path, _passphrase_for(path))
        signature = userauth.sign(key, userauth.signed_data(binding, login.user))
        control.write(messages.encode(
            "auth", user=login.user, method="publickey",
            key=userauth.public_line(key.public_key()),
            sig=base64.b64encode(signature).decode()))
        reply = await _reply(control)
        if reply["t"] == "auth-ok":
            return f"publickey {path}"
        errors.append(str(reply.get("error")))
        methods = [m for m in reply.get("methods", methods) if isinstance(m, str)]
    if (login.password or not errors) and "password" in methods and os.isatty(STDIN):
        for _ in range(3):
            password = await asyncio.to_thread(
                read_secret, f"{login.user}@{login.host}'s password: ")
            control.write(messages.encode("auth", user=login.user, method="password",
                                          password=password))
            reply = await _reply(control)
            if reply["t"] == "auth-ok":
                return "password"
            errors.append(str(reply.get("error")))
    if not errors:
        raise AuthenticationError("no identity to log in with (give one with -i, or create "
                                  "one with ssh-keygen -t ed25519)")
    raise AuthenticationError(errors[-1])


async def _reply(control: SessionStream) -> messages.Message:
    reply = await messages.read(control)
    if reply is None:
        raise AuthenticationError("the server ended the session during authentication")
    if reply["t"] == "error":
        raise AuthenticationError(str(reply.get("error")))
    if reply["t"] not in ("auth-ok", "auth-fail"):
        raise ProtocolError(f"unexpected {reply['t']!r} during authentication")
    return reply


async def open_shell(runtime: Runtime, login: Login, *, attach: str | None = None,
                     replaces: str | None = None) -> int:
    session = await connect(login.host, login.port, known_hosts=login.known_hosts,
                            local_host=login.local_host)
    try:
        control = session.open_stream()
        await authenticate(session, control, login)
        cols, rows = window_size(STDOUT)
        env = {k: os.environ[k] for k in ("LANG", "LC_ALL", "LC_CTYPE", "COLORTERM")
               if k in os.environ}
        control.write(messages.encode(
            "open", cols=cols, rows=rows, term=os.environ.get("TERM", "xterm-256color"),
            command=login.command, env=env, compress=login.compression, attach=attach))
        tty = session.open_stream()
        tty.write(messages.encode("tty"))
        opened = await messages.read(control)
        if opened is None or opened["t"] != "opened":
            error = opened.get("error") if opened else "the server ended the session"
            raise ContinuationError(f"cannot open a shell: {error}")
    except BaseException:
        session.abort("login failed")
        raise
    if replaces:
        with contextlib.suppress(ContinuationsError):
            runtime.store.delete_session(replaces)
    ctx = runtime.manage(session, meta={"contsh": {**asdict(login), "shell": opened["shell"]}})
    _install(runtime)
    client = Client(ctx, login, opened["shell"], control, tty, OutputDecoder())
    return await client.run()


async def resume(runtime: Runtime, record_id: str, local_host: str | None) -> int:
    """Bring a session back here: from disk if suspended; after a killed client, by
    logging in again and taking its shell over."""
    record = runtime.store.get_session(record_id)
    if record.app != APP:
        raise ConfigError(f"session {record.id} belongs to {record.app!r}, not contsh")
    if record.state == "suspended":
        try:
            _, task = await runtime.resume(record.id, local_host=local_host)
        except ConnectError as exc:
            cause = exc.__cause__
            if not (isinstance(cause, AttachRejectedError)
                    and cause.code == RejectCode.UNKNOWN_SESSION):
                raise
            # The server forgot the session (it crashed meanwhile); its shell may live on.
            _say(f"contsh: the server lost session {record.id[:8]}; taking its shell over")
        else:
            status = await task
            return status if isinstance(status, int) else 0
    elif record.pid is not None and record.pid != os.getpid() and pid_alive(record.pid):
        raise ContinuationError(f"session {record.id[:8]} is live in process {record.pid}; "
                                "suspend it there with ~^Z first")
    else:
        _say(f"contsh: client of session {record.id[:8]} is gone; taking its shell over")
    saved = dict(record.meta["contsh"])
    shell = saved.pop("shell")
    login = Login(**saved)
    if local_host:
        login.local_host = local_host
    return await open_shell(runtime, login, attach=shell, replaces=record.id)

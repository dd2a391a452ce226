"""contshd: serves shells over continuations sessions.

Per session: the client authenticates on its control stream (an OpenSSH key
signing the session's channel binding, or a password), then opens a shell (or
takes one over), then relays terminal bytes on a second stream. Further streams
are ``-L`` forwarded connections (the tunnel code's per-stream handler).

The shell's terminal belongs to the keeper process (``keeper.py``). While the
client is away the session stays frozen here with the relay paused on back
pressure; after ``suspend_after`` (or on SIGTERM, for a restart) the runtime
suspends it to the store: the relay stops at a clean point, the compression
history goes to the attribute store, the server's copy of the terminal is
released (the keeper's keeps the shell alive). A returning client brings it back,
in this process or in the next server (``serve_parked``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import errno
import getpass
import logging
import os
import pwd
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apps.contsh import messages, userauth
from apps.contsh.frames import OutputEncoder
from apps.contsh.keeper import KeeperClient, ensure_keeper, set_window
from apps.contsh.terminal_resource import KeptTerminal, wait_fd
from continuations import ServerSession, SessionConfig, SessionStream, serve
from continuations.aio import Server
from continuations.errors import (
    AuthenticationError,
    ContinuationsError,
    GeneratorError,
    ProtocolError,
    ResourceError,
    SessionError,
)
from continuations.paths import runtime_dir, state_dir
from continuations.protocol import Disconnected, Event, Reattached
from continuations.runtime import (
    Continuation,
    NetworkConditions,
    Policy,
    Runtime,
    SessionContext,
)
from continuations.tunnel import AllowList, TunnelServer

log = logging.getLogger("contsh.server")

APP = "contshd"
LOGIN_GRACE = 120.0  # seconds to authenticate and open, as sshd's LoginGraceTime
MAX_AUTH_TRIES = 6
READ_CHUNK = 64 * 1024


def files_dir() -> Path:
    path = state_dir() / "contsh"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


@dataclass
class ServerOptions:
    host: str = "127.0.0.1"
    port: int = 2222
    host_key: Path = field(default_factory=lambda: files_dir() / "host_key")
    store: Path = field(default_factory=lambda: files_dir() / "server.db")
    authorized_keys: Path = field(default_factory=lambda: Path.home() / ".ssh" /
                                  "authorized_keys")
    password_file: Path = field(default_factory=lambda: files_dir() / "passwd")
    keeper: Path = field(default_factory=lambda: runtime_dir() / "contsh-keeper.sock")
    shell: list[str] | None = None  # default: the user's login shell, as a login shell
    suspend_after: float = 60.0
    forwarding: bool = True
    config: SessionConfig = field(default_factory=SessionConfig)


def status_path(shell_id: str) -> Path:
    """The file a shell finds in $CONTSH_STATUS: "connected", "disconnected" or
    "suspended", and since when (Unix time)."""
    return runtime_dir() / f"contsh-status-{shell_id}"


def user_shell() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_shell or "/bin/sh"
    except KeyError:
        return os.environ.get("SHELL", "/bin/sh")


class ShellServer:
    current: ShellServer | None = None  # the one in this process, for continuations

    def __init__(self, options: ServerOptions) -> None:
        self.options = options
        self.user = getpass.getuser()
        self.runtime = Runtime(APP, options.store,
                               policy=Policy(suspend_after=options.suspend_after))
        self.keeper = ensure_keeper(options.keeper, log_path=files_dir() / "keeper.log")
        self.tunnel = TunnelServer(AllowList((), everything=options.forwarding))
        self.server: Server | None = None
        self.live: dict[str, Shell] = {}  # by session id
        self.logins = 0
        self.refusals = 0
        ShellServer.current = self

    async def start(self) -> Server:
        await self.runtime.start_control()
        with contextlib.suppress(ContinuationsError):
            self.runtime.on_disconnect("shell")(suspend_shell)
        self.server = await serve(self._handle, self.options.host, self.options.port,
                                  host_key=self.options.host_key, config=self.options.config)
        parked = self.runtime.serve_parked(self.server)
        log.info("listening on %s:%d, host key %s; %d suspended sessions waiting",
                 *self.server.address, self.server.host_key_fingerprint, parked)
        return self.server

    @property
    def methods(self) -> list[str]:
        return ["publickey"] + (["password"] if self.options.password_file.exists() else [])

    # --- a new session: login, then a shell -------------------------------------------------

    async def _handle(self, session: ServerSession) -> None:
        name = session.id_hex[:8]
        try:
            _, shell = await asyncio.wait_for(self._login(session), LOGIN_GRACE)
        except (TimeoutError, AuthenticationError, ProtocolError, SessionError,
                ResourceError) as exc:
            self.refusals += 1
            log.warning("session %s refused: %s", name, exc or "login took too long")
            session.abort(f"login failed: {exc}")
            return
        self.logins += 1
        await shell.run()

    async def _login(self, session: ServerSession) -> tuple[SessionStream, Shell]:
        control = await session.accept_stream()
        user, how = await self._authenticate(session, control)
        opening = await messages.read(control)
        if opening is None or opening["t"] != "open":
            raise ProtocolError("expected an open message after authentication")
        cols, rows = messages.window(opening)
        attach = messages.field(opening, "attach", str, None)
        compress = messages.field(opening, "compress", bool, True)
        tty = await session.accept_stream()
        header = await messages.read(tty)
        if header is None or header["t"] != "tty":
            raise ProtocolError("the second stream is not the terminal")
        try:
            if attach:
                term, pending = await self._take_over(attach)
                set_window(term.fd, cols, rows)
            else:
                term, pending = self._spawn(session, opening, cols, rows), b""
        except (ResourceError, OSError) as exc:
            control.write(messages.encode("error", error=f"cannot open a shell: {exc}"))
            raise ResourceError(f"cannot open a shell: {exc}") from exc
        assert self.server is not None
        ctx = self.runtime.manage(session, server=self.server,
                                  meta={"user": user, "shell": term.shell_id, "auth": how})
        ctx.adopt("terminal", term)
        auth = self.runtime.store.attributes(ctx.session_id, "auth")
        auth.set("login", {"user": user, "method": how, "time": time.time()})
        level = 6 if compress else 0
        shell = Shell(self, ctx, control, tty, term, OutputEncoder(level), pending)
        tty.write(shell.encoder.reset(level, keep_history=False))
        if attach:
            shell.redraw()
        control.write(messages.encode("opened", shell=term.shell_id, pid=term.pid,
                                      compression=level, session=ctx.session_id))
        log.info("session %s: %s logged in (%s), shell %s pid %d%s", ctx.session_id[:8],
                 user, how, term.shell_id, term.pid, " (taken over)" if attach else "")
        return control, shell

    async def _authenticate(self, session: ServerSession,
                            control: SessionStream) -> tuple[str, str]:
        for _ in range(MAX_AUTH_TRIES):
            message = await messages.read(control)
            if message is None:
                raise AuthenticationError("the client left during authentication")
            if message["t"] != "auth":
                raise ProtocolError(f"expected auth, got {message['t']!r}")
            user = messages.field(message, "user", str)
            try:
                how = await self._check(session, message, user)
            except AuthenticationError as exc:
                log.warning("session %s: %s", session.id_hex[:8], exc)
                control.write(messages.encode("auth-fail", error=str(exc),
                                              methods=self.methods))
                continue
            control.write(messages.encode("auth-ok", user=user))
            return user, how
        control.write(messages.encode("error", error="too many authentication failures"))
        raise AuthenticationError("too many authentication failures")

    async def _check(self, session: ServerSession, message: messages.Message,
                     user: str) -> str:
        method = messages.field(message, "method", str)
        if user != self.user:
            # The account running the server is the only one that can log in.
            raise AuthenticationError(f"permission denied for user {user!r}")
        if method == "publickey":
            key = userauth.parse_public_key(messages.field(message, "key", str))
            try:
                signature = base64.b64decode(messages.field(message, "sig", str), validate=True)
            except binascii.Error:
                raise AuthenticationError("signature is not base64") from None
            entry = userauth.find_authorized(
                userauth.load_authorized_keys(self.options.authorized_keys), key)
            name = userauth.key_fingerprint(key)
            if entry is None:
                raise AuthenticationError(
                    f"permission denied: key {name} is not in {self.options.authorized_keys}")
            data = userauth.signed_data(session.channel_binding, user)
            if not userauth.verify(key, signature, data):
                raise AuthenticationError(f"permission denied: bad signature by key {name}")
            return f"publickey {name}"
        if method == "password" and "password" in self.methods:
            password = messages.field(message, "password", str)
            stored = self.options.password_file.read_text()
            if not await asyncio.to_thread(userauth.check_password, password, stored):
                raise AuthenticationError("permission denied: wrong password")
            return "password"
        raise AuthenticationError(f"method {method!r} not available "
                                  f"(this server offers {', '.join(self.methods)})")

    def _spawn(self, session: ServerSession, opening: messages.Message, cols: int,
               rows: int) -> KeptTerminal:
        command = messages.field(opening, "command", str, None)
        shell = self.options.shell or [user_shell(), "-l"]
        argv = [*shell[:1], "-c", command] if command else shell
        home = str(Path.home())
        shell_id = os.urandom(8).hex()
        env = {"HOME": home, "USER": self.user, "LOGNAME": self.user, "SHELL": shell[0],
               "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
               "TERM": messages.field(opening, "term", str, None) or "xterm-256color",
               "CONTSH_SESSION": session.id_hex,
               "CONTSH_STATUS": str(status_path(shell_id))}
        client_env = messages.field(opening, "env", dict, None) or {}
        for key in ("LANG", "LC_ALL", "LC_CTYPE", "COLORTERM"):
            if isinstance(client_env.get(key), str):
                env[key] = client_env[key]
        reply, fds = self.keeper.call("spawn", id=shell_id, argv=argv, env=env, cwd=home, cols=cols,
                                      rows=rows)
        term = KeptTerminal(reply["id"], int(reply["pid"]), self.options.keeper, fds[0])
        return term

    async def _take_over(self, shell_id: str) -> tuple[KeptTerminal, bytes]:
        """A new client takes a shell over (its old client died). The old session is
        ended; output it had not acknowledged is not shown again, the screen redraws."""
        for old in list(self.live.values()):
            if old.term.shell_id == shell_id:
                pending = await old.pause()
                old.ctx.resources.pop("terminal", None)
                old.session.abort("shell taken over by a new client")
                old.forget()
                return old.term, pending
        # Suspended here or by an earlier server: its session can never come back now.
        for record in self.runtime.store.list_sessions(app=APP):
            if record.meta.get("shell") == shell_id and record.state == "suspended":
                self.runtime.store.delete_session(record.id)
                if self.server is not None:
                    self.server.endpoint.parked.discard(bytes.fromhex(record.id))
        return KeptTerminal.fetch(self.options.keeper, shell_id), b""

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        self.runtime.close()
        self.keeper.close()
        if ShellServer.current is self:
            ShellServer.current = None


class Shell:
    """One session's shell: relays the terminal both ways until the shell or session ends."""

    def __init__(self, owner: ShellServer, ctx: SessionContext, control: SessionStream,
                 tty: SessionStream, term: KeptTerminal, encoder: OutputEncoder,
                 pending_input: bytes = b"") -> None:
        self.owner = owner
        self.ctx = ctx
        self.session = ctx.session
        self.control = control
        self.tty = tty
        self.term = term
        self.encoder = encoder
        self.pending_input = pending_input
        self.exit_status: int | None = None
        self.status_file = status_path(term.shell_id)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        owner.live[ctx.session_id] = self
        self.session.add_listener(self._on_event)

    def _on_event(self, event: Event) -> None:
        if isinstance(event, Disconnected):
            self.write_status(f"disconnected {time.time():.0f}")
        elif isinstance(event, Reattached):
            self.write_status(f"connected {time.time():.0f}")

    def redraw(self) -> None:
        """Ask the program in the foreground to repaint (what a resize makes it do)."""
        with contextlib.suppress(OSError):
            os.killpg(os.tcgetpgrp(self.term.fd), signal.SIGWINCH)

    def write_status(self, text: str) -> None:
        """The shell's view of its connection, in the file $CONTSH_STATUS names."""
        with contextlib.suppress(OSError):
            self.status_file.write_text(text + "\n")

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and not isinstance(exc, SessionError) and not self._done.done():
            log.error("session %s: %s", self.ctx.session_id[:8], exc, exc_info=exc)
            self.session.abort(f"server error: {exc}")
            self._done.set_result(None)

    async def run(self) -> None:
        self.write_status(f"connected {time.time():.0f}")
        self._spawn(self._output())
        self._spawn(self._input())
        self._spawn(self._controls())
        self._spawn(self._forwards())
        self._spawn(self._until_closed())
        await self._done

    async def _until_closed(self) -> None:
        with contextlib.suppress(SessionError):
            await self.session.wait_closed()
        if not self._done.done():
            if self.exit_status is None and self.term.master is not None:
                # The client quit (~.) or the session was lost: the shell ends with it.
                with contextlib.suppress(ResourceError):
                    self.owner.keeper.call("forget", id=self.term.shell_id)
                self.status_file.unlink(missing_ok=True)
            self.forget()
            self._done.set_result(None)

    def stop(self) -> None:
        """This process is done with the shell (suspended): ``run`` returns."""
        self.forget()
        if not self._done.done():
            self._done.set_result(None)

    def forget(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self.owner.live.get(self.ctx.session_id) is self:
            del self.owner.live[self.ctx.session_id]
        with contextlib.suppress(Exception):
            self.session.remove_listener(self._on_event)

    async def _output(self) -> None:
        fd = self.term.fd
        while True:
            await wait_fd(fd)
            try:
                data = os.read(fd, READ_CHUNK)
            except BlockingIOError:
                continue
            except OSError as exc:
                if exc.errno != errno.EIO:
                    raise
                data = b""  # every copy of the terminal's other end is closed
            if not data:
                break
            # Read and written with no await between: a pause never loses a read.
            self.tty.write(self.encoder.encode(data))
            # Back pressure: while the client is away this stops once the session's
            # replay buffer is full, then the shell blocks on its terminal. Nothing lost.
            await self.tty.drain()
        await self._shell_ended()

    async def _shell_ended(self) -> None:
        status = None
        for _ in range(250):  # the terminal closes just before the keeper reaps the shell
            reply, _ = self.owner.keeper.call("status", id=self.term.shell_id)
            status = reply["status"]
            if status is not None:
                break
            await asyncio.sleep(0.02)
        self.exit_status = 255 if status is None else int(status)
        self.tty.write_eof()
        self.control.write(messages.encode("exit", status=self.exit_status))
        self.control.write_eof()
        with contextlib.suppress(ResourceError):
            self.owner.keeper.call("forget", id=self.term.shell_id)
        self.status_file.unlink(missing_ok=True)
        log.info("session %s: shell %s exited with %d", self.ctx.session_id[:8],
                 self.term.shell_id, self.exit_status)

    async def _input(self) -> None:
        fd = self.term.fd
        while True:
            if not self.pending_input:
                data = await self.tty.read(READ_CHUNK)
                if not data:
                    return
                self.pending_input = data
            # Kept here until written, so a pause in the middle loses no keystroke.
            while self.pending_input:
                try:
                    written = os.write(fd, self.pending_input)
                except BlockingIOError:
                    await wait_fd(fd, writable=True)
                    continue
                except OSError as exc:
                    if exc.errno == errno.EIO:
                        return  # the shell is gone; _output reports it
                    raise
                self.pending_input = self.pending_input[written:]

    async def _controls(self) -> None:
        while (message := await messages.read(self.control)) is not None:
            if message["t"] == "resize":
                cols, rows = messages.window(message)
                with contextlib.suppress(OSError):
                    set_window(self.term.fd, cols, rows)  # the kernel sends SIGWINCH
            elif message["t"] == "redraw":
                self.redraw()
            else:
                log.warning("session %s: unexpected control message %r",
                            self.ctx.session_id[:8], message["t"])

    async def _forwards(self) -> None:
        name = self.ctx.session_id[:8]
        while True:
            stream = await self.session.accept_stream()
            self._spawn(self.owner.tunnel.handle_stream(self.session, stream, name))

    async def pause(self) -> bytes:
        """Stop relaying at a clean point; returns keystrokes not yet given to the shell.

        Forwarded connections end here (their target sockets cannot be suspended)."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=5.0)
        pending, self.pending_input = self.pending_input, b""
        return pending

    def state(self, pending: bytes) -> dict[str, Any]:
        return {"shell": self.term.shell_id, "control": self.control.stream_id,
                "tty": self.tty.stream_id, "input": pending, "exited": self.exit_status}


# --- the continuation ---------------------------------------------------------------------


async def suspend_shell(ctx: SessionContext) -> Continuation:
    """The SSH continuation: flush, keep the shell, save compression state, let go."""
    owner = ShellServer.current
    shell = owner.live.get(ctx.session_id) if owner else None
    if shell is None:
        raise GeneratorError(f"session {ctx.session_id} has no shell in this process")
    pending = await shell.pause()
    # Every record ends in a sync flush, so the compressor holds nothing unsent; what
    # the next one needs is the history, as its preset dictionary.
    compression = ctx.runtime.store.attributes(ctx.session_id, "compression")
    compression.set("state", {"level": shell.encoder.level, "history": shell.encoder.history})
    if shell.exit_status is None:
        shell.write_status(f"suspended {time.time():.0f}")
    forwards = messages.forwarded_streams(ctx.session, shell.control, shell.tty)
    shell.stop()
    return Continuation(resume_shell, {**shell.state(pending), "forwards": forwards})


async def resume_shell(state: dict[str, Any], conditions: NetworkConditions,
                       ctx: SessionContext) -> None:
    owner = ShellServer.current
    if owner is None:
        raise ContinuationsError("a contsh session can only resume inside contshd")
    session = ctx.session
    control, tty = session.stream(state["control"]), session.stream(state["tty"])
    messages.end_streams(session, state["forwards"])
    if state["exited"] is not None:  # the exit status already waits in the session
        with contextlib.suppress(SessionError):
            await session.wait_closed()
        return
    term = ctx.resource("terminal")
    assert isinstance(term, KeptTerminal)
    saved = ctx.runtime.store.attributes(ctx.session_id, "compression").get("state") or {}
    encoder = OutputEncoder(int(saved.get("level", 0)), bytes(saved.get("history", b"")))
    # Adapt to the network found: compression level against the measured bandwidth.
    level = conditions.compression_level() if encoder.level else 0
    shell = Shell(owner, ctx, control, tty, term, encoder, state["input"])
    tty.write(encoder.reset(level))
    shell.redraw()  # told it is back: full-screen programs repaint
    log.info("session %s resumed: shell %s, rtt %s, compression level %d",
             ctx.session_id[:8], term.shell_id,
             f"{conditions.rtt * 1000:.1f} ms" if conditions.rtt else "?", level)
    await shell.run()


async def run(options: ServerOptions) -> int:
    owner = ShellServer(options)
    server = await owner.start()
    print(f"contshd: listening on {server.address[0]}:{server.address[1]} for "
          f"{owner.user}; host key {server.host_key_fingerprint}", flush=True)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    # A restart that keeps every shell: no new clients here, every session to the
    # store, the terminals stay with the keeper.
    server.stop_accepting()
    results = await owner.runtime.suspend_all("server restart")
    print(f"contshd: stopped; {len(results)} sessions suspended for the next server",
          flush=True)
    owner.close()
    return 0


__all__ = ["KeeperClient", "ServerOptions", "ShellServer", "run"]

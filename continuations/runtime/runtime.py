"""The continuations runtime: suspend sessions to the store, resume them anywhere.

Policy. When a managed session loses its path, it stays frozen in memory with
its resources kept. After ``Policy.suspend_after`` (or at once, on an explicit
``suspend``), the runtime calls the registered continuation generators, which
may finish pending work within their deadline and return a ``Continuation`` or
``BLOCK``. With a continuation it then, in this order: detaches the session
(freezing its protocol state), describes the resources, writes continuation,
generators, resource records, protocol state and the session row in ONE store
transaction, and only then releases the resources (closing files and sockets,
freeing ports, signalling children). If the write fails nothing was released.

``resume`` (in this or any other process) claims the suspended row, verifies
and loads the continuation (the store authenticates it before unpickling),
reacquires the resources, re-attaches the session, and invokes the
continuation with the ``NetworkConditions`` measured on the new attachment.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dill  # type: ignore[import-untyped]

from continuations.aio import AsyncSession, ClientSession, Server, ServerSession, resume
from continuations.errors import (
    ContinuationError,
    ContinuationsError,
    GeneratorError,
    LocalError,
    NotFoundError,
)
from continuations.protocol import (
    Disconnected,
    Event,
    ParkedSessionWanted,
    Reattached,
    SessionClosed,
    SessionLost,
)
from continuations.protocol.handshake import request_is_authentic
from continuations.protocol.snapshot import SessionSnapshot
from continuations.runtime.conditions import NetworkConditions
from continuations.runtime.context import SessionContext
from continuations.runtime.continuation import BLOCK, Continuation, _Block
from continuations.runtime.control import ControlServer
from continuations.runtime.resources import reacquire
from continuations.store import SessionRecord, Store

log = logging.getLogger("continuations.runtime")

Outcome = Continuation | _Block
GeneratorFn = Callable[[SessionContext], Outcome | Awaitable[Outcome]]


@dataclass(frozen=True, slots=True, kw_only=True)
class Policy:
    """When the runtime suspends, and how long suspended sessions are kept."""

    suspend_after: float = 30.0  # frozen in memory this long after a path loss
    generator_deadline: float = 5.0  # time each generator gets to finish pending work
    expire_after: float = 86400.0  # a suspended session not resumed by then is lost


@dataclass(frozen=True, slots=True)
class Generator:
    name: str
    fn: GeneratorFn
    parent: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class SuspendResult:
    session_id: str
    status: str  # "suspended" or "blocked"
    continuation_bytes: int = 0
    protocol_bytes: int = 0
    elapsed: float = 0.0


class Runtime:
    def __init__(
        self,
        app: str,
        store: Store | str | os.PathLike[str] | None = None,
        *,
        policy: Policy | None = None,
    ) -> None:
        self.app = app
        self.store = store if isinstance(store, Store) else Store(store)
        self.policy = policy or Policy()
        self.generators: dict[str, Generator] = {}
        self.contexts: dict[str, SessionContext] = {}
        self.control_path: str | None = None
        self._control: ControlServer | None = None
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._idle = asyncio.Event()
        self._idle.set()
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start_control(self) -> str:
        """Listen on this process's control socket (before ``manage``), so that
        ``continuations show/suspend/drop`` reach its live sessions."""
        self._control = ControlServer(self)
        self.control_path = str(await self._control.start())
        expired = self.store.expire_sessions(time.time())  # LOST: past their expiry
        if expired:
            log.info("removed %d expired sessions", len(expired))
        return self.control_path

    # --- registration ---------------------------------------------------------------------

    def on_disconnect(
        self, name: str, *, parent: str | None = None
    ) -> Callable[[GeneratorFn], GeneratorFn]:
        """Register a continuation generator. Names are unique; ``parent`` nests this
        generator's continuation under another's (resumed after it, in order)."""

        def register(fn: GeneratorFn) -> GeneratorFn:
            self.add_generator(Generator(name, fn, parent))
            return fn

        return register

    def add_generator(self, generator: Generator) -> None:
        if generator.name in self.generators:
            raise LocalError(f"a continuation generator named {generator.name!r} exists")
        if generator.parent is not None and generator.parent not in self.generators:
            raise LocalError(f"parent generator {generator.parent!r} is not registered")
        self.generators[generator.name] = generator

    # --- managing live sessions -----------------------------------------------------------

    def manage(
        self,
        session: AsyncSession,
        *,
        server: Server | None = None,
        meta: dict[str, Any] | None = None,
    ) -> SessionContext:
        """Put a live session under the runtime: recorded in the store, suspended on
        request or after a long outage. ``server`` is required for server sessions."""
        if isinstance(session, ServerSession) and server is None:
            raise LocalError("a server session needs server= to be suspended")
        ctx = SessionContext(self, session, server=server)
        role = "client" if isinstance(session, ClientSession) else "server"
        local, remote = session.path
        details: dict[str, Any] = {
            "cwd": os.getcwd(),
            "sys_path": [p for p in sys.path if p and Path(p).is_dir()],
            "local": list(local) if local else None,
        }
        if isinstance(session, ClientSession):
            details.update(remote=[session.remote_host, session.remote_port],
                           local_host=session.local_host,
                           known_hosts=str(session.known_hosts_path))
        details.update(meta or {})
        now = time.time()
        self.store.put_session(SessionRecord(
            id=ctx.session_id, app=self.app, role=role, state="established",
            peer=f"{remote[0]}:{remote[1]}" if remote else "", created=now, updated=now,
            pid=os.getpid(), control_socket=self.control_path, meta=details,
        ))
        self._adopt(ctx)
        return ctx

    def _adopt(self, ctx: SessionContext) -> None:
        self.contexts[ctx.session_id] = ctx
        self._idle.clear()
        ctx.session.add_listener(lambda event: self._on_event(ctx, event))

    def _on_event(self, ctx: SessionContext, event: Event) -> None:
        sid = ctx.session_id
        if sid not in self.contexts:
            return
        if isinstance(event, Disconnected):
            self._set_state(sid, "disconnected")
            loop = asyncio.get_running_loop()
            self._timers[sid] = loop.call_later(self.policy.suspend_after, self._suspend_later, sid)
        elif isinstance(event, Reattached):
            timer = self._timers.pop(sid, None)
            if timer is not None:
                timer.cancel()
            self._set_state(sid, "established")
        elif isinstance(event, SessionClosed | SessionLost):
            self._forget(sid)
            with contextlib.suppress(NotFoundError):
                self.store.delete_session(sid)

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _suspend_later(self, sid: str) -> None:
        # The coroutine is made when the timer fires: one made when it is set would
        # be left never awaited by every timer cancelled on re-attach.
        self._spawn(self._auto_suspend(sid))

    async def _auto_suspend(self, sid: str) -> None:
        try:
            result = await self.suspend(sid, reason="disconnected too long")
        except ContinuationsError as exc:
            log.error("could not suspend session %s: %s", sid, exc)
            return
        if result.status == "blocked":  # stay frozen; ask again after another period
            self._timers[sid] = asyncio.get_running_loop().call_later(
                self.policy.suspend_after, self._suspend_later, sid
            )

    def _set_state(self, sid: str, state: str) -> None:
        with contextlib.suppress(NotFoundError):
            self.store.update_session(sid, state=state, updated=time.time())

    def _forget(self, sid: str) -> None:
        self.contexts.pop(sid, None)
        timer = self._timers.pop(sid, None)
        if timer is not None:
            timer.cancel()
        if not self.contexts:
            self._idle.set()

    async def wait_idle(self) -> None:
        """Return once no session is managed here (all suspended, closed or lost)."""
        await self._idle.wait()

    # --- suspending -----------------------------------------------------------------------

    async def _generate(self, ctx: SessionContext) -> Outcome:
        """Run every generator, parents before children; build the continuation tree."""
        built: dict[str, Continuation] = {}
        roots: list[Continuation] = []
        loop = asyncio.get_running_loop()
        for gen in self.generators.values():
            ctx.deadline = loop.time() + self.policy.generator_deadline
            try:
                result = gen.fn(ctx)
                if inspect.isawaitable(result):
                    result = await asyncio.wait_for(result, self.policy.generator_deadline)
            except TimeoutError as exc:
                raise GeneratorError(
                    f"generator {gen.name!r} did not finish within "
                    f"{self.policy.generator_deadline:g} s"
                ) from exc
            except Exception as exc:
                raise GeneratorError(f"generator {gen.name!r} failed: {exc}") from exc
            if result is BLOCK:
                return BLOCK
            if not isinstance(result, Continuation):
                raise GeneratorError(
                    f"generator {gen.name!r} returned {type(result).__name__}, "
                    "not a Continuation or BLOCK"
                )
            result.name = result.name or gen.name
            built[gen.name] = result
            if gen.parent is None:
                roots.append(result)
            else:
                built[gen.parent].children.append(result)
        if not roots:
            raise GeneratorError("no continuation generator is registered")
        if len(roots) == 1:
            return roots[0]
        return Continuation(_run_nothing, None, name="session", children=roots)

    async def suspend(self, session_id: str, reason: str = "requested") -> SuspendResult:
        ctx = self.contexts.get(session_id)
        if ctx is None:
            raise ContinuationError(f"session {session_id} is not live in this process")
        started = time.monotonic()
        ctx.reason = reason
        outcome = await self._generate(ctx)
        if outcome is BLOCK:
            return SuspendResult(session_id=session_id, status="blocked")
        assert isinstance(outcome, Continuation)
        blob = self._serialise(outcome)  # before anything changes: a failure leaves all as is
        local = ctx.session.path[0]  # gone once detached; a resume compares against it
        snapshot = self._detach(ctx)
        records = [{"name": name, **res.describe()} for name, res in ctx.resources.items()]
        protocol = snapshot.encode()
        now = time.time()
        rate = ctx.session.delivery_rate
        with self.store.transaction():
            record = self.store.get_session(session_id)
            self.store.save_protocol_state(session_id, protocol)
            self.store.save_continuation(session_id, blob, tree=outcome.tree(), size=len(blob))
            self.store.save_resources(session_id, records)
            self.store.update_session(
                session_id, state="suspended", pid=None, control_socket=None, updated=now,
                expires=now + self.policy.expire_after,
                meta={**record.meta, "suspended_reason": reason, "delivery_rate": rate,
                      "local": list(local) if local else record.meta.get("local")},
            )
        # Persisted: only now let go (a failure above leaves every resource held).
        for res in ctx.resources.values():
            res.release()
        self._forget(session_id)
        return SuspendResult(
            session_id=session_id, status="suspended", continuation_bytes=len(blob),
            protocol_bytes=len(protocol), elapsed=time.monotonic() - started,
        )

    def _serialise(self, tree: Continuation) -> bytes:
        # Generators that capture nothing travel with the continuation, so a resumed
        # process can suspend again. Closures over live objects (tasks, sockets) cannot;
        # the continuation registers those again itself.
        portable = [g for g in self.generators.values() if not getattr(g.fn, "__closure__", None)]
        try:
            return bytes(dill.dumps({"tree": tree, "generators": portable}, recurse=True))
        except (RecursionError, TypeError, ValueError, AttributeError,
                dill.PicklingError) as exc:
            raise GeneratorError(
                f"the continuation cannot be serialised ({type(exc).__name__}: {exc}); "
                "it must not hold live objects such as tasks, sockets or open files"
            ) from exc

    async def suspend_all(self, reason: str = "shutting down") -> list[SuspendResult]:
        """Suspend every session managed here (for a restart or an upgrade). A session
        whose generators fail or block stays live, and is reported in the log."""
        results = []
        for sid in list(self.contexts):
            try:
                results.append(await self.suspend(sid, reason=reason))
            except ContinuationsError as exc:
                log.error("could not suspend session %s: %s", sid, exc)
        return results

    def _detach(self, ctx: SessionContext) -> SessionSnapshot:
        if isinstance(ctx.session, ClientSession):
            return ctx.session.suspend()
        assert ctx.server is not None
        return ctx.server.suspend_session(ctx.session.id)

    # --- resuming -------------------------------------------------------------------------

    def _claim(self, session_id: str) -> SessionRecord:
        """Take a suspended session for this process; two resumers cannot both win."""
        with self.store.transaction():
            record = self.store.get_session(session_id)
            if record.state != "suspended":
                owner = f" in pid {record.pid}" if record.pid else ""
                raise ContinuationError(
                    f"session {session_id} is {record.state}{owner}, not suspended"
                )
            if record.expires is not None and record.expires < time.time():
                raise ContinuationError(f"session {session_id} expired")
            self.store.update_session(session_id, state="resuming", pid=os.getpid(),
                                      updated=time.time())
        return record

    def _load(self, session_id: str, record: SessionRecord) -> tuple[Continuation, SessionSnapshot]:
        for path in record.meta.get("sys_path", []):
            if path not in sys.path:
                sys.path.append(path)
        saved = self.store.load_continuation_object(session_id)  # verified, then unpickled
        for gen in saved["generators"]:
            if gen.name not in self.generators:
                self.add_generator(gen)
        snapshot = SessionSnapshot.decode(self.store.load_protocol_state(session_id))
        tree = saved["tree"]
        assert isinstance(tree, Continuation)
        return tree, snapshot

    def _unclaim(self, session_id: str) -> None:
        with contextlib.suppress(NotFoundError):
            self.store.update_session(session_id, state="suspended", pid=None)

    async def resume(
        self, session_id: str, *, local_host: str | None = None, timeout: float = 30.0
    ) -> tuple[SessionContext, asyncio.Task[Any]]:
        """Resume a suspended client session in this process.

        Returns the context and the task running the continuation (its result is
        the continuation's)."""
        record = self._claim(session_id)
        try:
            if record.role != "client":
                raise ContinuationError(
                    f"session {session_id} is a server session: resume it in a server with "
                    "Runtime.resume_server_session"
                )
            tree, snapshot = self._load(session_id, record)
            resources = {r["name"]: reacquire(r) for r in self.store.load_resources(session_id)}
            host, port = record.meta["remote"]
            session = await resume(
                snapshot, host, port, known_hosts=record.meta.get("known_hosts"),
                local_host=local_host or record.meta.get("local_host"), timeout=timeout,
            )
        except BaseException:
            self._unclaim(session_id)
            raise
        ctx = SessionContext(self, session)
        ctx.resources = resources
        return ctx, self._start(ctx, record, tree)

    async def resume_server_session(
        self, server: Server, session_id: str
    ) -> tuple[SessionContext, asyncio.Task[Any]]:
        """Take a suspended server session into ``server``; the continuation runs once
        the client has re-attached (it is measured on the new attachment)."""
        record = self._claim(session_id)
        try:
            tree, snapshot = self._load(session_id, record)
            resources = {r["name"]: reacquire(r) for r in self.store.load_resources(session_id)}
            session = server.restore_session(snapshot)
        except BaseException:
            self._unclaim(session_id)
            raise
        ctx = SessionContext(self, session, server=server)
        ctx.resources = resources
        return ctx, self._start(ctx, record, tree)

    def serve_parked(self, server: Server) -> int:
        """Resume this app's suspended server sessions when their clients come back.

        Marks every suspended server session of this app in the store as parked on
        ``server`` (so returning clients are told to retry, not that the session is
        gone) and resumes each, lazily, at its client's first attempt. Returns how many
        were parked."""
        parked = 0
        for record in self.store.list_sessions(app=self.app, state="suspended"):
            if record.role == "server":
                server.endpoint.parked.add(bytes.fromhex(record.id))
                parked += 1
        resuming: set[str] = set()

        def wanted(event: ParkedSessionWanted) -> None:
            sid = event.session_id.hex()
            if sid in resuming or sid in self.contexts:
                return
            # Session ids travel in the clear: only a request that proves the session's
            # key may cost us a resume.
            try:
                snapshot = SessionSnapshot.decode(self.store.load_protocol_state(sid))
            except ContinuationsError:
                return
            if not request_is_authentic(event.request, snapshot.resume_key):
                log.warning("ignored an unproven attach to parked session %s", sid)
                return
            resuming.add(sid)

            async def resume_it() -> None:
                try:
                    await self.resume_server_session(server, sid)
                except ContinuationsError as exc:
                    log.error("cannot resume parked session %s: %s", sid, exc)
                finally:
                    resuming.discard(sid)

            self._spawn(resume_it())

        server.on_parked = wanted
        return parked

    def _start(
        self, ctx: SessionContext, record: SessionRecord, tree: Continuation
    ) -> asyncio.Task[Any]:
        self.store.update_session(
            ctx.session_id, state="established" if ctx.session.path[0] else "disconnected",
            pid=os.getpid(), control_socket=self.control_path, updated=time.time(),
            expires=None,
        )
        self._adopt(ctx)

        async def run() -> Any:
            await ctx.session.wait_attached()
            conditions = self.measure(ctx, record)
            return await tree.invoke(conditions, ctx)

        task = asyncio.ensure_future(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def measure(self, ctx: SessionContext, record: SessionRecord) -> NetworkConditions:
        local, remote = ctx.session.path
        before: list[Any] | None = record.meta.get("local")
        return NetworkConditions(
            rtt=ctx.session.latest_rtt,
            bandwidth=ctx.session.delivery_rate or record.meta.get("delivery_rate"),
            local_address=local,
            remote_address=remote,
            offline=max(0.0, time.time() - record.updated),
            path_changed=before is not None and local is not None and before[0] != local[0],
        )

    def close(self) -> None:
        if self._control is not None:
            self._control.close()
        for timer in self._timers.values():
            timer.cancel()
        for task in self._tasks:
            task.cancel()
        self.store.close()


def _run_nothing(state: object, conditions: NetworkConditions, ctx: SessionContext) -> None:
    """The root of a tree with several top-level generators: its children do the work."""

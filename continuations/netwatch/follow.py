"""Move a client session to whichever network is usable, as the kernel reports changes.

A phone-like client has several interfaces (say wifi and cellular). The
``NetworkFollower`` keeps its session on the preferred usable one: when the
link or address in use goes away it re-attaches from another at once (without
waiting for the dead-path timeout), and when a preferred one comes back it
moves there make-before-break. It is driven by the operating system's
notifications (``NetWatcher``), never by timers.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from continuations.aio import ClientSession
from continuations.errors import ContinuationsError
from continuations.netwatch.view import Choice
from continuations.netwatch.watcher import Change, NetWatcher
from continuations.protocol import SessionState

MIGRATE_TIMEOUT = 5.0
RETRIES = 3


@dataclass(frozen=True, slots=True, kw_only=True)
class Migration:
    """One move of the session, with loop times: the notification that caused it was
    read at ``notified_at``; ``migrate()`` ran from ``started_at`` to ``finished_at``;
    the new transport connection was up at ``connected_at`` (what lies between the
    notification and this is the operating system's: routes, ARP, the TCP handshake)."""

    interface: str
    old: str | None
    new: str
    reason: str
    notified_at: float
    started_at: float
    finished_at: float
    attach_version: int
    connected_at: float | None = None
    error: str | None = None


MigrationListener = Callable[[Migration], None]


class NetworkFollower:
    """Keeps ``session`` on the first usable interface of ``prefer`` (then any other).

    ``start()`` once the watcher is started; ``close()`` stops following (the
    session itself is left alone). ``on_migration`` hears about every attempt.
    """

    def __init__(
        self,
        session: ClientSession,
        watcher: NetWatcher,
        *,
        prefer: Sequence[str] = (),
        on_migration: MigrationListener | None = None,
        timeout: float = MIGRATE_TIMEOUT,
    ) -> None:
        self.session = session
        self.watcher = watcher
        self.prefer = tuple(prefer)
        self.on_migration = on_migration
        self.timeout = timeout
        self._wake = asyncio.Event()
        self._notified_at = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.watcher.add_listener(self._changed)
        self._notified_at = loop.time()
        self._wake.set()  # look once now: the session may not be where it should be
        self._task = loop.create_task(self._run())

    def _changed(self, change: Change) -> None:
        if not self._wake.is_set():
            self._notified_at = change.at
        self._wake.set()

    def _current(self) -> str | None:
        local = self.session.path[0]
        return local[0] if local is not None else self.session.local_host

    def _reason(self, choice: Choice) -> str | None:
        """Why the session should move to ``choice`` now, or None if it should not."""
        current = self._current()
        if current is None or not self.watcher.view.is_usable(current):
            return f"{current or 'no address'} is gone"
        if choice.address != current:
            return f"{choice.interface} is preferred"
        if self.session.state is SessionState.DISCONNECTED:
            return "re-attach now that the network changed"  # rather than after the backoff
        return None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        failures = 0
        while not self.session.finished:
            if failures:
                # A failed move is retried a few times, sooner if the network changes again.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), 0.2 * 2 ** failures)
                self._wake.set()
            await self._wake.wait()
            self._wake.clear()
            notified = self._notified_at
            choice = self.watcher.view.choose(self.prefer)
            reason = self._reason(choice) if choice is not None else None
            if choice is None or reason is None:
                failures = 0
                continue
            old = self._current()
            started = loop.time()
            error: str | None = None
            try:
                await asyncio.wait_for(self.session.migrate(local_host=choice.address),
                                       self.timeout)
            except (OSError, TimeoutError, ContinuationsError) as exc:
                error = f"{type(exc).__name__}: {exc}"
            self._report(Migration(
                interface=choice.interface, old=old, new=choice.address, reason=reason,
                notified_at=notified, started_at=started, finished_at=loop.time(),
                attach_version=self.session.attach_version,
                connected_at=self.session.link_opened_at if error is None else None, error=error,
            ))
            if error is None or self.session.finished:
                failures = 0
            elif failures + 1 < RETRIES:
                failures += 1
            else:
                failures = 0  # give up until the network changes again

    def _report(self, migration: Migration) -> None:
        if self.on_migration is not None:
            self.on_migration(migration)

    def close(self) -> None:
        with contextlib.suppress(ValueError):
            self.watcher.remove_listener(self._changed)
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def wait_closed(self) -> None:
        """``close()``, then wait until a move in progress has been abandoned."""
        task = self._task
        self.close()
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await task

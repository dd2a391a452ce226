"""The sans-I/O endpoints: what a driver feeds bytes and timers to.

Inputs: ``new_link``, ``receive_data``, ``link_closed``, ``set_link_writable``,
``handle_timer`` and the session API. Outputs, pulled: ``transmit`` (bytes per
link, and which links to close), ``next_event`` and ``get_timer``. Time and
randomness come from the caller; nothing here touches a socket or a clock.

A peer's fault never raises out of an input method: the link it came on is
closed and a ``LinkFailed`` event says why. The server routes by session id, so
a client can come back from any address.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from continuations.errors import (
    ProtocolError,
    RemoteError,
    SessionLostError,
    StreamStateError,
    VersionError,
)
from continuations.protocol import handshake
from continuations.protocol.config import SessionConfig
from continuations.protocol.events import (
    AttachRejected,
    Event,
    LinkFailed,
    LinkId,
    ParkedSessionWanted,
    SessionEstablished,
)
from continuations.protocol.keys import (
    Random,
    TrafficKeys,
    public_bytes,
    reject_is_authentic,
    sign_reject,
)
from continuations.protocol.link import Link, PendingAttach, PendingHello, PendingNewSession
from continuations.protocol.session import Role, Session
from continuations.protocol.snapshot import SessionSnapshot
from continuations.protocol.states import (
    CLIENT_ACCEPTS,
    SERVER_ACCEPTS,
    LinkState,
    LinkTrigger,
    RecordType,
    SessionState,
    SessionTrigger,
)
from continuations.protocol.wire import (
    REJECT_REASONS,
    AttachAccept,
    AttachRequest,
    ClientHello,
    RecordDecoder,
    Reject,
    RejectCode,
    ServerHello,
    encode_record,
)

TRANSMIT_BUDGET = 1024 * 1024  # stream bytes per link per transmit() call


@dataclass(frozen=True, slots=True)
class Transmit:
    """Records to write on a link, in order; if ``close``, close it once they are written.

    ``chunks`` are whole records (write them one by one, no joining needed);
    ``data`` is the same bytes in one piece."""

    link: LinkId
    chunks: tuple[bytes | bytearray, ...]
    close: bool

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)


class _Endpoint:
    _accepts: dict[LinkState, frozenset[RecordType]]

    def __init__(self, *, config: SessionConfig, rng: Random, now: float) -> None:
        self.config = config
        self._rng = rng
        self._links: dict[LinkId, Link] = {}
        self._link_ids = itertools.count(1)
        self._events: deque[Event] = deque()
        self._to_close: dict[LinkId, Link] = {}
        self._has_output: dict[LinkId, Link] = {}
        self._dirty: dict[Session, None] = {}
        # Timer heap of [deadline, seq, target] entries. A superseded or cancelled entry
        # drops its target at once (so a finished session or a failed link is not kept
        # alive until its old deadline), and the heap is compacted when they pile up.
        self._heap: list[list[Any]] = []
        self._entries: dict[int, list[Any]] = {}  # id(target) -> its live heap entry
        self._seq = itertools.count()
        self._now = now

    # --- inputs ---------------------------------------------------------------------------

    def _make_link(self, now: float) -> Link:
        link = Link(id=next(self._link_ids), created=now, decoder=RecordDecoder())
        link.last_received = link.last_sent = now
        self._links[link.id] = link
        return link

    def receive_data(self, link_id: LinkId, data: bytes, now: float) -> None:
        self._now = now
        link = self._links.get(link_id)
        if link is None or link.closed:
            return
        link.decoder.feed(data)
        try:
            while not link.closed:
                record = link.decoder.next_record()
                if record is None:
                    break
                rtype, header, body = record
                if rtype not in self._accepts.get(link.state, frozenset()):
                    raise ProtocolError(f"{rtype.name} record not allowed while {link.state.value}")
                self._on_record(link, rtype, header, body, now)
        except RemoteError as exc:
            self._fail_link(link, exc, now)
        except SessionLostError as exc:
            self._lose_session_of(link, str(exc))
        self._after_input(link)

    def link_closed(self, link_id: LinkId, now: float) -> None:
        """The transport under ``link_id`` closed or failed."""
        self._now = now
        link = self._links.pop(link_id, None)
        self._to_close.pop(link_id, None)
        if link is None or link.closed:
            return
        link.move(LinkTrigger.CLOSE)
        self._link_lost(link, now, "transport connection closed")
        self._after_input(link)

    def set_link_writable(self, link_id: LinkId, writable: bool) -> None:
        link = self._links.get(link_id)
        if link is not None:
            link.writable = writable
            session = self._session_of(link)
            if writable and session is not None:
                self._dirty[session] = None

    def handle_timer(self, now: float) -> None:
        self._now = now
        heap = self._heap
        due: list[Session | Link] = []
        while heap and heap[0][0] <= now:
            entry = heapq.heappop(heap)
            target = entry[2]
            if target is not None and self._entries.get(id(target)) is entry:
                del self._entries[id(target)]
                due.append(target)
        # Each target fires once per call: a keepalive stays due until transmit() sends it.
        for target in due:
            if isinstance(target, Link):
                if not target.closed:
                    self._fail_link(target, ProtocolError("handshake timed out"), now)
                continue
            for link, error in target.handle_timer(now):
                self._fail_link(link, error, now)
            self._dirty[target] = None
            self._reap(target)

    # --- outputs --------------------------------------------------------------------------

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        heap = self._heap
        while heap:
            entry = heap[0]
            target = entry[2]
            if target is not None and self._entries.get(id(target)) is entry:
                return float(entry[0])
            heapq.heappop(heap)
        return None

    def transmit(self, now: float) -> list[Transmit]:
        self._now = now
        out: list[Transmit] = []
        dirty = list(self._dirty)
        self._dirty.clear()
        for session in dirty:
            for link in (session.active, session.pending):
                if link is None or link.closed:
                    continue
                try:
                    written = session.flush(link, now, TRANSMIT_BUDGET)
                except RemoteError as exc:  # e.g. this link's key is used up: end the link
                    self._fail_link(link, exc, now)
                    continue
                if written >= TRANSMIT_BUDGET and link.writable:
                    self._dirty[session] = None  # more to send; come back next call
                if link.out:
                    self._has_output[link.id] = link
            self._schedule(session)
            self._reap(session)
        for link_id, link in self._has_output.items():
            if link.out and link_id not in self._to_close:
                out.append(Transmit(link_id, tuple(link.out), False))
                link.out.clear()
        self._has_output.clear()
        for link_id, link in self._to_close.items():
            out.append(Transmit(link_id, tuple(link.out), True))
            self._links.pop(link_id, None)
        self._to_close.clear()
        return out

    # --- shared machinery -----------------------------------------------------------------

    def _emit(self, event: Event) -> None:
        self._events.append(event)

    def _queue(self, link: Link, rtype: RecordType, body: bytes) -> None:
        """A plaintext handshake record."""
        link.out.append(encode_record(rtype, body))
        self._has_output[link.id] = link

    def _touched(self, session: Session) -> None:
        self._dirty[session] = None

    def _close_link(self, link: Link) -> None:
        if not link.closed:
            link.move(LinkTrigger.CLOSE)
        link.decoder = RecordDecoder()  # drop whatever input it buffered: nothing reads it
        if link.id in self._links:
            self._to_close[link.id] = link

    def _new_session(self, role: Role, now: float) -> Session:
        return Session(
            role=role,
            config=self.config,
            emit=self._emit,
            close_link=self._close_link,
            touched=self._touched,
            now=now,
        )

    def _fail_link(self, link: Link, error: RemoteError, now: float) -> None:
        if link.closed:
            return
        session = self._session_of(link)
        self._emit(
            LinkFailed(link=link.id, session_id=session.id if session else None, error=error)
        )
        link.out.clear()  # nothing more for a link we no longer trust
        self._close_link(link)
        self._link_lost(link, now, str(error))

    def _after_input(self, link: Link) -> None:
        session = self._session_of(link)
        if session is not None:
            self._dirty[session] = None
            self._schedule(session)
            self._reap(session)
        elif not link.closed:
            self._schedule(link)

    def _schedule(self, target: Session | Link) -> None:
        if isinstance(target, Link):
            deadline: float | None = target.created + self.config.handshake_timeout
        else:
            deadline = target.next_deadline()
        current = self._entries.get(id(target))
        if current is not None and current[0] == deadline:
            return
        self._unschedule(target)
        if deadline is None:
            return
        entry = [deadline, next(self._seq), target]
        self._entries[id(target)] = entry
        heapq.heappush(self._heap, entry)
        if len(self._heap) > 2 * len(self._entries) + 64:
            self._heap = [e for e in self._heap if e[2] is not None]
            heapq.heapify(self._heap)

    def _unschedule(self, target: Session | Link) -> None:
        entry = self._entries.pop(id(target), None)
        if entry is not None:
            entry[2] = None  # let go of the target now, not when the deadline comes

    def _lose_session_of(self, link: Link, reason: str) -> None:
        session = self._session_of(link)
        if session is not None:
            session.lose(reason)
            self._reap(session)
        self._close_link(link)

    # Subclass hooks.
    def _on_record(
        self, link: Link, rtype: RecordType, header: bytes, body: bytes, now: float
    ) -> None:
        raise NotImplementedError

    def _session_of(self, link: Link) -> Session | None:
        raise NotImplementedError

    def _link_lost(self, link: Link, now: float, reason: str) -> None:
        raise NotImplementedError

    def _reap(self, session: Session) -> None:
        """Forget a finished session."""


class ClientEndpoint(_Endpoint):
    """One client session, over as many successive links as it takes."""

    _accepts = CLIENT_ACCEPTS

    def __init__(
        self,
        *,
        config: SessionConfig,
        rng: Random,
        now: float,
        verify_host_key: Callable[[bytes], None],
        snapshot: SessionSnapshot | None = None,
    ) -> None:
        """With ``snapshot``, continue a suspended session: it starts disconnected, and
        the next ``new_link`` re-attaches with a version above any used before."""
        super().__init__(config=config, rng=rng, now=now)
        self._verify_host_key = verify_host_key
        self.session = self._new_session(Role.CLIENT, now)
        self._attempted = 0
        if snapshot is not None:
            self.session.restore(snapshot, now)
            self._attempted = snapshot.attempted_version
            self._schedule(self.session)

    def suspend(self, unread: dict[int, bytes] | None = None) -> SessionSnapshot:
        """Freeze the session for another process and drop every link."""
        snap = self.session.snapshot(self._attempted, unread)
        self.session.detach_all()
        return snap

    def new_link(self, now: float) -> LinkId:
        """A transport connection to the server is up: start a handshake on it."""
        self._now = now
        session = self.session
        if session.finished:
            raise StreamStateError(f"session is {session.state.value}")
        link = self._make_link(now)
        link.move(LinkTrigger.SEND_FIRST)
        link.answered_at = now
        if session.pending is not None:
            self._close_link(session.pending)  # a newer attempt supersedes it
        session.pending = link
        if session.state is SessionState.CONNECTING:
            eph, hello = handshake.start_hello(self._rng)
            link.handshake = PendingHello(eph, hello)
            self._queue(link, RecordType.CLIENT_HELLO, hello.encode())
        else:
            version = max(session.attach_version, self._attempted) + 1
            self._attempted = version
            eph, request = handshake.start_attach(
                session_id=session.id,
                version=version,
                resume_key=session.resume_key,
                resume=session.resume_point(),
                rng=self._rng,
            )
            link.attach_version = version
            link.handshake = PendingAttach(eph, request)
            self._queue(link, RecordType.ATTACH_REQUEST, request.encode())
            session.move(SessionTrigger.ATTACH_START)
        self._dirty[session] = None
        self._schedule(session)
        return link.id

    def _session_of(self, link: Link) -> Session | None:
        return self.session

    def _on_record(
        self, link: Link, rtype: RecordType, header: bytes, body: bytes, now: float
    ) -> None:
        session = self.session
        if rtype is RecordType.SEALED:
            if link is not session.active:
                return  # a superseded link's late record
            session.on_record(link, header, body, now)
            return
        pending = link.handshake
        if rtype is RecordType.REJECT:
            self._on_reject(link, Reject.decode(body), now)
        elif rtype is RecordType.SERVER_HELLO and isinstance(pending, PendingHello):
            answer = ServerHello.decode(body)
            secrets = handshake.finish_hello(pending.eph, pending.hello, answer)
            self._verify_host_key(answer.host_key)
            session.id = answer.session_id
            session.resume_key = secrets.resume_key
            session.host_key = answer.host_key
            self._finish_link(link, secrets.keys, now)
            session.active = link
            session.pending = None
            session.move(SessionTrigger.ESTABLISH)
            self._emit(
                SessionEstablished(session_id=session.id, link=link.id, host_key=answer.host_key)
            )
        elif rtype is RecordType.ATTACH_ACCEPT and isinstance(pending, PendingAttach):
            accept = AttachAccept.decode(body)
            keys = handshake.finish_attach(
                pending.eph, pending.request, accept, session.resume_key
            )
            self._finish_link(link, keys, now)
            replayed = session.apply_resume_point(accept.resume)
            session.attachment_done(link, now, replayed)
        else:
            raise ProtocolError(f"unexpected {rtype.name} during handshake")

    def _finish_link(self, link: Link, keys: TrafficKeys, now: float) -> None:
        link.install(keys, client=True, now=now)
        link.handshake = None
        link.move(LinkTrigger.ACCEPTED)
        link.needs_confirm = True
        link.last_received = now
        self.session.rtt.update(now - link.answered_at)

    def _on_reject(self, link: Link, reject: Reject, now: float) -> None:
        session = self.session
        pending = link.handshake
        authentic = isinstance(pending, PendingAttach) and reject_is_authentic(
            session.host_key, pending.request.client_nonce, session.id, reject.code,
            reject.signature,
        )
        self._emit(
            AttachRejected(link=link.id, session_id=session.id, code=reject.code,
                           reason=reject.reason, authentic=authentic)
        )
        self._close_link(link)
        self._link_lost(link, now, f"server refused: {reject.reason}")
        # Unsigned, a refusal proves nothing (anyone on the path can forge one): the
        # client keeps trying until its linger time. Signed by the pinned host key over
        # this request's nonce, it is the server speaking.
        if reject.code == RejectCode.UNKNOWN_SESSION and authentic:
            session.lose("the server no longer knows this session (signed refusal)")
        elif reject.code == RejectCode.STALE_VERSION:
            self._attempted += 1 << 16  # we restarted from older state: skip ahead (gaps are fine)

    def _link_lost(self, link: Link, now: float, reason: str) -> None:
        session = self.session
        if session.state is SessionState.CONNECTING and link is session.pending:
            session.pending = None
            session.lose(f"could not establish the session: {reason}")
            return
        session.link_gone(link, now, reason)


class ServerEndpoint(_Endpoint):
    """Accepts links, runs handshakes, and routes each link to its session by id."""

    _accepts = SERVER_ACCEPTS

    def __init__(
        self, *, config: SessionConfig, rng: Random, now: float, host_key: Ed25519PrivateKey
    ) -> None:
        super().__init__(config=config, rng=rng, now=now)
        self._host_key = host_key
        self.host_public = public_bytes(host_key)
        self.sessions: dict[bytes, Session] = {}
        # Sessions this server suspended to disk: not unknown, only away. A client that
        # comes back meanwhile is told to retry, never that the session is gone.
        self.parked: set[bytes] = set()
        self._unbound: dict[LinkId, Link] = {}  # links with no session yet: handshake limits
        # Hellos answered but not yet confirmed, oldest first. If the link dies before the
        # client's confirm arrives, the client already holds the keys and will re-attach;
        # an authentic attach request then completes the session. Bounded in count and age.
        self._embryos: dict[bytes, tuple[PendingNewSession, float, Link]] = {}

    def new_link(self, now: float) -> LinkId:
        """A client connected; its first record says what it wants."""
        self._now = now
        link = self._make_link(now)
        if len(self._unbound) >= self.config.max_pending_handshakes:
            self._fail_link(link, ProtocolError("too many pending handshakes"), now)
            return link.id
        self._unbound[link.id] = link
        self._schedule(link)
        return link.id

    def session(self, session_id: bytes) -> Session | None:
        return self.sessions.get(session_id)

    def suspend_session(
        self, session_id: bytes, unread: dict[int, bytes] | None = None
    ) -> SessionSnapshot:
        """Freeze a session for another process; it leaves this endpoint."""
        session = self.sessions.get(session_id)
        if session is None:
            raise StreamStateError(f"no session {session_id.hex()}")
        snap = session.snapshot(session.attach_version, unread)
        session.detach_all()
        del self.sessions[session_id]
        self.parked.add(session_id)
        self._unschedule(session)
        return snap

    def restore_session(self, snapshot: SessionSnapshot, now: float) -> Session:
        """Take in a suspended session; it waits, disconnected, for its client."""
        if snapshot.session_id in self.sessions:
            raise StreamStateError(f"session {snapshot.session_id.hex()} is already here")
        session = self._new_session(Role.SERVER, now)
        session.restore(snapshot, now)
        self.sessions[session.id] = session
        self.parked.discard(session.id)
        self._schedule(session)
        return session

    def _session_of(self, link: Link) -> Session | None:
        return self.sessions.get(link.session_id) if link.session_id else None

    def _bind(self, link: Link) -> None:
        self._unbound.pop(link.id, None)
        self._unschedule(link)

    def _close_link(self, link: Link) -> None:
        self._bind(link)
        super()._close_link(link)

    def _reject(self, link: Link, code: int, request: AttachRequest | None = None) -> None:
        """Refuse and close. Answers to a well-formed request are signed (see Reject)."""
        signature = b""
        if request is not None:
            signature = sign_reject(
                self._host_key, request.client_nonce, request.session_id, code
            )
        reject = Reject(code=code, reason=REJECT_REASONS.get(code, "refused"),
                        signature=signature)
        self._queue(link, RecordType.REJECT, reject.encode())
        self._close_link(link)

    def _on_record(
        self, link: Link, rtype: RecordType, header: bytes, body: bytes, now: float
    ) -> None:
        try:
            if rtype is RecordType.CLIENT_HELLO:
                self._answer_hello(link, ClientHello.decode(body), now)
                return
            if rtype is RecordType.ATTACH_REQUEST:
                self._answer_attach(link, AttachRequest.decode(body), now)
                return
        except VersionError as exc:
            self._emit(LinkFailed(link=link.id, session_id=None, error=exc))
            self._reject(link, RejectCode.UNSUPPORTED_VERSION)
            return
        if isinstance(link.handshake, PendingNewSession):
            self._confirm_new_session(link, header, body, now)
            return
        session = self._session_of(link)
        if session is None:
            raise ProtocolError("record for a session that no longer exists")
        if link.state is LinkState.CONFIRMING:
            if link is not session.pending:
                raise ProtocolError("confirm for an attachment that was superseded")
            assert link.opener is not None
            plaintext = link.opener.open(header, body)
            link.last_received = now
            link.move(LinkTrigger.CONFIRMED)
            session.rtt.update(now - link.answered_at)
            session.attachment_done(link, now, link.replayed)
            session.on_plaintext(link, plaintext, now)
        else:
            session.on_record(link, header, body, now)

    def _answer_hello(self, link: Link, hello: ClientHello, now: float) -> None:
        answer, secrets = handshake.answer_hello(hello, self._rng, self._host_key)
        pending = PendingNewSession(answer.session_id, secrets, answer.host_key)
        link.handshake = pending
        self._purge_embryos(now)
        self._embryos[answer.session_id] = (pending, now, link)
        link.install(secrets.keys, client=False, now=now)
        self._queue(link, RecordType.SERVER_HELLO, answer.encode())
        link.answered_at = now
        link.move(LinkTrigger.ANSWER)

    def _purge_embryos(self, now: float) -> None:
        embryos = self._embryos
        while embryos:
            oldest, (_, born, _) = next(iter(embryos.items()))
            if now - born < self.config.handshake_timeout and (
                len(embryos) < self.config.max_pending_handshakes
            ):
                break
            _, _, link = embryos.pop(oldest)
            self._close_link(link)  # a forgotten hello must not be confirmed later

    def _create_session(self, pending: PendingNewSession, link: Link, now: float) -> Session:
        self._embryos.pop(pending.session_id, None)
        session = self._new_session(Role.SERVER, now)
        session.id = pending.session_id
        session.resume_key = pending.secrets.resume_key
        session.host_key = pending.host_key
        self.sessions[session.id] = session
        session.move(SessionTrigger.ESTABLISH)
        self._emit(
            SessionEstablished(session_id=session.id, link=link.id, host_key=self.host_public)
        )
        return session

    def _confirm_new_session(self, link: Link, header: bytes, body: bytes, now: float) -> None:
        pending = link.handshake
        assert isinstance(pending, PendingNewSession) and link.opener is not None
        plaintext = link.opener.open(header, body)  # raises unless the client holds the keys
        if pending.session_id in self.sessions:
            raise ProtocolError("late confirm: a re-attach already completed this session")
        if pending.session_id not in self._embryos:
            # Found by model checking: the hello was forgotten, a re-attach may already
            # have been told "unknown session" and the client have given the session up.
            raise ProtocolError("late confirm: this hello was already forgotten")
        self._bind(link)
        link.session_id = pending.session_id
        link.handshake = None
        link.last_received = now
        link.move(LinkTrigger.CONFIRMED)
        session = self._create_session(pending, link, now)
        session.active = link
        session.rtt.update(now - link.answered_at)
        session.on_plaintext(link, plaintext, now)

    def _hatch(self, request: AttachRequest, link: Link, now: float) -> Session | None:
        """An authentic re-attach of a session whose confirm never arrived completes it."""
        self._purge_embryos(now)
        entry = self._embryos.get(request.session_id)
        if entry is None or not handshake.request_is_authentic(
            request, entry[0].secrets.resume_key
        ):
            return None
        session = self._create_session(entry[0], link, now)
        if not entry[2].closed:
            self._close_link(entry[2])  # its confirm, if it ever comes, is moot
        session.move(SessionTrigger.PATH_LOST)  # established, but with no link yet
        session.disconnected_since = now
        return session

    def _answer_attach(self, link: Link, request: AttachRequest, now: float) -> None:
        session = self.sessions.get(request.session_id) or self._hatch(request, link, now)
        if session is None and request.session_id in self._embryos:
            # An answered hello exists, but this request's proof failed: a signed "unknown"
            # here would let an on-path attacker make the real client give the session up.
            self._reject(link, RejectCode.BAD_PROOF)
            return
        if session is None or session.finished:
            if request.session_id in self.parked:
                self._reject(link, RejectCode.SUSPENDED, request)
                self._emit(ParkedSessionWanted(session_id=request.session_id, request=request))
            else:
                self._reject(link, RejectCode.UNKNOWN_SESSION, request)
            return
        if request.attach_version <= max(session.attach_version, session.offered_version):
            self._reject(link, RejectCode.STALE_VERSION, request)
            return
        if not handshake.request_is_authentic(request, session.resume_key):
            self._reject(link, RejectCode.BAD_PROOF)
            return
        session.offered_version = request.attach_version
        # Verified: only now may this request touch the session.
        self._bind(link)
        accept, keys = handshake.answer_attach(
            request, resume_key=session.resume_key, resume=session.resume_point(), rng=self._rng
        )
        link.session_id = session.id
        link.attach_version = request.attach_version
        link.install(keys, client=False, now=now)
        self._queue(link, RecordType.ATTACH_ACCEPT, accept.encode())
        link.answered_at = now
        link.last_received = now
        link.move(LinkTrigger.ANSWER)
        if session.pending is not None:
            self._close_link(session.pending)
        session.pending = link
        link.replayed = session.apply_resume_point(request.resume)
        session.move(SessionTrigger.ATTACH_START)

    def _link_lost(self, link: Link, now: float, reason: str) -> None:
        self._bind(link)
        session = self._session_of(link)
        if session is not None:
            session.link_gone(link, now, reason)

    def _reap(self, session: Session) -> None:
        if session.finished and self.sessions.get(session.id) is session:
            del self.sessions[session.id]
            self._unschedule(session)

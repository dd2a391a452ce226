"""One session's protocol state: streams, attachments, liveness and timers.

A session outlives its links. It holds the resume key, the current attach
version, every stream's replay buffer and receive position, and at most two
links: the *active* one and a *pending* one (client: a re-attach awaiting the
server's accept; server: an accepted re-attach awaiting the client's confirm).
The endpoint (``endpoint.py``) owns links and handshakes and calls in here.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from continuations.errors import (
    FrameError,
    ProtocolError,
    RemoteError,
    SessionLostError,
    StreamStateError,
)
from continuations.protocol.config import SessionConfig
from continuations.protocol.events import (
    Disconnected,
    Event,
    Reattached,
    RekeyDue,
    SessionClosed,
    SessionLost,
    StreamDataReceived,
    StreamOpened,
)
from continuations.protocol.link import Link
from continuations.protocol.rtt import RttEstimator
from continuations.protocol.snapshot import SessionSnapshot, StreamSnapshot
from continuations.protocol.states import (
    TERMINAL_SESSION_STATES,
    LinkState,
    SessionState,
    SessionTrigger,
    next_session_state,
)
from continuations.protocol.streams import RecvStream, SendStream
from continuations.protocol.wire import (
    STREAM_FRAME_OVERHEAD,
    AckFrame,
    CloseFrame,
    PingFrame,
    PongFrame,
    ResumePoint,
    StreamFrame,
    decode_frames,
    encode_ack,
    encode_close,
    encode_ping,
    encode_pong,
    stream_frame_header,
)

INITIAL_STREAM_LIMIT = 256 * 1024  # both sides assume it until the first ack says more
CLOSE_NORMAL = 0


class Role(enum.Enum):
    CLIENT = "client"
    SERVER = "server"


class PathDeadError(RemoteError):
    """Nothing authenticated arrived on a link within the dead-path bound."""


@dataclass(slots=True)
class Stream:
    sid: int
    send: SendStream
    recv: RecvStream
    ack_sent: int = -1  # the received position our last ack stated

    def complete(self) -> bool:
        """Both halves done and the application has taken every byte (until it has, the
        bytes must stay in a snapshot should the session be suspended)."""
        recv = self.recv
        return self.send.done() and recv.final is not None and recv.consumed >= recv.final


class Session:
    def __init__(
        self,
        *,
        role: Role,
        config: SessionConfig,
        emit: Callable[[Event], None],
        close_link: Callable[[Link], None],
        touched: Callable[[Session], None],
        now: float,
    ) -> None:
        self.role = role
        self.config = config
        self._emit = emit
        self._close_link = close_link
        self._touched = touched
        self.id = b""
        self.resume_key = b""
        self.host_key = b""
        self.state = SessionState.CONNECTING
        self.attach_version = 0  # the version of the current attachment
        # Server: the highest version it has answered, confirmed or not. A request must
        # exceed it, so a captured request that was never confirmed works only once.
        self.offered_version = 0
        self.active: Link | None = None
        self.pending: Link | None = None
        self.streams: dict[int, Stream] = {}
        self.own_opened = 0  # streams this side has opened
        self.peer_opened = 0  # streams of the peer's that this side has seen
        self.rtt = RttEstimator()
        self.disconnected_since: float | None = None
        self._buffered = 0
        self._closing: tuple[int, str] | None = None
        self._rr = 0
        self._owed_acks: list[bytes] = []  # final acks of streams already forgotten
        # Acknowledged-delivery rate (bytes/s), sampled while data is outstanding.
        self.delivery_rate: float | None = None
        self._rate_mark: tuple[float, int] | None = None
        self._acked_total = 0

    # --- state ----------------------------------------------------------------------------

    def move(self, trigger: SessionTrigger) -> None:
        self.state = next_session_state(self.state, trigger)

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL_SESSION_STATES

    def _parity(self, initiator: Role) -> int:
        return 0 if initiator is Role.CLIENT else 1

    def _is_own(self, stream_id: int) -> bool:
        return stream_id % 2 == self._parity(self.role)

    # --- application API ------------------------------------------------------------------

    def open_stream(self) -> int:
        self._check_usable()
        if len(self.streams) >= self.config.max_streams:
            raise StreamStateError(f"too many open streams (limit {self.config.max_streams})")
        stream_id = 2 * self.own_opened + self._parity(self.role)
        self.own_opened += 1
        self.streams[stream_id] = self._new_stream(stream_id)
        self._touched(self)
        return stream_id

    def send(self, stream_id: int, data: bytes, end_stream: bool = False) -> int:
        """Queue what fits in the replay buffer; return how many bytes were taken.

        The end of stream is recorded only when all of ``data`` was taken.
        """
        self._check_usable()
        stream = self._stream_for_api(stream_id)
        room = max(0, self.config.replay_buffer - self._buffered)
        taken = data[:room] if len(data) > room else data
        fin = end_stream and len(taken) == len(data)
        if taken or fin:
            stream.send.write(bytes(taken), fin)
            self._buffered += len(taken)
            self._touched(self)
        return len(taken)

    @property
    def send_capacity(self) -> int:
        return max(0, self.config.replay_buffer - self._buffered)

    @property
    def buffered(self) -> int:
        """Bytes written and not yet acknowledged by the peer, over all streams."""
        return self._buffered

    def stream_consumed(self, stream_id: int, n: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is not None:
            stream.recv.consume(n)
            if stream.complete():
                self._forget(stream)
                self._touched(self)  # a final ack may be owed
            elif stream.recv.wants_limit_update():
                self._touched(self)

    def unacknowledged(self, stream_id: int) -> int:
        stream = self.streams.get(stream_id)
        return 0 if stream is None else stream.send.end - stream.send.acked

    def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        if self.finished:
            return
        link = self.send_link
        if link is not None:
            self._closing = (code, reason)
            self._touched(self)
        else:
            self._finish_close(code, reason, by_peer=False)

    def _check_usable(self) -> None:
        if self.finished or self._closing is not None:
            raise StreamStateError(f"session is {self.state.value}")

    def _stream_for_api(self, stream_id: int) -> Stream:
        stream = self.streams.get(stream_id)
        if stream is None:
            raise StreamStateError(f"no open stream {stream_id}")
        return stream

    def _new_stream(self, sid: int) -> Stream:
        return Stream(
            sid,
            SendStream(INITIAL_STREAM_LIMIT),
            RecvStream(self.config.stream_window, INITIAL_STREAM_LIMIT),
        )

    # --- suspend and resume ---------------------------------------------------------------

    def snapshot(self, attempted_version: int, unread: dict[int, bytes] | None = None) -> (
        SessionSnapshot
    ):
        """Everything needed to continue this session in another process."""
        unread = unread or {}
        return SessionSnapshot(
            role=self.role.value,
            session_id=self.id,
            resume_key=self.resume_key,
            host_key=self.host_key,
            attach_version=self.attach_version,
            attempted_version=max(attempted_version, self.attach_version),
            own_opened=self.own_opened,
            peer_opened=self.peer_opened,
            streams=tuple(
                StreamSnapshot(
                    stream_id=sid,
                    acked=s.send.acked,
                    base=s.send.base,
                    unacked=s.send.unacked_bytes(),
                    fin=s.send.fin,
                    limit=s.send.limit,
                    received=s.recv.received,
                    final=s.recv.final,
                    consumed=s.recv.consumed,
                    window=s.recv.window,
                    limit_sent=s.recv.limit_sent,
                    unread=unread.get(sid, b""),
                )
                for sid, s in self.streams.items()
            ),
        )

    def restore(self, snap: SessionSnapshot, now: float) -> None:
        """Take over a snapshot's state; the session starts disconnected, ready to re-attach."""
        if snap.role != self.role.value:
            raise SessionLostError(f"a {snap.role} snapshot cannot resume as {self.role.value}")
        self.id = snap.session_id
        self.resume_key = snap.resume_key
        self.host_key = snap.host_key
        self.attach_version = self.offered_version = snap.attach_version
        self.own_opened = snap.own_opened
        self.peer_opened = snap.peer_opened
        self.streams = {}
        for st in snap.streams:
            try:
                send = SendStream.restore(
                    acked=st.acked, base=st.base, unacked=st.unacked, fin=st.fin, limit=st.limit
                )
            except FrameError as exc:
                raise SessionLostError(f"stream {st.stream_id}: {exc}") from exc
            recv = RecvStream(st.window, st.limit_sent)
            recv.received, recv.final, recv.consumed = st.received, st.final, st.consumed
            self.streams[st.stream_id] = Stream(st.stream_id, send, recv)
        self._buffered = sum(len(st.unacked) for st in snap.streams)
        self.move(SessionTrigger.ESTABLISH)
        self.move(SessionTrigger.PATH_LOST)
        self.disconnected_since = now

    def detach_all(self) -> None:
        """Drop every link without ending the session (it is being suspended)."""
        self._release_links()
        if self.state is not SessionState.DISCONNECTED and not self.finished:
            self.move(SessionTrigger.PATH_LOST)

    # --- attachments ----------------------------------------------------------------------

    @property
    def send_link(self) -> Link | None:
        """Where data goes: a server sends on an accepted re-attach before it is confirmed
        (only the real client can read it), so data flows one round trip after the request."""
        if self.role is Role.SERVER and self.pending is not None:
            return self.pending
        active = self.active
        return active if active is not None and active.state is LinkState.OPEN else None

    def resume_point(self) -> ResumePoint:
        return ResumePoint(
            peer_streams_seen=self.peer_opened,
            received=tuple((sid, s.recv.received) for sid, s in self.streams.items()),
        )

    def apply_resume_point(self, point: ResumePoint) -> int:
        """Rewind every stream to what the peer says it has; return bytes to send again."""
        stated = dict(point.received)
        replay = 0
        for sid in list(self.streams):
            stream = self.streams[sid]
            send = stream.send
            if sid in stated:
                target = stated[sid]
            elif self._is_own(sid) and sid // 2 >= point.peer_streams_seen:
                target = 0  # the peer never saw this stream
            else:
                target = send.end  # the peer finished this stream and forgot it
            # A statement can be older than an ack that overtook it (make-before-break, a
            # replayed request): both are true lower bounds of what the peer holds.
            target = max(target, send.acked)
            if target > send.end:
                raise FrameError(f"peer states position {target} past the end of stream {sid}")
            replay += max(0, send.next - target)
            before = send.buffered
            send.rewind(target)
            self._buffered -= before - send.buffered
            stream.ack_sent = -1
            if stream.complete():
                self._forget(stream)
        return replay

    def rewind_to_acked(self) -> None:
        """Sending moves to another link with no fresh statement: resend from the last ack."""
        for stream in self.streams.values():
            stream.send.next = stream.send.acked
            stream.ack_sent = -1

    def attachment_done(self, link: Link, now: float, replayed: int) -> None:
        """``link`` becomes the current attachment; the old one is closed."""
        old = self.active
        self.active = link
        if self.pending is link:
            self.pending = None
        for stream in self.streams.values():
            stream.ack_sent = -1  # an ack that went out on the old link may have died with it
        if old is not None and old is not link:
            self._close_link(old)
        offline = 0.0 if self.disconnected_since is None else now - self.disconnected_since
        self.disconnected_since = None
        self.attach_version = link.attach_version
        self.move(SessionTrigger.ATTACH_DONE)
        self._emit(
            Reattached(
                session_id=self.id,
                link=link.id,
                attach_version=link.attach_version,
                rtt=self.rtt.latest,
                replayed=replayed,
                offline=offline,
            )
        )

    def link_gone(self, link: Link, now: float, reason: str) -> None:
        """A link of ours closed or failed; decide what the session does without it."""
        if self.finished:
            return
        if link is self.pending:
            self.pending = None
            if self.active is not None and not self.active.closed:
                if self.role is Role.SERVER:
                    self.rewind_to_acked()  # data went to the pending link; resend it here
                self.move(SessionTrigger.ATTACH_ABANDON)
                return
            self._path_lost(now, reason)
        elif link is self.active:
            self.active = None
            if self.pending is None:
                self._path_lost(now, reason)

    def _path_lost(self, now: float, reason: str) -> None:
        if self.state is SessionState.CONNECTING:
            return  # the endpoint decides what a failed first handshake means
        if self.state is not SessionState.DISCONNECTED:
            self.move(SessionTrigger.PATH_LOST)
        if self.disconnected_since is None:
            self.disconnected_since = now
            self._emit(Disconnected(session_id=self.id, reason=reason))

    def lose(self, reason: str, trigger: SessionTrigger = SessionTrigger.FAIL) -> None:
        if self.finished:
            return
        self.move(trigger)
        self._release_links()
        self._emit(SessionLost(session_id=self.id, reason=reason))

    def _finish_close(self, code: int, reason: str, *, by_peer: bool) -> None:
        self.move(SessionTrigger.CLOSE)
        self._release_links()
        self._emit(SessionClosed(session_id=self.id, code=code, reason=reason, by_peer=by_peer))

    def _release_links(self) -> None:
        for link in (self.active, self.pending):
            if link is not None:
                self._close_link(link)
        self.active = self.pending = None

    # --- input ----------------------------------------------------------------------------

    def on_record(self, link: Link, header: bytes, body: bytes, now: float) -> None:
        """One sealed record arrived on one of this session's links."""
        assert link.opener is not None
        plaintext = link.opener.open(header, body)
        link.last_received = now
        link.bytes_protected += len(body)
        self.on_plaintext(link, plaintext, now)

    def on_plaintext(self, link: Link, plaintext: bytes, now: float) -> None:
        """The frames of one record that has already been opened (authenticated)."""
        for frame in decode_frames(plaintext):
            if isinstance(frame, StreamFrame):
                self._on_stream_frame(frame)
            elif isinstance(frame, AckFrame):
                self._on_ack_frame(frame, now)
            elif isinstance(frame, PingFrame):
                link.pong_due.append(frame.ping_id)
                link.last_peer_ping = now
            elif isinstance(frame, PongFrame):
                sent_at = link.pings.pop(frame.ping_id, None)
                if sent_at is not None:
                    self.rtt.update(now - sent_at)
            elif isinstance(frame, CloseFrame):
                self._finish_close(frame.code, frame.reason, by_peer=True)
                return

    def _on_stream_frame(self, frame: StreamFrame) -> None:
        sid = frame.stream_id
        stream = self.streams.get(sid)
        if stream is None:
            if self._is_own(sid):
                if sid // 2 >= self.own_opened:
                    raise ProtocolError(f"peer sent on stream {sid}, which we never opened")
                return  # a stream we finished; this is a late copy
            index = sid // 2
            if index < self.peer_opened:
                return  # the peer's stream that we finished; a late copy
            if len(self.streams) + index - self.peer_opened + 1 > self.config.max_streams:
                raise ProtocolError(f"peer opened more than {self.config.max_streams} streams")
            # Opening stream n opens every lower one of the peer's too, so a resume point's
            # "streams seen" count is exact even when the first frames arrive out of turn.
            for i in range(self.peer_opened, index + 1):
                new_id = 2 * i + (1 - self._parity(self.role))
                self.streams[new_id] = self._new_stream(new_id)
                self._emit(StreamOpened(session_id=self.id, stream_id=new_id))
            self.peer_opened = index + 1
            stream = self.streams[sid]
        fresh, ended = stream.recv.on_frame(frame.offset, frame.data, frame.fin)
        if fresh or ended:
            self._emit(
                StreamDataReceived(session_id=self.id, stream_id=sid, data=fresh, end_stream=ended)
            )
        if stream.complete():
            self._forget(stream)

    def _on_ack_frame(self, frame: AckFrame, now: float) -> None:
        sid = frame.stream_id
        stream = self.streams.get(sid)
        if stream is None:
            if self._is_own(sid) and sid // 2 >= self.own_opened:
                raise ProtocolError(f"peer acknowledged stream {sid}, which we never opened")
            return
        before = stream.send.buffered
        stream.send.on_ack(frame.received, frame.limit)
        freed = before - stream.send.buffered
        self._buffered -= freed
        self._sample_rate(freed, now)
        if stream.complete():
            self._forget(stream)

    def _sample_rate(self, freed: int, now: float) -> None:
        """EWMA of bytes acknowledged per second over windows of at least one RTT."""
        self._acked_total += freed
        mark = self._rate_mark
        if mark is None:
            self._rate_mark = (now, self._acked_total)
        elif now - mark[0] >= max(0.05, self.rtt.srtt or 0.0):
            moved = self._acked_total - mark[1]
            if moved >= 16384:
                rate = moved / (now - mark[0])
                old = self.delivery_rate
                self.delivery_rate = rate if old is None else 0.75 * old + 0.25 * rate
            self._rate_mark = (now, self._acked_total)
        if self._buffered == 0:
            self._rate_mark = None  # idle: the next window starts with the next data

    def _forget(self, stream: Stream) -> None:
        """Drop a finished stream, keeping the last ack the peer still needs from us."""
        recv = stream.recv
        if recv.received != stream.ack_sent:
            self._owed_acks.append(encode_ack(stream.sid, recv.received, recv.limit_sent))
        del self.streams[stream.sid]

    # --- output ---------------------------------------------------------------------------

    def flush(self, link: Link, now: float, budget: int) -> int:
        """Seal what is due on ``link`` into its output; return stream bytes written."""
        sealer = link.sealer
        if sealer is None or link.closed:
            return 0
        parts: list[bytes | memoryview] = []
        if link.needs_confirm or now >= self._keepalive_due(link):
            link.needs_confirm = False
            parts.append(encode_ping(link.next_ping(now)))
        parts.extend(encode_pong(ping_id) for ping_id in link.pong_due)
        link.pong_due.clear()
        sending = link is self.send_link
        if sending or link is self.active:
            parts.extend(self._owed_acks)
            self._owed_acks.clear()
            for stream in self.streams.values():
                recv = stream.recv
                if recv.received != stream.ack_sent or recv.wants_limit_update():
                    parts.append(encode_ack(stream.sid, recv.received, recv.new_limit()))
                    stream.ack_sent = recv.received
        records: list[bytearray] = []
        written = 0
        closing = False
        if sending:
            written = self._fill_stream_data(link, parts, records, budget)
            if self._closing is not None and not any(
                s.send.has_pending() for s in self.streams.values()
            ):
                parts.append(encode_close(*self._closing))
                closing = True
        if parts:
            records.append(sealer.seal(parts))
        if records:
            link.out.extend(records)
            link.last_sent = now
            link.bytes_protected += sum(map(len, records))
            self._check_key_lifetime(link, now)
        if closing and self._closing is not None:
            self._finish_close(*self._closing, by_peer=False)
        return written

    def _fill_stream_data(
        self, link: Link, parts: list[bytes | memoryview], records: list[bytearray], budget: int
    ) -> int:
        """Round-robin stream data into records of at most max_record_plaintext."""
        assert link.sealer is not None
        max_plain = self.config.max_record_plaintext
        ready = [s for s in self.streams.values() if s.send.has_pending()]
        if not ready:
            return 0
        start = self._rr % len(ready)
        self._rr += 1
        size = sum(map(len, parts))
        written = 0
        for stream in ready[start:] + ready[:start]:
            send = stream.send
            while link.writable and written < budget and send.has_pending():
                room = max_plain - size - STREAM_FRAME_OVERHEAD
                if room < 512:
                    records.append(link.sealer.seal(parts))
                    parts.clear()
                    size = 0
                    continue
                offset, data, fin = send.take(min(room, budget - written))
                parts.append(stream_frame_header(stream.sid, offset, len(data), fin))
                parts.append(data)
                size += STREAM_FRAME_OVERHEAD + len(data)
                written += len(data)
        return written

    def _check_key_lifetime(self, link: Link, now: float) -> None:
        """Only the client can re-attach, so only the client asks for new keys."""
        if (
            self.role is Role.CLIENT
            and link is self.active
            and not link.rekey_asked
            and self.pending is None
            and (
                link.bytes_protected >= self.config.rekey_after_bytes
                or now - link.keyed_at >= self.config.rekey_after_seconds
            )
        ):
            link.rekey_asked = True
            self._emit(RekeyDue(session_id=self.id, link=link.id))

    # --- time -----------------------------------------------------------------------------

    def _keepalive_due(self, link: Link) -> float:
        """When ``link`` needs a PING from us to keep traffic flowing both ways.

        The client keeps an idle link alive; the server only answers. While the
        client's PINGs arrive, the server's PONGs are traffic enough for the client
        and the PINGs for the server, so the server sends none of its own: half the
        records an idle session costs (a server holds many idle sessions). Should the
        client's PINGs stop, the server falls back to its own after 1.5 intervals, so
        its dead-path detection never depends on the peer's good behaviour."""
        due = link.last_sent + self.config.keepalive_interval
        if self.role is Role.SERVER:
            due = max(due, link.last_peer_ping + 1.5 * self.config.keepalive_interval)
        return due

    def _links(self) -> list[Link]:
        return [x for x in (self.active, self.pending) if x is not None and not x.closed]

    def next_deadline(self) -> float | None:
        if self.finished:
            return None
        deadlines: list[float] = []
        dead_after = self.config.dead_after(self.rtt.rto)
        for link in self._links():
            if link.sealer is not None:
                deadlines.append(self._keepalive_due(link))
                deadlines.append(link.last_received + dead_after)
                if self.role is Role.CLIENT and not link.rekey_asked:
                    deadlines.append(link.keyed_at + self.config.rekey_after_seconds)
            if link is self.pending:
                deadlines.append(link.created + self.attach_timeout())

        if self.disconnected_since is not None:
            deadlines.append(self.disconnected_since + self.config.linger)
        return min(deadlines) if deadlines else None

    def attach_timeout(self) -> float:
        """How long a pending attachment may take. The first handshake has no RTT
        estimate yet and gets the generous handshake timeout."""
        if self.state is SessionState.CONNECTING:
            return self.config.handshake_timeout
        return self.config.dead_after(self.rtt.rto)

    def handle_timer(self, now: float) -> list[tuple[Link, RemoteError]]:
        """Fire what is due; return links that must fail (the endpoint ends them)."""
        failed: list[tuple[Link, RemoteError]] = []
        if self.finished:
            return failed
        if (
            self.disconnected_since is not None
            and now >= self.disconnected_since + self.config.linger
        ):
            self.lose(
                f"disconnected for longer than {self.config.linger:g} s", SessionTrigger.EXPIRE
            )
            return failed
        dead_after = self.config.dead_after(self.rtt.rto)
        for link in self._links():
            if link.sealer is not None:
                self._check_key_lifetime(link, now)
            if link is self.pending and now >= link.created + self.attach_timeout():
                failed.append((link, PathDeadError("re-attach not completed in time")))
            elif link.sealer is not None and now >= link.last_received + dead_after:
                failed.append(
                    (link, PathDeadError(f"no authenticated data for {dead_after:.2f} s"))
                )
        return failed

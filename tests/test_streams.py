"""SendStream (replay buffer) and RecvStream (in-order receiver) units."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from continuations.errors import FrameError, SessionLostError, StreamStateError
from continuations.protocol.streams import RecvStream, SendStream

# --- SendStream -------------------------------------------------------------------------------


def test_write_take_in_chunks() -> None:
    s = SendStream(initial_limit=1000)
    s.write(b"abcdefghij", fin=False)
    assert (s.written, s.end, s.buffered) == (10, 10, 10)
    assert s.has_pending()
    assert s.take(4) == (0, b"abcd", False)
    assert s.take(4) == (4, b"efgh", False)
    assert s.take(4) == (8, b"ij", False)
    assert s.next == 10
    assert not s.has_pending()
    assert s.buffered == 10  # nothing acknowledged yet: all of it kept for replay


def test_fin_occupies_one_position() -> None:
    s = SendStream(initial_limit=1000)
    s.write(b"abc", fin=True)
    assert (s.written, s.end) == (3, 4)
    assert s.take(100) == (0, b"abc", True)
    assert s.next == 4
    assert not s.has_pending()
    s.on_ack(3, 1000)  # the data but not the FIN
    assert not s.done()
    assert s.buffered == 0
    s.on_ack(4, 1000)
    assert s.done()


def test_empty_fin_alone_is_sent() -> None:
    s = SendStream(initial_limit=1000)
    s.write(b"xy", fin=False)
    assert s.take(10) == (0, b"xy", False)
    s.write(b"", fin=True)
    assert s.has_pending()
    assert s.take(10) == (2, b"", True)
    assert s.next == 3 and not s.has_pending()


def test_fin_after_partial_take_not_set_early() -> None:
    s = SendStream(initial_limit=1000)
    s.write(b"abcdef", fin=True)
    assert s.take(3) == (0, b"abc", False)
    assert s.take(3) == (3, b"def", True)


def test_write_after_fin_refused() -> None:
    s = SendStream(initial_limit=1000)
    s.write(b"a", fin=True)
    with pytest.raises(StreamStateError):
        s.write(b"b", fin=False)
    with pytest.raises(StreamStateError):
        s.write(b"", fin=True)


def test_flow_control_limit_respected() -> None:
    s = SendStream(initial_limit=5)
    s.write(b"0123456789", fin=True)
    assert s.take(100) == (0, b"01234", False)
    assert not s.has_pending()  # blocked at the limit, FIN included
    s.on_ack(2, 5)  # a lower limit never shrinks it, and nothing new opens
    assert not s.has_pending()
    s.on_ack(5, 8)
    assert s.take(100) == (5, b"567", False)
    assert not s.has_pending()
    s.on_ack(8, 3)  # limits only grow
    assert s.limit == 8
    s.on_ack(8, 10)
    assert s.take(100) == (8, b"89", True)  # the FIN sits after the data, not counted
    assert s.end == 11 and s.next == 11


def test_ack_frees_buffer_and_never_goes_back() -> None:
    s = SendStream(initial_limit=100)
    s.write(b"abcdefghij", fin=False)
    s.take(100)
    s.on_ack(4, 100)
    assert (s.acked, s.buffered) == (4, 6)
    s.on_ack(2, 100)  # an old ack: ignored
    assert (s.acked, s.buffered) == (4, 6)
    s.on_ack(10, 100)
    assert (s.acked, s.buffered) == (10, 0)


def test_ack_beyond_end_is_frame_error() -> None:
    s = SendStream(initial_limit=100)
    s.write(b"abc", fin=False)
    with pytest.raises(FrameError):
        s.on_ack(4, 100)
    s.write(b"", fin=True)
    s.on_ack(4, 100)  # now the FIN position exists
    with pytest.raises(FrameError):
        s.on_ack(5, 100)


def test_ack_ahead_of_next_moves_next() -> None:
    # An ack can cover data sent on an earlier link that this link has not re-sent yet.
    s = SendStream(initial_limit=100)
    s.write(b"abcdef", fin=False)
    s.take(2)
    s.on_ack(4, 100)
    assert s.next == 4
    assert s.take(100) == (4, b"ef", False)


def test_rewind_resends_from_stated_position() -> None:
    s = SendStream(initial_limit=100)
    s.write(b"abcdefghij", fin=True)
    s.take(100)
    s.on_ack(3, 100)
    s.rewind(6)
    assert (s.acked, s.next, s.buffered) == (6, 6, 4)
    assert s.take(100) == (6, b"ghij", True)
    s.rewind(6)  # the same statement again: send the same again
    assert s.take(2) == (6, b"gh", False)


def test_rewind_to_acked_and_to_end() -> None:
    s = SendStream(initial_limit=100)
    s.write(b"abc", fin=True)
    s.take(100)
    s.rewind(0)
    assert s.take(100) == (0, b"abc", True)
    s.rewind(4)  # the peer has all of it, FIN included
    assert s.done() and not s.has_pending()


def test_rewind_below_acked_raises() -> None:
    s = SendStream(initial_limit=100)
    s.write(b"abcdef", fin=False)
    s.take(100)
    s.on_ack(4, 100)
    with pytest.raises(FrameError):
        s.rewind(3)
    assert (s.acked, s.buffered) == (4, 2)  # unchanged


def test_rewind_past_end_raises() -> None:
    s = SendStream(initial_limit=100)
    s.write(b"abc", fin=False)
    with pytest.raises(FrameError):
        s.rewind(4)


# --- RecvStream -------------------------------------------------------------------------------


def test_recv_in_order() -> None:
    r = RecvStream(window=1000, initial_limit=1000)
    assert r.on_frame(0, b"abc", False) == (b"abc", False)
    assert r.on_frame(3, b"de", True) == (b"de", True)
    assert (r.received, r.final) == (6, 5)  # the FIN takes position 5


def test_recv_gap_means_this_side_lost_state() -> None:
    """Senders resume from a position the receiver stated or acked; data beyond what the
    receiver holds can only mean it resumed from older state: a clear loss, not noise."""
    r = RecvStream(window=1000, initial_limit=1000)
    r.on_frame(0, b"abc", False)
    with pytest.raises(SessionLostError, match="older state"):
        r.on_frame(4, b"x", False)
    with pytest.raises(SessionLostError):
        r.on_frame(10, b"", True)
    assert r.received == 3


def test_recv_duplicates_and_overlaps_trimmed() -> None:
    r = RecvStream(window=1000, initial_limit=1000)
    r.on_frame(0, b"abcd", False)
    assert r.on_frame(0, b"abcd", False) == (b"", False)  # duplicate
    assert r.on_frame(1, b"bc", False) == (b"", False)  # inside
    assert r.on_frame(2, b"cdef", False) == (b"ef", False)  # overlap
    assert r.on_frame(6, b"", False) == (b"", False)  # empty at the edge
    assert r.received == 6


def test_recv_duplicates_after_fin_ignored() -> None:
    r = RecvStream(window=1000, initial_limit=1000)
    r.on_frame(0, b"abc", True)
    assert r.on_frame(0, b"abc", True) == (b"", False)
    assert r.on_frame(1, b"b", False) == (b"", False)
    assert r.received == 4


def test_recv_data_past_fin_raises() -> None:
    r = RecvStream(window=1000, initial_limit=1000)
    r.on_frame(0, b"abc", True)
    with pytest.raises(FrameError):
        r.on_frame(3, b"d", False)
    with pytest.raises(FrameError):
        r.on_frame(0, b"ab", True)  # a second, different end


def test_recv_fin_below_received_data_raises() -> None:
    """A FIN that contradicts data already received must be refused, not move backwards."""
    r = RecvStream(window=1000, initial_limit=1000)
    r.on_frame(0, b"abcdefghij", False)
    with pytest.raises(FrameError):
        r.on_frame(0, b"abcde", True)
    assert r.received == 10 and r.final is None


def test_recv_beyond_flow_limit_raises() -> None:
    r = RecvStream(window=1000, initial_limit=10)
    r.on_frame(0, b"0123456789", False)  # up to the limit: fine
    with pytest.raises(FrameError):
        r.on_frame(10, b"x", False)
    r.on_frame(10, b"", True)  # the FIN position is not a data position


def test_recv_limit_updates_follow_consumption() -> None:
    r = RecvStream(window=100, initial_limit=100)
    r.on_frame(0, b"x" * 20, False)
    r.consume(20)
    assert not r.wants_limit_update()  # 20 < window / 4
    r.on_frame(20, b"x" * 10, False)
    r.consume(10)
    assert r.wants_limit_update()
    assert r.new_limit() == 130
    assert not r.wants_limit_update()
    r.on_frame(30, b"x" * 100, False)  # up to the new limit
    with pytest.raises(FrameError):
        r.on_frame(130, b"x", False)


@settings(max_examples=150, deadline=None)
@given(
    st.binary(min_size=0, max_size=200),
    st.booleans(),
    st.lists(st.tuples(st.integers(0, 210), st.integers(0, 60), st.booleans()), max_size=40),
)
def test_recv_delivers_exact_prefix_whatever_arrives(
    payload: bytes, fin: bool, frames: list[tuple[int, int, bool]]
) -> None:
    """Feed arbitrary (possibly duplicate, overlapping, gapped) slices of one payload."""
    r = RecvStream(window=1 << 20, initial_limit=1 << 20)
    got = bytearray()
    ended = False
    for start, length, with_fin in frames:
        start = min(start, len(payload))
        end = min(len(payload), start + length)
        frame_fin = fin and with_fin and end == len(payload)
        try:
            data, now_ended = r.on_frame(start, payload[start:end], frame_fin)
        except SessionLostError:
            assert start > min(r.received, len(payload))  # only a gap means lost state
            continue
        got += data
        assert not (ended and now_ended)
        ended |= now_ended
        assert bytes(got) == payload[: len(got)]
        assert r.received == len(got) + (1 if ended else 0)
    assert ended == (r.final is not None)


@settings(max_examples=150, deadline=None)
@given(
    st.binary(min_size=1, max_size=300),
    st.lists(st.tuples(st.integers(1, 64), st.booleans(), st.integers(0, 100)), max_size=30),
)
def test_send_recv_pair_with_loss_and_rewind(
    payload: bytes, steps: list[tuple[int, bool, int]]
) -> None:
    """A sender and a receiver over a lossy, rewinding path end with the payload intact."""
    s = SendStream(initial_limit=1 << 20)
    r = RecvStream(window=1 << 20, initial_limit=1 << 20)
    s.write(payload, fin=True)
    got = bytearray()
    for size, lose_link, _ in steps:
        if lose_link:
            s.rewind(r.received)  # a new attachment: the receiver states its position
            continue
        if not s.has_pending():
            continue
        offset, data, fin = s.take(size)
        out, _ = r.on_frame(offset, data, fin)
        got += out
        s.on_ack(r.received, r.new_limit())
        assert s.buffered == s.written - min(s.acked, s.written)
    s.rewind(r.received)
    while s.has_pending():
        offset, data, fin = s.take(17)
        out, _ = r.on_frame(offset, data, fin)
        got += out
        s.on_ack(r.received, r.new_limit())
    assert bytes(got) == payload
    assert s.done() and s.buffered == 0 and r.final == len(payload)

"""Wire format: records, handshake messages and frames (continuations.protocol.wire)."""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from continuations.errors import FrameError, ProtocolError, VersionError
from continuations.protocol.states import RecordType
from continuations.protocol.wire import (
    FLAG_FIN,
    KEY_LEN,
    MAGIC,
    MAX_OFFSET,
    MAX_REASON,
    MAX_RECORD_BODY,
    MAX_STREAMS_LISTED,
    NONCE_LEN,
    PROOF_LEN,
    PROTOCOL_VERSION,
    RECORD_HEADER,
    SESSION_ID_LEN,
    SIGNATURE_LEN,
    AckFrame,
    AttachAccept,
    AttachRequest,
    ClientHello,
    CloseFrame,
    FrameType,
    PingFrame,
    PongFrame,
    RecordDecoder,
    Reject,
    ResumePoint,
    ServerHello,
    StreamFrame,
    decode_frames,
    encode_ack,
    encode_close,
    encode_ping,
    encode_pong,
    encode_record,
    record_header,
    stream_frame_header,
)

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def b(n: int, fill: int) -> bytes:
    return bytes([fill]) * n


def client_hello() -> ClientHello:
    return ClientHello(client_random=b(NONCE_LEN, 1), client_public=b(KEY_LEN, 2))


def server_hello() -> ServerHello:
    return ServerHello(
        session_id=b(SESSION_ID_LEN, 3),
        server_random=b(NONCE_LEN, 4),
        server_public=b(KEY_LEN, 5),
        host_key=b(KEY_LEN, 6),
        signature=b(SIGNATURE_LEN, 7),
    )


RESUME = ResumePoint(peer_streams_seen=3, received=((0, 10), (1, 0), (5, MAX_OFFSET)))


def attach_request(resume: ResumePoint = RESUME, version: int = 7) -> AttachRequest:
    return AttachRequest(
        session_id=b(SESSION_ID_LEN, 8),
        attach_version=version,
        client_nonce=b(NONCE_LEN, 9),
        client_public=b(KEY_LEN, 10),
        resume=resume,
        proof=b(PROOF_LEN, 11),
    )


def attach_accept(resume: ResumePoint = RESUME) -> AttachAccept:
    return AttachAccept(
        server_nonce=b(NONCE_LEN, 12), server_public=b(KEY_LEN, 13), resume=resume,
        proof=b(PROOF_LEN, 14),
    )


MESSAGES: list[tuple[str, object, Callable[[bytes], object]]] = [
    ("client_hello", client_hello(), ClientHello.decode),
    ("server_hello", server_hello(), ServerHello.decode),
    ("attach_request", attach_request(), AttachRequest.decode),
    ("attach_request_empty", attach_request(ResumePoint(peer_streams_seen=0, received=())),
     AttachRequest.decode),
    ("attach_accept", attach_accept(), AttachAccept.decode),
    ("reject", Reject(code=2, reason="stale attach version"), Reject.decode),
    ("reject_empty", Reject(code=255, reason=""), Reject.decode),
]
DECODERS: list[Callable[[bytes], object]] = [
    ClientHello.decode, ServerHello.decode, AttachRequest.decode, AttachAccept.decode,
    Reject.decode, lambda body: list(decode_frames(body)),
]


# --- handshake messages ---------------------------------------------------------------------


@pytest.mark.parametrize(("name", "msg", "decode"), MESSAGES, ids=[m[0] for m in MESSAGES])
def test_message_round_trip(name: str, msg: object, decode: Callable[[bytes], object]) -> None:
    encoded = msg.encode()  # type: ignore[attr-defined]
    assert decode(encoded) == msg
    assert decode(encoded).encode() == encoded  # type: ignore[attr-defined]


def test_message_sizes_are_exact() -> None:
    assert len(client_hello().encode()) == 4 + 1 + NONCE_LEN + KEY_LEN
    assert len(server_hello().encode()) == SESSION_ID_LEN + NONCE_LEN + 2 * KEY_LEN + SIGNATURE_LEN
    req = attach_request()
    assert len(req.encode()) == (
        5 + SESSION_ID_LEN + 8 + NONCE_LEN + KEY_LEN + 4 + 2 + 12 * 3 + PROOF_LEN
    )
    assert req.encode().startswith(MAGIC + bytes([PROTOCOL_VERSION]))
    assert req.encode() == req.proved_part() + req.proof


def test_reject_reason_truncated_to_limit() -> None:
    long = Reject(code=1, reason="x" * (MAX_REASON + 50))
    decoded = Reject.decode(long.encode())
    assert decoded.reason == "x" * MAX_REASON
    # Truncation inside a multi-byte character must not make decoding raise.
    cut = Reject(code=1, reason="é" * MAX_REASON)
    assert Reject.decode(cut.encode()).code == 1


def test_reject_reason_over_limit_is_frame_error() -> None:
    body = bytes([1]) + struct.pack("!H", MAX_REASON + 1) + b"x" * (MAX_REASON + 1)
    with pytest.raises(FrameError):
        Reject.decode(body)


@pytest.mark.parametrize("decode", [ClientHello.decode, AttachRequest.decode])
def test_bad_magic_is_frame_error(decode: Callable[[bytes], object]) -> None:
    good = client_hello().encode() if decode is ClientHello.decode else attach_request().encode()
    with pytest.raises(FrameError) as info:
        decode(b"XNTN" + good[4:])
    assert not isinstance(info.value, VersionError)


@pytest.mark.parametrize("decode", [ClientHello.decode, AttachRequest.decode])
@pytest.mark.parametrize("version", [0, PROTOCOL_VERSION + 1, 255])
def test_unsupported_protocol_version(decode: Callable[[bytes], object], version: int) -> None:
    good = client_hello().encode() if decode is ClientHello.decode else attach_request().encode()
    bad = good[:4] + bytes([version]) + good[5:]
    with pytest.raises(VersionError):
        decode(bad)


@pytest.mark.parametrize(("name", "msg", "decode"), MESSAGES, ids=[m[0] for m in MESSAGES])
def test_every_truncation_is_frame_error(
    name: str, msg: object, decode: Callable[[bytes], object]
) -> None:
    encoded = msg.encode()  # type: ignore[attr-defined]
    for cut in range(len(encoded)):
        with pytest.raises(FrameError):
            decode(encoded[:cut])


@pytest.mark.parametrize(("name", "msg", "decode"), MESSAGES, ids=[m[0] for m in MESSAGES])
def test_trailing_bytes_are_frame_error(
    name: str, msg: object, decode: Callable[[bytes], object]
) -> None:
    encoded = msg.encode()  # type: ignore[attr-defined]
    for extra in (b"\x00", b"garbage"):
        with pytest.raises(FrameError):
            decode(encoded + extra)


def _resume_bytes(seen: int, entries: list[tuple[int, int]], count: int | None = None) -> bytes:
    n = len(entries) if count is None else count
    return struct.pack("!IH", seen, n) + b"".join(struct.pack("!IQ", s, o) for s, o in entries)


@pytest.mark.parametrize(
    "resume",
    [
        _resume_bytes(1, [(0, 1), (0, 2)]),  # a stream listed twice
        _resume_bytes(1, [(0, MAX_OFFSET + 1)]),  # offset out of range
        _resume_bytes(1, [], count=MAX_STREAMS_LISTED + 1),  # count above the limit
    ],
    ids=["duplicate", "offset", "count"],
)
def test_bad_resume_point_is_frame_error(resume: bytes) -> None:
    req = attach_request()
    body = req.proved_part()[: -len(req.resume.encode())] + resume + req.proof
    with pytest.raises(FrameError):
        AttachRequest.decode(body)
    acc = attach_accept()
    body = acc.proved_part()[: -len(acc.resume.encode())] + resume + acc.proof
    with pytest.raises(FrameError):
        AttachAccept.decode(body)


# --- records ----------------------------------------------------------------------------------


def test_encode_record_and_decoder_round_trip() -> None:
    dec = RecordDecoder()
    bodies = [(RecordType.CLIENT_HELLO, client_hello().encode()), (RecordType.SEALED, b""),
              (RecordType.REJECT, b"x" * 1000)]
    for rtype, body in bodies:
        dec.feed(encode_record(rtype, body))
    for rtype, body in bodies:
        got = dec.next_record()
        assert got == (rtype, record_header(rtype, len(body)), body)
    assert dec.next_record() is None
    assert dec.buffered() == 0


def test_encode_record_refuses_oversize_body() -> None:
    encode_record(RecordType.SEALED, b"\x00" * MAX_RECORD_BODY)
    with pytest.raises(FrameError):
        encode_record(RecordType.SEALED, b"\x00" * (MAX_RECORD_BODY + 1))


def test_record_split_byte_by_byte() -> None:
    data = encode_record(RecordType.SERVER_HELLO, server_hello().encode())
    dec = RecordDecoder()
    for i, byte in enumerate(data):
        dec.feed(bytes([byte]))
        got = dec.next_record()
        if i < len(data) - 1:
            assert got is None
        else:
            assert got == (RecordType.SERVER_HELLO, data[:4], data[4:])


@pytest.mark.parametrize(("limit", "length"), [(MAX_RECORD_BODY, MAX_RECORD_BODY + 1),
                                               (MAX_RECORD_BODY, 0xFFFFFF), (1000, 1001)])
def test_oversize_length_refused_on_header_alone(limit: int, length: int) -> None:
    dec = RecordDecoder(max_body=limit)
    header = record_header(RecordType.SEALED, length)
    for i in range(RECORD_HEADER - 1):
        dec.feed(header[i : i + 1])
        assert dec.next_record() is None
    dec.feed(header[-1:])
    with pytest.raises(FrameError):
        dec.next_record()  # no body byte has arrived yet


def test_limit_at_exactly_max_is_accepted() -> None:
    dec = RecordDecoder(max_body=1000)
    dec.feed(record_header(RecordType.SEALED, 1000))
    assert dec.next_record() is None  # waits for the body, no error
    dec.feed(b"\x01" * 1000)
    got = dec.next_record()
    assert got is not None and got[2] == b"\x01" * 1000


def test_decoder_limit_never_above_hard_ceiling() -> None:
    dec = RecordDecoder(max_body=10 * MAX_RECORD_BODY)
    dec.feed(record_header(RecordType.SEALED, MAX_RECORD_BODY + 1))
    with pytest.raises(FrameError):
        dec.next_record()


@pytest.mark.parametrize("rtype", [0x00, 0x06, 0x16, 0x18, 0xFF])
def test_unknown_record_type(rtype: int) -> None:
    dec = RecordDecoder()
    dec.feed(bytes([rtype, 0, 0, 1]))
    with pytest.raises(FrameError):
        dec.next_record()


# --- frames -----------------------------------------------------------------------------------


def test_frames_round_trip() -> None:
    plaintext = b"".join(
        [
            stream_frame_header(4, 100, 5, False) + b"hello",
            stream_frame_header(7, MAX_OFFSET - 3, 3, True) + b"end",
            stream_frame_header(2, 0, 0, True),
            encode_ack(4, 105, 1 << 20),
            encode_ping(1),
            encode_pong(2**64 - 1),
            encode_close(3, "bye"),
            encode_close(0, ""),
        ]
    )
    assert list(decode_frames(plaintext)) == [
        StreamFrame(stream_id=4, offset=100, data=b"hello", fin=False),
        StreamFrame(stream_id=7, offset=MAX_OFFSET - 3, data=b"end", fin=True),
        StreamFrame(stream_id=2, offset=0, data=b"", fin=True),
        AckFrame(stream_id=4, received=105, limit=1 << 20),
        PingFrame(ping_id=1),
        PongFrame(ping_id=2**64 - 1),
        CloseFrame(code=3, reason="bye"),
        CloseFrame(code=0, reason=""),
    ]
    assert list(decode_frames(b"")) == []


def test_close_reason_truncated() -> None:
    (frame,) = decode_frames(encode_close(1, "r" * 1000))
    assert frame == CloseFrame(code=1, reason="r" * MAX_REASON)


@pytest.mark.parametrize("ftype", [0x00, 0x06, 0x17, 0xFF])
def test_unknown_frame_type(ftype: int) -> None:
    with pytest.raises(FrameError):
        list(decode_frames(encode_ping(1) + bytes([ftype]) + b"\x00" * 16))


@pytest.mark.parametrize(
    "plaintext",
    [
        stream_frame_header(1, 0, 10, False) + b"short",  # length exceeds the record
        stream_frame_header(1, 0, 0, False)[:-1],  # truncated header
        struct.pack("!BIQBI", FrameType.STREAM, 1, 0, 0x02, 0),  # unknown flag
        struct.pack("!BIQBI", FrameType.STREAM, 1, 0, FLAG_FIN | 0x80, 0),
        stream_frame_header(1, MAX_OFFSET, 1, False) + b"x",  # offset + length out of range
        struct.pack("!BIQBI", FrameType.STREAM, 1, 2**64 - 1, 0, 0),
        encode_ack(1, 2, 3)[:-1],
        struct.pack("!BIQQ", FrameType.ACK, 1, MAX_OFFSET + 1, 0),
        struct.pack("!BIQQ", FrameType.ACK, 1, 0, 2**64 - 1),
        encode_ping(1)[:-1],
        encode_pong(1)[:5],
        encode_close(1, "abc")[:-1],
        bytes([FrameType.CLOSE]) + struct.pack("!HH", 0, MAX_REASON + 1) + b"x" * 300,
        bytes([FrameType.CLOSE, 0]),
    ],
)
def test_malformed_frames(plaintext: bytes) -> None:
    with pytest.raises(FrameError):
        list(decode_frames(plaintext))


def test_frames_after_a_bad_one_are_not_reached() -> None:
    frames = decode_frames(encode_ping(1) + b"\xee")
    assert next(frames) == PingFrame(ping_id=1)
    with pytest.raises(FrameError):
        next(frames)


# --- fuzzing: nothing but FrameError / VersionError escapes a decoder -----------------------


def _drain(dec: RecordDecoder) -> list[tuple[RecordType, bytes, bytes]]:
    out = []
    while (rec := dec.next_record()) is not None:
        out.append(rec)
    return out


@FUZZ
@given(st.binary(max_size=300), st.integers(min_value=0, max_value=MAX_RECORD_BODY))
def test_fuzz_record_decoder_random_bytes(data: bytes, limit: int) -> None:
    dec = RecordDecoder(max_body=limit)
    dec.feed(data)
    try:
        records = _drain(dec)
    except ProtocolError as exc:
        assert isinstance(exc, FrameError | VersionError)
        return
    consumed = sum(len(h) + len(body) for _, h, body in records)
    assert consumed + dec.buffered() == len(data)
    for _, header, body in records:
        assert len(body) <= limit
        assert int.from_bytes(header[1:], "big") == len(body)


@FUZZ
@given(
    st.lists(
        st.tuples(st.sampled_from(list(RecordType)), st.binary(max_size=200)), max_size=6
    ),
    st.lists(st.integers(min_value=1, max_value=50), min_size=1, max_size=20),
)
def test_record_decoder_is_chunking_invariant(
    records: list[tuple[RecordType, bytes]], sizes: list[int]
) -> None:
    stream = b"".join(encode_record(t, body) for t, body in records)
    dec = RecordDecoder()
    got: list[tuple[RecordType, bytes, bytes]] = []
    pos = 0
    i = 0
    while pos < len(stream):
        n = sizes[i % len(sizes)]
        i += 1
        dec.feed(stream[pos : pos + n])
        pos += n
        got.extend(_drain(dec))
    assert [(t, body) for t, _, body in got] == records
    assert dec.buffered() == 0


@FUZZ
@given(st.binary(min_size=4, max_size=64))
def test_fuzz_oversize_header_refused_without_body(prefix: bytes) -> None:
    # Any known type with a length above the limit is refused on the header.
    dec = RecordDecoder(max_body=512)
    length = 513 + int.from_bytes(prefix[1:4], "big") % (0xFFFFFF - 513)
    dec.feed(bytes([RecordType.SEALED]) + length.to_bytes(3, "big"))
    with pytest.raises(FrameError):
        dec.next_record()


ENCODED = [m[1].encode() for m in MESSAGES]  # type: ignore[attr-defined]


@FUZZ
@given(st.sampled_from(DECODERS), st.binary(max_size=400))
def test_fuzz_decoders_random_bytes(decode: Callable[[bytes], object], data: bytes) -> None:
    with contextlib.suppress(FrameError, VersionError):
        decode(data)


@FUZZ
@given(
    st.sampled_from(DECODERS),
    st.sampled_from(ENCODED),
    st.integers(min_value=0, max_value=1000),
    st.lists(st.tuples(st.integers(min_value=0, max_value=1000), st.integers(0, 255)),
             max_size=4),
    st.binary(max_size=8),
)
def test_fuzz_decoders_mutated_valid_messages(
    decode: Callable[[bytes], object],
    base: bytes,
    cut: int,
    flips: list[tuple[int, int]],
    tail: bytes,
) -> None:
    data = bytearray(base)
    for pos, value in flips:
        data[pos % len(data)] = value
    data = data[: cut % (len(data) + 1)] + tail if cut % 3 else data + tail
    with contextlib.suppress(FrameError, VersionError):
        decode(bytes(data))


@FUZZ
@given(st.binary(max_size=20), st.integers(min_value=MAX_STREAMS_LISTED, max_value=0xFFFF))
def test_fuzz_oversize_resume_count(prefix: bytes, count: int) -> None:
    req = attach_request(ResumePoint(peer_streams_seen=0, received=()))
    head = req.proved_part()[: -len(req.resume.encode())]
    body = head + struct.pack("!IH", 0, count) + prefix
    with pytest.raises(FrameError):
        AttachRequest.decode(body)


FRAME_PARTS = st.one_of(
    st.builds(
        lambda sid, off, data, fin: stream_frame_header(sid, off, len(data), fin) + data,
        st.integers(0, 2**32 - 1), st.integers(0, MAX_OFFSET - 100), st.binary(max_size=50),
        st.booleans(),
    ),
    st.builds(encode_ack, st.integers(0, 2**32 - 1), st.integers(0, MAX_OFFSET),
              st.integers(0, MAX_OFFSET)),
    st.builds(encode_ping, st.integers(0, 2**64 - 1)),
    st.builds(encode_pong, st.integers(0, 2**64 - 1)),
    st.builds(encode_close, st.integers(0, 0xFFFF), st.text(max_size=20)),
)


@FUZZ
@given(st.lists(FRAME_PARTS, max_size=8), st.integers(min_value=0, max_value=2000),
       st.binary(max_size=30))
def test_fuzz_decode_frames_truncated_and_garbage(
    parts: list[bytes], cut: int, tail: bytes
) -> None:
    whole = b"".join(parts)
    assert len(list(decode_frames(whole))) == len(parts)
    data = whole[: cut % (len(whole) + 1)] + tail
    try:
        frames = list(decode_frames(data))
    except FrameError:
        return
    for frame in frames:
        assert isinstance(frame, StreamFrame | AckFrame | PingFrame | PongFrame | CloseFrame)

"""The server's two streams: live audio at a constant bit rate, and a file download.

Each sender hashes exactly the bytes it hands to the session, so the integrity
check compares what was received with what was sent, not with a recomputation.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import hashlib
import math
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from continuations.aio import SessionStream

FRAME_SECONDS = 0.02  # 20 ms audio frames, as in RTP voice and music streams
SAMPLE_RATE = 48_000
TONE_HZ = 440  # a whole number of cycles per second: one second of samples loops cleanly
FILE_CHUNK = 64 * 1024
_FRAME_HEADER = struct.Struct("!4sIQ")  # magic, sequence number, first sample index


@dataclass
class Outgoing:
    """One stream as the server sent it."""

    name: str
    sent: int = 0
    digest: hashlib._Hash = field(default_factory=hashlib.sha256)
    finished: bool = False

    def take(self, data: bytes) -> bytes:
        self.sent += len(data)
        self.digest.update(data)
        return data


def _tone() -> bytes:
    """One second of a 16-bit stereo sine tone: the audio frames' payload."""
    samples = array.array("h")
    for i in range(SAMPLE_RATE):
        value = int(12_000 * math.sin(2 * math.pi * TONE_HZ * i / SAMPLE_RATE))
        samples.extend((value, value))
    return samples.tobytes()


def audio_frames(bytes_per_second: int) -> Iterator[bytes]:
    """Frames of 20 ms forever: a header with a sequence number (so no two frames are
    alike and a lost, doubled or reordered frame changes the hash) and PCM samples."""
    tone = _tone()
    size = max(_FRAME_HEADER.size + 4, round(bytes_per_second * FRAME_SECONDS))
    payload = size - _FRAME_HEADER.size
    offset = 0
    sequence = 0
    while True:
        end = offset + payload
        pcm = tone[offset:end] if end <= len(tone) else tone[offset:] + tone[: end - len(tone)]
        offset = end % len(tone)
        yield _FRAME_HEADER.pack(b"AUD0", sequence, sequence * SAMPLE_RATE // 50) + pcm
        sequence += 1


def make_file(path: Path, size: int) -> str:
    """Write ``size`` random bytes (incompressible, every block different); return the
    SHA-256 of the file."""
    digest = hashlib.sha256()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as out:
        left = size
        while left:
            block = os.urandom(min(left, 1 << 20))
            out.write(block)
            digest.update(block)
            left -= len(block)
    return digest.hexdigest()


def file_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as source:
        while chunk := source.read(FILE_CHUNK):
            yield chunk


async def send_paced(stream: SessionStream, chunks: Iterator[bytes], outgoing: Outgoing,
                     rate: float, stop: asyncio.Event | None = None) -> None:
    """Send at ``rate`` bytes/s on average, like a live source or a rate-limited server.

    During an outage the session buffers; the sender stays on its schedule (a live
    source keeps producing) and ``drain()`` holds it back only when the session's
    replay buffer is full. Ends the stream after the last chunk, or once ``stop`` is set.
    """
    loop = asyncio.get_running_loop()
    start = loop.time()
    for chunk in chunks:
        if stop is not None and stop.is_set():
            break
        stream.write(outgoing.take(chunk))
        await stream.drain()
        ahead = start + outgoing.sent / rate - loop.time()
        if ahead > 0:
            if stop is None:
                await asyncio.sleep(ahead)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), ahead)
    stream.write_eof()
    outgoing.finished = True

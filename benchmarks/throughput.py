"""Bulk throughput of one encrypted stream, client -> server, in separate processes.

Each run starts a receiver process and a sender process. The sender loads the
pre-generated data file into memory (not timed), connects, and then times from
its first write until the receiver's acknowledgement arrives: the receiver
counts every byte, and after the end of the stream writes the count back (8
bytes) over the same connection. Throughput is bytes / that time.

Baselines measured in the same run, interleaved with ours so drift in the
machine's load hits all of them alike:

* plain TCP: the same two-process shape with ``sendall`` / ``recv_into``;
* OpenSSH: a private ``sshd`` on a loopback port, timing
  ``ssh ... 'cat > /dev/null' < datafile`` per cipher, and the same command with
  empty input (connection setup), so both raw and setup-corrected figures show.

As a script this file is the worker: ``throughput.py ours-recv|ours-send|tcp-recv|tcp-send``.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    MiB,
    Options,
    Outcome,
    median,
    read_line,
    spawn,
    stop,
    table,
    unavailable,
)
from openssh import private_sshd as _openssh

NAME = "throughput"
TITLE = "Bulk throughput, one stream, client -> server (separate processes)"

WRITE_CHUNK = 256 * 1024
READ_CHUNK = 1024 * 1024
WORKER_TIMEOUT = 300.0  # a worker never lives longer than this
CIPHERS = ("chacha20-poly1305@openssh.com", "aes128-gcm@openssh.com")
MB = 1e6  # throughput is reported in MB/s = 10^6 bytes per second


# --- workers ------------------------------------------------------------------------------


def _emit(obj: dict[str, Any]) -> None:
    print(json.dumps(obj), flush=True)


async def _ours_recv(expect: int) -> None:
    from continuations.aio import ServerSession, serve

    done = asyncio.get_running_loop().create_future()

    async def handler(session: ServerSession) -> None:
        stream = await session.accept_stream()
        total = 0
        while data := await stream.read(READ_CHUNK):
            total += len(data)
        stream.write(total.to_bytes(8, "big"))
        await stream.drain()
        await session.wait_closed(timeout=30)
        if not done.done():
            done.set_result(total)

    server = await serve(handler, "127.0.0.1", 0)
    try:
        _emit({"port": server.address[1]})
        total = await done
        if total != expect:
            raise SystemExit(f"receiver got {total} bytes, expected {expect}")
    finally:
        server.close()
        await server.wait_closed()


async def _ours_send(port: int, path: str) -> None:
    from continuations.aio import connect

    data = Path(path).read_bytes()  # slices are copies, as the stream would make anyway
    with tempfile.TemporaryDirectory(prefix="bench-kh-") as tmp:
        session = await connect("127.0.0.1", port, known_hosts=Path(tmp) / "known_hosts")
        stream = session.open_stream()
        start = time.perf_counter()
        for offset in range(0, len(data), WRITE_CHUNK):
            stream.write(data[offset : offset + WRITE_CHUNK])
            await stream.drain()
        stream.write_eof()
        ack = await stream.readexactly(8)
        elapsed = time.perf_counter() - start
        await session.close()
    got = int.from_bytes(ack, "big")
    if got != len(data):
        raise SystemExit(f"receiver acknowledged {got} bytes, sent {len(data)}")
    _emit({"seconds": elapsed, "bytes": len(data)})


def _tcp_recv(expect: int) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(WORKER_TIMEOUT)
        _emit({"port": listener.getsockname()[1]})
        conn, _ = listener.accept()
    with conn:
        conn.settimeout(WORKER_TIMEOUT)
        buf = bytearray(READ_CHUNK)
        total = 0
        while n := conn.recv_into(buf):
            total += n
        conn.sendall(total.to_bytes(8, "big"))
    if total != expect:
        raise SystemExit(f"receiver got {total} bytes, expected {expect}")


def _tcp_send(port: int, path: str) -> None:
    data = memoryview(Path(path).read_bytes())
    with socket.create_connection(("127.0.0.1", port), timeout=WORKER_TIMEOUT) as sock:
        start = time.perf_counter()
        for offset in range(0, len(data), WRITE_CHUNK):
            sock.sendall(data[offset : offset + WRITE_CHUNK])
        sock.shutdown(socket.SHUT_WR)
        ack = b""
        while len(ack) < 8 and (part := sock.recv(8 - len(ack))):
            ack += part
        elapsed = time.perf_counter() - start
    got = int.from_bytes(ack, "big")
    if got != len(data):
        raise SystemExit(f"receiver acknowledged {got} bytes, sent {len(data)}")
    _emit({"seconds": elapsed, "bytes": len(data)})


def worker_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description="throughput benchmark worker")
    parser.add_argument("role", choices=["ours-recv", "ours-send", "tcp-recv", "tcp-send"])
    parser.add_argument("--bytes", type=int, default=0, help="receivers: bytes to expect")
    parser.add_argument("--port", type=int, default=0, help="senders: receiver's port")
    parser.add_argument("--data", default="", help="senders: file to send")
    parser.add_argument("--profile", default="", help="write cProfile stats here")
    args = parser.parse_args(argv)

    def body() -> None:
        if args.role == "ours-recv":
            asyncio.run(asyncio.wait_for(_ours_recv(args.bytes), WORKER_TIMEOUT))
        elif args.role == "ours-send":
            asyncio.run(asyncio.wait_for(_ours_send(args.port, args.data), WORKER_TIMEOUT))
        elif args.role == "tcp-recv":
            _tcp_recv(args.bytes)
        else:
            _tcp_send(args.port, args.data)

    if args.profile:
        profiler = cProfile.Profile()
        try:
            profiler.runcall(body)
        finally:
            profiler.dump_stats(args.profile)
    else:
        body()


# --- the two-process runs -----------------------------------------------------------------


def _pair(kind: str, path: Path, size: int, profile_dir: Path | None = None) -> float:
    """One timed transfer with a fresh receiver and sender; seconds."""
    me = [sys.executable, str(Path(__file__).resolve())]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    recv_extra = ["--profile", str(profile_dir / f"{kind}-recv.prof")] if profile_dir else []
    send_extra = ["--profile", str(profile_dir / f"{kind}-send.prof")] if profile_dir else []
    receiver = sender = None
    try:
        receiver = spawn([*me, f"{kind}-recv", "--bytes", str(size), *recv_extra],
                         stdout=subprocess.PIPE, env=env)
        port = json.loads(read_line(receiver, 30))["port"]
        sender = spawn([*me, f"{kind}-send", "--port", str(port), "--data", str(path),
                        *send_extra], stdout=subprocess.PIPE, env=env)
        result = json.loads(read_line(sender, WORKER_TIMEOUT))
        if sender.wait(30) != 0 or receiver.wait(30) != 0:
            raise RuntimeError(f"{kind} workers failed: rc {sender.returncode}, "
                               f"{receiver.returncode}")
        if result["bytes"] != size:
            raise RuntimeError(f"{kind}: {result['bytes']} bytes sent, expected {size}")
        return float(result["seconds"])
    finally:
        stop(sender)
        stop(receiver)


# --- the benchmark ------------------------------------------------------------------------


def _mbps(size: int, seconds: float) -> float:
    return size / seconds / MB


def run(options: Options) -> Outcome:
    size_mib = 64 if options.quick else 256
    size = size_mib * MiB
    runs = options.repeats(3, 5)
    path = options.workdir / "throughput.dat"
    with open(path, "wb") as out:
        for _ in range(size // (16 * MiB)):
            out.write(os.urandom(16 * MiB))

    ours: list[float] = []
    plain: list[float] = []
    ssh_raw: dict[str, list[float]] = {c: [] for c in CIPHERS}
    ssh_setup: dict[str, list[float]] = {c: [] for c in CIPHERS}
    with _openssh(options.workdir) as (sshd, ssh_missing):
        for _ in range(runs):
            ours.append(_pair("ours", path, size))
            plain.append(_pair("tcp", path, size))
            if sshd is not None:
                for cipher in CIPHERS:
                    ssh_raw[cipher].append(sshd.timed_cat(cipher, path))
                    ssh_setup[cipher].append(sshd.timed_cat(cipher, None))
        ssh_version = sshd.version if sshd is not None else ""

    ours_mbps = _mbps(size, median(ours))
    plain_mbps = _mbps(size, median(plain))
    data: dict[str, Any] = {
        "bytes": size,
        "runs": runs,
        "unit": "MB/s (10^6 bytes per second)",
        "ours": {"seconds": ours, "median_seconds": median(ours), "mb_per_s": ours_mbps},
        "plain_tcp": {"seconds": plain, "median_seconds": median(plain),
                      "mb_per_s": plain_mbps},
        "ratios": {"ours/plain_tcp": ours_mbps / plain_mbps},
    }
    rows = [
        ["continuations (ChaCha20-Poly1305)", f"{median(ours):.3f}", f"{ours_mbps:.1f}", "1.00"],
        ["plain TCP (Python sockets, no crypto)", f"{median(plain):.3f}", f"{plain_mbps:.1f}",
         f"{ours_mbps / plain_mbps:.3f}"],
    ]
    if sshd is None:
        data["openssh"] = unavailable(ssh_missing)
        data["ratios"]["ours/openssh"] = unavailable(ssh_missing)
        rows.append(["OpenSSH (all ciphers)", "unavailable", "unavailable",
                     unavailable(ssh_missing)])
    else:
        data["openssh"] = {"version": ssh_version}
        for cipher in CIPHERS:
            raw, setup = median(ssh_raw[cipher]), median(ssh_setup[cipher])
            raw_mbps = _mbps(size, raw)
            transfer = raw - setup
            corrected: float | str = (
                _mbps(size, transfer) if transfer > 0
                else unavailable("setup time not below total time")
            )
            data["openssh"][cipher] = {
                "seconds": ssh_raw[cipher], "setup_seconds": ssh_setup[cipher],
                "median_seconds": raw, "median_setup_seconds": setup,
                "mb_per_s_raw": raw_mbps, "mb_per_s_setup_corrected": corrected,
            }
            short = cipher.split("@")[0]
            data["ratios"][f"ours/openssh {short} raw"] = ours_mbps / raw_mbps
            rows.append([f"OpenSSH {short}, raw (incl. {setup * 1000:.0f} ms setup)",
                         f"{raw:.3f}", f"{raw_mbps:.1f}", f"{ours_mbps / raw_mbps:.3f}"])
            if isinstance(corrected, float):
                data["ratios"][f"ours/openssh {short} setup-corrected"] = ours_mbps / corrected
                rows.append([f"OpenSSH {short}, setup-corrected", f"{transfer:.3f}",
                             f"{corrected:.1f}", f"{ours_mbps / corrected:.3f}"])
            else:
                data["ratios"][f"ours/openssh {short} setup-corrected"] = corrected
                rows.append([f"OpenSSH {short}, setup-corrected", "unavailable",
                             "unavailable", corrected])
    markdown = (
        f"{size_mib} MiB of random data, median of {runs} run(s), MB/s = 10^6 bytes/s; "
        "time runs from the sender's first write to the receiver's acknowledgement "
        "(ssh: the whole command).\n\n"
        + table(["transport", "median s", "MB/s", "ours / this"], rows)
    )
    return Outcome(markdown=markdown, data=data)


def profile(workdir: Path, size: int, out: Path) -> None:
    """One profiled run of ours (cProfile in both processes); stats land in ``out``."""
    path = workdir / "profile.dat"
    path.write_bytes(os.urandom(size))
    out.mkdir(parents=True, exist_ok=True)
    seconds = _pair("ours", path, size, profile_dir=out)
    print(f"profiled run: {size / seconds / MB:.1f} MB/s (with profiler overhead); "
          f"stats in {out}/ours-send.prof and ours-recv.prof")


if __name__ == "__main__":
    if sys.argv[1:2] == ["profile"]:
        with tempfile.TemporaryDirectory(prefix="bench-prof-") as tmp:
            profile(Path(tmp), 64 * MiB, Path(sys.argv[2] if len(sys.argv) > 2 else "prof"))
    else:
        worker_main(sys.argv[1:])

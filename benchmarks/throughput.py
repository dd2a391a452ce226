"""Bulk throughput of one encrypted stream, client -> server, in separate processes,
and the CPU time each transport spends per MB.

Each run starts a receiver process and a sender process. The sender loads the
pre-generated data file into memory (not timed), connects, and then times from
its first write until the receiver's acknowledgement arrives: the receiver
counts every byte, and after the end of the stream writes the count back (8
bytes) over the same connection. Throughput is bytes / that time. Each process
also reports the CPU time (user + system, getrusage) it spent over the transfer:
the sender from its first write to the acknowledgement, the receiver from the
session (connection) being handed to it to the acknowledgement being sent.

Baselines measured in the same run, interleaved with ours so drift in the
machine's load hits all of them alike:

* plain TCP: the same two-process shape with ``sendall`` / ``recv_into``;
* OpenSSH: a private ``sshd`` on a loopback port, timing
  ``ssh ... 'cat > /dev/null' < datafile`` per cipher, and the same command with
  empty input (connection setup), so both raw and setup-corrected figures show.
  CPU: the ssh client's (our RUSAGE_CHILDREN) plus sshd's side (its per-connection
  processes and ``cat``, from the listener's cutime/cstime; openssh.py), with the
  empty-input run's CPU subtracted for the setup-corrected figure.

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
    Figure,
    Measured,
    MiB,
    Options,
    Outcome,
    cpu_seconds,
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
SHORT = {"chacha20-poly1305@openssh.com": "chacha20", "aes128-gcm@openssh.com": "aes128gcm"}
MB = 1e6  # throughput is reported in MB/s = 10^6 bytes per second


# --- workers ------------------------------------------------------------------------------


def _emit(obj: dict[str, Any]) -> None:
    print(json.dumps(obj), flush=True)


async def _ours_recv(expect: int) -> None:
    from continuations.aio import ServerSession, serve

    done = asyncio.get_running_loop().create_future()

    async def handler(session: ServerSession) -> None:
        cpu = cpu_seconds()
        stream = await session.accept_stream()
        total = 0
        while data := await stream.read(READ_CHUNK):
            total += len(data)
        stream.write(total.to_bytes(8, "big"))
        await stream.drain()
        cpu = cpu_seconds() - cpu
        await session.wait_closed(timeout=30)
        if not done.done():
            done.set_result((total, cpu))

    server = await serve(handler, "127.0.0.1", 0)
    try:
        _emit({"port": server.address[1]})
        total, cpu = await done
        if total != expect:
            raise SystemExit(f"receiver got {total} bytes, expected {expect}")
        _emit({"cpu": cpu})
    finally:
        server.close()
        await server.wait_closed()


async def _ours_send(port: int, path: str) -> None:
    from continuations.aio import connect

    data = Path(path).read_bytes()  # slices are copies, as the stream would make anyway
    with tempfile.TemporaryDirectory(prefix="bench-kh-") as tmp:
        session = await connect("127.0.0.1", port, known_hosts=Path(tmp) / "known_hosts")
        stream = session.open_stream()
        cpu = cpu_seconds()
        start = time.perf_counter()
        for offset in range(0, len(data), WRITE_CHUNK):
            stream.write(data[offset : offset + WRITE_CHUNK])
            await stream.drain()
        stream.write_eof()
        ack = await stream.readexactly(8)
        elapsed = time.perf_counter() - start
        cpu = cpu_seconds() - cpu
        await session.close()
    got = int.from_bytes(ack, "big")
    if got != len(data):
        raise SystemExit(f"receiver acknowledged {got} bytes, sent {len(data)}")
    _emit({"seconds": elapsed, "bytes": len(data), "cpu": cpu})


def _tcp_recv(expect: int) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(WORKER_TIMEOUT)
        _emit({"port": listener.getsockname()[1]})
        conn, _ = listener.accept()
    with conn:
        cpu = cpu_seconds()
        conn.settimeout(WORKER_TIMEOUT)
        buf = bytearray(READ_CHUNK)
        total = 0
        while n := conn.recv_into(buf):
            total += n
        conn.sendall(total.to_bytes(8, "big"))
        cpu = cpu_seconds() - cpu
    if total != expect:
        raise SystemExit(f"receiver got {total} bytes, expected {expect}")
    _emit({"cpu": cpu})


def _tcp_send(port: int, path: str) -> None:
    data = memoryview(Path(path).read_bytes())
    with socket.create_connection(("127.0.0.1", port), timeout=WORKER_TIMEOUT) as sock:
        cpu = cpu_seconds()
        start = time.perf_counter()
        for offset in range(0, len(data), WRITE_CHUNK):
            sock.sendall(data[offset : offset + WRITE_CHUNK])
        sock.shutdown(socket.SHUT_WR)
        ack = b""
        while len(ack) < 8 and (part := sock.recv(8 - len(ack))):
            ack += part
        elapsed = time.perf_counter() - start
        cpu = cpu_seconds() - cpu
    got = int.from_bytes(ack, "big")
    if got != len(data):
        raise SystemExit(f"receiver acknowledged {got} bytes, sent {len(data)}")
    _emit({"seconds": elapsed, "bytes": len(data), "cpu": cpu})


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


def _pair(kind: str, path: Path, size: int, profile_dir: Path | None = None) -> Measured:
    """One timed transfer with a fresh receiver and sender: seconds, and the CPU each
    spent (sender as "client", receiver as "server")."""
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
        received = json.loads(read_line(receiver, 60))
        if sender.wait(30) != 0 or receiver.wait(30) != 0:
            raise RuntimeError(f"{kind} workers failed: rc {sender.returncode}, "
                               f"{receiver.returncode}")
        if result["bytes"] != size:
            raise RuntimeError(f"{kind}: {result['bytes']} bytes sent, expected {size}")
        return Measured(seconds=float(result["seconds"]), client_cpu=float(result["cpu"]),
                      server_cpu=float(received["cpu"]))
    finally:
        stop(sender)
        stop(receiver)


# --- the benchmark ------------------------------------------------------------------------


def _mbps(size: int, seconds: float) -> float:
    return size / seconds / MB


def _per_mb(cpu: float, size: int) -> float:
    """CPU milliseconds per MB (10^6 bytes) moved."""
    return cpu * 1000 / (size / MB)


def _total_cpu(runs: list[Measured]) -> list[float]:
    return [r.client_cpu + r.server_cpu for r in runs]


def _entry(runs: list[Measured], size: int) -> dict[str, Any]:
    """The JSON for one transport: every sample and the medians."""
    seconds = [r.seconds for r in runs]
    cpu = _total_cpu(runs)
    return {
        "seconds": seconds, "median_seconds": median(seconds),
        "mb_per_s": _mbps(size, median(seconds)),
        "cpu_seconds": {"client": [r.client_cpu for r in runs],
                        "server": [r.server_cpu for r in runs], "total": cpu},
        "median_cpu_seconds": median(cpu),
        "cpu_ms_per_mb": _per_mb(median(cpu), size),
    }


def _fmt_ratio(value: Figure) -> str:
    return f"{value:.2f}x" if isinstance(value, float) else value


def run(options: Options) -> Outcome:
    size_mib = 64 if options.quick else 256
    size = size_mib * MiB
    runs = options.repeats(3, 5)
    path = options.workdir / "throughput.dat"
    with open(path, "wb") as out:
        for _ in range(size // (16 * MiB)):
            out.write(os.urandom(16 * MiB))

    ours: list[Measured] = []
    plain: list[Measured] = []
    ssh_raw: dict[str, list[Measured]] = {c: [] for c in CIPHERS}
    ssh_setup: dict[str, list[Measured]] = {c: [] for c in CIPHERS}
    with _openssh(options.workdir) as (sshd, ssh_missing):
        for _ in range(runs):
            ours.append(_pair("ours", path, size))
            plain.append(_pair("tcp", path, size))
            if sshd is not None:
                for cipher in CIPHERS:
                    ssh_raw[cipher].append(sshd.measured(cipher, "cat > /dev/null", path))
                    ssh_setup[cipher].append(sshd.measured(cipher, "cat > /dev/null", None))
        ssh_version = sshd.version if sshd is not None else ""

    data: dict[str, Any] = {
        "bytes": size,
        "runs": runs,
        "unit": "MB/s (10^6 bytes per second); CPU ms per MB (10^6 bytes)",
        "ours": _entry(ours, size),
        "plain_tcp": _entry(plain, size),
    }
    o, p = data["ours"], data["plain_tcp"]
    data["ratios"] = {"ours/plain_tcp": o["mb_per_s"] / p["mb_per_s"]}
    data["cpu_ratios"] = {"ours/plain_tcp": o["cpu_ms_per_mb"] / p["cpu_ms_per_mb"]}
    figures: dict[str, Figure] = {
        "ours_mb_per_s": o["mb_per_s"], "plain_tcp_mb_per_s": p["mb_per_s"],
        "ratio_ours_to_plain_tcp": o["mb_per_s"] / p["mb_per_s"],
        "ours_cpu_ms_per_mb": o["cpu_ms_per_mb"], "plain_tcp_cpu_ms_per_mb": p["cpu_ms_per_mb"],
        "cpu_ratio_ours_to_plain_tcp": o["cpu_ms_per_mb"] / p["cpu_ms_per_mb"],
    }
    rows = [
        ["continuations (ChaCha20-Poly1305)", f"{o['median_seconds']:.3f}",
         f"{o['mb_per_s']:.1f}", "1.00"],
        ["plain TCP (Python sockets, no crypto)", f"{p['median_seconds']:.3f}",
         f"{p['mb_per_s']:.1f}", f"{o['mb_per_s'] / p['mb_per_s']:.3f}"],
    ]

    def cpu_row(label: str, runs_: list[Measured], per_mb: float) -> list[str]:
        return [label, f"{median([r.client_cpu for r in runs_]):.3f}",
                f"{median([r.server_cpu for r in runs_]):.3f}", f"{per_mb:.2f}",
                f"{o['cpu_ms_per_mb'] / per_mb:.3f}"]

    cpu_rows = [cpu_row("continuations (ChaCha20-Poly1305)", ours, o["cpu_ms_per_mb"]),
                cpu_row("plain TCP (Python sockets, no crypto)", plain, p["cpu_ms_per_mb"])]
    ssh_mbps: dict[str, Figure] = {}
    ssh_cpu: dict[str, Figure] = {}
    if sshd is None:
        why = unavailable(ssh_missing)
        data["openssh"] = why
        rows.append(["OpenSSH (all ciphers)", "unavailable", "unavailable", why])
        cpu_rows.append(["OpenSSH (all ciphers)", "unavailable", "unavailable", "unavailable",
                         why])
        for cipher in CIPHERS:
            ssh_mbps[cipher] = ssh_cpu[cipher] = why
            short = SHORT[cipher]
            data["ratios"][f"ours/openssh {cipher.split('@')[0]}"] = why
            for key in (f"openssh_{short}_mb_per_s", f"openssh_{short}_raw_mb_per_s",
                        f"ratio_ours_to_openssh_{short}", f"openssh_{short}_cpu_ms_per_mb",
                        f"openssh_{short}_raw_cpu_ms_per_mb",
                        f"cpu_ratio_ours_to_openssh_{short}"):
                figures[key] = why
    else:
        data["openssh"] = {"version": ssh_version}
        for cipher in CIPHERS:
            short, name = SHORT[cipher], cipher.split("@")[0]
            raw, setup = median([r.seconds for r in ssh_raw[cipher]]), median(
                [r.seconds for r in ssh_setup[cipher]])
            raw_mbps = _mbps(size, raw)
            transfer = raw - setup
            corrected: Figure = (
                _mbps(size, transfer) if transfer > 0
                else unavailable("setup time not below total time")
            )
            raw_cpu = median(_total_cpu(ssh_raw[cipher]))
            setup_cpu = median(_total_cpu(ssh_setup[cipher]))
            raw_per_mb = _per_mb(raw_cpu, size)
            cpu_corrected: Figure = (
                _per_mb(raw_cpu - setup_cpu, size) if raw_cpu > setup_cpu
                else unavailable("setup CPU not below total CPU")
            )
            data["openssh"][cipher] = {
                **_entry(ssh_raw[cipher], size),
                "setup": _entry(ssh_setup[cipher], size),
                "median_setup_seconds": setup, "mb_per_s_raw": raw_mbps,
                "mb_per_s_setup_corrected": corrected,
                "cpu_ms_per_mb_raw": raw_per_mb, "cpu_ms_per_mb_setup_corrected": cpu_corrected,
            }
            ssh_mbps[cipher], ssh_cpu[cipher] = corrected, cpu_corrected
            figures[f"openssh_{short}_raw_mb_per_s"] = raw_mbps
            figures[f"openssh_{short}_mb_per_s"] = corrected
            figures[f"openssh_{short}_raw_cpu_ms_per_mb"] = raw_per_mb
            figures[f"openssh_{short}_cpu_ms_per_mb"] = cpu_corrected
            data["ratios"][f"ours/openssh {name} raw"] = o["mb_per_s"] / raw_mbps
            rows.append([f"OpenSSH {name}, raw (incl. {setup * 1000:.0f} ms setup)",
                         f"{raw:.3f}", f"{raw_mbps:.1f}", f"{o['mb_per_s'] / raw_mbps:.3f}"])
            cpu_rows.append(cpu_row(f"OpenSSH {name}, raw (incl. setup: "
                                    f"{setup_cpu * 1000:.0f} ms CPU)", ssh_raw[cipher],
                                    raw_per_mb))
            if isinstance(corrected, float):
                ratio: Figure = o["mb_per_s"] / corrected
                rows.append([f"OpenSSH {name}, setup-corrected", f"{transfer:.3f}",
                             f"{corrected:.1f}", f"{ratio:.3f}"])
            else:
                ratio = corrected
                rows.append([f"OpenSSH {name}, setup-corrected", "unavailable",
                             "unavailable", corrected])
            data["ratios"][f"ours/openssh {name} setup-corrected"] = ratio
            figures[f"ratio_ours_to_openssh_{short}"] = ratio
            if isinstance(cpu_corrected, float):
                cpu_ratio: Figure = o["cpu_ms_per_mb"] / cpu_corrected
                cpu_rows.append([f"OpenSSH {name}, setup-corrected", "", "",
                                 f"{cpu_corrected:.2f}", f"{cpu_ratio:.3f}"])
            else:
                cpu_ratio = cpu_corrected
                cpu_rows.append([f"OpenSSH {name}, setup-corrected", "", "", "unavailable",
                                 cpu_corrected])
            data["cpu_ratios"][f"ours/openssh {name} setup-corrected"] = cpu_ratio
            figures[f"cpu_ratio_ours_to_openssh_{short}"] = cpu_ratio

    def vs(values: dict[str, Figure], digits: int, what: str) -> str:
        """The OpenSSH part of a summary cell; one reason if none could be measured."""
        reasons = {v for v in values.values() if isinstance(v, str)}
        if len(reasons) == 1 and all(isinstance(v, str) for v in values.values()):
            return f"OpenSSH {reasons.pop()}"
        return "OpenSSH " + ", ".join(
            f"{cipher.split('-')[0]} " + (f"{v:.{digits}f}" if isinstance(v, float) else v)
            for cipher, v in values.items()) + f" ({what})"

    def ratios(prefix: str) -> str:
        values = [figures[f"{prefix}_ours_to_openssh_{SHORT[c]}"] for c in CIPHERS]
        if all(isinstance(v, str) for v in values):
            return "OpenSSH unavailable"
        return ", ".join(_fmt_ratio(v) for v in values)

    summary = [
        [f"bulk throughput, one encrypted stream, {size_mib} MiB (MB/s)",
         f"{o['mb_per_s']:.0f}",
         f"{vs(ssh_mbps, 1, 'setup-corrected')}; plain Python TCP {p['mb_per_s']:.0f}",
         f"{ratios('ratio')}; {_fmt_ratio(figures['ratio_ours_to_plain_tcp'])}"],
        ["CPU per MB moved, sender + receiver (ms)", f"{o['cpu_ms_per_mb']:.2f}",
         f"{vs(ssh_cpu, 2, 'ssh + sshd, setup-corrected')}; plain Python TCP "
         f"{p['cpu_ms_per_mb']:.2f}",
         f"{ratios('cpu_ratio')}; {_fmt_ratio(figures['cpu_ratio_ours_to_plain_tcp'])}"],
    ]
    markdown = (
        f"{size_mib} MiB of random data, median of {runs} run(s), MB/s = 10^6 bytes/s; "
        "time runs from the sender's first write to the receiver's acknowledgement "
        "(ssh: the whole command).\n\n"
        + table(["transport", "median s", "MB/s", "ours / this"], rows)
        + "\n\nCPU time (user + system) per MB moved, same runs: sender and receiver "
        "processes over the transfer (ours, plain TCP); the ssh client plus sshd's "
        "per-connection processes and `cat` for the whole command (OpenSSH; its "
        "setup-corrected figure subtracts the empty-input run's CPU). Medians; "
        "ours / this below 1 means ours uses less CPU.\n\n"
        + table(["transport", "sender / client CPU s", "receiver / server CPU s",
                 "CPU ms per MB", "ours / this"], cpu_rows)
    )
    return Outcome(markdown=markdown, data=data, figures=figures, summary=summary)


def profile(workdir: Path, size: int, out: Path) -> None:
    """One profiled run of ours (cProfile in both processes); stats land in ``out``."""
    path = workdir / "profile.dat"
    path.write_bytes(os.urandom(size))
    out.mkdir(parents=True, exist_ok=True)
    seconds = _pair("ours", path, size, profile_dir=out).seconds
    print(f"profiled run: {size / seconds / MB:.1f} MB/s (with profiler overhead); "
          f"stats in {out}/ours-send.prof and ours-recv.prof")


if __name__ == "__main__":
    if sys.argv[1:2] == ["profile"]:
        with tempfile.TemporaryDirectory(prefix="bench-prof-") as tmp:
            profile(Path(tmp), 64 * MiB, Path(sys.argv[2] if len(sys.argv) > 2 else "prof"))
    else:
        worker_main(sys.argv[1:])

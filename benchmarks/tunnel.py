"""ssh through a resumable tunnel vs direct ssh, measured in the same run.

One private sshd on a loopback port (openssh.py) and one ``continuations
tunnel-server`` allowed to reach it. Each measurement is taken twice, with a
stock ``ssh`` connecting directly and with the same command going through
``-o ProxyCommand='continuations tunnel ... --to 127.0.0.1:PORT'``, interleaved
so drift in the machine's load hits both alike:

* upload: ``ssh host 'cat > /dev/null' < file``;
* download: ``ssh host 'cat file' > /dev/null``;
* setup: ``ssh host true`` (so the transfers can also be shown setup-corrected;
  through the tunnel it includes starting the Python client);
* added latency: in one established ``ssh host cat`` session, the round-trip
  time of a 64-byte line written and read back, many times.

Loopback only and no impairment: this is the tunnel's overhead, not its
behaviour under faults (tests/test_tunnel_cli.py covers that).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    ROOT,
    Figure,
    MiB,
    Options,
    Outcome,
    median,
    percentile,
    read_line,
    spawn,
    stop,
    table,
    unavailable,
)
from openssh import DEFAULT_CIPHER, Sshd, private_sshd

NAME = "tunnel"
TITLE = "ssh through a resumable tunnel vs direct ssh (throughput, added latency)"

MB = 1e6
SUMMARY_LABEL = "ssh through a resumable tunnel: upload / download (raw), 64-byte round trip"
# The keys of latest.json's figures, by measure (run()'s per-mode dict keys).
_NAMES = {"setup_ms": "setup_ms", "upload_raw": "upload_raw_mb_per_s",
          "upload_corrected": "upload_setup_corrected_mb_per_s",
          "download_raw": "download_raw_mb_per_s",
          "download_corrected": "download_setup_corrected_mb_per_s",
          "rtt_median_ms": "round_trip_median_ms", "rtt_p90_ms": "round_trip_p90_ms"}
FIGURES = (*(f"{mode}_{name}" for mode in ("direct", "tunnel") for name in _NAMES.values()),
           *(f"ratio_{name.removesuffix('_ms').removesuffix('_mb_per_s')}"
             for name in _NAMES.values()),
           "added_latency_ms", "added_setup_ms")
LINE = 64  # bytes per latency probe, newline included
TIMEOUT = 300.0


def _timed(argv: list[str], stdin: Any, stdout: Any) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, stdin=stdin, stdout=stdout, stderr=subprocess.PIPE,
                          timeout=TIMEOUT)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{shlex.join(argv[-2:])} failed: {done.stderr.decode().strip()}")
    return elapsed


def _round_trips(argv: list[str], count: int) -> list[float]:
    """Seconds per 64-byte echo through ``ssh host cat``, after one warm-up probe."""
    proc = subprocess.Popen([*argv, "cat"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, bufsize=0)
    assert proc.stdin is not None and proc.stdout is not None
    samples = []
    try:
        for i in range(count + 1):
            probe = (b"%d " % i).ljust(LINE - 1, b"x") + b"\n"
            start = time.perf_counter()
            proc.stdin.write(probe)
            got = b""
            while len(got) < LINE:
                part = os.read(proc.stdout.fileno(), LINE - len(got))
                if not part:
                    raise RuntimeError(f"ssh cat ended early: {proc.stderr.read().decode()}"
                                       if proc.stderr else "ssh cat ended early")
                got += part
            elapsed = time.perf_counter() - start
            if got != probe:
                raise RuntimeError("echo mismatch")
            if i:  # the first one waits for the session to be ready
                samples.append(elapsed)
        proc.stdin.close()
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
    return samples


def _tunnel_server(sshd: Sshd, workdir: Path) -> tuple[subprocess.Popen[str], int]:
    env = {**os.environ, "CONTINUATIONS_STATE_DIR": str(workdir / "state")}
    proc = spawn([sys.executable, "-m", "continuations", "tunnel-server", "--listen",
                  "127.0.0.1:0", "--allow", f"127.0.0.1:{sshd.port}", "--host-key",
                  str(workdir / "tunnel_host_key")], stdout=subprocess.PIPE,
                 stderr=subprocess.DEVNULL, env=env, cwd=ROOT)
    line = read_line(proc, 30)
    match = re.match(r"listening on 127\.0\.0\.1:(\d+) ", line)
    if match is None:
        stop(proc)
        raise RuntimeError(f"unexpected tunnel-server output: {line!r}")
    return proc, int(match.group(1))


def _stats(seconds: list[float]) -> dict[str, Any]:
    return {"seconds": seconds, "median_seconds": median(seconds)}


def run(options: Options) -> Outcome:
    size_mib = 32 if options.quick else 128
    size = size_mib * MiB
    runs = options.repeats(3, 5)
    probes = 100 if options.quick else 300
    path = options.workdir / "tunnel.dat"
    with open(path, "wb") as out:
        for _ in range(size // (16 * MiB)):
            out.write(os.urandom(16 * MiB))

    with private_sshd(options.workdir) as (sshd, missing):
        if sshd is None:
            why = unavailable(missing)
            return Outcome(markdown=why, data={"unavailable": missing},
                           figures=dict.fromkeys(FIGURES, why),
                           summary=[[SUMMARY_LABEL, why, "", ""]])
        server, port = _tunnel_server(sshd, options.workdir)
        try:
            proxy = shlex.join([sys.executable, "-m", "continuations", "tunnel", "127.0.0.1",
                                str(port), "--to", f"127.0.0.1:{sshd.port}", "--known-hosts",
                                str(options.workdir / "known_hosts")])
            argv = {
                "direct": sshd.ssh_argv(cipher=DEFAULT_CIPHER),
                "tunnel": sshd.ssh_argv(cipher=DEFAULT_CIPHER, proxy_command=proxy),
            }
            measures = ("upload", "download", "setup")
            seconds: dict[str, dict[str, list[float]]] = {
                mode: {m: [] for m in measures} for mode in argv}
            rtts: dict[str, list[float]] = {mode: [] for mode in argv}
            for _ in range(runs):
                for mode, ssh in argv.items():
                    with open(path, "rb") as src:
                        seconds[mode]["upload"].append(
                            _timed([*ssh, "cat > /dev/null"], src, subprocess.DEVNULL))
                    seconds[mode]["download"].append(
                        _timed([*ssh, f"cat {shlex.quote(str(path))}"], subprocess.DEVNULL,
                               subprocess.DEVNULL))
                    seconds[mode]["setup"].append(
                        _timed([*ssh, "true"], subprocess.DEVNULL, subprocess.DEVNULL))
                    rtts[mode] += _round_trips(ssh, max(1, probes // runs))
        finally:
            stop(server)
        version = sshd.version

    data: dict[str, Any] = {"bytes": size, "runs": runs, "cipher": DEFAULT_CIPHER,
                            "openssh": version, "unit": "MB/s (10^6 bytes per second)"}
    figures_by_mode: dict[str, dict[str, float]] = {}
    for mode in argv:
        setup = median(seconds[mode]["setup"])
        entry: dict[str, Any] = {m: _stats(seconds[mode][m]) for m in measures}
        fig = {"setup_ms": setup * 1000}
        for direction in ("upload", "download"):
            raw = median(seconds[mode][direction])
            fig[f"{direction}_raw"] = size / raw / MB
            fig[f"{direction}_corrected"] = size / (raw - setup) / MB if raw > setup else 0.0
            entry[direction]["mb_per_s_raw"] = fig[f"{direction}_raw"]
            entry[direction]["mb_per_s_setup_corrected"] = fig[f"{direction}_corrected"]
        fig["rtt_median_ms"] = median(rtts[mode]) * 1000
        fig["rtt_p90_ms"] = percentile(rtts[mode], 90) * 1000
        entry["round_trip"] = {"samples": len(rtts[mode]), "median_ms": fig["rtt_median_ms"],
                               "p90_ms": fig["rtt_p90_ms"]}
        data[mode] = entry
        figures_by_mode[mode] = fig
    direct, tunnel = figures_by_mode["direct"], figures_by_mode["tunnel"]
    data["added_latency_ms"] = {
        "median": tunnel["rtt_median_ms"] - direct["rtt_median_ms"],
        "p90": tunnel["rtt_p90_ms"] - direct["rtt_p90_ms"],
        "setup": tunnel["setup_ms"] - direct["setup_ms"],
    }
    data["ratios"] = {f"tunnel/direct {k}": (tunnel[k] / direct[k] if direct[k] else 0.0)
                      for k in direct}

    def row(label: str, key: str, fmt: str) -> list[str]:
        ratio = tunnel[key] / direct[key] if direct[key] else float("nan")
        return [label, format(direct[key], fmt), format(tunnel[key], fmt), f"{ratio:.2f}"]

    rows = [
        row("upload, MB/s (raw)", "upload_raw", ".1f"),
        row("upload, MB/s (setup-corrected)", "upload_corrected", ".1f"),
        row("download, MB/s (raw)", "download_raw", ".1f"),
        row("download, MB/s (setup-corrected)", "download_corrected", ".1f"),
        row("connection setup (`ssh true`), ms", "setup_ms", ".0f"),
        row("64-byte echo round trip, median ms", "rtt_median_ms", ".3f"),
        row("64-byte echo round trip, p90 ms", "rtt_p90_ms", ".3f"),
    ]
    added = data["added_latency_ms"]
    markdown = (
        f"{size_mib} MiB of random data, {runs} run(s) of each, interleaved; round trips: "
        f"{len(rtts['tunnel'])} probes each way; cipher {DEFAULT_CIPHER.split('@')[0]}; "
        "tunnel = `ssh -o ProxyCommand='continuations tunnel ... --to 127.0.0.1:PORT'` "
        "through a `continuations tunnel-server` on loopback.\n\n"
        + table(["measure", "direct ssh", "ssh through tunnel", "tunnel / direct"], rows)
        + f"\n\nAdded latency: {added['median']:+.3f} ms median, {added['p90']:+.3f} ms p90 "
        f"per round trip; {added['setup']:+.0f} ms to set up a connection."
    )
    figures: dict[str, Figure] = {
        f"{mode}_{_NAMES[key]}": value for mode, fig in figures_by_mode.items()
        for key, value in fig.items()
    }
    figures.update({
        f"ratio_{_NAMES[key].removesuffix('_ms').removesuffix('_mb_per_s')}":
            data["ratios"][f"tunnel/direct {key}"] for key in direct})
    figures["added_latency_ms"] = added["median"]
    figures["added_setup_ms"] = added["setup"]
    assert set(figures) == set(FIGURES), set(figures) ^ set(FIGURES)
    summary = [[
        SUMMARY_LABEL,
        f"{tunnel['upload_raw']:.0f} / {tunnel['download_raw']:.0f} MB/s, "
        f"round trip {tunnel['rtt_median_ms']:.2f} ms",
        f"direct ssh {direct['upload_raw']:.0f} / {direct['download_raw']:.0f} MB/s, "
        f"round trip {direct['rtt_median_ms']:.2f} ms",
        f"{tunnel['upload_raw'] / direct['upload_raw']:.2f}x / "
        f"{tunnel['download_raw'] / direct['download_raw']:.2f}x; "
        f"+{added['median']:.2f} ms",
    ]]
    return Outcome(markdown=markdown, data=data, figures=figures, summary=summary)

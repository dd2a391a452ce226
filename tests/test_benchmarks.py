"""Smoke test of the benchmark suite: ``run.py --quick`` runs every benchmark and writes
every figure it promises, its report and its plots.

Speed targets live in the benchmarks themselves, never here: this only checks that
``benchmarks/run.py`` works end to end, that each headline figure is a number or says
why it is unavailable (never missing, never blank), and that the PNGs are real PNGs.
Quick mode makes the same figures as the full run with smaller data and fewer trials.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

RTTS = ("20ms", "100ms", "300ms")
SESSIONS = (1000, 10_000)
CIPHERS = ("chacha20", "aes128gcm")
TUNNEL_MEASURES = ("setup_ms", "upload_raw_mb_per_s", "upload_setup_corrected_mb_per_s",
                   "download_raw_mb_per_s", "download_setup_corrected_mb_per_s",
                   "round_trip_median_ms", "round_trip_p90_ms")

# Every headline figure of the issue, as "benchmark.key" in latest.json's "figures".
EXPECTED = [
    *(f"throughput.{key}" for key in (
        "ours_mb_per_s", "plain_tcp_mb_per_s", "ratio_ours_to_plain_tcp",
        "ours_cpu_ms_per_mb", "plain_tcp_cpu_ms_per_mb", "cpu_ratio_ours_to_plain_tcp")),
    *(f"throughput.{key}" for c in CIPHERS for key in (
        f"openssh_{c}_mb_per_s", f"openssh_{c}_raw_mb_per_s", f"ratio_ours_to_openssh_{c}",
        f"openssh_{c}_cpu_ms_per_mb", f"openssh_{c}_raw_cpu_ms_per_mb",
        f"cpu_ratio_ours_to_openssh_{c}")),
    *(f"reattach.{key}_{rtt}" for rtt in RTTS for key in (
        "link_up_to_first_byte_rtts", "link_up_to_first_byte_ms", "cut_to_first_byte_ms",
        "relay_rtt_measured_ms", "ratio_to_measured_rtt", "blackhole_detection_ms")),
    *(f"suspend_resume.{key}" for key in (
        "suspend_ms", "resume_in_process_ms", "fresh_connect_ms",
        "ratio_resume_in_process_to_fresh_connect", "resume_forked_ms", "resume_cold_ms",
        "python_startup_ms", "openssh_login_ms", "ratio_resume_forked_to_openssh_login",
        "ratio_resume_cold_to_openssh_login", "continuation_bytes", "process_rss_bytes",
        "continuation_percent_of_rss", "lookup_1000_us", "lookup_100000_us",
        "ratio_lookup_100000_to_1000")),
    *(f"memory.{key}_{n}" for n in SESSIONS for key in (
        "ours_rss_per_session", "tcp_rss_per_session", "ratio_rss", "ours_uss_per_session",
        "tcp_uss_per_session", "ours_idle_cpu_percent", "tcp_idle_cpu_percent")),
    "memory.ours_default_keepalive_idle_cpu_percent_1000",
    *(f"tunnel.{mode}_{m}" for mode in ("direct", "tunnel") for m in TUNNEL_MEASURES),
    "tunnel.added_latency_ms", "tunnel.added_setup_ms",
    # Needs root and network namespaces, else "unavailable: ...".
    "netlink.lost_notification_to_data_ms", "netlink.baseline_command_to_data_ms",
    "netlink.ratio_command_to_data",
    *(f"shell.{key}" for key in (
        "keystroke_median_ms", "openssh_keystroke_median_ms", "ratio_keystroke_median_to_openssh",
        "login_ms", "openssh_login_ms", "ratio_login_to_openssh", "cut_to_prompt_ms",
        "cut_to_prompt_rtts", "resume_ms", "ratio_resume_to_openssh_login")),
]
# Figures that need OpenSSH: numbers whenever sshd is installed, else "unavailable: ...".
NEEDS_OPENSSH = re.compile(r"openssh|^tunnel\.")
PLOTS = {"summary.png", "throughput.png", "reattach.png", "suspend_resume.png",
         "memory.png", "tunnel.png", "shell.png"}  # and netlink.png where it can run
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def sshd_installed() -> bool:
    return (shutil.which("sshd") is not None or Path("/usr/sbin/sshd").exists()) and all(
        shutil.which(tool) for tool in ("ssh", "ssh-keygen"))


@pytest.mark.slow
def test_quick_suite_writes_every_figure_and_plot(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--out",
         str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=280,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]

    document = json.loads((tmp_path / "latest.json").read_text())
    assert document["mode"] == "quick"
    for key in ("cpu", "cores", "kernel", "python", "cryptography", "openssh", "date"):
        assert document["machine"][key], key
    for name, result in document["benchmarks"].items():  # every benchmark run.py knows
        assert "error" not in result, (name, result.get("error"))

    figures = document["figures"]
    missing = [key for key in EXPECTED if key not in figures]
    assert not missing, missing
    with_ssh = sshd_installed()
    for key in EXPECTED:
        value = figures[key]
        if isinstance(value, str):
            assert re.fullmatch(r"unavailable: \S.*", value), (key, value)
            assert not (with_ssh and NEEDS_OPENSSH.search(key)), (key, value)
        else:
            assert isinstance(value, int | float) and math.isfinite(value), (key, value)
    assert document["summary"], "no summary rows"

    markdown = (tmp_path / "latest.md").read_text()
    assert markdown.startswith("## Benchmark results (quick mode)")
    assert "### Summary" in markdown and "| figure" in done.stdout
    referenced = set(re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", markdown))
    assert referenced >= PLOTS, PLOTS - referenced
    for name in referenced:
        head = (tmp_path / name).read_bytes()[:24]
        assert head[:8] == PNG_SIGNATURE and head[12:16] == b"IHDR", name
        width, height = struct.unpack(">II", head[16:24])
        assert width >= 400 and height >= 300, (name, width, height)

"""`continuations demo`, run as a user runs it: the real command, as a subprocess.

Small parameters keep each run to a few seconds; every event still happens. The
figures the demo measures are not checked here (speed belongs in benchmarks/),
only that each event happened, the data arrived intact, and the check can fail.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from continuations.demo import plot
from continuations.demo.report import Report

SMALL = ["--settle", "0.5", "--outage", "2", "--suspend-for", "1", "--file-size", "3",
         "--file-rate", "1.5", "--audio-kbps", "512", "--rtt", "40"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def demo(tmp_path: Path, *args: str, timeout: float = 150) -> tuple[int, dict[str, Any], str]:
    """Run the demo; its exit status, the JSON it printed, and its human output."""
    # The demo keeps its own store and state in a private directory; these make sure
    # that even a bug there could not reach the real user's.
    env = {**os.environ, "CONTINUATIONS_STATE_DIR": str(tmp_path / "state"),
           "CONTINUATIONS_RUNTIME_DIR": str(tmp_path / "run"),
           "CONTINUATIONS_STORE": str(tmp_path / "user-store.db")}
    done = subprocess.run(
        [sys.executable, "-m", "continuations", "demo", *args, "--out", str(tmp_path / "out"),
         "--json"],
        capture_output=True, text=True, timeout=timeout, env=env, cwd=tmp_path,
    )
    assert done.stdout.strip(), done.stderr
    return done.returncode, json.loads(done.stdout), done.stderr


def check_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    length, kind, width, height = struct.unpack(">I4sII", data[8:24])
    assert (length, kind) == (13, b"IHDR")
    assert width > 100 and height > 100


def check_run(report: dict[str, Any], tmp_path: Path) -> None:
    assert report["schema"] == "continuations-demo/1"
    assert report["ok"] is True and report["integrity"] is True and report["error"] is None
    kinds = [event["kind"] for event in report["events"]]
    for kind in ("migrate", "blackhole", "suspend", "resume"):
        assert kind in kinds, kinds
    assert set(report["streams"]) == {"audio", "file"}
    for stream in report["streams"].values():
        assert stream["intact"] is True
        assert stream["sent_bytes"] == stream["received_bytes"] > 0
        assert stream["sent_sha256"] == stream["received_sha256"]
    assert report["streams"]["file"]["sent_bytes"] == 3 * 1024 * 1024

    (suspend,) = [e for e in report["events"] if e["kind"] == "suspend"]
    assert suspend["figures"]["server_kept_session"] is True
    assert suspend["figures"]["continuation_bytes"] > 0
    (resume,) = [e for e in report["events"] if e["kind"] == "resume"]
    # The client ran in two processes, neither of them the demo's.
    assert len(report["client_pids"]) == 2
    assert resume["figures"]["new_pid"] == report["client_pids"][1]
    assert len(report["session_id"]) == 32

    out = tmp_path / "out"
    assert json.loads((out / "report.json").read_text()) == report
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert report["output"]["plot"] is None and "pip install" in report["output"][
            "plot_skipped"]
    else:
        check_png(Path(report["output"]["plot"]))
    # Nothing the demo started is left running.
    for pid in report["client_pids"]:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(
            f"/proc/{pid}/status").read_text()
    assert not (tmp_path / "user-store.db").exists()


def test_demo_keeps_every_byte_through_every_event(tmp_path: Path) -> None:
    code, report, human = demo(tmp_path, *SMALL)
    assert code == 0, human
    check_run(report, tmp_path)
    assert report["mode"] == "loopback"
    (migrate,) = [e for e in report["events"] if e["kind"] == "migrate"]
    assert (migrate["figures"]["from"], migrate["figures"]["to"]) == ("127.0.0.2", "127.0.0.3")
    assert {"127.0.0.2", "127.0.0.3"} <= set(report["addresses"])
    for line in ("[migrate]", "[blackhole]", "[suspend]", "[resume]", "intact", "summary:"):
        assert line in human


def _netns_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    if shutil.which("ip") is None:
        return "needs iproute2's ip"
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        return f"ip netns does not work here: {probe.stderr.strip()}"
    return None


@pytest.mark.skipif(_netns_unavailable() is not None, reason=str(_netns_unavailable()))
def test_demo_in_network_namespaces_follows_link_changes(tmp_path: Path) -> None:
    code, report, human = demo(tmp_path, *SMALL, "--netns")
    assert code == 0, human
    check_run(report, tmp_path)
    assert report["mode"] == "netns"
    moves = {e["name"]: e for e in report["events"] if e["kind"] == "migrate"}
    assert set(moves) == {"wifi lost", "wifi back"}
    for move in moves.values():
        assert move["trigger"] == "rtnetlink"
    assert (moves["wifi lost"]["figures"]["from"], moves["wifi lost"]["figures"]["to"]) == (
        "10.201.1.2", "10.201.2.2")
    assert moves["wifi back"]["figures"]["to"] == "10.201.1.2"
    # Everything the demo created is gone: namespaces, and with them the veth pairs.
    names = report["netns"]["namespaces"]
    assert len(names) == 2 and report["netns"]["left_behind"] == []
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                            timeout=30).stdout
    for name in names:
        assert name not in listed
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True,
                           timeout=30).stdout
    for interface in ("wifi", "cellular", "wifi-ap", "cell-bs"):
        assert f": {interface}:" not in links and f": {interface}@" not in links


def test_a_damaged_byte_fails_the_integrity_check(tmp_path: Path) -> None:
    code, report, human = demo(tmp_path, *SMALL, "--sabotage", "duplicate")
    assert code == 1, human
    assert report["ok"] is False and report["integrity"] is False
    assert report["streams"]["audio"]["intact"] is True
    damaged = report["streams"]["file"]
    assert damaged["intact"] is False
    assert damaged["received_bytes"] == damaged["sent_bytes"] + 1
    assert "DAMAGED" in human and "NOT intact" in human


def test_bad_parameters_give_one_clear_line(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "continuations", "demo", "--rtt", "-5",
                           "--outage", "0"], capture_output=True, text=True, timeout=60,
                          cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "continuations: --rtt, --outage must be positive"
    ]
    assert not list(tmp_path.iterdir())  # refused before anything was created


def test_without_matplotlib_the_plot_is_skipped_with_a_hint(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    report = Report(mode="loopback", parameters={},
                    throughput={"t": [0.0, 1.0], "audio": [0, 10], "file": [0, 20]})
    reason = plot.draw(report, tmp_path / "plot.png")
    assert reason is not None and "pip install 'continuations[demo]'" in reason
    assert not (tmp_path / "plot.png").exists()


def test_throughput_bins_show_nothing_while_suspended() -> None:
    # Samples stop while the client is suspended; the backlog arrives after.
    times = [0.0, 0.5, 1.0, 3.0, 3.5]
    totals = [0.0, 100.0, 200.0, 900.0, 1000.0]
    xs, ys = plot.rates(times, totals, 3.5)
    assert len(xs) == len(ys) == 14
    during = [y for x, y in zip(xs, ys, strict=True) if 1.25 < x < 2.75]
    assert during and all(y == 0 for y in during)
    assert sum(y * plot.BIN for y in ys) == 1000.0

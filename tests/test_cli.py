"""The real `continuations` command, run as a subprocess."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

CLI = [sys.executable, "-m", "continuations"]


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


def test_demo_runs_and_reports_every_event(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    done = cli("demo", "--size", "4", "--rate", "4", "--outage", "1.5", "--json", str(report))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "intact" in done.stdout
    data = json.loads(report.read_text())
    assert data["ok"] is True and data["upload_ok"] and data["download_ok"]
    assert [step["name"] for step in data["steps"]] == ["cut", "blackhole", "heal", "migrate"]
    assert data["attach_version"] >= 3
    assert len(data["session_id"]) == 32


def test_help_everywhere() -> None:
    top = cli("--help")
    assert top.returncode == 0
    commands = re.findall(r"^    ([a-z][\w-]*)\s{2,}\S", top.stdout, flags=re.M)
    assert {"demo", "list", "show", "suspend", "resume", "drop", "attr", "gc"} <= set(commands)
    for name in commands:
        done = cli(name, "--help")
        assert done.returncode == 0, name
        assert f"usage: continuations {name}" in done.stdout


def test_bad_arguments_give_one_clear_line_and_nonzero_status() -> None:
    done = cli("demo", "--rtt", "-5")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "continuations: --rtt, --outage, --size and --rate must be positive"
    ]
    unknown = cli("frobnicate")
    assert unknown.returncode == 2
    assert "invalid choice" in unknown.stderr

"""The real `continuations` command, run as a subprocess."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

CLI = [sys.executable, "-m", "continuations"]


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


def test_help_everywhere() -> None:
    top = cli("--help")
    assert top.returncode == 0
    commands = re.findall(r"^    ([a-z][\w-]*)\s{2,}\S", top.stdout, flags=re.M)
    assert {"demo", "list", "show", "suspend", "resume", "drop", "attr", "gc"} <= set(commands)
    for name in commands:
        done = cli(name, "--help")
        assert done.returncode == 0, name
        assert f"usage: continuations {name}" in done.stdout


def test_bad_arguments_give_one_clear_line_and_nonzero_status(tmp_path: Path) -> None:
    # The demo's own parameters are checked in tests/test_demo.py.
    done = cli("--store", str(tmp_path / "store.db"), "show", "zz")
    assert done.returncode == 1
    assert len(done.stderr.strip().splitlines()) == 1
    assert done.stderr.startswith("continuations: ")
    unknown = cli("frobnicate")
    assert unknown.returncode == 2
    assert "invalid choice" in unknown.stderr

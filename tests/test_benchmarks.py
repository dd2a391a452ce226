"""Smoke test of the benchmark suite: it runs and writes the figures it promises.

Speed targets live in the benchmarks themselves, never here: this only checks
that ``benchmarks/run.py`` works end to end and that its JSON has the numbers.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quick_reattach_benchmark_writes_its_figures(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--only", "reattach",
         "--trials", "1", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "| RTT" in done.stdout  # the table is printed

    document = json.loads((tmp_path / "latest.json").read_text())
    assert document["mode"] == "quick"
    for key in ("cpu", "cores", "kernel", "python", "cryptography", "date"):
        assert document["machine"][key], key
    assert (tmp_path / "latest.md").read_text().startswith("## Benchmark results")

    figures = document["benchmarks"]["reattach"]
    assert set(figures["rtts"]) == {"20ms", "100ms"}
    for per_rtt in figures["rtts"].values():
        assert per_rtt["trials"] == 1
        for measure in ("link_up_to_first_byte", "cut_to_first_byte",
                        "blackhole_to_disconnected"):
            stats = per_rtt[measure]
            for key in ("median_ms", "p90_ms", "median_rtts"):
                value = stats[key]
                assert isinstance(value, float) and math.isfinite(value) and value > 0, (
                    measure, key, value)

"""The benchmark suite's single entry point.

    python benchmarks/run.py [--quick] [--only NAME ...] [--trials N] [--out DIR]

Runs each benchmark, prints one markdown report (a summary table, each
benchmark's tables, machine info) and writes it to ``DIR/latest.md``, with
every figure and raw sample in ``DIR/latest.json`` and PNG plots next to them
(plots.py; matplotlib). ``--quick`` takes about 2.5 minutes here, the full run
about 7 (bound: 10). Figures are medians of several runs and ratios against baselines measured
in the same run: the machine is shared and noisy, so absolute numbers move and
ratios are what to compare across runs.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import memory
import netlink
import plots
import reattach
import shell
import suspend_resume
import throughput
import tunnel
from common import ROOT, Options, Outcome, table, unavailable

BENCHMARKS: dict[str, ModuleType] = {
    m.NAME: m for m in (throughput, reattach, suspend_resume, memory, tunnel, netlink, shell)
}


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        from importlib.metadata import version

        crypto = version("cryptography")
    except Exception as exc:
        crypto = f"unknown ({exc})"
    ssh = shutil.which("ssh")
    openssh = (
        subprocess.run([ssh, "-V"], capture_output=True, text=True, timeout=10).stderr.strip()
        if ssh else "not installed"
    )
    try:
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
            capture_output=True, text=True, timeout=10,
        ).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "kernel": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "cryptography": crypto,
        "openssh": openssh,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "commit": commit,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
    }


SUMMARY_HEADER = ["figure", "ours", "baseline (same run)", "ratio"]


def report(mode: str, machine: dict[str, Any], sections: dict[str, tuple[str, str]],
           seconds: float, summary: list[list[str]], images: dict[str, list[str]],
           plots_note: str) -> str:
    lines = [f"## Benchmark results ({mode} mode)", ""]
    if summary:
        lines += ["### Summary", "",
                  "Medians; every baseline was measured in the same run, interleaved with "
                  "ours. Ratios are ours / baseline.", "",
                  table(SUMMARY_HEADER, summary), ""]
    lines += [f"![summary]({name})" for name in images.get("summary", [])]
    if plots_note:
        lines += [f"Plots: {plots_note}"]
    lines += [""] if images.get("summary") or plots_note else []
    for name, (title, body) in sections.items():
        lines += [f"### {title}", "", body, ""]
        lines += [f"![{name}]({image})" for image in images.get(name, [])]
        lines += [""] if images.get(name) else []
    lines += [
        "### Machine",
        "",
        f"- CPU: {machine['cpu']}, {machine['cores']} cores "
        f"({machine['usable_cores']} usable)",
        f"- kernel: {machine['kernel']}",
        f"- Python {machine['python']}, cryptography {machine['cryptography']}",
        f"- OpenSSH: {machine['openssh']}",
        f"- load average at start: {', '.join(map(str, machine['load_average']))}",
        f"- commit: {machine['commit']}",
        f"- date: {machine['date']}; suite took {seconds:.0f} s",
        "",
    ]
    return "\n".join(lines)


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # unwinds through every cleanup block


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer runs")
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), metavar="NAME",
                        help=f"run only these ({', '.join(sorted(BENCHMARKS))})")
    parser.add_argument("--trials", type=int, default=None,
                        help="override every benchmark's number of runs / trials")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results",
                        help="directory for latest.json and latest.md")
    args = parser.parse_args(argv)
    if args.trials is not None and args.trials < 1:
        parser.error("--trials must be at least 1")
    signal.signal(signal.SIGTERM, _terminate)
    try:
        return _run(args)
    except KeyboardInterrupt:
        print("\ninterrupted; every process we started has been stopped", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:

    mode = "quick" if args.quick else "full"
    names = args.only or list(BENCHMARKS)
    machine = machine_info()
    started = time.monotonic()
    results: dict[str, Any] = {}
    figures: dict[str, Any] = {}
    summary: list[list[str]] = []
    sections: dict[str, tuple[str, str]] = {}
    failed = False
    with tempfile.TemporaryDirectory(prefix="continuations-bench-") as tmp:
        for name in names:
            module = BENCHMARKS[name]
            workdir = Path(tmp) / name
            workdir.mkdir()
            options = Options(quick=args.quick, trials=args.trials, workdir=workdir)
            print(f"[{name}] running ({mode})...", file=sys.stderr, flush=True)
            t0 = time.monotonic()
            try:
                outcome: Outcome = module.run(options)
            except Exception as exc:  # one broken benchmark must not hide the others
                failed = True
                traceback.print_exc()
                error = f"error: {type(exc).__name__}: {exc}"
                results[name] = {"error": error}
                sections[name] = (module.TITLE, error)
                summary.append([module.TITLE, error, "", ""])
                continue
            took = time.monotonic() - t0
            print(f"[{name}] done in {took:.0f} s", file=sys.stderr, flush=True)
            results[name] = {**outcome.data, "seconds": took}
            figures.update({f"{name}.{key}": value for key, value in outcome.figures.items()})
            summary += outcome.summary
            notes = "".join(f"\n- {note}" for note in outcome.notes)
            sections[name] = (module.TITLE, outcome.markdown + ("\n" + notes if notes else ""))
    seconds = time.monotonic() - started
    args.out.mkdir(parents=True, exist_ok=True)
    document: dict[str, Any] = {
        "mode": mode, "machine": machine, "seconds": seconds,
        # The headline numbers, "benchmark.key" -> number or "unavailable: why".
        "figures": figures,
        "summary": [dict(zip(SUMMARY_HEADER, row, strict=True)) for row in summary],
        "benchmarks": results,
    }
    images: dict[str, list[str]] = {}
    plots_note = ""
    try:
        images = plots.render(document, args.out)
    except plots.PlotsUnavailable as exc:
        plots_note = unavailable(str(exc))
    except Exception as exc:  # a broken plot must not lose the figures measured
        failed = True
        traceback.print_exc()
        plots_note = f"error: {type(exc).__name__}: {exc}"
    document["plots"] = plots_note or images
    markdown = report(mode, machine, sections, seconds, summary, images, plots_note)
    print(markdown)
    (args.out / "latest.json").write_text(json.dumps(document, indent=2) + "\n")
    (args.out / "latest.md").write_text(markdown)
    pngs = sorted(name for files in images.values() for name in files)
    print(f"wrote {args.out / 'latest.json'}, {args.out / 'latest.md'}"
          + (f" and {', '.join(pngs)}" if pngs else
             f"; plots: {plots_note or 'none for these benchmarks'}"), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

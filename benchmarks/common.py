"""Shared pieces of the benchmark suite: options, results, statistics, processes.

Every benchmark module exposes ``NAME``, ``TITLE`` and ``run(options) -> Outcome``.
``run.py`` collects the outcomes into one markdown report and one JSON file.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import queue
import resource
import signal
import statistics
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

MiB = 1024 * 1024
ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Options:
    quick: bool
    trials: int | None  # overrides every benchmark's repetition count when set
    workdir: Path  # a private temporary directory, removed by run.py

    def repeats(self, quick: int, full: int) -> int:
        return max(1, self.trials) if self.trials is not None else (quick if self.quick else full)


Figure = float | str  # a measured number, or unavailable("why")


@dataclass(frozen=True)
class Measured:
    """One timed run: wall seconds, and CPU seconds (user + system) on each side."""

    seconds: float
    client_cpu: float  # the sender / client process(es)
    server_cpu: float  # the receiver / server process(es)


@dataclass
class Outcome:
    """What one benchmark hands back: a markdown section and JSON-able data.

    ``figures`` are the headline numbers under stable flat keys (``run.py`` files
    them as ``NAME.key`` in ``latest.json``'s ``figures``; the plots and the smoke
    test read them there), each a number or ``unavailable(reason)``, never absent.
    ``summary`` rows (figure, ours, baseline measured in the same run, ratio) make
    the report's summary table.
    """

    markdown: str
    data: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    figures: dict[str, Figure] = field(default_factory=dict)
    summary: list[list[str]] = field(default_factory=list)


def unavailable(reason: str) -> str:
    """The one spelling of a missing baseline, in tables and in JSON alike."""
    return f"unavailable: {reason}"


# --- statistics ---------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100): an observed value, honest for few samples."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return float(ordered[rank - 1])


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub markdown table with columns padded for reading in a terminal too."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


def cpu_seconds() -> float:
    """User + system CPU time this process (all its threads) has used so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --- processes ----------------------------------------------------------------------------

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """preexec_fn: the child gets SIGTERM if the benchmark dies, even by SIGKILL (Linux)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def spawn(argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[str]:
    """Start a child in its own process group, tied to our lifetime."""
    return subprocess.Popen(
        list(argv), text=True, start_new_session=True, preexec_fn=die_with_parent, **kwargs
    )


def stop(proc: subprocess.Popen[str] | None, grace: float = 3.0) -> None:
    """Terminate a child we started, and its process group; SIGKILL after ``grace``."""
    if proc is None:
        return
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(grace)
    else:
        # The leader is gone; make sure nothing it forked is left in its group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


_line_queues: dict[int, queue.Queue[str | None]] = {}


def _pump_lines(stream: IO[str], lines: queue.Queue[str | None]) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)  # end of output


def read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    """The child's next stdout line, or an error if it exits or is silent too long.

    A reader thread per child feeds a queue: waiting on the descriptor instead would
    miss lines that already sit in the text wrapper's buffer."""
    assert proc.stdout is not None
    lines = _line_queues.get(proc.pid)
    if lines is None:
        lines = _line_queues[proc.pid] = queue.Queue()
        threading.Thread(target=_pump_lines, args=(proc.stdout, lines), daemon=True).start()
    try:
        line = lines.get(timeout=timeout)
    except queue.Empty:
        raise TimeoutError(f"no output from {proc.args!r} within {timeout:.0f} s") from None
    if line is None:
        raise RuntimeError(f"{proc.args!r} exited early (rc={proc.wait(5)})")
    return line.strip()


def standalone(run: Callable[[Options], Outcome]) -> None:
    """``python benchmarks/NAME.py [--quick]``: one benchmark on its own, its report on
    stdout (``run.py --only NAME`` does the same and writes the results files)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        outcome = run(Options(quick="--quick" in sys.argv, trials=None, workdir=Path(tmp)))
    print(outcome.markdown)
    for note in outcome.notes:
        print("-", note)

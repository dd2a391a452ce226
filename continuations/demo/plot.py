"""The demo's plot: throughput over time per stream, with the events marked (PNG).

matplotlib is optional (``pip install 'continuations[demo]'``); without it the
demo runs anyway and says the plot was skipped.
"""

from __future__ import annotations

import bisect
from pathlib import Path
from typing import TYPE_CHECKING

from continuations.demo.report import Report

if TYPE_CHECKING:
    from matplotlib.axes import Axes

BIN = 0.25  # seconds per throughput bar
SKIPPED = ("matplotlib is not installed, so no plot was drawn; install it with "
           "pip install 'continuations[demo]' (or pip install matplotlib)")


def rates(times: list[float], totals: list[float], end: float) -> tuple[list[float], list[float]]:
    """Bytes/s in ``BIN``-second bins from cumulative samples.

    The count holds its value until the next sample: while the client is suspended
    there are no samples and nothing arrives, and the backlog shows up in the bin
    where it was received, not smeared across the gap."""

    def total_at(t: float) -> float:
        i = bisect.bisect_right(times, t)
        return totals[i - 1] if i else 0.0

    xs, ys = [], []
    edge = 0.0
    while edge < end:
        xs.append(edge + BIN / 2)
        ys.append((total_at(edge + BIN) - total_at(edge)) / BIN)
        edge += BIN
    return xs, ys


def draw(report: Report, path: Path) -> str | None:
    """Write the PNG; return None, or why no plot was written."""
    try:
        import matplotlib
    except ImportError:
        return SKIPPED
    matplotlib.use("Agg")  # no display needed, and none is touched
    import matplotlib.pyplot as plt

    times = report.throughput.get("t", [])
    if len(times) < 2:
        return "too few progress samples to plot"
    end = times[-1]
    names = [n for n in ("audio", "file") if n in report.throughput]
    fig, axes = plt.subplots(len(names), 1, sharex=True, figsize=(10, 2.6 * len(names) + 0.8),
                             squeeze=False)
    for ax, name in zip(axes[:, 0], names, strict=True):
        xs, ys = rates(times, report.throughput[name], end)
        ax.step(xs, [y / 1e6 for y in ys], where="mid", linewidth=1.2,
                color="tab:blue" if name == "audio" else "tab:green")
        ax.set_ylabel(f"{name}\nMB/s")
        ax.grid(alpha=0.3)
        _mark(ax, report)
    axes[0, 0].set_title(f"continuations demo ({report.mode}, "
                         f"{report.parameters.get('rtt_ms', 0):g} ms RTT): "
                         "throughput received per stream")
    for event in report.events:
        axes[0, 0].annotate(event.name, (event.t, 1.0), xycoords=("data", "axes fraction"),
                            xytext=(2, -10), textcoords="offset points", fontsize=8,
                            rotation=0, va="top")
    axes[-1, 0].set_xlabel("seconds since the streams started")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def _mark(ax: Axes, report: Report) -> None:
    suspended_at = None
    for event in report.events:
        if event.kind == "blackhole":
            outage = float(event.figures.get("outage_s") or 0.0)
            ax.axvspan(event.t, event.t + outage, color="black", alpha=0.12)
        elif event.kind == "suspend":
            # Shaded from the client starting to suspend to the resumed process running,
            # not from the commands (which spend most of their time starting Python).
            suspended_at = event.figures.get("client_suspending_at_s") or event.t
        elif event.kind == "resume" and suspended_at is not None:
            resumed_at = event.figures.get("client_resumed_at_s") or event.t
            ax.axvspan(suspended_at, resumed_at, color="tab:orange", alpha=0.18)
        else:
            ax.axvline(event.t, color="tab:red", linewidth=1, linestyle="--")

"""PNG plots of one run of the suite, drawn from what ``run.py`` writes to latest.json.

``render(document, out)`` writes one PNG per benchmark family it knows (those that
ran without error) plus ``summary.png``, four panels of the headline comparisons,
and returns the file names per family. Every bar is a median from this run, and
every plot shows ours next to the baselines measured in the same run; a baseline
that was unavailable is named as such in the plot instead of leaving a gap.

matplotlib is optional (the ``demo`` and ``test`` extras); with Agg, the
non-interactive backend, no display is needed. Without matplotlib ``render``
raises ``PlotsUnavailable`` with the reason, and the report says so.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["PlotsUnavailable", "render"]

OURS = "#2b6cb0"
PLAIN = "#a0aec0"
SSH = "#dd6b20"
GOAL = "#2f855a"
LIMIT = "#c53030"

Figures = dict[str, Any]  # one benchmark's figures: key -> number or "unavailable: ..."


class PlotsUnavailable(Exception):
    """Plots cannot be drawn here (the message says why and how to fix it)."""


def _num(figures: Figures, key: str) -> float | None:
    value = figures.get(key)
    return float(value) if isinstance(value, int | float) else None


def _why(figures: Figures, key: str) -> str:
    value = figures.get(key)
    return str(value) if isinstance(value, str) else "missing"


def _bars(ax: Axes, items: list[tuple[str, float | None, str, str]], unit: str,
          fmt: str = "{:.0f}", log: bool = False) -> None:
    """Horizontal bars, first item on top, each labelled with its value; an item
    whose value is None is listed with the reason instead of a bar."""
    items = items[::-1]
    labels = [label for label, _, _, _ in items]
    values = [value if value is not None else 0.0 for _, value, _, _ in items]
    colors = [color for _, _, color, _ in items]
    bars = ax.barh(labels, values, color=colors)
    top = max(values) if any(values) else 1.0
    if log:
        ax.set_xscale("log")
        positive = [v for v in values if v > 0]
        if positive:
            ax.set_xlim(min(positive) / 2, max(positive) * 8)
    else:
        ax.set_xlim(0, top * 1.25)
    left = ax.get_xlim()[0]
    for bar, (_, value, _, why) in zip(bars, items, strict=True):
        y = bar.get_y() + bar.get_height() / 2
        if value is None:
            ax.text(left * 1.1 if log else top * 0.01, y, why, va="center", fontsize=7,
                    color=LIMIT)
        else:
            ax.text(value, y, " " + fmt.format(value), va="center", fontsize=8)
    ax.set_xlabel(unit)
    ax.tick_params(axis="y", labelsize=8)


def _inside(ax: Axes, x: float, height: float, text: str) -> None:
    """A bar's value written inside it, clear of the whiskers drawn from its top."""
    ax.text(x, height / 2, text, ha="center", va="center", fontsize=8, color="white",
            fontweight="bold")


# --- one panel per comparison -------------------------------------------------------------


def throughput_panel(ax: Axes, f: Figures, data: dict[str, Any]) -> None:
    items: list[tuple[str, float | None, str, str]] = [
        ("continuations", _num(f, "ours_mb_per_s"), OURS, ""),
        ("plain Python TCP (no crypto)", _num(f, "plain_tcp_mb_per_s"), PLAIN, ""),
    ]
    for short, name in (("chacha20", "chacha20-poly1305"), ("aes128gcm", "aes128-gcm")):
        key = f"openssh_{short}_mb_per_s"
        items.append((f"OpenSSH {name}\n(setup-corrected)", _num(f, key), SSH, _why(f, key)))
        raw = f"openssh_{short}_raw_mb_per_s"
        items.append((f"OpenSSH {name}\n(raw, incl. setup)", _num(f, raw), "#fbd38d",
                      _why(f, raw)))
    _bars(ax, items, "MB/s (higher is better)")
    ax.set_title(f"Bulk throughput, one stream, {data.get('bytes', 0) >> 20} MiB "
                 f"(median of {data.get('runs', '?')})", fontsize=10)


def cpu_panel(ax: Axes, f: Figures, data: dict[str, Any]) -> None:
    items: list[tuple[str, float | None, str, str]] = [
        ("continuations", _num(f, "ours_cpu_ms_per_mb"), OURS, ""),
        ("plain Python TCP (no crypto)", _num(f, "plain_tcp_cpu_ms_per_mb"), PLAIN, ""),
    ]
    for short, name in (("chacha20", "chacha20-poly1305"), ("aes128gcm", "aes128-gcm")):
        key = f"openssh_{short}_cpu_ms_per_mb"
        items.append((f"OpenSSH {name}\n(setup-corrected)", _num(f, key), SSH, _why(f, key)))
    _bars(ax, items, "CPU ms per MB, sender + receiver (lower is better)", fmt="{:.2f}")
    ax.set_title("CPU time per MB moved", fontsize=10)


def reattach_panel(ax: Axes, f: Figures, data: dict[str, Any]) -> None:
    rtts = sorted(data.get("rtts", {}), key=lambda k: int(k.removesuffix("ms")))
    xs = range(len(rtts))
    ours = [data["rtts"][r]["link_up_to_first_byte"]["median_rtts"] for r in rtts]
    p90 = [data["rtts"][r]["link_up_to_first_byte"]["p90_rtts"] for r in rtts]
    base = [data["rtts"][r]["relay_rtt_measured_ms"] / data["rtts"][r]["rtt_ms"]
            for r in rtts]
    width = 0.38
    ax.bar([x - width / 2 for x in xs], ours, width, color=OURS,
           yerr=[[0.0] * len(ours), [b - a for a, b in zip(ours, p90, strict=True)]],
           capsize=3, label="continuations: new link to first byte (median, p90)")
    ax.bar([x + width / 2 for x in xs], base, width, color=PLAIN,
           label="TCP ping-pong through the same relay")
    ax.axhline(data.get("goal_rtts", 1.0), color=GOAL, linestyle="--", linewidth=1,
               label="goal: 1 RTT")
    ax.axhline(data.get("floor_rtts", 2.0), color=LIMIT, linestyle=":", linewidth=1,
               label="floor: 2 RTT")
    for x, value in zip(xs, ours, strict=True):
        _inside(ax, x - width / 2, value, f"{value:.2f}")
    for x, value in zip(xs, base, strict=True):
        _inside(ax, x + width / 2, value, f"{value:.2f}")
    ax.set_xticks(list(xs), [r.replace("ms", " ms RTT") for r in rtts])
    ax.set_ylabel("RTTs of the configured delay (lower is better)")
    ax.set_ylim(0, 3.0)
    ax.legend(fontsize=7, loc="upper center", ncol=2)
    ax.set_title("Re-attach after a connection cut", fontsize=10)


def blackhole_panel(ax: Axes, f: Figures, data: dict[str, Any]) -> None:
    rtts = sorted(data.get("rtts", {}), key=lambda k: int(k.removesuffix("ms")))
    values = [data["rtts"][r]["blackhole_to_disconnected"]["median_ms"] for r in rtts]
    worst = [data["rtts"][r]["blackhole_to_disconnected"]["max_ms"] for r in rtts]
    xs = range(len(rtts))
    ax.bar(list(xs), values, 0.5, color=OURS,
           yerr=[[0.0] * len(values), [b - a for a, b in zip(values, worst, strict=True)]],
           capsize=3, label="path silenced to Disconnected (median, max)")
    ax.axhline(data.get("dead_timeout_bound_ms", 2000.0), color=LIMIT, linestyle=":",
               label="bound: dead_timeout")
    for x, value in zip(xs, values, strict=True):
        _inside(ax, x, value, f"{value:.0f}")
    ax.set_xticks(list(xs), [r.replace("ms", " ms RTT") for r in rtts])
    ax.set_ylabel("ms (lower is better)")
    ax.set_ylim(0, data.get("dead_timeout_bound_ms", 2000.0) * 1.3)
    ax.legend(fontsize=7, loc="upper center", ncol=2)
    ax.set_title("Blackhole detection", fontsize=10)


def resume_panel(ax: Axes, f: Figures, data: dict[str, Any]) -> None:
    items: list[tuple[str, float | None, str, str]] = [
        ("suspend", _num(f, "suspend_ms"), OURS, ""),
        ("resume in-process", _num(f, "resume_in_process_ms"), OURS, ""),
        ("resume, new process\n(through the resumer)", _num(f, "resume_forked_ms"), OURS, ""),
        ("resume, new process\n(cold start)", _num(f, "resume_cold_ms"), OURS, ""),
        ("fresh connect() (ours)", _num(f, "fresh_connect_ms"), PLAIN, ""),
        ("python -c pass", _num(f, "python_startup_ms"), PLAIN, ""),
        ("fresh OpenSSH login\n(ssh host true)", _num(f, "openssh_login_ms"), SSH,
         _why(f, "openssh_login_ms")),
    ]
    _bars(ax, items, "ms, log scale (lower is better)", fmt="{:.1f}", log=True)
    ax.set_title("Suspend and resume vs a fresh login", fontsize=10)


def lookup_panel(ax: Axes, f: Figures, data: dict[str, Any]) -> None:
    big = int(data.get("lookup_big_count", 100_000))
    items: list[tuple[str, float | None, str, str]] = [
        ("among 1,000", _num(f, "lookup_1000_us"), PLAIN, ""),
        (f"among {big:,}", _num(f, f"lookup_{big}_us"), OURS, ""),
    ]
    _bars(ax, items, "µs per lookup (lower is better)")
    ax.set_title("Resume lookup among suspended sessions", fontsize=10)


def memory_panel(ax: Axes, f: Figures, data: dict[str, Any]) -> None:
    counts = sorted(int(k) for k in data if k.isdigit() and "ours" in data[k])
    xs = range(len(counts))
    width = 0.38
    for offset, kind, color, label in ((-width / 2, "ours", OURS, "continuations"),
                                       (width / 2, "tcp", PLAIN, "plain asyncio TCP")):
        values = [data[str(n)][kind]["rss_per_session"] / 1024 for n in counts]
        ax.bar([x + offset for x in xs], values, width, color=color, label=label)
        for x, value in zip(xs, values, strict=True):
            ax.text(x + offset, value, f"{value:.1f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(list(xs), [f"{n:,} sessions" for n in counts])
    ax.set_ylabel("KiB of server RSS per idle session\n(lower is better)")
    ax.set_ylim(0, ax.get_ylim()[1] * 1.2)  # room for the legend above the bars
    ax.legend(fontsize=7, loc="upper center", ncol=2)
    ax.set_title("Memory per idle session, one server process", fontsize=10)


def tunnel_panel(ax: Axes, f: Figures, data: dict[str, Any]) -> None:
    measures = [("upload_raw_mb_per_s", "upload"), ("download_raw_mb_per_s", "download"),
                ("upload_setup_corrected_mb_per_s", "upload\n(setup-corrected)"),
                ("download_setup_corrected_mb_per_s", "download\n(setup-corrected)")]
    xs = range(len(measures))
    width = 0.38
    for offset, mode, color, label in ((-width / 2, "direct", SSH, "direct ssh"),
                                       (width / 2, "tunnel", OURS, "ssh through the tunnel")):
        values = [_num(f, f"{mode}_{key}") or 0.0 for key, _ in measures]
        ax.bar([x + offset for x in xs], values, width, color=color, label=label)
        for x, value in zip(xs, values, strict=True):
            ax.text(x + offset, value, f"{value:.0f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(list(xs), [label for _, label in measures], fontsize=8)
    ax.set_ylabel("MB/s (higher is better)")
    ax.legend(fontsize=7)
    added = _num(f, "added_latency_ms")
    extra = f"; +{added:.2f} ms per round trip" if added is not None else ""
    ax.set_title(f"ssh through a resumable tunnel{extra}", fontsize=10)


def netlink_panel(ax: Axes, f: Figures, data: dict[str, Any]) -> None:
    items: list[tuple[str, float | None, str, str]] = [
        ("link lost: ip link set down\nto data flowing on cellular",
         _num(f, "lost_command_to_data_ms"), OURS, _why(f, "lost_command_to_data_ms")),
        ("link lost: notification\nto data flowing", _num(f, "lost_notification_to_data_ms"),
         OURS, _why(f, "lost_notification_to_data_ms")),
        ("link back: notification to data\non wifi (make-before-break)",
         _num(f, "back_notification_to_data_ms"), OURS, _why(f, "back_notification_to_data_ms")),
        ("without notifications: link down\nto data flowing (dead-path timeout)",
         _num(f, "baseline_command_to_data_ms"), PLAIN, _why(f, "baseline_command_to_data_ms")),
    ]
    _bars(ax, items, "ms, log scale (lower is better)", log=True)
    ax.set_title("Migration on rtnetlink notifications", fontsize=10)


def shell_panel(ax: Axes, f: Figures, data: dict[str, Any]) -> None:
    def item(label: str, key: str, color: str) -> tuple[str, float | None, str, str]:
        return (label, _num(f, key), color, _why(f, key))

    items = [
        item("keystroke echo: contsh", "keystroke_median_ms", OURS),
        item("keystroke echo: ssh -tt", "openssh_keystroke_median_ms", SSH),
        item("contsh: cut to a usable prompt\n(20 ms RTT; ssh: session lost)",
             "cut_to_prompt_ms", OURS),
        item("login: contsh (resumer)", "login_ms", OURS),
        item("login: contsh (cold)", "login_cold_ms", OURS),
        item("resume from disk: contsh (resumer)", "resume_ms", OURS),
        item("resume from disk: contsh (cold)", "resume_cold_ms", OURS),
        item("fresh OpenSSH login", "openssh_login_ms", SSH),
    ]
    _bars(ax, items, "ms, log scale (lower is better)", fmt="{:.1f}", log=True)
    ax.set_title("contsh vs ssh: keystrokes, login, cut, resume", fontsize=10)


# --- files --------------------------------------------------------------------------------

Panel = Callable[["Axes", Figures, dict[str, Any]], None]

# benchmark name -> (file, panels side by side, figure width)
FAMILIES: dict[str, tuple[str, list[Panel], float]] = {
    "throughput": ("throughput.png", [throughput_panel, cpu_panel], 13.0),
    "reattach": ("reattach.png", [reattach_panel, blackhole_panel], 12.0),
    "suspend_resume": ("suspend_resume.png", [resume_panel, lookup_panel], 12.0),
    "memory": ("memory.png", [memory_panel], 6.5),
    "tunnel": ("tunnel.png", [tunnel_panel], 7.0),
    "netlink": ("netlink.png", [netlink_panel], 7.5),
    "shell": ("shell.png", [shell_panel], 8.0),
}
SUMMARY: list[tuple[str, Panel]] = [
    ("throughput", throughput_panel), ("reattach", reattach_panel),
    ("suspend_resume", resume_panel), ("memory", memory_panel),
]


def render(document: dict[str, Any], out: Path) -> dict[str, list[str]]:
    """Write the PNGs for every benchmark in ``document`` that ran; file names per family
    (``"summary"`` for the overview). Raises PlotsUnavailable without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display, no GUI toolkit
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise PlotsUnavailable(
            f"matplotlib not installed ({exc}; pip install -e '.[demo]')") from exc

    results: dict[str, Any] = document["benchmarks"]
    flat: dict[str, Any] = document.get("figures", {})

    def figures_of(name: str) -> Figures:
        prefix = name + "."
        return {k.removeprefix(prefix): v for k, v in flat.items() if k.startswith(prefix)}

    def ran(name: str) -> bool:
        return name in results and "error" not in results[name] and "unavailable" not in \
            results[name]

    stamp = (f"{document['mode']} run, {document['machine']['date']}, "
             f"commit {document['machine']['commit']}")
    written: dict[str, list[str]] = {}
    for name, (filename, panels, width) in FAMILIES.items():
        if not ran(name):
            continue
        fig, axes = plt.subplots(1, len(panels), figsize=(width, 4.2), squeeze=False)
        for ax, panel in zip(axes[0], panels, strict=True):
            panel(ax, figures_of(name), results[name])
        fig.suptitle(stamp, fontsize=7, x=0.99, y=0.01, ha="right", va="bottom",
                     color="#718096")
        fig.tight_layout(rect=(0, 0.03, 1, 1))
        fig.savefig(out / filename, dpi=110)
        plt.close(fig)
        written[name] = [filename]
    shown = [(name, panel) for name, panel in SUMMARY if ran(name)]
    if shown:
        rows = (len(shown) + 1) // 2
        fig, axes = plt.subplots(rows, 2, figsize=(13.0, 4.4 * rows), squeeze=False)
        for ax, (name, panel) in zip(axes.flat, shown, strict=False):
            panel(ax, figures_of(name), results[name])
        for ax in list(axes.flat)[len(shown):]:
            ax.set_visible(False)
        fig.suptitle(f"continuations vs baselines measured in the same run ({stamp})",
                     fontsize=11)
        fig.tight_layout()
        fig.savefig(out / "summary.png", dpi=110)
        plt.close(fig)
        written["summary"] = ["summary.png"]
    return written

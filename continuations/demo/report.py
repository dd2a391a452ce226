"""The demo's findings: timeline events, per-stream integrity, and the JSON report.

The JSON schema is documented in docs/demo.md; ``SCHEMA`` names its version.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

SCHEMA = "continuations-demo/1"
MiB = 1024 * 1024


@dataclass
class TimelineEvent:
    """One thing that happened to the client, with what was measured about it.

    ``t`` is when the demo caused it, in seconds since the streams started; the
    figures are described in docs/demo.md."""

    kind: str  # "migrate", "blackhole", "suspend", "resume" or "finish"
    name: str  # as shown in the timeline: "migrate", "wifi lost", "blackhole", ...
    t: float
    trigger: str
    summary: str
    figures: dict[str, Any] = field(default_factory=dict)


@dataclass
class StreamCheck:
    name: str
    sent_bytes: int
    received_bytes: int
    sent_sha256: str
    received_sha256: str
    complete: bool  # the server sent the whole stream (the file, or the audio until told)

    @property
    def intact(self) -> bool:
        return (self.complete and self.sent_bytes == self.received_bytes
                and self.sent_sha256 == self.received_sha256)


@dataclass
class Report:
    mode: str  # "loopback" or "netns"
    parameters: dict[str, Any]
    session_id: str = ""
    host_key: str = ""
    measured_rtt_ms: float | None = None
    events: list[TimelineEvent] = field(default_factory=list)
    streams: dict[str, StreamCheck] = field(default_factory=dict)
    client_pids: list[int] = field(default_factory=list)
    attachments: int = 0
    addresses: list[str] = field(default_factory=list)
    throughput: dict[str, list[float]] = field(default_factory=dict)
    netns: dict[str, Any] | None = None
    error: str | None = None
    interrupted: bool = False
    elapsed: float = 0.0
    output: dict[str, Any] = field(default_factory=dict)

    @property
    def integrity(self) -> bool:
        return bool(self.streams) and all(s.intact for s in self.streams.values())

    @property
    def ok(self) -> bool:
        return self.error is None and not self.interrupted and self.integrity

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for name, check in self.streams.items():
            data["streams"][name]["intact"] = check.intact
        return {"schema": SCHEMA, "ok": self.ok, "integrity": self.integrity, **data}


def size(n: float) -> str:
    if n >= MiB:
        return f"{n / MiB:.1f} MiB"
    if n >= 1024:
        return f"{n / 1024:.0f} KiB"
    return f"{n:.0f} B"


def ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f} ms"


def rtts(seconds: float | None, rtt: float) -> str:
    return "" if seconds is None else f" ({seconds / rtt:.1f} RTT)"


def integrity_lines(report: Report) -> list[str]:
    lines = ["integrity (SHA-256 of everything received vs everything sent, per stream):"]
    for check in report.streams.values():
        verdict = "intact" if check.intact else "DAMAGED"
        if not check.complete:
            verdict = "INCOMPLETE"
        lines.append(
            f"  {check.name:<6} sent {size(check.sent_bytes):>10} {check.sent_sha256[:16]}  "
            f"received {size(check.received_bytes):>10} {check.received_sha256[:16]}  {verdict}"
        )
    return lines


def summary_line(report: Report) -> str:
    if report.interrupted:
        return "summary: interrupted; everything the demo started was stopped and removed"
    if report.error is not None and not report.streams:
        return f"summary: FAILED: {report.error}"
    intact = sum(c.intact for c in report.streams.values())
    verdict = "intact" if report.integrity else "NOT intact"
    text = (f"summary: {intact}/{len(report.streams)} streams {verdict}; one session across "
            f"{len(report.client_pids)} client processes, {report.attachments} attachments "
            f"from {len(report.addresses)} addresses, {report.elapsed:.1f} s")
    if report.error is not None:
        text += f"; FAILED: {report.error}"
    return text

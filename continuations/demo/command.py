"""What `continuations demo` runs: options, set-up, the scenario, clean-up, output.

The guide and the JSON schema: docs/demo.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Any

from continuations.demo import netns, plot
from continuations.demo.progress import Progress
from continuations.demo.report import Report, integrity_lines, summary_line
from continuations.demo.scenario import Params, Processes, Scenario
from continuations.errors import ConfigError, ContinuationsError, LocalError
from continuations.paths import RUNTIME_ENV, STATE_ENV

MiB = 1024 * 1024
STORE_ENV = "CONTINUATIONS_STORE"
_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def params_from(args: argparse.Namespace) -> Params:
    positive = {"--rtt": args.rtt, "--outage": args.outage, "--suspend-for": args.suspend_for,
                "--audio-kbps": args.audio_kbps, "--file-size": args.file_size,
                "--file-rate": args.file_rate}
    bad = [name for name, value in positive.items() if not value > 0]
    if bad or not args.settle >= 0:
        raise ConfigError(f"{', '.join(bad) or '--settle'} must be positive"
                          if bad else "--settle must not be negative")
    return Params(rtt=args.rtt / 1000, outage=args.outage, suspend_for=args.suspend_for,
                  settle=args.settle, audio_rate=max(1, round(args.audio_kbps * 1000 / 8)),
                  file_size=max(1, round(args.file_size * MiB)), file_rate=args.file_rate * MiB,
                  netns=args.netns, sabotage=args.sabotage)


def _output_dir(requested: str | None) -> Path:
    if requested:
        out = Path(requested)
        out.mkdir(parents=True, exist_ok=True)
        return out
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    for n in range(1, 100):
        out = Path(f"continuations-demo-{stamp}" + (f"-{n}" if n > 1 else ""))
        try:
            out.mkdir()
            return out
        except FileExistsError:
            continue
    raise LocalError(f"cannot create an output directory named continuations-demo-{stamp}")


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # unwinds through every cleanup below


def main(args: argparse.Namespace) -> int:
    params = params_from(args)
    if params.netns and (reason := netns.unavailable()):
        raise LocalError(reason)
    out = _output_dir(args.out)
    human = sys.stderr if args.json else sys.stdout
    ui = Progress(human)
    report = Report(mode="netns" if params.netns else "loopback", parameters=params.describe())
    work = Path(tempfile.mkdtemp(prefix="continuations-demo-"))
    # The client, the CLI and the resumer all find their store and sockets from these:
    # the demo's own, private ones.
    saved = {k: os.environ.get(k) for k in (STORE_ENV, STATE_ENV, RUNTIME_ENV)}
    os.environ.update({STORE_ENV: str(work / "store.db"), STATE_ENV: str(work / "state"),
                       RUNTIME_ENV: str(work / "run")})
    handlers = {s: signal.getsignal(s) for s in _SIGNALS}
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _terminate)
    processes = Processes()
    net: netns.Namespaces | None = None
    started = time.monotonic()
    ui.say(f"continuations demo ({report.mode}): a server and a mobile client on this machine;"
           f" output in {out}/")
    try:
        if params.netns:
            for stale in netns.remove_stale():
                ui.say(f"removed namespace {stale}, left by a demo that was killed")
            net = netns.Namespaces()
            net.create()
            report.netns = {"namespaces": net.names, "service": netns.SERVICE,
                            "links": {link.name: link.address for link in netns.LINKS}}
            ui.say(f"netns    client in {net.mobile} (wifi {netns.LINKS[0].address}, "
                   f"cellular {netns.LINKS[1].address}), server in {net.server}")
            net.enter()
        scenario = Scenario(params, work, ui, report, processes, net)
        asyncio.run(scenario.run())
    except KeyboardInterrupt:
        report.interrupted = True
    except ContinuationsError as exc:
        report.error = str(exc)
    finally:
        # From here on the demo finishes whatever happens: a second Ctrl-C must not leave
        # processes, namespaces or files behind (every step below is bounded in time).
        for signum in _SIGNALS:
            signal.signal(signum, signal.SIG_IGN)
        try:
            ui.end()
            _clean_up(processes, net, report, work, out)
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            report.elapsed = time.monotonic() - started
            _write(report, out, ui, args.json)
        finally:
            for signum, handler in handlers.items():
                if handler is not None:
                    signal.signal(signum, handler)
    if report.interrupted:
        return 130
    return 0 if report.ok else 1


def _clean_up(processes: Processes, net: netns.Namespaces | None, report: Report,
              work: Path, out: Path) -> None:
    """Stop every process the demo started and remove everything it created; keep the
    client's logs for the curious. Runs on success, failure and interruption alike."""
    from continuations.runtime import forkserver

    processes.stop_all([*processes.discover(work), *(net.pids() if net is not None else ())])
    forkserver.stop()  # the demo's own resumer (its socket is in the demo's runtime dir)
    if net is not None:
        processes.stop_all(net.pids())  # anything the resumer had forked there
        net.destroy()
        report.netns = {**(report.netns or {}), "left_behind": net.leftovers()}
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    for found in [*work.glob("client-*.log"), *work.glob("client-events.jsonl"),
                  *(work / "state" / "logs").glob("*.log")]:
        shutil.copy(found, logs / found.name)
    shutil.rmtree(work, ignore_errors=True)


def _write(report: Report, out: Path, ui: Progress, as_json: bool) -> None:
    report_path = out / "report.json"
    plot_path = out / "throughput.png"
    skipped = plot.draw(report, plot_path)
    report.output = {"dir": str(out.resolve()), "report": str(report_path.resolve()),
                     "plot": None if skipped else str(plot_path.resolve()),
                     "plot_skipped": skipped, "logs": str((out / "logs").resolve())}
    document: dict[str, Any] = report.to_json()
    report_path.write_text(json.dumps(document, indent=2) + "\n")
    if report.streams:
        ui.say()
        for line in integrity_lines(report):
            ui.say(line)
    ui.say()
    ui.say(summary_line(report))
    ui.say(f"report   {report_path}")
    ui.say(f"plot     {plot_path}" if not skipped else f"plot     skipped: {skipped}")
    if as_json:
        print(json.dumps(document, indent=2), flush=True)

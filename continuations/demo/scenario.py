"""The demo's script: start everything, cause each event, measure it, check the data.

Times are ``time.monotonic()`` everywhere: the client process stamps its
reports with the same clock, so "the demo blackholed the path at T, the client
noticed at T'" is one subtraction.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from continuations.demo import netns, telemetry
from continuations.demo.client import STREAMS, TELEMETRY
from continuations.demo.progress import Progress
from continuations.demo.report import Report, StreamCheck, TimelineEvent, ms, rtts, size
from continuations.demo.server import DemoServer
from continuations.demo.streams import make_file
from continuations.errors import ContinuationError, SessionError
from continuations.runtime.resources import pid_alive

WAIT = 30.0  # bound on every wait for the client or the server to do something
STATUS_INTERVAL = 0.25
LABEL_WIDTH = 23  # "  12.3 s  [wifi back]  " then the event's summary


@dataclass(frozen=True, slots=True, kw_only=True)
class Params:
    rtt: float  # seconds
    outage: float
    suspend_for: float
    settle: float
    audio_rate: int  # bytes/s
    file_size: int  # bytes
    file_rate: float  # bytes/s
    netns: bool
    sabotage: str | None = None

    def describe(self) -> dict[str, Any]:
        return {"rtt_ms": self.rtt * 1000, "outage_s": self.outage,
                "suspend_s": self.suspend_for, "settle_s": self.settle,
                "audio_kbps": self.audio_rate * 8 / 1000, "file_bytes": self.file_size,
                "file_rate_bytes_per_s": self.file_rate, "netns": self.netns}


class Processes:
    """Every client process the demo started, directly or through the resumer."""

    def __init__(self) -> None:
        self.first: subprocess.Popen[bytes] | None = None
        self.resumed: list[int] = []

    @property
    def pids(self) -> list[int]:
        return ([self.first.pid] if self.first is not None else []) + self.resumed

    def current_alive(self) -> bool:
        if self.resumed:
            return pid_alive(self.resumed[-1])
        return self.first is not None and self.first.poll() is None

    def discover(self, work: Path) -> list[int]:
        """Client processes the demo may not have heard of yet (interrupted while the
        resumer was starting one): every pid in the client's reports, and the session's
        owner in the store. All of them are processes of this demo's client."""
        found: set[int] = set()
        with contextlib.suppress(OSError, ValueError):
            for line in (work / TELEMETRY).read_text().splitlines():
                found.add(int(json.loads(line)["pid"]))
        if (work / "store.db").exists():
            from continuations.store import Store

            with contextlib.suppress(Exception), Store(work / "store.db") as store:
                found.update(r.pid for r in store.list_sessions() if r.pid)
        return sorted(p for p in found - set(self.pids) - {os.getpid()} if _ours(p, work))

    def stop_all(self, extra: Sequence[int] = ()) -> None:
        """SIGTERM, then SIGKILL after a grace period; by pid, only ours."""
        pids = [p for p in [*self.pids, *extra] if pid_alive(p)]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline and any(pid_alive(p) for p in pids):
            if self.first is not None:
                self.first.poll()  # reap our own child, or it stays "alive" as a zombie
            time.sleep(0.05)
        for pid in pids:
            if pid_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if self.first is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.first.wait(3)


def _ours(pid: int, work: Path) -> bool:
    """Whether ``pid`` still is one of this demo's client processes, not a process that
    reused the number: ours carry the demo's private store in their environment."""
    marker = f"CONTINUATIONS_STORE={work / 'store.db'}".encode()
    try:
        return marker in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False



class Scenario:
    def __init__(self, params: Params, work: Path, ui: Progress, report: Report,
                 processes: Processes, net: netns.Namespaces | None) -> None:
        self.p = params
        self.work = work
        self.ui = ui
        self.report = report
        self.processes = processes
        self.net = net
        self.tail = telemetry.Tail(work / TELEMETRY, processes.current_alive)
        self.server = DemoServer(workdir=work, file_path=work / "served" / "download.bin",
                                 audio_rate=params.audio_rate, file_rate=params.file_rate)
        self.t0 = 0.0
        self.session_id = ""

    # --- helpers ------------------------------------------------------------------------

    def _in_mobile(self) -> list[str]:
        return self.net.in_mobile() if self.net is not None else []

    def _event(self, event: TimelineEvent) -> None:
        self.report.events.append(event)
        head = f"{event.t:6.1f} s  [{event.name}]"
        self.ui.say(textwrap.fill(event.summary, width=self.ui.width,
                                  initial_indent=head.ljust(LABEL_WIDTH),
                                  subsequent_indent=" " * LABEL_WIDTH))

    async def _command(self, argv: Sequence[str], what: str) -> tuple[str, float]:
        """Run a command to completion; its stdout and how long it took."""
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            out, err = await asyncio.wait_for(proc.communicate(), 2 * WAIT)
        except BaseException as exc:  # timed out, or the demo is interrupted: stop it
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
            if isinstance(exc, TimeoutError):
                raise ContinuationError(f"{what} did not finish within {2 * WAIT:g} s") \
                    from None
            raise
        took = time.monotonic() - started
        if proc.returncode != 0:
            raise ContinuationError(f"{what} failed: {err.decode(errors='replace').strip()}")
        return out.decode(errors="replace"), took

    async def _cli(self, *args: str, mobile: bool = False) -> tuple[str, float]:
        """The real ``continuations`` command, as a user would type it."""
        prefix = self._in_mobile() if mobile else []
        return await self._command([*prefix, sys.executable, "-m", "continuations", *args],
                                   f"`continuations {' '.join(args)}`")

    async def _exited(self, proc: subprocess.Popen[bytes]) -> int:
        """The process's exit status, polled: a thread blocked in wait() would hold up the
        loop's shutdown on Ctrl-C until the process it waits for is stopped, after."""
        for _ in range(int(WAIT / 0.02)):
            code = proc.poll()
            if code is not None:
                return code
            await asyncio.sleep(0.02)
        raise ContinuationError("the client process did not exit after the suspension")

    async def _sleep_until(self, when: float) -> None:
        await asyncio.sleep(max(0.0, when - time.monotonic()))

    def _status(self) -> str:
        progress = self.tail.latest("progress")
        if progress is None:
            return "starting..."
        audio, got = progress["audio"], progress["file"]
        if not self.processes.current_alive():
            where = "no client process: the session is suspended on disk"
        else:
            where = f"session {progress['state']}" + (
                f" from {progress['local']}" if progress.get("local") else "")
        return (f"{time.monotonic() - self.t0:6.1f} s  audio {size(audio):>9}  "
                f"file {size(got):>9} / {size(self.p.file_size)}  {where}")

    async def _show_status(self) -> None:
        while True:
            self.ui.status(self._status())
            await asyncio.sleep(STATUS_INTERVAL)

    async def _first_data(self, after: float, version: int) -> telemetry.Record:
        return await self.tail.wait("first_data", after=after, timeout=WAIT,
                                    where=lambda r: r["version"] >= version,
                                    what="data on the new attachment")

    async def _replayed(self, version: int) -> int | None:
        """What the server sent again at this attachment (its event may trail the
        client's by a moment)."""
        for _ in range(100):
            found = self.server.replayed(version)
            if found is not None:
                return found
            await asyncio.sleep(0.01)
        return None

    # --- the script ---------------------------------------------------------------------

    async def run(self) -> None:
        # Writes racing a connection the relay or a migration just closed make asyncio log
        # "socket.send() raised exception."; the session layer handles those itself.
        logging.getLogger("asyncio").setLevel(logging.ERROR)
        status: asyncio.Task[None] | None = None
        try:
            await self._start()
            status = asyncio.ensure_future(self._show_status())
            await self._flowing()
            await asyncio.sleep(self.p.settle)
            if self.net is not None:
                await self._link(netns.LINKS[0], up=False)
                await asyncio.sleep(self.p.settle)
                await self._link(netns.LINKS[0], up=True)
            else:
                await self._migrate()
            await asyncio.sleep(self.p.settle)
            await self._blackhole()
            await asyncio.sleep(self.p.settle)
            suspended_at = await self._suspend()
            await self._sleep_until(suspended_at + self.p.suspend_for)
            await self._resume()
            await asyncio.sleep(self.p.settle)
            await self._finish()
        finally:
            if status is not None:
                status.cancel()
            self.ui.end()
            self.tail.close()
            self.tail.poll()
            self._collect()
            await self.server.close()

    async def _start(self) -> None:
        p = self.p
        make_file(self.server.file_path, p.file_size)
        relay_host = netns.SERVICE if self.net is not None else "127.0.0.1"
        await self.server.start(server_host="127.0.0.1", relay_host=relay_host, rtt=p.rtt)
        assert self.server.server is not None and self.server.relay is not None
        host, port = self.server.relay.address
        self.report.host_key = self.server.server.host_key_fingerprint
        self.ui.say(f"server   {self.server.server.address[0]}:{self.server.server.address[1]}"
                    f" (in this process), host key {self.report.host_key}")
        self.ui.say(f"relay    {host}:{port}, adds {p.rtt * 1000:g} ms of round trip; "
                    "blackholes on demand")
        # The resumer forks resumed sessions; starting it now keeps its one-off start-up
        # (imports) out of the resume time, as on a machine where it already runs.
        resumer = asyncio.ensure_future(self._command(
            [*self._in_mobile(), sys.executable, "-c",
             "from continuations.runtime.forkserver import ensure_running; ensure_running()"],
            "starting the resumer"))
        argv = [*self._in_mobile(), sys.executable, "-m", "continuations.demo.mobile",
                f"{host}:{port}", "--work", str(self.work)]
        if self.net is not None:
            argv += ["--prefer", ",".join(link.name for link in netns.LINKS)]
        else:
            argv += ["--local-hosts", "127.0.0.2,127.0.0.3"]
        if p.sabotage:
            argv += ["--sabotage", p.sabotage]
        with open(self.work / "client-1.log", "wb") as log:
            self.processes.first = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.work, start_new_session=True)
        self.tail.start()
        hello = await self.tail.wait("hello", timeout=WAIT, what="a session")
        await resumer
        self.t0 = hello["t"]
        self.session_id = self.report.session_id = hello["session"]
        self.report.measured_rtt_ms = hello["rtt"] * 1000 if hello.get("rtt") else None
        self.ui.say(f"client   pid {hello['pid']} (its own process, under a Runtime), session "
                    f"{self.session_id[:8]} from {hello['local']}")
        self.ui.say(f"streams  audio {p.audio_rate * 8 / 1000:g} kbit/s (constant bit rate) "
                    f"and a {size(p.file_size)} file download at {size(p.file_rate)}/s\n")
        self.ui.say(f"timeline (seconds since the streams started; RTT = "
                    f"{p.rtt * 1000:g} ms, the path's round trip):")

    async def _flowing(self) -> None:
        await self.tail.wait("progress", timeout=WAIT, what="data on both streams",
                             where=lambda r: all(r[n] > 0 for n in STREAMS))

    async def _migrate(self) -> None:
        """Loopback: the client is told (SIGUSR1) to move to its other address."""
        first = self.processes.first
        assert first is not None
        start = time.monotonic()
        os.kill(first.pid, signal.SIGUSR1)
        moved = await self.tail.wait("migrated", after=start, timeout=WAIT, what="a migration")
        if moved["error"]:
            raise SessionError(f"migration failed: {moved['error']}")
        data = await self._first_data(start, moved["version"])
        took = moved["finished"] - moved["started"]
        attach = moved["finished"] - moved["connected"] if moved.get("connected") else None
        replayed = await self._replayed(moved["version"])
        rtt = self.p.rtt
        self._event(TimelineEvent(
            kind="migrate", name="migrate", t=start - self.t0, trigger="SIGUSR1",
            summary=(f"{moved['old']} -> {moved['new']}, make-before-break: new path attached "
                     f"in {ms(took)}{rtts(took, rtt)}, first data on it after "
                     f"{ms(data['t'] - start)}; {size(replayed or 0)} replayed"),
            figures={"from": moved["old"], "to": moved["new"], "make_before_break": True,
                     "tcp_connected_ms": ((moved["connected"] - moved["started"]) * 1000
                                          if moved.get("connected") else None),
                     "attach_ms": attach * 1000 if attach is not None else None,
                     "attach_rtts": attach / rtt if attach is not None else None,
                     "reattach_ms": took * 1000, "reattach_rtts": took / rtt,
                     "data_flowing_ms": (data["t"] - start) * 1000,
                     "data_flowing_rtts": (data["t"] - start) / rtt,
                     "replayed_bytes": replayed, "attach_version": moved["version"]},
        ))

    async def _link(self, link: netns.Link, *, up: bool) -> None:
        """--netns: a link goes down or comes back; the client's netlink watcher moves it."""
        assert self.net is not None
        start = time.monotonic()
        _, command = await self._command(self.net.set_link_command(link, up), "changing a link")
        heard = await self.tail.wait("netlink", after=start, timeout=WAIT,
                                     what="a netlink notification")
        moved = await self.tail.wait("migrated", after=start, timeout=WAIT,
                                     what="a migration", where=lambda r: r["error"] is None)
        notified = moved["notified"]
        data = await self._first_data(notified, moved["version"])
        took = moved["finished"] - notified
        flowing = data["t"] - notified
        connected = moved["connected"] - notified if moved.get("connected") else None
        attach = moved["finished"] - moved["connected"] if moved.get("connected") else None
        replayed = await self._replayed(moved["version"])
        rtt = self.p.rtt
        name = f"{link.name} {'back' if up else 'lost'}"
        how = "make-before-break" if up else "the old path is dead"
        self._event(TimelineEvent(
            kind="migrate", name=name, t=start - self.t0, trigger="rtnetlink",
            summary=(f"{link.name} {'regained' if up else 'lost'} its carrier (`ip link set`, "
                     f"{ms(command)}); the client heard {ms(heard['at'] - start)} after the "
                     f"command started and moved {moved['old']} -> "
                     f"{moved['new']} ({how}): TCP up {ms(connected)} after the notification, "
                     f"session attached {ms(attach)}{rtts(attach, rtt)} later; data flowing "
                     f"{ms(flowing)}{rtts(flowing, rtt)} after the notification; "
                     f"{size(replayed or 0)} replayed"),
            figures={"link": link.name, "up": up, "from": moved["old"], "to": moved["new"],
                     "reason": moved["reason"], "make_before_break": up,
                     "command_ms": command * 1000,
                     "notification_ms": (heard["at"] - start) * 1000,
                     "tcp_connected_ms": connected * 1000 if connected is not None else None,
                     "attach_ms": attach * 1000 if attach is not None else None,
                     "attach_rtts": attach / rtt if attach is not None else None,
                     "reattach_ms": took * 1000, "reattach_rtts": took / rtt,
                     "data_flowing_ms": flowing * 1000, "data_flowing_rtts": flowing / rtt,
                     "replayed_bytes": replayed, "attach_version": moved["version"]},
        ))

    async def _blackhole(self) -> None:
        relay = self.server.relay
        assert relay is not None
        rtt, outage = self.p.rtt, self.p.outage
        start = time.monotonic()
        relay.blackhole()
        try:
            lost = await self.tail.wait("disconnected", after=start, timeout=outage,
                                        what="a disconnection")
        except SessionError:
            lost = None  # shorter than the dead-path bound: TCP may ride it out
        await self._sleep_until(start + outage)
        healed = time.monotonic()
        relay.heal()
        server_lost = self.server.first("disconnected", start)
        figures: dict[str, Any] = {
            "outage_s": outage,
            "client_detect_ms": (lost["t"] - start) * 1000 if lost else None,
            "server_detect_ms": ((server_lost.t - start) * 1000
                                 if server_lost and server_lost.t <= healed else None),
        }
        if lost is None:
            data = await self.tail.wait("progress", after=healed, timeout=WAIT,
                                        what="data after the outage")
            summary = (f"path silent for {outage:g} s, shorter than the client's dead-path "
                       "bound: not declared dead, the connection carried on")
        else:
            back = await self.tail.wait("reattached", after=start, timeout=WAIT,
                                        what="a re-attachment after the outage")
            data = await self._first_data(start, back["version"])
            replayed = await self._replayed(back["version"])
            took, flowing = back["t"] - healed, data["t"] - healed
            figures.update(reattach_ms=took * 1000, reattach_rtts=took / rtt,
                           data_flowing_ms=flowing * 1000, data_flowing_rtts=flowing / rtt,
                           replayed_bytes=replayed, client_replayed_bytes=back["replayed"],
                           attach_version=back["version"])
            server_said = (f", server after {ms(server_lost.t - start)}"
                           if server_lost and server_lost.t <= healed else "")
            summary = (f"path silent for {outage:g} s: client declared it dead after "
                       f"{ms(lost['t'] - start)}{server_said}; once back, re-attached in "
                       f"{ms(took)}{rtts(took, rtt)}, data flowing after "
                       f"{ms(flowing)}{rtts(flowing, rtt)}, {size(replayed or 0)} replayed")
        self._event(TimelineEvent(kind="blackhole", name="blackhole", t=start - self.t0,
                                  trigger="relay", summary=summary, figures=figures))

    async def _suspend(self) -> float:
        start = time.monotonic()
        out, took = await self._cli("suspend", self.session_id)
        inside = re.search(r"in (\d+) ms", out)
        first = self.processes.first
        assert first is not None
        code = await self._exited(first)
        asked = self.tail.find("suspending", after=start)
        shown, _ = await self._cli("show", self.session_id, "--json")
        info = json.loads(shown)
        gone = await self.server.wait_for("disconnected", start, WAIT)
        kept = self.server.lingering
        continuation = int(info.get("continuation", {}).get("bytes", 0))
        protocol = int(info.get("protocol_state_bytes", 0))
        suspend_ms = int(inside.group(1)) if inside else None
        detect = gone.t - asked["t"] if gone and asked else None
        self._event(TimelineEvent(
            kind="suspend", name="suspend", t=start - self.t0, trigger="continuations suspend",
            summary=(f"the client wrote its continuation ({size(continuation)}) and protocol "
                     f"state ({size(protocol)}) to the store in {suspend_ms} ms, released its "
                     f"files and exited (pid {first.pid}, status {code}); the server saw the "
                     f"disconnection {ms(detect)} later and "
                     f"{'keeps the session' if kept else 'DROPPED the session'} "
                     f"(the command took {ms(took)}, most of it starting Python)"),
            figures={"command_ms": took * 1000, "suspend_ms": suspend_ms,
                     "continuation_bytes": continuation, "protocol_state_bytes": protocol,
                     "store_state": info.get("state"), "client_pid": first.pid,
                     "client_exit_code": code,
                     "server_detect_ms": detect * 1000 if detect is not None else None,
                     "server_kept_session": kept,
                     "client_suspending_at_s": asked["t"] - self.t0 if asked else None},
        ))
        if not kept:
            raise SessionError("the server did not keep the session while the client was "
                               "suspended")
        return start

    async def _resume(self) -> None:
        start = time.monotonic()
        out, took = await self._cli("resume", self.session_id, mobile=True)
        found = re.search(r"in pid (\d+)", out)
        if found is None:
            raise ContinuationError(f"unexpected output from `continuations resume`: {out!r}")
        pid = int(found.group(1))
        self.processes.resumed.append(pid)
        back = await self.tail.wait("resumed", after=start, timeout=WAIT,
                                    what="the resumed process")
        data = await self._first_data(start, back["version"])
        replayed = await self._replayed(back["version"])
        flowing = data["t"] - start
        age = back.get("age")
        before = next((r.get("local") for r in reversed(self.tail.records)
                       if r["ev"] == "progress" and r["t"] < start and r.get("local")), None)
        moved = f" (was {before})" if before and before != back["local"] else ""
        suspended = next(e for e in reversed(self.report.events) if e.kind == "suspend")
        self._event(TimelineEvent(
            kind="resume", name="resume", t=start - self.t0, trigger="continuations resume",
            summary=(f"new pid {pid}, forked by the resumer, had the session attached from "
                     f"{back['local']}{moved} {ms(age)} after it started, "
                     f"{back['offline']:.1f} s after the suspension; data flowing "
                     f"{ms(flowing)} after the command was run, {size(replayed or 0)} "
                     f"replayed (the command took {ms(took)})"),
            figures={"command_ms": took * 1000, "new_pid": pid,
                     "new_process_attached_ms": age * 1000 if age is not None else None,
                     "local": back["local"], "previous_local": before,
                     "offline_s": back["offline"], "data_flowing_ms": flowing * 1000,
                     "replayed_bytes": replayed, "attach_version": back["version"],
                     "suspended_s": start - self.t0 - suspended.t,
                     "client_resumed_at_s": back["t"] - self.t0},
        ))

    async def _finish(self) -> None:
        self.server.stop_audio.set()
        received = self.tail.latest("progress")
        left = self.p.file_size - (received["file"] if received else 0)
        done = await self.tail.wait("done", timeout=WAIT + left / self.p.file_rate,
                                    what="the end of both streams")
        pid = self.processes.resumed[-1] if self.processes.resumed else None
        for _ in range(int(WAIT / 0.05)):
            if pid is None or not pid_alive(pid):
                break
            await asyncio.sleep(0.05)
        self._event(TimelineEvent(
            kind="finish", name="finish", t=done["t"] - self.t0, trigger="end of streams",
            summary=(f"both streams ended; the client closed the session and exited "
                     f"(audio {size(done['audio'])}, file {size(done['file'])} received)"),
            figures={"audio_bytes": done["audio"], "file_bytes": done["file"]},
        ))

    # --- what it all adds up to ---------------------------------------------------------

    def _collect(self) -> None:
        report = self.report
        report.client_pids = self.processes.pids
        # The first attachment, then one per re-attachment the server accepted (attempts
        # that never completed use up attach versions too, so those are not a count).
        report.attachments = (1 + sum(e.kind == "reattached" for e in self.server.events)
                              if self.server.session is not None else 0)
        addresses: list[str] = []
        times: list[float] = []
        series: dict[str, list[float]] = {n: [] for n in STREAMS}
        for record in self.tail.records:
            local = record.get("local")
            if local and local not in addresses:
                addresses.append(local)
            if record["ev"] == "progress" and self.t0:
                times.append(round(record["t"] - self.t0, 3))
                for name in STREAMS:
                    series[name].append(record[name])
        report.addresses = addresses
        report.throughput = {"t": times, **series}
        if not self.server.outgoing["audio"].sent:
            return  # never got as far as streaming
        for name in STREAMS:
            sent = self.server.outgoing[name]
            path = self.work / "received" / f"{name}.bin"
            digest = hashlib.sha256()
            got = 0
            with contextlib.suppress(FileNotFoundError), open(path, "rb") as handle:
                while block := handle.read(1 << 20):
                    digest.update(block)
                    got += len(block)
            report.streams[name] = StreamCheck(
                name=name, sent_bytes=sent.sent, received_bytes=got,
                sent_sha256=sent.digest.hexdigest(), received_sha256=digest.hexdigest(),
                complete=sent.finished)

"""Migration driven by the kernel's network notifications (rtnetlink), in namespaces.

The same network as ``continuations demo --netns`` (continuations/demo/netns.py):
a mobile namespace with a "wifi" and a "cellular" veth link to a server
namespace. The server (streaming 16 KiB every 5 ms) and an ImpairmentRelay
adding RTT/2 each way run in the server namespace; the client, in the mobile
one, follows rtnetlink notifications with ``continuations.netwatch`` and keeps
its session on wifi when it can, else on cellular.

Each trial takes wifi's far end down (the phone loses its carrier), waits for
data on the new path, then brings it back (the client moves back,
make-before-break). Measured, median of N trials, in ms and in RTTs of the
configured delay:

* link lost: notification -> data flowing again on cellular, and the whole
  thing from the ``ip link set ... down`` command;
* link back: notification -> data flowing on wifi;
* the split of the first: notification -> new TCP connection up (the kernel:
  routes, ARP, the TCP handshake) and TCP up -> session attached (the protocol).

Baseline in the same run: the same client without notifications, which finds
out the way a client does without them, by the dead-path timeout, and then
re-attaches from its other address (trials alternate which link goes down).

Needs root and ``ip netns``; reports ``unavailable: needs root and ip netns``
otherwise. As a script this file is the worker: ``netlink.py server RTT DIR`` /
``netlink.py client HOST:PORT DIR MODE``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Figure, Options, Outcome, median, read_line, spawn, stop, table, unavailable
from reattach import stream_forever  # the same 16 KiB every 5 ms

from continuations.aio import ClientSession, SessionStream, connect, serve
from continuations.demo import netns
from continuations.netwatch import Migration, NetWatcher, NetworkFollower
from continuations.protocol import Disconnected, Event, Reattached
from continuations.testing import ImpairmentRelay

NAME = "netlink"
TITLE = "Migration on rtnetlink notifications (network namespaces, wifi and cellular links)"

RTT = 0.050
SETTLE = 0.5
WAIT = 20.0
PREFER = [link.name for link in netns.LINKS]
WHY = "needs root and ip netns"
FIGURES = ("lost_notification_to_data_ms", "lost_notification_to_data_rtts",
           "lost_command_to_data_ms", "lost_notification_to_tcp_ms", "lost_tcp_to_attached_ms",
           "lost_tcp_to_attached_rtts", "back_notification_to_data_ms",
           "back_notification_to_data_rtts", "baseline_command_to_data_ms",
           "ratio_command_to_data")
SUMMARY_LABEL = (f"link lost to data flowing again on the other link, at {RTT * 1000:.0f} ms "
                 "RTT (netlink-triggered migration)")


# --- the workers ------------------------------------------------------------------------


def _emit(ev: str, **fields: Any) -> None:
    print(json.dumps({"ev": ev, "t": time.monotonic(), **fields}), flush=True)



async def _until_terminated() -> None:
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopped.set)
    await stopped.wait()


async def server_worker(rtt: float, workdir: Path) -> None:
    server = await serve(stream_forever, "127.0.0.1", 0, host_key=workdir / "host_key")
    relay = ImpairmentRelay(target=server.address, listen_host=netns.SERVICE, delay=rtt / 2)
    await relay.start()
    try:
        _emit("listening", host=relay.address[0], port=relay.address[1])
        await _until_terminated()
    finally:
        await relay.close()
        server.close()
        await server.wait_closed()


async def _read(session: ClientSession, stream: SessionStream) -> None:
    seen = session.attach_version
    while await stream.read(1 << 20):
        if session.attach_version != seen:
            seen = session.attach_version
            _emit("first_data", version=seen)


async def client_worker(host: str, port: int, workdir: Path, follow: bool) -> None:
    watcher = NetWatcher()
    await watcher.start()
    choice = watcher.view.choose(PREFER)
    if choice is None:
        raise SystemExit("no usable link")
    session = await connect(host, port, known_hosts=workdir / "known_hosts",
                            local_host=choice.address)
    stream = session.open_stream()
    stream.write(b"go")
    addresses = [link.address for link in netns.LINKS]
    follower = None
    if follow:

        def moved(move: Migration) -> None:
            _emit("migrated", notified=move.notified_at, connected=move.connected_at,
                  finished=move.finished_at, version=move.attach_version, new=move.new,
                  error=move.error)

        follower = NetworkFollower(session, watcher, prefer=PREFER, on_migration=moved)
        follower.start()
    else:
        watcher.close()  # the baseline hears nothing from the kernel

        def lost(event: Event) -> None:
            # Without notifications all a client can do: once the path is declared dead,
            # re-attach from its other address.
            if isinstance(event, Disconnected):
                current = session.local_host
                session.set_local_host(next(a for a in addresses if a != current))
                _emit("disconnected")
            elif isinstance(event, Reattached):
                _emit("reattached", version=event.attach_version)

        session.add_listener(lost)
    reader = asyncio.ensure_future(_read(session, stream))
    _emit("ready", local=choice.address)
    try:
        await _until_terminated()
    finally:
        if follower is not None:
            follower.close()
        watcher.close()
        reader.cancel()
        session.abort()


# --- the benchmark ----------------------------------------------------------------------


class _Client:
    """The client worker's reports, kept: a report may come before the one a trial
    waits for first (data on the new path before the migration's own report)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.records: list[dict[str, Any]] = []

    def wait_for(self, ev: str, after: float, **match: Any) -> dict[str, Any]:
        def fits(record: dict[str, Any]) -> bool:
            return record["ev"] == ev and record["t"] >= after and all(
                v(record.get(k)) if callable(v) else record.get(k) == v
                for k, v in match.items())

        deadline = time.monotonic() + WAIT
        while True:
            found = next((r for r in self.records if fits(r)), None)
            if found is not None:
                return found
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {ev} {match} from the client within {WAIT:g} s")
            self.records.append(json.loads(read_line(self.proc, left)))

    def first_data(self, after: float, version: int) -> dict[str, Any]:
        """The first byte read on attachment ``version`` or a later one."""
        return self.wait_for("first_data", after, version=lambda v: v >= version)


def _worker(namespace: str, *args: str) -> subprocess.Popen[str]:
    return spawn(["ip", "netns", "exec", namespace, sys.executable, __file__, *args],
                 stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)


def _link(net: netns.Namespaces, link: netns.Link, up: bool) -> float:
    """Set the server side of ``link`` down or up; the time just before."""
    start = time.monotonic()
    subprocess.run(net.set_link_command(link, up), check=True, timeout=30,
                   capture_output=True)
    return start


def _trials(net: netns.Namespaces, address: str, workdir: Path, trials: int,
            follow: bool) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {k: [] for k in (
        "lost_notification_to_data", "lost_command_to_data", "lost_notification_to_tcp",
        "lost_tcp_to_attached", "back_notification_to_data", "baseline_command_to_data")}
    proc = _worker(net.mobile, "client", address, str(workdir),
                   "follow" if follow else "timeout")
    client = _Client(proc)
    try:
        client.wait_for("ready", 0.0)
        time.sleep(SETTLE)
        for trial in range(trials):
            # The baseline alternates: the link it is on goes down.
            link = netns.LINKS[0] if follow or trial % 2 == 0 else netns.LINKS[1]
            start = _link(net, link, up=False)
            if follow:
                moved = client.wait_for("migrated", start, error=None)
                data = client.first_data(start, moved["version"])
                notified = moved["notified"]
                samples["lost_notification_to_data"].append(data["t"] - notified)
                samples["lost_command_to_data"].append(data["t"] - start)
                samples["lost_notification_to_tcp"].append(moved["connected"] - notified)
                samples["lost_tcp_to_attached"].append(moved["finished"] - moved["connected"])
            else:
                back = client.wait_for("reattached", start)
                data = client.first_data(start, back["version"])
                samples["baseline_command_to_data"].append(data["t"] - start)
            time.sleep(SETTLE)
            start = _link(net, link, up=True)
            if follow:
                moved = client.wait_for("migrated", start, error=None)
                data = client.first_data(start, moved["version"])
                samples["back_notification_to_data"].append(data["t"] - moved["notified"])
            time.sleep(SETTLE)
    finally:
        stop(proc)
    return samples


def _unavailable(detail: str) -> Outcome:
    why = unavailable(WHY)
    return Outcome(markdown=f"{why} ({detail})", data={"unavailable": WHY, "detail": detail},
                   figures=dict.fromkeys(FIGURES, why), summary=[[SUMMARY_LABEL, why, "", ""]])


def run(options: Options) -> Outcome:
    reason = netns.unavailable()
    if reason is None and subprocess.run(["ip", "netns", "list"], capture_output=True,
                                         timeout=30).returncode != 0:
        reason = "`ip netns list` fails here"
    if reason is not None:
        return _unavailable(reason)
    trials = options.repeats(3, 9)
    netns.remove_stale()
    net = netns.Namespaces()
    server: subprocess.Popen[str] | None = None
    try:
        net.create()
        server = _worker(net.server, "server", str(RTT), str(options.workdir))
        listening = json.loads(read_line(server, WAIT))
        address = f"{listening['host']}:{listening['port']}"
        ours = _trials(net, address, options.workdir, trials, follow=True)
        base = _trials(net, address, options.workdir, trials, follow=False)
    finally:
        stop(server)
        net.destroy()
    samples = {k: ours[k] + base[k] for k in ours}
    med = {k: median(v) for k, v in samples.items()}
    figures: dict[str, Figure] = {
        "lost_notification_to_data_ms": med["lost_notification_to_data"] * 1000,
        "lost_notification_to_data_rtts": med["lost_notification_to_data"] / RTT,
        "lost_command_to_data_ms": med["lost_command_to_data"] * 1000,
        "lost_notification_to_tcp_ms": med["lost_notification_to_tcp"] * 1000,
        "lost_tcp_to_attached_ms": med["lost_tcp_to_attached"] * 1000,
        "lost_tcp_to_attached_rtts": med["lost_tcp_to_attached"] / RTT,
        "back_notification_to_data_ms": med["back_notification_to_data"] * 1000,
        "back_notification_to_data_rtts": med["back_notification_to_data"] / RTT,
        "baseline_command_to_data_ms": med["baseline_command_to_data"] * 1000,
        "ratio_command_to_data": med["lost_command_to_data"] / med["baseline_command_to_data"],
    }
    assert set(figures) == set(FIGURES)

    def row(label: str, key: str) -> list[str]:
        values = samples[key]
        return [label, str(len(values)), f"{med[key] * 1000:.1f}", f"{med[key] / RTT:.2f}",
                f"{min(values) * 1000:.1f} - {max(values) * 1000:.1f}"]

    markdown = (
        f"RTT {RTT * 1000:.0f} ms (relay in the server namespace); wifi's far end taken down "
        "and up with `ip link set`; the client follows rtnetlink (continuations.netwatch). "
        "Baseline: the same client without notifications (dead-path timeout, then the "
        "other address). Medians.\n\n"
        + table(["measure", "trials", "median ms", "median RTTs", "range ms"], [
            row("link lost: notification -> data flowing", "lost_notification_to_data"),
            row("link lost: `ip link set down` -> data flowing", "lost_command_to_data"),
            row("  of which notification -> TCP up", "lost_notification_to_tcp"),
            row("  of which TCP up -> session attached", "lost_tcp_to_attached"),
            row("link back: notification -> data on wifi (make-before-break)",
                "back_notification_to_data"),
            row("baseline, no notifications: link down -> data flowing",
                "baseline_command_to_data"),
        ])
    )
    data = {"rtt_ms": RTT * 1000, "trials": trials,
            "samples_ms": {k: [round(x * 1000, 3) for x in v] for k, v in samples.items()}}
    summary = [[SUMMARY_LABEL,
                f"{med['lost_command_to_data'] * 1000:.0f} ms "
                f"({med['lost_notification_to_data'] / RTT:.2f} RTT after the notification)",
                f"dead-path timeout, no notifications: "
                f"{med['baseline_command_to_data'] * 1000:.0f} ms",
                f"{figures['ratio_command_to_data']:.2f}x"]]
    return Outcome(markdown=markdown, data=data, figures=figures, summary=summary)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="netlink benchmark worker")
    sub = parser.add_subparsers(dest="role", required=True)
    srv = sub.add_parser("server")
    srv.add_argument("rtt", type=float)
    srv.add_argument("workdir", type=Path)
    cli = sub.add_parser("client")
    cli.add_argument("address")
    cli.add_argument("workdir", type=Path)
    cli.add_argument("mode", choices=("follow", "timeout"))
    args = parser.parse_args(argv)
    if args.role == "server":
        asyncio.run(server_worker(args.rtt, args.workdir))
    else:
        host, _, port = args.address.rpartition(":")
        asyncio.run(client_worker(host, int(port), args.workdir, args.mode == "follow"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

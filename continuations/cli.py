"""The `continuations` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from continuations.errors import ContinuationsError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="continuations",
        description="Sessions that survive network changes, outages and suspend/resume.",
    )
    parser.add_argument("--store", metavar="PATH", help="the shared attribute store "
                        "(default: $CONTINUATIONS_STORE, else the XDG state directory)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    listing = commands.add_parser("list", help="list sessions in the store",
                                  description="List every session in the store: id, app, "
                                  "role, state, peer, owning pid. A state ending in '?' "
                                  "belongs to a process that is gone (see gc).")
    listing.add_argument("--json", action="store_true", help="print JSON")
    show = commands.add_parser("show", help="show one session in detail",
                               description="State, attributes (secrets redacted), "
                               "resources, continuation tree and sizes of one session. ID "
                               "may be a unique prefix of at least 4 characters.")
    show.add_argument("id")
    show.add_argument("--json", action="store_true", help="print JSON")
    suspend = commands.add_parser("suspend", help="suspend a live session to the store",
                                  description="Ask the owning process to generate the "
                                  "session's continuation, persist it and release its "
                                  "resources.")
    suspend.add_argument("id")
    resume = commands.add_parser("resume", help="resume a suspended session in a new process",
                                 description="Start a new process that reacquires the "
                                 "session's resources, re-attaches it and runs its "
                                 "continuation.")
    resume.add_argument("id")
    resume.add_argument("--local-host", metavar="ADDR", help="source address to re-attach from")
    resume.add_argument("--foreground", action="store_true",
                        help="run the resumed session in this terminal instead of detached")
    drop = commands.add_parser("drop", help="end a session and remove it from the store",
                               description="Close a live session (through its owner) or "
                               "discard a suspended one.")
    drop.add_argument("id")
    attr = commands.add_parser("attr", help="read or change a session's attributes",
                               description="With only ID, list the attributes (secrets "
                               "redacted); with KEY, print one; with KEY VALUE, set it "
                               "(VALUE is JSON, else a string); --incr adds atomically.")
    attr.add_argument("id")
    attr.add_argument("key", nargs="?")
    attr.add_argument("value", nargs="?")
    attr.add_argument("--incr", type=int, metavar="N", help="add N to a numeric attribute")
    attr.add_argument("--namespace", default="app", help="attribute namespace (default app)")
    commands.add_parser("gc", help="remove expired sessions and those whose owner died",
                        description="Remove sessions past their expiry, and live-marked "
                        "sessions whose owning process no longer runs.")
    _add_demo_command(commands)
    _add_tunnel_commands(commands)
    return parser


def _add_demo_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = commands.add_parser(
        "demo",
        help="a mobile client keeps its session through moves, an outage and suspend/resume",
        description="Start a server and a mobile client (its own process, under a Runtime) on "
        "this machine. The client receives live audio and a file download while it moves "
        "between networks (127.0.0.2 -> 127.0.0.3, make-before-break), loses its path "
        "silently, and is suspended to disk and resumed in a new process through the real "
        "CLI; then SHA-256 of each stream received is compared with what was sent. Prints a "
        "timeline of measured times; writes report.json and throughput.png to --out. Exit "
        "status 0 only if every byte arrived exactly once. See docs/demo.md.",
    )
    demo.add_argument("--rtt", type=float, default=50.0, metavar="MS",
                      help="round trip of the path, added by the relay (default 50)")
    demo.add_argument("--outage", type=float, default=4.0, metavar="S",
                      help="how long the path stays silent (default 4)")
    demo.add_argument("--suspend-for", type=float, default=3.0, metavar="S",
                      help="how long the client stays suspended on disk (default 3)")
    demo.add_argument("--settle", type=float, default=2.0, metavar="S",
                      help="steady streaming before and between events (default 2)")
    demo.add_argument("--audio-kbps", type=float, default=1536.0, metavar="KBPS",
                      help="bit rate of the live audio stream (default 1536: 48 kHz "
                      "16-bit stereo)")
    demo.add_argument("--file-size", type=float, default=32.0, metavar="MIB",
                      help="size of the file download (default 32)")
    demo.add_argument("--file-rate", type=float, default=1.5, metavar="MIBPS",
                      help="rate the server sends the file at (default 1.5)")
    demo.add_argument("--out", metavar="DIR", help="where report.json, throughput.png and the "
                      "client's logs go (default: a new ./continuations-demo-DATE-TIME)")
    demo.add_argument("--json", action="store_true", help="print the JSON report on stdout "
                      "(the progress and timeline go to stderr)")
    demo.add_argument("--netns", action="store_true", help="run the client in a network "
                      "namespace with a wifi and a cellular link; links go down and up and "
                      "the client follows rtnetlink notifications (needs root and iproute2)")
    # Test-only: damage one received byte, to show that the integrity check can fail.
    demo.add_argument("--sabotage", choices=("drop", "duplicate"), help=argparse.SUPPRESS)


def _add_tunnel_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    server = commands.add_parser(
        "tunnel-server",
        help="accept tunnel sessions and connect their streams to allowed targets",
        description="Accept sessions; connect each stream to the target it asks for if it is "
        "allowed (default: only 127.0.0.1:22), and relay bytes both ways. Clients re-attach "
        "from anywhere; the programs on both ends never see the outage. See docs/tunnels.md.",
    )
    server.add_argument("--listen", metavar="HOST:PORT", default="127.0.0.1:7022",
                        help="address to accept sessions on (default 127.0.0.1:7022; port 0 "
                        "picks a free one)")
    server.add_argument("--allow", metavar="HOST:PORT", action="append", default=[],
                        help="a target clients may connect to; repeat for more (default: "
                        "only 127.0.0.1:22; giving --allow replaces the default)")
    server.add_argument("--host-key", metavar="PATH", help="Ed25519 host key, created if "
                        "missing (default: the state directory's tunnel_host_key)")
    server.add_argument("--linger", type=float, default=86400.0, metavar="SECONDS",
                        help="how long a session whose client is gone is kept (default "
                        "86400, 24 h)")
    server.add_argument("--connect-timeout", type=float, default=10.0, metavar="SECONDS",
                        help="limit for connecting to a target (default 10)")
    server.add_argument("-v", "--verbose", action="store_true",
                        help="also log re-attachments and link failures")
    client = commands.add_parser(
        "tunnel",
        help="a resumable tunnel: ssh ProxyCommand (stdin/stdout) or local port forwarding",
        description="Open one session to a tunnel server and relay stdin/stdout (--to, for "
        "ssh -o ProxyCommand) or local connections (--forward) to targets on its side. The "
        "tunnel survives cuts, outages and address changes. See docs/tunnels.md.",
    )
    client.add_argument("host", help="the tunnel server's host")
    client.add_argument("port", type=int, help="the tunnel server's port")
    mode = client.add_mutually_exclusive_group(required=True)
    mode.add_argument("--to", metavar="HOST:PORT", help="relay stdin/stdout to this target "
                      "on the server's side (for ssh -o ProxyCommand)")
    mode.add_argument("--forward", metavar="[BIND:]LPORT:HOST:PORT", action="append",
                      help="listen on BIND:LPORT (bind 127.0.0.1 unless given; LPORT 0 picks "
                      "a free port) and forward each connection to HOST:PORT on the server's "
                      "side; repeat for more")
    client.add_argument("--known-hosts", metavar="PATH", help="where tunnel servers' host keys "
                        "are pinned (default: the state directory's known_hosts)")
    client.add_argument("--local-host", metavar="ADDR[,ADDR...]", help="source address; with "
                        "several, move to the next each time the path is lost, and on SIGUSR1 "
                        "(make-before-break)")
    client.add_argument("-v", "--verbose", action="store_true",
                        help="log the session's path changes on stderr")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "demo":
            from continuations import demo

            return demo.main(args)
        if args.command in ("tunnel", "tunnel-server"):
            from continuations.tunnel import commands as tunnel

            return tunnel.client_main(args) if args.command == "tunnel" else (
                tunnel.server_main(args))
        return _session_command(args)
    except ContinuationsError as exc:
        print(f"continuations: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 2


def _session_command(args: argparse.Namespace) -> int:
    from continuations import commands
    from continuations.store import Store

    with Store(args.store) as store:
        if args.command == "list":
            return commands.cmd_list(store, args.json)
        if args.command == "show":
            return commands.cmd_show(store, args.id, args.json)
        if args.command == "suspend":
            return commands.cmd_suspend(store, args.id)
        if args.command == "resume":
            return commands.cmd_resume(store, args.id, args.local_host, args.foreground)
        if args.command == "drop":
            return commands.cmd_drop(store, args.id)
        if args.command == "gc":
            return commands.cmd_gc(store)
        if args.command == "attr":
            return commands.cmd_attr(store, args.id, args.key, args.value, args.incr,
                                     args.namespace)
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

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
    demo = commands.add_parser(
        "demo",
        help="run a session through a cut, a blackhole and a migration on loopback",
        description="Start a server, an impairment relay and a client on this machine; "
        "stream data both ways while the connection is cut, blackholed and migrated "
        "between 127.0.0.2 and 127.0.0.3; check SHA-256 of everything received.",
    )
    demo.add_argument("--rtt", type=float, default=40.0, help="round trip added by the "
                      "relay, in ms (default 40)")
    demo.add_argument("--outage", type=float, default=3.0, help="blackhole length in "
                      "seconds (default 3)")
    demo.add_argument("--size", type=float, default=24.0, help="MiB to send each way "
                      "(default 24)")
    demo.add_argument("--rate", type=float, default=4.0, help="sending rate in MiB/s each "
                      "way (default 4)")
    demo.add_argument("--json", metavar="PATH", help="also write the report as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "demo":
            from continuations import demo

            if min(args.rtt, args.outage, args.size, args.rate) <= 0:
                raise ContinuationsError("--rtt, --outage, --size and --rate must be positive")
            return demo.main(args)
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

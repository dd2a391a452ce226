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
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
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
    except ContinuationsError as exc:
        print(f"continuations: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""`continuations demo`: a mobile client keeps its session through everything.

A server (in this process, behind an impairment relay with a realistic RTT) and
a client (in its own process, under a ``Runtime``) on this machine. The client
receives two streams, live audio and a file download, while it moves between
networks, loses its path silently for seconds, and is suspended to disk (the
process exits) and resumed in a new process through the real CLI. At the end,
SHA-256 of each stream as received is compared with what was sent. Guide and
JSON schema: docs/demo.md.

Everything the demo writes goes to a private temporary directory (the store,
the runtime and state directories, the received files), except the report and
plot in ``--out``; the user's own sessions and resumer are never touched.
"""

from __future__ import annotations

import argparse


def main(args: argparse.Namespace) -> int:
    """Run the demo with the parsed command line (continuations.cli declares it)."""
    # Imported here: the client's resumed process imports this package to find its
    # continuation, and needs none of the demo's own machinery.
    from continuations.demo.command import main as run

    return run(args)

"""Coverage-guided fuzzing of the server's entry points.

    python fuzz/fuzz_server.py handshake -max_total_time=60 -max_len=70000
    python fuzz/fuzz_server.py attach -max_total_time=60 -max_len=70000

``handshake``: arbitrary bytes as the first input of a fresh ``ServerEndpoint`` link.
``attach``: mutations of a real, never-delivered ATTACH_REQUEST, against a server that
holds the session and against one for which it is an unconfirmed hello.
Invariant: ``ServerEndpoint`` input methods never raise; no input creates a session or
changes one (unless it begins with the authentic request); every attacker link is
closed after ``handshake_timeout``.
"""

import sys

from _launch import main

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in ("handshake", "attach"):
        sys.exit(__doc__)
    name = sys.argv.pop(1)
    main(name)

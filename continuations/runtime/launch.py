"""Resume a suspended session in this (new) process: what ``continuations resume`` runs.

``python -m continuations.runtime.launch SESSION_ID [--store PATH] [--local-host ADDR]``
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence

from continuations.errors import ContinuationsError
from continuations.runtime.runtime import Runtime
from continuations.store import Store


async def run(session_id: str, store_path: str | None, local_host: str | None) -> int:
    """Resume and run the session here; the exit status is the continuation's result
    if it is an int (contsh returns its shell's), else 0."""
    store = Store(store_path)
    record = store.get_session(session_id)
    runtime = Runtime(record.app, store)
    await runtime.start_control()
    try:
        _, task = await runtime.resume(session_id, local_host=local_host)
        print(f"resumed {session_id} in pid {os.getpid()}", flush=True)
        result = await task  # the application's own work, from where it left off
        await runtime.wait_idle()
    finally:
        runtime.close()
    return result if isinstance(result, int) and not isinstance(result, bool) else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m continuations.runtime.launch",
                                     description=__doc__)
    parser.add_argument("session_id")
    parser.add_argument("--store")
    parser.add_argument("--local-host")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        return asyncio.run(run(args.session_id, args.store, args.local_host))
    except ContinuationsError as exc:
        print(f"continuations: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

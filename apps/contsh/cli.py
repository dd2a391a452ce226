"""Command lines: ``contsh`` (the client) and ``contshd`` (the server)."""

from __future__ import annotations

import argparse
import getpass
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from continuations.errors import ContinuationError, ContinuationsError

if TYPE_CHECKING:
    from apps.contsh.client import Login
    from continuations.runtime import Runtime

DEFAULT_PORT = 2222
# Set in a client forked by the resumer: it runs here, not through the resumer again.
ATTACHED_ENV = "CONTSH_ATTACHED"


def _target(text: str) -> tuple[str | None, str]:
    user, _, host = text.rpartition("@")
    return (user or None), host


def client_main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="contsh", description="A remote shell that survives the network, "
        "suspension to disk and the death of the client. Escapes: ~. quits, ~^Z suspends.")
    parser.add_argument("destination", nargs="?", help="[user@]host")
    parser.add_argument("command", nargs=argparse.REMAINDER,
                        help="run this instead of a login shell")
    parser.add_argument("-p", "--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("-i", "--identity", action="append", default=[],
                        help="private key (OpenSSH format; default ~/.ssh/id_ed25519, "
                        "id_ecdsa, id_rsa)")
    parser.add_argument("-L", "--forward", action="append", default=[],
                        metavar="[BIND:]PORT:HOST:HOSTPORT", help="forward a local port")
    parser.add_argument("--password", action="store_true",
                        help="ask for a password if the keys are refused")
    parser.add_argument("--known-hosts", help="pinned host keys (default: the user's)")
    parser.add_argument("--no-compression", action="store_true")
    parser.add_argument("-b", "--bind", help="local address to connect from")
    parser.add_argument("--store", help="the client's session store (default: the user's)")
    parser.add_argument("--resume", metavar="ID",
                        help="bring back a suspended session, or the shell of a killed client")
    parser.add_argument("--no-resumer", action="store_true",
                        help="run in this process, not forked from the per-user resumer")
    args = parser.parse_args(argv)
    if sys.stdin.isatty() and not os.environ.get(ATTACHED_ENV) and not args.no_resumer:
        # A new process forked from the per-user resumer, which has everything
        # imported, on this terminal: tens of milliseconds instead of a quarter second.
        from continuations.runtime.forkserver import run_attached

        os.environ[ATTACHED_ENV] = "1"
        try:
            return run_attached("apps.contsh.cli:client_main",
                                list(sys.argv[1:] if argv is None else argv),
                                preload=("apps.contsh.client",))
        except (ContinuationError, OSError):
            pass  # no resumer to be had: run here
    import asyncio

    from apps.contsh import client
    from continuations.tunnel import Forward

    client.log_to_file()
    try:
        for spec in args.forward:
            Forward.parse(spec)
        if args.resume:
            return asyncio.run(_resume(args.resume, args.store, args.bind))
        if not args.destination:
            parser.error("give a destination ([user@]host) or --resume ID")
        user, host = _target(args.destination)
        login = client.Login(
            host=host, port=args.port, user=user or getpass.getuser(),
            identities=args.identity, password=args.password, known_hosts=args.known_hosts,
            # Joined with spaces and run by the remote shell, as ssh does.
            command=" ".join(args.command) if args.command else None,
            forwards=args.forward, compression=not args.no_compression, local_host=args.bind)
        return asyncio.run(_login(login, args.store))
    except ContinuationsError as exc:
        print(f"contsh: {exc}", file=sys.stderr)
        return 255
    except KeyboardInterrupt:
        return 130


async def _runtime(store: str | None) -> Runtime:
    from continuations.runtime import Runtime

    runtime = Runtime("contsh", store)
    await runtime.start_control()
    return runtime


async def _login(login: Login, store: str | None) -> int:
    from apps.contsh import client

    runtime = await _runtime(store)
    try:
        return await client.open_shell(runtime, login)
    finally:
        runtime.close()


async def _resume(prefix: str, store: str | None, local_host: str | None) -> int:
    from apps.contsh import client
    from continuations.commands import find

    runtime = await _runtime(store)
    try:
        record = find(runtime.store, prefix)
        return await client.resume(runtime, record.id, local_host)
    finally:
        runtime.close()


def server_main(argv: Sequence[str] | None = None) -> int:
    from apps.contsh import server

    defaults = server.ServerOptions.__dataclass_fields__
    parser = argparse.ArgumentParser(
        prog="contshd", description="Serve contsh shells to the user running it. "
        "SIGTERM suspends every session for the next server: shells survive restarts.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--host-key", type=Path, help="Ed25519 host key, created if missing")
    parser.add_argument("--store", type=Path, help="the server's session store")
    parser.add_argument("--authorized-keys", type=Path,
                        help="OpenSSH authorized_keys (default ~/.ssh/authorized_keys)")
    parser.add_argument("--password-file", type=Path,
                        help="scrypt password hash; password login is on if it exists")
    parser.add_argument("--set-password", action="store_true",
                        help="ask for a password, store its scrypt hash, and exit")
    parser.add_argument("--keeper-socket", type=Path, help="the shell keeper's socket")
    parser.add_argument("--shell", help="command line of the shell (default: your login "
                        "shell, as a login shell)")
    parser.add_argument("--suspend-after", type=float,
                        default=defaults["suspend_after"].default,
                        help="seconds a disconnected session stays in memory before "
                        "it is suspended to the store")
    parser.add_argument("--no-forwarding", action="store_true", help="refuse -L forwards")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s contshd %(message)s")
    options = server.ServerOptions(host=args.host, port=args.port,
                                   suspend_after=args.suspend_after,
                                   forwarding=not args.no_forwarding)
    for name in ("host_key", "store", "authorized_keys", "password_file"):
        if getattr(args, name) is not None:
            setattr(options, name, getattr(args, name))
    if args.keeper_socket is not None:
        options.keeper = args.keeper_socket
    if args.shell:
        options.shell = shlex.split(args.shell)
    import asyncio

    from apps.contsh import userauth
    from continuations.paths import private_file

    try:
        if args.set_password:
            first = getpass.getpass("New contsh password: ")
            if first != getpass.getpass("Again: "):
                print("contshd: the passwords differ", file=sys.stderr)
                return 1
            private_file(options.password_file, userauth.hash_password(first).encode())
            print(f"contshd: password hash written to {options.password_file}")
            return 0
        return asyncio.run(server.run(options))
    except ContinuationsError as exc:
        print(f"contshd: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130

"""What `continuations tunnel-server` and `continuations tunnel` run.

The arguments are declared in ``continuations.cli`` (so ``--help`` stays cheap).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from continuations.errors import ConfigError, ContinuationsError
from continuations.paths import state_dir
from continuations.protocol import SessionConfig, SessionState
from continuations.tunnel.client import Forwarder, TunnelClient
from continuations.tunnel.ends import open_stdio
from continuations.tunnel.header import TunnelRefusedError
from continuations.tunnel.server import describe_error, serve_tunnel
from continuations.tunnel.splice import SpliceResult
from continuations.tunnel.targets import DEFAULT_ALLOWED, Forward, Target, parse_listen

__all__ = ["client_main", "server_main"]

HOST_KEY_NAME = "tunnel_host_key"


def _logging(prefix: str, default: int, verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{prefix}: %(message)s"))
    root = logging.getLogger("continuations")
    root.handlers[:] = [handler]
    root.propagate = False
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    logging.getLogger("continuations.tunnel").setLevel(logging.INFO if verbose else default)


class _Signals:
    """SIGINT, SIGTERM and SIGHUP set ``stop`` (to the exit status); with a client,
    SIGUSR1 moves its session to the next local address."""

    def __init__(self, client: TunnelClient | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        self.stop: asyncio.Future[int] = self.loop.create_future()
        self._moves: set[asyncio.Task[None]] = set()
        for signum, code in ((signal.SIGINT, 130), (signal.SIGTERM, 0), (signal.SIGHUP, 0)):
            self.loop.add_signal_handler(signum, self._stop, code)
        if client is not None:
            self.loop.add_signal_handler(signal.SIGUSR1, self._migrate, client)

    def _stop(self, code: int) -> None:
        if not self.stop.done():
            self.stop.set_result(code)

    def _migrate(self, client: TunnelClient) -> None:
        task = self.loop.create_task(client.migrate())
        self._moves.add(task)
        task.add_done_callback(self._moves.discard)

    def close(self) -> None:
        for task in list(self._moves):
            task.cancel()


# --- tunnel-server ------------------------------------------------------------------------


def server_main(args: argparse.Namespace) -> int:
    _logging("continuations tunnel-server", logging.INFO, args.verbose)
    host, port = parse_listen(args.listen)
    allow = [Target.parse(text) for text in args.allow] or list(DEFAULT_ALLOWED)
    if args.linger <= 0 or args.connect_timeout <= 0:
        raise ConfigError("--linger and --connect-timeout must be positive")
    host_key = Path(args.host_key) if args.host_key else state_dir() / HOST_KEY_NAME
    config = SessionConfig(linger=args.linger)
    return asyncio.run(_serve(host, port, allow, host_key, config, args.connect_timeout))


async def _serve(host: str, port: int, allow: list[Target], host_key: Path,
                 config: SessionConfig, connect_timeout: float) -> int:
    try:
        tunnel = await serve_tunnel(host, port, allow=allow, host_key=host_key, config=config,
                                    connect_timeout=connect_timeout)
    except OSError as exc:
        raise ContinuationsError(f"cannot listen on {Target(host, port)}: "
                                 f"{describe_error(exc)}") from exc
    server = tunnel.server
    assert server is not None
    signals = _Signals()
    bound_host, bound_port = server.address
    print(f"listening on {Target(bound_host, bound_port)} (host key "
          f"{server.host_key_fingerprint}); allowed targets: {tunnel.allow}", flush=True)
    try:
        return await signals.stop
    finally:
        server.close()
        await server.wait_closed()


# --- tunnel -------------------------------------------------------------------------------


def client_main(args: argparse.Namespace) -> int:
    _logging("continuations tunnel", logging.WARNING, args.verbose)
    if not 1 <= args.port <= 65535:
        raise ConfigError(f"bad port {args.port}")
    local_hosts = [h.strip() for h in (args.local_host or "").split(",") if h.strip()]
    client = TunnelClient(args.host, args.port, known_hosts=args.known_hosts,
                          local_hosts=local_hosts)
    if args.to is not None:
        return asyncio.run(_stdio(client, Target.parse(args.to)))
    forwards = [Forward.parse(text) for text in args.forward]
    return asyncio.run(_forward(client, forwards))


def _blocking(fds: tuple[int, ...]) -> dict[int, bool]:
    state = {}
    for fd in fds:
        with contextlib.suppress(OSError):
            state[fd] = os.get_blocking(fd)
    return state


async def _stdio(client: TunnelClient, target: Target) -> int:
    signals = _Signals(client)
    blocking = _blocking((0, 1))  # asyncio makes the pipes non-blocking; undone at exit
    relay: asyncio.Task[SpliceResult] | None = None
    try:
        source, sink = await open_stdio()
        relay = signals.loop.create_task(client.relay(target, source, sink))
        either: set[asyncio.Future[Any]] = {relay, signals.stop}
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        if not relay.done():
            relay.cancel()  # signalled: what stdin gave is flushed by the close below
            await asyncio.wait({relay})
            return signals.stop.result()
        try:
            relay.result()
        except TunnelRefusedError as exc:
            raise TunnelRefusedError(f"tunnel server {Target(client.host, client.port)} "
                                     f"refused the connection: {exc}") from None
        session = client.last_session
        if session is not None and session.state is SessionState.LOST:
            return 1  # already reported, with the reason, by the client's event log
        return 0
    finally:
        if relay is not None and not relay.done():
            relay.cancel()
        signals.close()
        await client.close()
        for fd, was in blocking.items():
            with contextlib.suppress(OSError):
                os.set_blocking(fd, was)


async def _forward(client: TunnelClient, forwards: list[Forward]) -> int:
    signals = _Signals(client)
    forwarders: list[Forwarder] = []
    try:
        for forward in forwards:
            forwarder = Forwarder(client, forward)
            try:
                bound = await forwarder.start()
            except OSError as exc:
                raise ContinuationsError(f"cannot listen on {Target(forward.bind, forward.port)}"
                                         f": {describe_error(exc)}") from exc
            forwarders.append(forwarder)
            print(f"forwarding {Target(*bound)} -> {forward.target} via "
                  f"{Target(client.host, client.port)}", flush=True)
        return await signals.stop
    finally:
        signals.close()
        for forwarder in forwarders:
            await forwarder.close()
        await client.close()

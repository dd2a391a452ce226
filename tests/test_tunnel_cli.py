"""Tunnels as a user runs them: the real CLI, a stock sshd and ssh, an HTTP server.

Everything is a separate process on loopback except the impairment relay, which
runs in a thread of the test process between the tunnel client and the tunnel
server, so the tests can cut and blackhole the path. The client moves between
127.0.0.2 and 127.0.0.3 (``--local-host`` rotation and SIGUSR1).

Tests that need sshd fail when it is missing and the CI variable is set, and
skip otherwise. Every process is stopped (sshd with its sessions) even on
failure, and every wait has a bound.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import json
import os
import re
import select
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import read_line, spawn, stop  # noqa: E402
from openssh import Sshd  # noqa: E402

from relaythread import RelayThread, free_port, read_lines, wait_for  # noqa: E402

pytestmark = pytest.mark.timeout(120)

MiB = 1024 * 1024
CLI = [sys.executable, "-m", "continuations"]
T = TypeVar("T")


# --- helpers ----------------------------------------------------------------------------------


class Processes:
    """Every process a test starts, stopped (with its process group) at the end."""

    def __init__(self, tmp_path: Path) -> None:
        self.env = {**os.environ, "CONTINUATIONS_STATE_DIR": str(tmp_path / "state"),
                    "PYTHONUNBUFFERED": "1"}
        self.procs: list[subprocess.Popen[str]] = []
        self.tmp = tmp_path

    def start(self, argv: list[str], **kwargs: Any) -> subprocess.Popen[str]:
        kwargs.setdefault("stdout", subprocess.PIPE)
        proc = spawn(argv, env=self.env, **kwargs)
        self.procs.append(proc)
        return proc

    def tunnel_server(self, *allow: int) -> tuple[subprocess.Popen[str], int, Path]:
        log = self.tmp / f"tunnel-server-{len(self.procs)}.log"
        argv = [*CLI, "tunnel-server", "--listen", "127.0.0.1:0", "--host-key",
                str(self.tmp / "tunnel_host_key"), "-v"]
        for port in allow:
            argv += ["--allow", f"127.0.0.1:{port}"]
        proc = self.start(argv, stderr=open(log, "w"))  # noqa: SIM115
        line = read_line(proc, 20)
        match = re.match(r"listening on 127\.0\.0\.1:(\d+) \(host key SHA256:\S+\); "
                         r"allowed targets: ", line)
        assert match, line
        return proc, int(match.group(1)), log

    def close(self) -> None:
        for proc in reversed(self.procs):
            stop(proc)


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Processes]:
    p = Processes(tmp_path)
    try:
        yield p
    finally:
        p.close()


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    binary, why = Sshd.find()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    server = Sshd(tmp_path_factory.mktemp("openssh"))
    try:
        server.start(binary)
        yield server
    finally:
        server.close()


def tunnel_command(relay: RelayThread, target_port: int, tmp: Path, name: str) -> str:
    """The ProxyCommand: our CLI on stdin/stdout, moving between two source addresses.

    It logs to NAME.log; its own known-hosts file NAME.known_hosts tells it apart
    in the process table (see ``tunnel_clients``).
    """
    host, port = relay.address
    argv = [*CLI, "tunnel", host, str(port), "--to", f"127.0.0.1:{target_port}",
            "--known-hosts", str(tmp / f"{name}.known_hosts"),
            "--local-host", "127.0.0.2,127.0.0.3", "-v"]
    return shlex.join(argv) + " 2>>" + shlex.quote(str(tmp / f"{name}.log"))


def tunnel_clients(marker: str) -> list[int]:
    """Pids of tunnel client processes with ``marker`` in their command line."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            args = cmdline.read_bytes().split(b"\0")
            if b"tunnel" in args and any(marker.encode() in a for a in args):
                found.append(int(cmdline.parent.name))
    return found


class Terminal:
    """A program on a pseudo-terminal, typed at and read like a person would."""

    def __init__(self, procs: Processes, argv: list[str]) -> None:
        self.master, slave = os.openpty()
        try:
            self.proc = procs.start(argv, stdin=slave, stdout=slave, stderr=slave)
        finally:
            os.close(slave)
        self.seen = b""

    def type(self, text: str) -> None:
        os.write(self.master, text.encode())

    def expect(self, pattern: str, timeout: float = 20) -> str:
        """Read until ``pattern`` (a regex) appears; return its match, dropping what came before."""
        regex = re.compile(pattern.encode())
        deadline = time.monotonic() + timeout
        while (match := regex.search(self.seen)) is None:
            left = deadline - time.monotonic()
            assert left > 0, f"no {pattern!r} within {timeout} s; got {self.seen[-500:]!r}"
            if select.select([self.master], [], [], min(left, 0.5))[0]:
                try:
                    data = os.read(self.master, 65536)
                except OSError:  # EIO: the program exited and closed the terminal
                    data = b""
                assert data, f"terminal closed before {pattern!r}; got {self.seen[-500:]!r}"
                self.seen += data
        self.seen = self.seen[match.end():]
        return match.group(0).decode()

    def read_to_eof(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if select.select([self.master], [], [], 0.5)[0]:
                try:
                    if not os.read(self.master, 65536):
                        return
                except OSError:
                    return
        raise AssertionError("terminal still open")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.master)


def reattachments(log: Path) -> int:
    return log.read_text().count("re-attached from") if log.exists() else 0


# --- ssh through the tunnel -------------------------------------------------------------------


def test_interactive_ssh_session_survives_cuts_blackholes_and_address_changes(
    sshd: Sshd, procs: Processes, tmp_path: Path
) -> None:
    _, server_port, server_log = procs.tunnel_server(sshd.port)
    relay = RelayThread(("127.0.0.1", server_port), delay=0.005)
    log = tmp_path / "interactive.log"
    term: Terminal | None = None
    try:
        proxy = tunnel_command(relay, sshd.port, tmp_path, "interactive")
        term = Terminal(procs, sshd.ssh_argv(tty=True, proxy_command=proxy))
        term.type("PS1='tun> '; echo shell-$$\n")
        shell = term.expect(r"shell-\d+")
        step = 0

        def works() -> None:
            nonlocal step
            step += 1
            term.type(f"echo step-$(({step} * 1000 + 7))\n")  # the echo differs from the answer
            term.expect(f"step-{step * 1000 + 7}")

        works()
        here = relay.settled()
        relay.cut()
        works()
        here = relay.moved_from(here)  # each re-attach after a loss uses the next address
        relay.blackhole()
        term.type("echo typed-$((6 * 7))-in-the-dark\n")  # typed while the path is silent
        time.sleep(1.5)
        relay.heal()
        term.expect("typed-42-in-the-dark")
        works()
        here = relay.settled()
        relay.cut()
        works()
        here = relay.moved_from(here)
        pids = tunnel_clients("interactive.known_hosts")
        assert len(pids) == 1
        os.kill(pids[0], signal.SIGUSR1)  # make-before-break move to the other address
        here = relay.moved_from(here)
        works()
        relay.blackhole()
        time.sleep(2.5)  # long enough for the path to be declared dead
        relay.heal()
        works()
        term.type("seq 1 20000 | sha256sum\n")
        expected = hashlib.sha256(b"".join(b"%d\n" % i for i in range(1, 20001))).hexdigest()
        term.expect(expected)
        term.type("echo shell-$$\n")
        assert term.expect(r"shell-\d+") == shell  # the same shell: the session never dropped
        term.type("exit\n")
        term.read_to_eof()
        assert term.proc.wait(15) == 0
        assert relay.seen >= {"127.0.0.2", "127.0.0.3"}
        assert reattachments(log) >= 4, log.read_text()
        assert server_log.read_text().count("opened") == 1  # one session the whole time
    finally:
        if term is not None:
            term.close()
        relay.close()


def test_ssh_cat_big_both_ways_through_faults_checksums_match(
    sshd: Sshd, procs: Processes, tmp_path: Path
) -> None:
    size = 24 * MiB
    big = tmp_path / "big"
    big.write_bytes(os.urandom(size))
    expected = hashlib.sha256(big.read_bytes()).hexdigest()
    _, server_port, _ = procs.tunnel_server(sshd.port)
    # A bandwidth cap stretches the transfers so that every fault lands in the middle.
    relay = RelayThread(("127.0.0.1", server_port), bandwidth=6 * MiB)
    try:
        down_log, up_log = tmp_path / "down.log", tmp_path / "up.log"
        ssh_down = shlex.join(sshd.ssh_argv(
            proxy_command=tunnel_command(relay, sshd.port, tmp_path, "down")))
        ssh_up = shlex.join(sshd.ssh_argv(
            proxy_command=tunnel_command(relay, sshd.port, tmp_path, "up")))
        # Exactly what a user would type.
        down = procs.start(["sh", "-c", f"{ssh_down} 'cat {big}' | sha256sum"],
                           stderr=subprocess.PIPE)
        up = procs.start(["sh", "-c", f"{ssh_up} sha256sum < {big}"], stderr=subprocess.PIPE)

        def past(n: int) -> None:
            wait_for(lambda: relay.moved_bytes() > n * MiB, 60, f"{n} MiB through the relay")

        past(6)
        relay.cut()
        past(12)
        relay.blackhole()
        time.sleep(2.5)
        relay.heal()
        past(20)
        pids = tunnel_clients("down.known_hosts") + tunnel_clients("up.known_hosts")
        assert len(pids) == 2
        for pid in pids:
            os.kill(pid, signal.SIGUSR1)
        past(26)
        relay.cut()
        past(32)
        relay.blackhole()
        time.sleep(1.5)
        relay.heal()
        out_down, err_down = down.communicate(timeout=90)
        out_up, err_up = up.communicate(timeout=90)
        assert (down.returncode, err_down) == (0, "")
        assert (up.returncode, err_up) == (0, "")
        assert out_down.split()[0] == expected
        assert out_up.split()[0] == expected
        assert relay.seen >= {"127.0.0.2", "127.0.0.3"}
        assert reattachments(down_log) >= 3 and reattachments(up_log) >= 3
    finally:
        relay.close()


def test_ssh_to_a_target_the_server_does_not_allow(
    sshd: Sshd, procs: Processes, tmp_path: Path
) -> None:
    other = free_port()
    _, server_port, server_log = procs.tunnel_server(other)  # sshd's port is not allowed
    proxy = shlex.join([*CLI, "tunnel", "127.0.0.1", str(server_port), "--to",
                        f"127.0.0.1:{sshd.port}", "--known-hosts", str(tmp_path / "kh")])
    done = subprocess.run([*sshd.ssh_argv(proxy_command=proxy), "true"], capture_output=True,
                          text=True, timeout=30, env=procs.env)
    assert done.returncode == 255
    assert (f"continuations: tunnel server 127.0.0.1:{server_port} refused the connection: "
            f"target 127.0.0.1:{sshd.port} is not allowed by this tunnel server "
            f"(allow it with --allow 127.0.0.1:{sshd.port})") in done.stderr
    # The server logs the refusal in its own time; ssh may have exited first.
    for _ in range(100):
        if "refused" in server_log.read_text():
            break
        time.sleep(0.05)
    assert "refused" in server_log.read_text()


# --- port forwarding --------------------------------------------------------------------------


def http_server(procs: Processes, root: Path) -> int:
    proc = procs.start([sys.executable, "-u", "-m", "http.server", "--bind", "127.0.0.1",
                        "--directory", str(root), "0"], stderr=subprocess.DEVNULL)
    match = re.search(r"port (\d+)", read_line(proc, 20))
    assert match
    return int(match.group(1))


def forwarder(procs: Processes, relay: RelayThread, tmp: Path,
              *targets: int) -> tuple[subprocess.Popen[str], list[int], Path]:
    host, port = relay.address
    log = tmp / "forward.log"
    argv = [*CLI, "tunnel", host, str(port), "--known-hosts", str(tmp / "known_hosts"),
            "--local-host", "127.0.0.2,127.0.0.3", "-v"]
    for target in targets:
        argv += ["--forward", f"0:127.0.0.1:{target}"]
    proc = procs.start(argv, stderr=open(log, "w"))  # noqa: SIM115
    ports = []
    for target, line in zip(targets, read_lines(proc, len(targets)), strict=True):
        match = re.fullmatch(rf"forwarding 127\.0\.0\.1:(\d+) -> 127\.0\.0\.1:{target} via "
                             rf"{re.escape(host)}:{port}", line)
        assert match, line
        ports.append(int(match.group(1)))
    return proc, ports, log


def fetch(port: int, name: str) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/{name}", timeout=60) as response:
        return bytes(response.read())


def test_forwarded_http_many_concurrent_clients_through_a_cut(
    procs: Processes, tmp_path: Path
) -> None:
    root = tmp_path / "www"
    root.mkdir()
    files = {f"file{i}.bin": os.urandom(MiB + i * 4099) for i in range(24)}
    for name, data in files.items():
        (root / name).write_bytes(data)
    http_port = http_server(procs, root)
    _, server_port, server_log = procs.tunnel_server(http_port)
    relay = RelayThread(("127.0.0.1", server_port), bandwidth=8 * MiB)
    try:
        proc, (local,), log = forwarder(procs, relay, tmp_path, http_port)
        time.sleep(0.3)
        assert relay.do(lambda: relay.relay.stats.connections_accepted) == 0  # lazy

        with concurrent.futures.ThreadPoolExecutor(len(files)) as pool:
            futures = {name: pool.submit(fetch, local, name) for name in files}
            wait_for(lambda: relay.moved_bytes() > 4 * MiB, 30, "downloads under way")
            relay.cut()
            wait_for(lambda: relay.moved_bytes() > 10 * MiB, 30, "downloads going again")
            relay.blackhole()
            time.sleep(1.5)
            relay.heal()
            for name, future in futures.items():
                assert future.result(timeout=60) == files[name], name
            # The same session carries the next round, from whichever address it is on now.
            again = {name: pool.submit(fetch, local, name) for name in list(files)[:8]}
            for name, future in again.items():
                assert future.result(timeout=60) == files[name], name
        assert server_log.read_text().count("opened") == 1
        assert relay.seen >= {"127.0.0.2"} and reattachments(log) >= 1
        assert proc.poll() is None
    finally:
        relay.close()


def test_forward_refused_target_is_clear_and_affects_nothing_else(
    procs: Processes, tmp_path: Path
) -> None:
    root = tmp_path / "www"
    root.mkdir()
    big = os.urandom(8 * MiB)
    (root / "big").write_bytes(big)
    (root / "small").write_bytes(b"small file\n")
    http_port = http_server(procs, root)
    forbidden = http_server(procs, root)  # reachable from the server, but not allowed
    _, server_port, server_log = procs.tunnel_server(http_port)
    relay = RelayThread(("127.0.0.1", server_port), bandwidth=4 * MiB)
    try:
        proc, (ok_port, bad_port), log = forwarder(procs, relay, tmp_path, http_port, forbidden)
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            download = pool.submit(fetch, ok_port, "big")
            wait_for(lambda: relay.moved_bytes() > MiB, 30, "download under way")
            with pytest.raises(OSError):  # reset, no response
                fetch(bad_port, "small")
            assert download.result(timeout=60) == big
        assert fetch(ok_port, "small") == b"small file\n"
        message = (f"target 127.0.0.1:{forbidden} is not allowed by this tunnel server "
                   f"(allow it with --allow 127.0.0.1:{forbidden})")
        wait_for(lambda: message in log.read_text(), 10, "the refusal in the client's log")
        assert message in server_log.read_text()
        assert server_log.read_text().count("opened") == 1
        assert proc.poll() is None
    finally:
        relay.close()


# --- stdin/stdout mode ------------------------------------------------------------------------


class TargetThread:
    """A one-connection-at-a-time TCP target in a thread, with a scripted behaviour."""

    def __init__(self, behaviour: Callable[[socket.socket], None]) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(30)
        self.port = int(self.sock.getsockname()[1])
        self.behaviour = behaviour
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.sock.accept()
            with conn:
                conn.settimeout(30)
                self.behaviour(conn)
        except BaseException as exc:  # reported by join()
            self.error = exc
        finally:
            self.sock.close()

    def join(self) -> None:
        self.thread.join(30)
        assert not self.thread.is_alive()
        if self.error is not None:
            raise self.error


def recv_all(conn: socket.socket) -> bytes:
    chunks = []
    while data := conn.recv(1 << 20):
        chunks.append(data)
    return b"".join(chunks)


def test_stdio_half_close_each_way(procs: Processes, tmp_path: Path) -> None:
    upload = os.urandom(3 * MiB)
    greeting = os.urandom(2 * MiB)
    got: dict[str, bytes] = {}

    def digest_at_eof(conn: socket.socket) -> None:  # our stdin ends; the answer still comes
        conn.sendall(hashlib.sha256(recv_all(conn)).hexdigest().encode())

    def greet_first(conn: socket.socket) -> None:  # the target ends first; we keep sending
        conn.sendall(greeting)
        conn.shutdown(socket.SHUT_WR)
        got["after"] = recv_all(conn)

    first, second = TargetThread(digest_at_eof), TargetThread(greet_first)
    _, server_port, _ = procs.tunnel_server(first.port, second.port)
    base = [*CLI, "tunnel", "127.0.0.1", str(server_port), "--known-hosts", str(tmp_path / "kh")]

    done = subprocess.run([*base, "--to", f"127.0.0.1:{first.port}"], input=upload,
                          capture_output=True, timeout=60, env=procs.env)
    assert (done.returncode, done.stderr) == (0, b"")
    assert done.stdout == hashlib.sha256(upload).hexdigest().encode()
    first.join()

    proc = procs.start([*base, "--to", f"127.0.0.1:{second.port}"], stdin=subprocess.PIPE,
                       stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdin is not None
    received = b""
    while chunk := proc.stdout.buffer.read(65536):  # to the end: the target's half-close
        received += chunk
    assert received == greeting
    proc.stdin.buffer.write(upload)  # and our half still flows
    proc.stdin.close()
    assert proc.wait(30) == 0
    second.join()
    assert got["after"] == upload


def test_cli_errors_are_one_line(procs: Processes, tmp_path: Path) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=30,
                              env=procs.env, stdin=subprocess.DEVNULL)

    dead = free_port()
    for args, message in [
        (["tunnel", "127.0.0.1", "7022", "--to", "nowhere"],
         "continuations: bad target 'nowhere' (expected HOST:PORT)"),
        (["tunnel", "127.0.0.1", "7022", "--forward", "80"],
         "continuations: bad forward '80' (expected [BIND:]LPORT:HOST:PORT)"),
        (["tunnel-server", "--allow", "example.org"],
         "continuations: bad target 'example.org' (expected HOST:PORT)"),
        (["tunnel-server", "--listen", "127.0.0.1"],
         "continuations: bad listen address '127.0.0.1' (expected HOST:PORT)"),
    ]:
        done = cli(*args)
        assert (done.returncode, done.stderr.splitlines()) == (1, [message]), args
    unreachable = cli("tunnel", "127.0.0.1", str(dead), "--to", "127.0.0.1:22",
                      "--known-hosts", str(tmp_path / "kh"))
    assert unreachable.returncode == 1
    assert len(unreachable.stderr.splitlines()) == 1
    assert unreachable.stderr.startswith(f"continuations: cannot open a session to "
                                         f"127.0.0.1:{dead}: ")
    _, port, _ = procs.tunnel_server()
    busy = cli("tunnel-server", "--listen", f"127.0.0.1:{port}", "--host-key",
               str(tmp_path / "hk2"))
    assert busy.returncode == 1
    assert busy.stderr.splitlines() == [
        f"continuations: cannot listen on 127.0.0.1:{port}: Address already in use"]
    both = cli("tunnel", "127.0.0.1", "1", "--to", "a:1", "--forward", "1:a:1")
    assert both.returncode == 2 and "not allowed with argument" in both.stderr


# --- the benchmark ------------------------------------------------------------------------------


def test_tunnel_benchmark_measures_both_paths(sshd: Sshd, tmp_path: Path) -> None:
    """benchmarks/run.py --only tunnel works end to end (figures only; no speed targets)."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--only", "tunnel",
         "--trials", "1", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=100,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "| 64-byte echo round trip, median ms" in done.stdout
    figures = json.loads((tmp_path / "latest.json").read_text())["benchmarks"]["tunnel"]
    for mode in ("direct", "tunnel"):
        for measure in ("upload", "download"):
            assert figures[mode][measure]["mb_per_s_raw"] > 0
        assert figures[mode]["round_trip"]["median_ms"] > 0
    assert set(figures["added_latency_ms"]) == {"median", "p90", "setup"}

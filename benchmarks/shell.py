"""contsh, the interactive shell, against OpenSSH on this machine: keystroke echo, login,
a usable prompt after a cut, and after a resume from disk.

Everything runs in pseudo-terminals this module opens itself (``os.openpty``; the
client gets the slave as its controlling terminal, we hold the master), the way a
terminal emulator runs ``ssh``: no tmux. Both remote shells are
``/bin/bash --norc --noprofile`` (``contshd --shell``; ``ssh -tt ... CMD``), with
``PS1`` set to a fixed prompt at login.

* keystroke echo: one character written to the master, until the remote shell's echo
  of it is read back; many samples per trial, a few ms apart, on a comment line.
* login: from starting the client process until the output of
  ``echo READY-$((1+1))`` (``READY-2``), typed ahead right after the start, as a
  user who types before the prompt does: the time until the shell can run a command.
* cut: ``contsh`` through an ImpairmentRelay (RTT 20 ms); the relay resets the
  connection and a marker command is typed at once; time until its output. OpenSSH
  through an identical relay is cut once too, to show what happens to it.
* resume: ``~^Z`` (Enter, ``~``, Ctrl-Z) suspends the session to disk and the client
  exits; then ``contsh --resume ID`` is timed from its start to the output of a marker
  typed ahead. The client's log gives the time until the session was re-attached.

contsh runs as users get it: forked from the per-user resumer when the client has one
(``run_attached``), and, when it offers ``--no-resumer``, also cold (a new Python that
imports everything). Server and client have separate state and runtime directories.
At the end every process is stopped: clients, contshd, its keeper (and the shells it
holds), the client's resumer, sshd and its sessions.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    Figure,
    Options,
    Outcome,
    die_with_parent,
    median,
    percentile,
    standalone,
    stop,
    table,
    unavailable,
)
from openssh import Sshd, private_sshd

from continuations.testing import ImpairmentRelay

NAME = "shell"
TITLE = "Interactive shell: contsh vs OpenSSH (keystroke echo, login, cut, resume)"

SHELL = "/bin/bash --norc --noprofile"
COLS, ROWS = 120, 40
# Typed ahead at login. The arithmetic makes the marker appear only when the shell
# runs the line, never in an echo of what was typed.
LOGIN_LINE = b"PS1='$((40+2))> '; echo READY-$((1+1))\r"
READY = rb"READY-2"
PROMPT = rb"42> "
RELAY_RTT = 0.020  # the cut's relay: half of it each way
KEY_GAP = 0.005  # seconds between keystrokes
LINE_KEYS = 40  # keystrokes per comment line, then Enter
TIMEOUT = 30.0
ms = 1000.0
T = TypeVar("T")

_RESUMED = re.compile(rb"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) \d+ contsh\.client "
                      rb"resumed after", re.MULTILINE)


# --- a client in a pseudo-terminal ----------------------------------------------------------


def _take_terminal() -> None:
    """preexec_fn: the pty's slave (our stdin) becomes the controlling terminal."""
    with contextlib.suppress(OSError):
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    die_with_parent()


class Terminal:
    """One client program on a new pseudo-terminal; we type on the master and read it."""

    def __init__(self, argv: Sequence[str], env: dict[str, str],
                 describe: Callable[[], str] = lambda: "") -> None:
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLS, 0, 0))
        self.master = master
        self.argv = list(argv)
        self.describe = describe  # more context for errors (logs)
        self.output = bytearray()
        self.mark = 0  # expect() searches from here
        self.seen_at = 0.0  # perf_counter of the last read that returned data
        self.closed = False  # the client's side of the terminal is gone
        self.released = False  # close() was called
        self.wall_started = time.time()
        self.started = time.perf_counter()
        try:
            self.proc: subprocess.Popen[str] = subprocess.Popen(
                self.argv, stdin=slave, stdout=slave, stderr=slave, env=env, text=True,
                start_new_session=True, preexec_fn=_take_terminal)
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)

    def write(self, data: bytes) -> None:
        os.write(self.master, data)

    def read_some(self, timeout: float) -> bool:
        """Append what the client wrote; False once its side of the terminal is gone."""
        if not select.select([self.master], [], [], timeout)[0]:
            return True
        try:
            data = os.read(self.master, 65536)
        except OSError:  # EIO: every copy of the slave is closed
            data = b""
        if not data:
            self.closed = True
            return False
        self.seen_at = time.perf_counter()
        self.output += data
        return True

    def settle(self) -> None:
        """Read whatever is there already; expect() then looks only at what comes next."""
        while not self.closed and self.ready() and self.read_some(0):
            pass
        self.mark = len(self.output)

    def ready(self) -> bool:
        return bool(select.select([self.master], [], [], 0)[0])

    def expect(self, pattern: bytes, timeout: float = TIMEOUT) -> tuple[re.Match[bytes], float]:
        """The first match after the mark, and when the read that completed it returned."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            match = regex.search(self.output, self.mark)
            if match is not None:
                self.mark = match.end()
                return match, self.seen_at
            left = deadline - time.monotonic()
            if self.closed or left <= 0:
                what = "exited" if self.closed else f"said nothing like it within {timeout:g} s"
                raise RuntimeError(
                    f"waiting for {pattern.decode()!r}: {self.argv[0]} {what}; "
                    f"terminal: {bytes(self.output[-600:])!r} {self.describe()}")
            self.read_some(min(left, 1.0))

    def keystroke(self, char: bytes) -> float:
        """Seconds from writing one character until its echo is read."""
        self.settle()
        start = time.perf_counter()
        os.write(self.master, char)
        _, seen = self.expect(re.escape(char))
        return seen - start

    def wait_exit(self, timeout: float = TIMEOUT) -> int:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.argv[0]} did not exit within {timeout:g} s: "
                                   f"{bytes(self.output[-400:])!r} {self.describe()}")
            if not self.closed:
                self.read_some(0.05)
            else:
                time.sleep(0.01)
        return self.proc.returncode

    def close(self) -> None:
        if self.released:
            return  # the descriptor number may belong to another file by now
        self.released = True
        stop(self.proc)
        with contextlib.suppress(OSError):
            os.close(self.master)


def _login(term: Terminal) -> float:
    """Type the marker line right away; seconds from the start to its output."""
    term.write(LOGIN_LINE)
    _, seen = term.expect(READY)
    term.expect(PROMPT)
    return seen - term.started


def _keystrokes(term: Terminal, count: int) -> list[float]:
    """``count`` echo round trips, typed on comment lines so Enter runs nothing."""
    samples: list[float] = []
    letters = b"abcdefghijklmnopqrstuvwxyz"
    on_line = -1
    for i in range(count):
        if on_line < 0 or on_line == LINE_KEYS:
            if on_line == LINE_KEYS:
                term.write(b"\r")
                term.expect(PROMPT)
            term.write(b"#")
            term.expect(b"#")
            on_line = 0
        time.sleep(KEY_GAP)
        samples.append(term.keystroke(letters[i % 26:i % 26 + 1]))
        on_line += 1
    term.write(b"\r")
    term.expect(PROMPT)
    return samples


def _finish(term: Terminal) -> None:
    """Leave the shell the way a user does, and wait for the client to exit."""
    try:
        term.write(b"exit\r")
        term.wait_exit()
    finally:
        term.close()


# --- an impairment relay on its own thread --------------------------------------------------


class Relay:
    """An ImpairmentRelay with its own event loop thread, driven from this thread."""

    def __init__(self, target: tuple[str, int], rtt: float) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.relay = ImpairmentRelay(target=target, delay=rtt / 2)
        self.call(self.relay.start())
        self.port = self.relay.address[1]

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def cut(self) -> None:
        self.call(self.relay.cut())

    def live(self) -> int:
        async def count() -> int:
            return self.relay.stats.active_connections

        return self.call(count())

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.call(self.relay.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


# --- contshd, contsh and their state --------------------------------------------------------


def _command(name: str) -> str | None:
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


class Contsh:
    """A contshd on a loopback port and contsh clients, each side with its own state and
    runtime directories (two machines, as far as they can tell)."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir / "contsh"
        self.dir.mkdir(mode=0o700)
        self.key = self.dir / "id_ed25519"
        self.server: subprocess.Popen[str] | None = None
        self.port = 0
        self.terms: list[Terminal] = []
        self.relays: list[Relay] = []
        base = {k: v for k, v in os.environ.items()
                if k not in ("TMUX", "CONTSH_ATTACHED") and not k.startswith("CONTINUATIONS_")}
        base["TERM"] = "xterm-256color"
        self.server_env = {**base, "CONTINUATIONS_STATE_DIR": str(self.dir / "server-state"),
                           "CONTINUATIONS_RUNTIME_DIR": str(self.dir / "server-run")}
        self.client_env = {**base, "CONTINUATIONS_STATE_DIR": str(self.dir / "client-state"),
                           "CONTINUATIONS_RUNTIME_DIR": str(self.dir / "client-run")}
        self.plain_env = base
        self.client = _command("contsh")
        self.no_resumer = False

    @property
    def client_log(self) -> Path:
        return self.dir / "client-state" / "logs" / "contsh.log"

    def logs(self) -> str:
        parts = []
        for path in (self.client_log, self.dir / "contshd.log"):
            with contextlib.suppress(OSError):
                parts.append(f"--- {path.name}: {path.read_text()[-800:]}")
        return "\n".join(parts)

    def start(self) -> None:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519

        server = _command("contshd")
        if server is None or self.client is None:
            raise RuntimeError("contsh / contshd not installed (pip install -e .)")
        key = ed25519.Ed25519PrivateKey.generate()
        self.key.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.OpenSSH,
                                               serialization.NoEncryption()))
        self.key.chmod(0o600)
        public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                               serialization.PublicFormat.OpenSSH)
        (self.dir / "authorized_keys").write_bytes(public + b" bench\n")
        helped = subprocess.run([self.client, "--help"], capture_output=True, text=True,
                                env=self.client_env, stdin=subprocess.DEVNULL, timeout=60)
        self.no_resumer = "--no-resumer" in helped.stdout
        with open(self.dir / "contshd.log", "w") as log:
            self.server = subprocess.Popen(
                [server, "--port", "0", "--authorized-keys", str(self.dir / "authorized_keys"),
                 "--host-key", str(self.dir / "host_key"), "--shell", SHELL],
                env=self.server_env, stdout=subprocess.PIPE, stderr=log, text=True,
                stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=die_with_parent)
        assert self.server.stdout is not None
        line = self.server.stdout.readline()  # the first line says where it listens
        match = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        if match is None:
            raise RuntimeError(f"contshd did not start: {line!r} {self.logs()}")
        self.port = int(match.group(1))

    def terminal(self, argv: Sequence[str], env: dict[str, str] | None = None) -> Terminal:
        term = Terminal(argv, self.client_env if env is None else env, self.logs)
        self.terms.append(term)
        return term

    def login(self, *, cold: bool = False, port: int | None = None) -> Terminal:
        assert self.client is not None
        return self.terminal([self.client, *(["--no-resumer"] if cold else []),
                              "-p", str(port or self.port), "-i", str(self.key),
                              "--known-hosts", str(self.dir / "known_hosts"), "127.0.0.1"])

    def resume(self, session: str, *, cold: bool = False) -> Terminal:
        assert self.client is not None
        return self.terminal([self.client, *(["--no-resumer"] if cold else []),
                              "--resume", session])

    def log_size(self) -> int:
        try:
            return self.client_log.stat().st_size
        except OSError:
            return 0

    def resumed_at(self, offset: int) -> float | None:
        """Unix time of the first "resumed after" line the client logged past ``offset``
        (the resumed client logs it once the session is re-attached; ms resolution)."""
        try:
            with open(self.client_log, "rb") as log:
                log.seek(offset)
                text = log.read()
        except OSError:
            return None
        match = _RESUMED.search(text)
        if match is None:
            return None
        stamp = time.mktime(time.strptime(match.group(1).decode(), "%Y-%m-%d %H:%M:%S"))
        return stamp + int(match.group(2)) / 1000

    def relay(self, target: tuple[str, int], rtt: float) -> Relay:
        relay = Relay(target, rtt)
        self.relays.append(relay)
        return relay

    def close(self) -> None:
        """Stop everything this rig started, each by its process id. Every step runs
        even if one before it failed; the last one catches whatever is left."""
        steps: list[Callable[[], None]] = [*(term.close for term in self.terms),
                                           *(relay.close for relay in self.relays),
                                           lambda: stop(self.server), self._stop_keeper,
                                           self._stop_resumers]
        try:
            for step in steps:
                try:
                    step()
                except Exception as exc:  # keep going: the sweep below must run
                    print(f"[shell] cleaning up: {type(exc).__name__}: {exc}", file=sys.stderr)
        finally:
            _stop_leftovers(str(self.dir))

    def _stop_keeper(self) -> None:
        """SIGTERM to the keeper, which ends every shell it holds."""
        keeper = self.dir / "server-run" / "contsh-keeper.sock"
        if not keeper.exists():
            return
        from apps.contsh.keeper import KeeperClient

        client = KeeperClient(keeper)
        try:
            pid = int(client.call("ping")[0]["pid"])
        finally:
            client.close()
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while keeper.exists() and time.monotonic() < deadline:
            time.sleep(0.05)

    def _stop_resumers(self) -> None:
        for side in ("client-run", "server-run"):
            for path in (self.dir / side).glob("resumer-*.sock"):
                _ask_exit(path)


def _ask_exit(path: Path) -> None:
    """Ask the per-user resumer listening on ``path`` to exit."""
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(str(path))
        sock.sendall(b'{"op": "exit"}\n')
        sock.recv(4096)


def _stop_leftovers(marker: str, grace: float = 3.0) -> None:
    """SIGTERM, then SIGKILL, any process whose command line names our private directory
    (the keeper, the resumer and clients it forked): all started by this benchmark."""
    def leftovers() -> list[int]:
        found = []
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            with contextlib.suppress(OSError, ValueError):
                pid = int(cmdline.parent.name)
                stat = (cmdline.parent / "stat").read_text().rsplit(")", 1)[1].split()
                if (pid != os.getpid() and stat[0] != "Z"
                        and marker.encode() in cmdline.read_bytes()):
                    found.append(pid)
        return found

    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = leftovers()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while pids and leftovers() and time.monotonic() < deadline:
            time.sleep(0.05)


# --- the measurements -----------------------------------------------------------------------


def _suspend(term: Terminal) -> tuple[str, float]:
    """``~^Z``; the session id prefix the client prints, and seconds until it said so."""
    term.settle()
    start = time.perf_counter()
    term.write(b"\r~\x1a")
    match, seen = term.expect(rb"--resume ([0-9a-f]{8,})")
    code = term.wait_exit()
    term.close()
    if code != 0:
        raise RuntimeError(f"contsh exited with {code} after ~^Z")
    return match.group(1).decode(), seen - start


def _resume(rig: Contsh, session: str, cold: bool, marker: int) -> tuple[float, float | None]:
    """``contsh --resume``: seconds to the marker's output, and to the re-attachment."""
    offset = rig.log_size()
    term = rig.resume(session, cold=cold)
    term.write(b"echo BACK-$((%d+1))\r" % marker)
    _, seen = term.expect(b"BACK-%d" % (marker + 1))
    took = seen - term.started
    term.expect(PROMPT)
    _finish(term)
    logged = rig.resumed_at(offset)
    return took, (logged - term.wall_started if logged is not None else None)


def _openssh_session(sshd: Sshd, rig: Contsh, keys: int) -> tuple[float, list[float]]:
    term = rig.terminal([*sshd.ssh_argv(tty=True), SHELL], rig.plain_env)
    login = _login(term)
    samples = _keystrokes(term, keys)
    _finish(term)
    return login, samples


def _ssh_through(sshd: Sshd, port: int) -> list[str]:
    argv = sshd.ssh_argv(tty=True)
    argv[argv.index("-p") + 1] = str(port)
    return [*argv, SHELL]


def _cuts(rig: Contsh, count: int) -> dict[str, Any]:
    """contsh through a relay: keystroke echo, then ``count`` cuts, each followed at once
    by a marker command; seconds from the cut to its output."""
    relay = rig.relay(("127.0.0.1", rig.port), RELAY_RTT)
    term = rig.login(port=relay.port)
    _login(term)
    echo = _keystrokes(term, 10)
    to_prompt: list[float] = []
    for i in range(count):
        time.sleep(0.3)  # steady: acknowledgements settled, nothing in flight
        term.settle()
        start = time.perf_counter()
        relay.cut()
        term.write(b"echo CUT%d-$((%d+1000))\r" % (i, i))
        _, seen = term.expect(b"CUT%d-%d" % (i, i + 1000))
        to_prompt.append(seen - start)
        term.expect(PROMPT)
    _finish(term)
    return {"cut_to_prompt": to_prompt, "relay_keystroke": echo}


def _openssh_cut(sshd: Sshd, rig: Contsh) -> dict[str, Any]:
    """ssh through an identical relay, cut once: what becomes of the session."""
    relay = rig.relay(("127.0.0.1", sshd.port), RELAY_RTT)
    term = rig.terminal(_ssh_through(sshd, relay.port), rig.plain_env)
    _login(term)
    term.settle()
    start = time.perf_counter()
    relay.cut()
    term.write(b"echo CUT-$((1+1000))\r")
    deadline = time.monotonic() + 10
    while term.proc.poll() is None and time.monotonic() < deadline and not term.closed:
        term.read_some(0.05)
    with contextlib.suppress(subprocess.TimeoutExpired):  # its terminal closes first
        term.proc.wait(max(0.5, deadline - time.monotonic()))
    exited = term.proc.poll()
    took = time.perf_counter() - start
    while not term.closed and term.ready() and term.read_some(0):
        pass  # what ssh said on its way out
    said = bytes(term.output[term.mark:]).decode(errors="replace")
    survived = "CUT-1001" in said
    lines = [ln.strip() for ln in said.replace("\r", "\n").splitlines()
             if ln.strip() and "CUT-$((" not in ln]  # not the marker, echoed once ssh left
    term.close()
    if survived:
        verdict = "the session survived the cut"
    elif exited is not None:
        verdict = (f"session lost: ssh exited with status {exited} {took * ms:.0f} ms after "
                   f"the cut" + (f" ({lines[-1]!r})" if lines else ""))
    else:
        verdict = "session lost: ssh still hung 10 s after the cut, the marker never ran"
    return {"survived": survived, "exit_status": exited, "seconds": took, "verdict": verdict}


STARTUP_CODE = (
    ("python", "pass"),
    ("import_cli", "import apps.contsh.cli, continuations.runtime.forkserver"),
    ("import_client", "import apps.contsh.client"),
)


def _startup(found: dict[str, list[float]]) -> None:
    """Where a contsh start goes (one sample of each): Python alone; Python and what
    the thin client forked from the resumer imports (the command line and
    ``run_attached``); Python and the whole client, which a cold start imports."""
    for key, code in STARTUP_CODE:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, timeout=60,
                       stdin=subprocess.DEVNULL)
        found.setdefault(key, []).append(time.perf_counter() - start)


def _measure(rig: Contsh, sshd: Sshd | None, trials: int, keys: int,
             cuts: int) -> dict[str, Any]:
    data: dict[str, Any] = {k: [] for k in (
        "openssh_login", "openssh_keystroke", "login", "keystroke", "suspend", "resume",
        "resume_reattached", "login_cold", "resume_cold", "resume_cold_reattached")}
    data["startup"] = {}
    # The first contsh of the run also starts the client's resumer: kept apart.
    first = rig.login()
    data["first_login"] = _login(first)
    _finish(first)
    if sshd is not None:  # the same warm-up for ssh (caches)
        _openssh_session(sshd, rig, 1)
    variants = ["openssh"] if sshd is not None else []
    variants += ["contsh", *(["contsh-cold"] if rig.no_resumer else []), "startup"]
    marker = 0
    for trial in range(trials):
        shift = trial % len(variants)  # rotate the order: load drifts hit each alike
        for variant in variants[shift:] + variants[:shift]:
            marker += 1
            if variant == "startup":
                _startup(data["startup"])
                continue
            if variant == "openssh":
                assert sshd is not None
                login, samples = _openssh_session(sshd, rig, keys)
                data["openssh_login"].append(login)
                data["openssh_keystroke"] += samples
                continue
            cold = variant == "contsh-cold"
            suffix = "_cold" if cold else ""
            term = rig.login(cold=cold)
            data["login" + suffix].append(_login(term))
            if not cold:
                data["keystroke"] += _keystrokes(term, keys)
            session, suspended = _suspend(term)
            if not cold:
                data["suspend"].append(suspended)
            took, reattached = _resume(rig, session, cold, marker)
            data["resume" + suffix].append(took)
            if reattached is not None:
                data[f"resume{suffix}_reattached"].append(reattached)
    data.update(_cuts(rig, cuts))
    data["openssh_cut"] = _openssh_cut(sshd, rig) if sshd is not None else None
    return data


# --- the report -----------------------------------------------------------------------------


def run(options: Options) -> Outcome:
    trials = options.repeats(3, 8)
    cuts = options.repeats(3, 10)
    keys = 30 if options.quick else 100
    with private_sshd(options.workdir) as (sshd, ssh_missing):
        rig = Contsh(options.workdir)
        try:
            rig.start()
            data = _measure(rig, sshd, trials, keys, cuts)
        finally:
            rig.close()
    return _outcome(data, data.pop("startup"), rig.no_resumer,
                    ssh_missing if sshd is None else None, trials, keys)


def _outcome(data: dict[str, Any], startup: dict[str, list[float]], no_resumer: bool,
             ssh_missing: str | None, trials: int, keys: int) -> Outcome:
    def med(key: str) -> float | None:
        values = data.get(key) or []
        return median(values) if values else None

    def p90(key: str) -> float | None:
        values = data.get(key) or []
        return percentile(values, 90) if values else None

    def missing(key: str) -> str:
        if key.startswith("openssh") and ssh_missing is not None:
            return unavailable(ssh_missing)
        if "cold" in key and not no_resumer:
            return unavailable("this contsh has no --no-resumer option")
        if key.endswith("reattached"):
            return unavailable("no 'resumed after' line in the client's log")
        return unavailable("not measured")

    def fig(value: float | None, key: str, scale: float = ms) -> Figure:
        return value * scale if value is not None else missing(key)

    def ratio(ours: float | None, base: float | None, key: str, base_key: str) -> Figure:
        if ours is None:
            return missing(key)
        if base is None:
            return missing(base_key)
        return ours / base

    def show(value: Figure, unit: str = " ms", digits: int = 0) -> str:
        return f"{value:.{digits}f}{unit}" if isinstance(value, float) else value

    no_ssh = unavailable(ssh_missing) if ssh_missing is not None else None

    def times(value: Figure) -> str:
        if isinstance(value, float):
            return f"{value:.2f}x"
        return "" if value == no_ssh else value  # said once, in the baseline column

    def both(first: str, second: str) -> str:
        return first if first == second else f"{first} / {second}"

    key_med, key_p90 = med("keystroke"), p90("keystroke")
    ssh_key_med, ssh_key_p90 = med("openssh_keystroke"), p90("openssh_keystroke")
    login, login_cold, ssh_login = med("login"), med("login_cold"), med("openssh_login")
    resume, resume_cold = med("resume"), med("resume_cold")
    cut, cut_p90 = med("cut_to_prompt"), p90("cut_to_prompt")
    relay_echo = med("relay_keystroke")
    figures: dict[str, Figure] = {
        "keystroke_median_ms": fig(key_med, "keystroke"),
        "keystroke_p90_ms": fig(key_p90, "keystroke"),
        "openssh_keystroke_median_ms": fig(ssh_key_med, "openssh_keystroke"),
        "openssh_keystroke_p90_ms": fig(ssh_key_p90, "openssh_keystroke"),
        "ratio_keystroke_median_to_openssh": ratio(key_med, ssh_key_med, "keystroke",
                                                   "openssh_keystroke"),
        "ratio_keystroke_p90_to_openssh": ratio(key_p90, ssh_key_p90, "keystroke",
                                                "openssh_keystroke"),
        "login_ms": fig(login, "login"),
        "login_cold_ms": fig(login_cold, "login_cold"),
        "first_login_ms": data["first_login"] * ms,
        "openssh_login_ms": fig(ssh_login, "openssh_login"),
        "ratio_login_to_openssh": ratio(login, ssh_login, "login", "openssh_login"),
        "ratio_login_cold_to_openssh": ratio(login_cold, ssh_login, "login_cold",
                                             "openssh_login"),
        "cut_to_prompt_ms": fig(cut, "cut_to_prompt"),
        "cut_to_prompt_p90_ms": fig(cut_p90, "cut_to_prompt"),
        "cut_to_prompt_rtts": fig(cut, "cut_to_prompt", 1 / RELAY_RTT),
        "relay_rtt_ms": RELAY_RTT * ms,
        "relay_keystroke_median_ms": fig(relay_echo, "relay_keystroke"),
        "suspend_ms": fig(med("suspend"), "suspend"),
        "resume_ms": fig(resume, "resume"),
        "resume_cold_ms": fig(resume_cold, "resume_cold"),
        "resume_reattached_ms": fig(med("resume_reattached"), "resume_reattached"),
        "resume_cold_reattached_ms": fig(med("resume_cold_reattached"),
                                         "resume_cold_reattached"),
        "ratio_resume_to_openssh_login": ratio(resume, ssh_login, "resume", "openssh_login"),
        "ratio_resume_cold_to_openssh_login": ratio(resume_cold, ssh_login, "resume_cold",
                                                    "openssh_login"),
        "python_startup_ms": median(startup["python"]) * ms,
        "import_cli_ms": median(startup["import_cli"]) * ms,
        "import_client_ms": median(startup["import_client"]) * ms,
    }
    f = figures
    # With --no-resumer there is a resumer; an older client always starts cold.
    via = " (through the resumer)" if no_resumer else ""
    cut_info: dict[str, Any] | None = data["openssh_cut"]
    ssh_cut = (f"OpenSSH: {cut_info['verdict']}" if cut_info is not None
               else f"OpenSSH: {unavailable(ssh_missing or '')}")
    ssh_login_text = (f"OpenSSH login {show(f['openssh_login_ms'])}"
                      if no_ssh is None else f"OpenSSH: {no_ssh}")
    fresh_login = f"fresh {ssh_login_text}" if no_ssh is None else ssh_login_text

    def ssh_tt(value: Figure, unit: str = " ms") -> str:
        return f"`ssh -tt` {show(value, unit, 2)}" if no_ssh is None else f"OpenSSH: {no_ssh}"
    login_both = f"{show(f['login_ms'])} / {show(f['login_cold_ms'])}"
    resume_both = f"{show(f['resume_ms'])} / {show(f['resume_cold_ms'])}"
    rows = [
        ["keystroke echo, median", show(f["keystroke_median_ms"], digits=2),
         ssh_tt(f["openssh_keystroke_median_ms"]),
         times(f["ratio_keystroke_median_to_openssh"])],
        ["keystroke echo, p90", show(f["keystroke_p90_ms"], digits=2),
         ssh_tt(f["openssh_keystroke_p90_ms"]),
         times(f["ratio_keystroke_p90_to_openssh"])],
        [f"login to a usable prompt{via}", show(f["login_ms"]),
         ssh_login_text, times(f["ratio_login_to_openssh"])],
        ["login to a usable prompt, cold (`--no-resumer`)", show(f["login_cold_ms"]),
         ssh_login_text, times(f["ratio_login_cold_to_openssh"])],
        ["(first login of the run" + (": also starts the resumer)" if no_resumer else ")"),
         show(f["first_login_ms"]),
         "", ""],
        [f"cut to a usable prompt, RTT {RELAY_RTT * ms:.0f} ms (median / p90)",
         f"{show(f['cut_to_prompt_ms'])} / {show(f['cut_to_prompt_p90_ms'])} "
         f"({show(f['cut_to_prompt_rtts'], ' RTT', 1)})", ssh_cut, ""],
        ["(keystroke echo through that relay, no cut)",
         show(f["relay_keystroke_median_ms"], digits=1), "", ""],
        ["suspend (`~^Z` to the client's message)", show(f["suspend_ms"]), "", ""],
        [f"resume from disk to a usable prompt{via}", show(f["resume_ms"]),
         fresh_login, times(f["ratio_resume_to_openssh_login"])],
        ["resume from disk to a usable prompt, cold (`--no-resumer`)",
         show(f["resume_cold_ms"]), fresh_login,
         times(f["ratio_resume_cold_to_openssh_login"])],
        ["(resume: process start to session re-attached, resumer / cold)",
         f"{show(f['resume_reattached_ms'])} / {show(f['resume_cold_reattached_ms'])}", "",
         ""],
        ["(start-up: `python -c pass` / + thin client's imports / + client's imports)",
         f"{show(f['python_startup_ms'])} / {show(f['import_cli_ms'])} / "
         f"{show(f['import_client_ms'])}", "", ""],
    ]
    summary = [
        ["shell keystroke echo (PTY), median / p90",
         f"{show(f['keystroke_median_ms'], '', 2)} / {show(f['keystroke_p90_ms'], digits=2)}",
         ssh_tt(f["openssh_keystroke_median_ms"], "") + " / "
         + show(f["openssh_keystroke_p90_ms"], digits=2) if no_ssh is None
         else f"OpenSSH: {no_ssh}",
         both(times(f["ratio_keystroke_median_to_openssh"]),
              times(f["ratio_keystroke_p90_to_openssh"]))],
        ["shell login to a usable prompt, resumer / cold", login_both, ssh_login_text,
         both(times(f["ratio_login_to_openssh"]), times(f["ratio_login_cold_to_openssh"]))],
        [f"shell: cut to a usable prompt (RTT {RELAY_RTT * ms:.0f} ms)",
         f"{show(f['cut_to_prompt_ms'])} ({show(f['cut_to_prompt_rtts'], ' RTT', 1)})",
         "OpenSSH: session lost" if cut_info is not None and not cut_info["survived"]
         else ssh_cut, ""],
        ["shell resume from disk to a usable prompt, resumer / cold", resume_both,
         fresh_login,
         both(times(f["ratio_resume_to_openssh_login"]),
              times(f["ratio_resume_cold_to_openssh_login"]))],
    ]
    markdown = (
        f"contsh and `ssh -tt` in pseudo-terminals of their own, both into `{SHELL}`, "
        f"loopback, interleaved; {trials} trials of each (medians). Keystrokes: {keys} per "
        f"trial, {KEY_GAP * ms:.0f} ms apart, from the write of one character to the read "
        "of its echo (median and p90 of all samples). Login and resume: from the start of "
        "the client process to the output of a marker command typed ahead right after the "
        f"start. Cut: contsh through an ImpairmentRelay (RTT {RELAY_RTT * ms:.0f} ms), "
        f"{len(data['cut_to_prompt'])} resets, each followed at once by a marker command; "
        "ssh through an identical relay, cut once. Ratios are contsh / OpenSSH.\n\n"
        + table(["figure", "contsh", "OpenSSH (same run)", "ratio"], rows)
    )
    notes = [
        "Goal from the issue: resume into a new client process in under 50 ms; a fresh "
        "OpenSSH login is the alternative without continuations.",
        "contsh runs as installed: forked from the per-user resumer (its imports done) "
        "when the client supports it; cold is a new Python importing everything.",
        "The re-attached time comes from the resumed client's log line "
        "(`contsh.client resumed after ...`, ms resolution).",
    ]
    result: dict[str, Any] = {
        "trials": trials, "keystrokes_per_trial": keys, "relay_rtt": RELAY_RTT,
        "no_resumer_option": no_resumer, "openssh_cut": cut_info,
        "samples": {k: v for k, v in data.items() if isinstance(v, list)},
        "startup_samples": startup, "first_login": data["first_login"],
    }
    if ssh_missing is not None:
        result["openssh"] = unavailable(ssh_missing)
    return Outcome(markdown=markdown, data=result, notes=notes, figures=figures,
                   summary=summary)


if __name__ == "__main__":
    standalone(run)

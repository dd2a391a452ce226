"""A rig for the shell's acceptance tests: a real contshd, real contsh clients in tmux
panes (or plain pipes), an OpenSSH key pair made by ssh-keygen, and an impairment relay.

Server and clients keep their state in separate directories under the test's tmp
path, as two machines would. Everything is stopped at the end: tmux (its own
server socket), every contshd, the keeper and the shells it holds.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from continuations.runtime import forkserver
from continuations.store import SessionRecord, Store

BIN = Path(sys.executable).parent
SHELL = "/bin/bash --norc --noprofile"


def need(tool: str, package: str) -> None:
    if shutil.which(tool) is None:
        if os.environ.get("CI"):
            pytest.fail(f"{tool} is missing in CI (.ci/run installs {package})")
        pytest.skip(f"{tool} is not installed (Debian: {package})")


def _command(name: str) -> str:
    found = BIN / name
    return str(found) if found.exists() else name


class ShellRig:
    def __init__(self, tmp: Path) -> None:
        need("tmux", "tmux")
        need("ssh-keygen", "openssh-client")
        self.tmp = tmp
        self.key = tmp / "id_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.key)],
                       check=True, timeout=30)
        (tmp / "authorized_keys").write_text(self.key.with_suffix(".pub").read_text())
        self.server_env = {**os.environ, "CONTINUATIONS_STATE_DIR": str(tmp / "server-state"),
                           "CONTINUATIONS_RUNTIME_DIR": str(tmp / "server-run")}
        self.client_env = {**os.environ, "CONTINUATIONS_STATE_DIR": str(tmp / "client-state"),
                           "CONTINUATIONS_RUNTIME_DIR": str(tmp / "client-run")}
        for env in (self.server_env, self.client_env):
            env.pop("TMUX", None)
        self.tmux_socket = tmp / "tmux.sock"
        self.servers: list[subprocess.Popen[str]] = []
        self.pipes: list[subprocess.Popen[bytes]] = []
        self.port = 0

    # --- the server ---------------------------------------------------------------------------

    def start_server(self, *extra: str, port: int | None = None,
                     host_key: str = "host_key") -> int:
        log = open(self.tmp / f"contshd-{len(self.servers)}.log", "w")  # noqa: SIM115
        proc = subprocess.Popen(
            [_command("contshd"), "--port", str(port if port is not None else self.port),
             "--authorized-keys", str(self.tmp / "authorized_keys"),
             "--host-key", str(self.tmp / host_key), "--shell", SHELL, *extra],
            env=self.server_env, stdout=subprocess.PIPE, stderr=log, text=True)
        log.close()
        self.servers.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        assert match, f"contshd did not start: {line!r} {self.server_log()}"
        self.port = int(match.group(1))
        return self.port

    def stop_server(self, timeout: float = 30) -> str:
        """SIGTERM, as a restart does; returns what it said on the way out."""
        proc = self.servers[-1]
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=timeout)
        assert proc.returncode == 0, (proc.returncode, out, self.server_log())
        return out

    def server_log(self) -> str:
        return "\n".join(p.read_text() for p in sorted(self.tmp.glob("contshd-*.log")))

    # --- clients in tmux ----------------------------------------------------------------------

    def client_argv(self, *args: str, port: int | None = None,
                    key: Path | None = None) -> list[str]:
        return [_command("contsh"), "-p", str(port or self.port), "-i", str(key or self.key),
                "--known-hosts", str(self.tmp / "known_hosts"), *args]

    def tmux(self, *args: str, check: bool = True) -> str:
        done = subprocess.run(["tmux", "-S", str(self.tmux_socket), *args], check=check,
                              capture_output=True, text=True, timeout=20)
        return done.stdout

    def open_pane(self, name: str, argv: list[str], cols: int = 120, rows: int = 40) -> None:
        env = " ".join(f"{k}={v}" for k, v in self.client_env.items()
                       if k.startswith("CONTINUATIONS_"))
        command = (f"env {env} TERM=xterm-256color {' '.join(map(_quote, argv))}; "
                   f"echo EXIT=$?; sleep 600")
        self.tmux("new-session", "-d", "-s", name, "-x", str(cols), "-y", str(rows), command)

    def screen(self, name: str, history: bool = True) -> str:
        args = ["capture-pane", "-p", "-J", "-t", name]
        if history:
            args += ["-S", "-100000"]
        return self.tmux(*args)

    def wait(self, name: str, pattern: str, timeout: float = 30,
             history: bool = True) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            text = self.screen(name, history)
            match = re.search(pattern, text, re.MULTILINE)
            if match:
                return match
            if time.monotonic() > deadline:
                raise AssertionError(f"no {pattern!r} on {name}'s screen within {timeout} s:"
                                     f"\n{text}\n--- server ---\n{self.server_log()}"
                                     f"\n--- client ---\n{self.client_log()}")
            time.sleep(0.05)

    def type(self, name: str, line: str) -> None:
        self.tmux("send-keys", "-t", name, "-l", line)
        self.tmux("send-keys", "-t", name, "Enter")

    def keys(self, name: str, *keys: str) -> None:
        self.tmux("send-keys", "-t", name, *keys)

    def shell_pid(self, name: str, tag: str) -> int:
        """Ask the shell for $$ (``tag`` keeps answers apart on one screen)."""
        self.type(name, f"echo {tag}=$$")
        return int(self.wait(name, rf"^{tag}=(\d+)\s*$").group(1))

    def client_log(self) -> str:
        path = self.tmp / "client-state" / "logs" / "contsh.log"
        return path.read_text()[-4000:] if path.exists() else ""

    # --- the client's store -------------------------------------------------------------------

    def client_sessions(self) -> list[SessionRecord]:
        path = self.tmp / "client-state" / "store.db"
        if not path.exists():
            return []
        store = Store(path)
        try:
            return store.list_sessions(app="contsh")
        finally:
            store.close()

    def wait_client_session(self, state: str, timeout: float = 20,
                            exclude: tuple[str, ...] = ()) -> SessionRecord:
        deadline = time.monotonic() + timeout
        while True:
            for record in self.client_sessions():
                if record.state == state and record.id not in exclude:
                    return record
            assert time.monotonic() < deadline, (state, self.client_sessions())
            time.sleep(0.05)

    # --- clients without a terminal -----------------------------------------------------------

    def run_client(self, *args: str, timeout: float = 60, port: int | None = None,
                   key: Path | None = None,
                   **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(self.client_argv(*args, port=port, key=key), env=self.client_env,
                              stdin=subprocess.PIPE, capture_output=True, timeout=timeout,
                              **kwargs)

    def start_client(self, *args: str, port: int | None = None,
                     **kwargs: Any) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(self.client_argv(*args, port=port), env=self.client_env,
                                stdin=subprocess.PIPE, **kwargs)
        self.pipes.append(proc)
        return proc

    # --- cleaning up --------------------------------------------------------------------------

    def close(self) -> None:
        self.tmux("kill-server", check=False)
        with contextlib.suppress(OSError):  # contsh in a terminal forks from it
            forkserver.stop(self.tmp / "client-run")
        # One may still be starting (the first contsh starts it in the background).
        subprocess.run(["pkill", "-f", str(self.tmp / "client-run")], check=False,
                       timeout=10)
        for proc in self.pipes:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(10)
        for proc in self.servers:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
        keeper = self.tmp / "server-run" / "contsh-keeper.sock"
        if keeper.exists():
            from apps.contsh.keeper import KeeperClient

            with contextlib.suppress(Exception):
                client = KeeperClient(keeper)
                pid = client.call("ping")[0]["pid"]
                client.close()
                os.kill(pid, signal.SIGTERM)  # ends every shell it holds
                deadline = time.monotonic() + 10
                while keeper.exists() and time.monotonic() < deadline:
                    time.sleep(0.05)


def _quote(arg: str) -> str:
    return "'" + arg.replace("'", "'\\''") + "'"

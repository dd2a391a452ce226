"""A private OpenSSH server for benchmarks and tests: loopback port, throwaway keys.

``Sshd(workdir).start(binary)`` generates an Ed25519 host key and a client key,
authorizes the client key for the current user, and runs ``sshd -D`` on a free
loopback port; ``ssh_argv()`` is a stock ``ssh`` command line that logs in
with that key and ignores the user's own configuration and known hosts.
``close()`` stops sshd and every session it forked. Used by throughput.py,
tunnel.py and tests/test_tunnel*.py.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from common import spawn, stop

__all__ = ["DEFAULT_CIPHER", "MISSING", "Sshd", "private_sshd"]

DEFAULT_CIPHER = "chacha20-poly1305@openssh.com"
MISSING = "sshd not installed (apt-get install openssh-server)"
SSH_TIMEOUT = 300.0


class Sshd:
    """A private sshd on a loopback port, run as the current user, with throwaway keys."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir / "sshd"
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0
        self.version = ""

    @staticmethod
    def find() -> tuple[str | None, str]:
        """The sshd binary, or None and why it cannot be used."""
        sshd = shutil.which("sshd") or ("/usr/sbin/sshd" if Path("/usr/sbin/sshd").exists()
                                         else None)
        if sshd is None and os.environ.get("BENCH_INSTALL") == "1" and os.geteuid() == 0:
            _apt_install("openssh-server")
            sshd = "/usr/sbin/sshd" if Path("/usr/sbin/sshd").exists() else None
        if sshd is None:
            return None, MISSING
        for tool in ("ssh", "ssh-keygen"):
            if shutil.which(tool) is None:
                return None, f"{tool} not installed (apt-get install openssh-client)"
        return sshd, ""

    def start(self, sshd: str) -> None:
        self.dir.mkdir(mode=0o700)
        d = self.dir
        for name in ("host_key", "client_key"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bench",
                            "-f", str(d / name)], check=True, timeout=30,
                           capture_output=True)
        (d / "authorized_keys").write_text((d / "client_key.pub").read_text())
        user = pwd.getpwuid(os.geteuid()).pw_name
        if os.geteuid() == 0:
            # Debian's sshd refuses to start as root without its privilege-separation
            # directory, which the service unit normally creates at boot.
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        (d / "sshd_config").write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {d / 'host_key'}\n"
            f"AuthorizedKeysFile {d / 'authorized_keys'}\n"
            "PubkeyAuthentication yes\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
            "UseDNS no\nX11Forwarding no\nAllowTcpForwarding no\nPrintMotd no\n"
            "PrintLastLog no\nLogLevel ERROR\n"
        )
        self.version = subprocess.run(["ssh", "-V"], capture_output=True, text=True,
                                      timeout=10).stderr.strip()
        self.proc = spawn(
            [sshd, "-D", "-e", "-f", str(d / "sshd_config"),
             "-o", "UsePAM no", "-o", "StrictModes no", "-o", f"PidFile {d / 'sshd.pid'}",
             "-o", f"AllowUsers {user}"],
            stdout=subprocess.DEVNULL, stderr=open(d / "sshd.log", "w"),  # noqa: SIM115
        )
        deadline = time.monotonic() + 10
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited at start: {self.log()}")
            with contextlib.suppress(OSError), socket.create_connection(
                ("127.0.0.1", self.port), timeout=1
            ):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"sshd not listening after 10 s: {self.log()}")
            time.sleep(0.05)
        probe_run = self.ssh(DEFAULT_CIPHER, "true", subprocess.DEVNULL)
        if probe_run.returncode != 0:
            raise RuntimeError(f"ssh login failed: {probe_run.stderr.strip()} {self.log()}")

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return (self.dir / "sshd.log").read_text().strip()[-400:]
        return ""

    def ssh_argv(self, *, cipher: str | None = None, proxy_command: str | None = None,
                 tty: bool = False, options: Sequence[str] = ()) -> list[str]:
        """``ssh`` logging in to this sshd, up to and including the host (add a command).

        With ``proxy_command``, ssh reaches sshd through it (``-o ProxyCommand=``);
        ``tty`` forces a remote terminal (``-tt``), else none is allocated (``-T``).
        """
        argv = ["ssh", "-F", "/dev/null", "-tt" if tty else "-T", "-p", str(self.port),
                "-i", str(self.dir / "client_key"), "-o", "IdentitiesOnly=yes",
                "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
                "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
                "-o", "Compression=no"]
        if cipher is not None:
            argv += ["-o", f"Ciphers={cipher}"]
        if proxy_command is not None:
            argv += ["-o", f"ProxyCommand={proxy_command}"]
        for option in options:
            argv += ["-o", option]
        return [*argv, "127.0.0.1"]

    def ssh(self, cipher: str, command: str, stdin: Any,
            proxy_command: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.ssh_argv(cipher=cipher, proxy_command=proxy_command), command],
            stdin=stdin, capture_output=True, text=True, timeout=SSH_TIMEOUT,
        )

    def timed_cat(self, cipher: str, path: Path | None,
                  proxy_command: str | None = None) -> float:
        """Seconds for ``ssh ... 'cat > /dev/null' < path`` (empty input if path is None)."""
        with open(path if path is not None else os.devnull, "rb") as src:
            start = time.perf_counter()
            done = self.ssh(cipher, "cat > /dev/null", src, proxy_command)
            elapsed = time.perf_counter() - start
        if done.returncode != 0:
            raise RuntimeError(f"ssh ({cipher}) failed: {done.stderr.strip()}")
        return elapsed

    def close(self) -> None:
        """Stop sshd, after its per-connection children (they are in their own sessions).

        A child still running when the listener goes would be orphaned and, in a
        container whose init does not reap, linger as a zombie; so the listener
        is kept until its children are gone, and reaps them itself.
        """
        proc = self.proc
        if proc is not None and proc.poll() is None:
            deadline = time.monotonic() + 3
            while (children := _children(proc.pid)) and time.monotonic() < deadline:
                if time.monotonic() > deadline - 2:
                    for pid in children:
                        with contextlib.suppress(ProcessLookupError, PermissionError):
                            os.kill(pid, signal.SIGTERM)
                time.sleep(0.05)
        stop(proc)
        self.proc = None


def _children(pid: int) -> list[int]:
    """Live child processes of ``pid`` (Linux /proc); zombies excluded."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(stat.parent.name))
    return found


def _apt_install(package: str) -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-qq", package]
    if subprocess.run(cmd, env=env, capture_output=True, timeout=600).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=600)
        subprocess.run(cmd, env=env, capture_output=True, timeout=600)


@contextlib.contextmanager
def private_sshd(workdir: Path) -> Iterator[tuple[Sshd | None, str]]:
    """A started ``Sshd``, or None and why not; stopped on the way out."""
    binary, why = Sshd.find()
    if binary is None:
        yield None, why
        return
    sshd = Sshd(workdir)
    try:
        try:
            sshd.start(binary)
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            yield None, f"private sshd did not start ({exc})"
            return
        yield sshd, ""
    finally:
        sshd.close()

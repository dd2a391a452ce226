"""A private OpenSSH server for benchmarks and tests: loopback port, throwaway keys.

``Sshd(workdir).start(binary)`` generates an Ed25519 host key and a client key,
authorizes the client key for the current user, and runs ``sshd -D`` on a free
loopback port; ``ssh_argv()`` is a stock ``ssh`` command line that logs in
with that key and ignores the user's own configuration and known hosts.
``close()`` stops sshd and every session it forked. ``measured(...)`` runs one
ssh command and reports its wall time and CPU time on both sides. Used by
throughput.py, suspend_resume.py, tunnel.py and tests/test_tunnel*.py.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import resource
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from common import Measured, spawn, stop

__all__ = ["DEFAULT_CIPHER", "MISSING", "Sshd", "private_sshd"]

DEFAULT_CIPHER = "chacha20-poly1305@openssh.com"
MISSING = "sshd not installed (apt-get install openssh-server)"
SSH_TIMEOUT = 300.0
_TICK = os.sysconf("SC_CLK_TCK")


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
        return self.measured(cipher, "cat > /dev/null", path, proxy_command).seconds

    def measured(self, cipher: str | None, command: str, path: Path | None = None,
                 proxy_command: str | None = None) -> Measured:
        """Run ``ssh ... command < path`` (empty input if None): wall time and CPU
        (client: the ssh process; server: sshd's per-connection processes and the
        remote command).

        The client's CPU is our RUSAGE_CHILDREN delta: ssh is the only child reaped
        meanwhile (the suite runs one thing at a time). The server's is the growth of
        the listening sshd's cutime + cstime (/proc), which the kernel adds when sshd
        reaps a connection's process, whose own total includes what it reaped (the
        privilege-separated child, the shell, the command): so it is counted once
        the connection's processes are gone. Clock ticks: 10 ms resolution.
        """
        before_server = self._reaped_cpu()
        before_client = resource.getrusage(resource.RUSAGE_CHILDREN)
        with open(path if path is not None else os.devnull, "rb") as src:
            start = time.perf_counter()
            done = subprocess.run([*self.ssh_argv(cipher=cipher, proxy_command=proxy_command),
                                   command], stdin=src, capture_output=True, text=True,
                                  timeout=SSH_TIMEOUT)
            elapsed = time.perf_counter() - start
        after_client = resource.getrusage(resource.RUSAGE_CHILDREN)
        if done.returncode != 0:
            raise RuntimeError(f"ssh ({cipher or 'default cipher'}) {command!r} failed: "
                               f"{done.stderr.strip()}")
        self._wait_reaped()
        return Measured(
            seconds=elapsed,
            client_cpu=(after_client.ru_utime - before_client.ru_utime
                        + after_client.ru_stime - before_client.ru_stime),
            server_cpu=self._reaped_cpu() - before_server,
        )

    def _reaped_cpu(self) -> float:
        """CPU seconds of every process the listening sshd has reaped (cutime + cstime)."""
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[13]) + int(fields[14])) / _TICK

    def _wait_reaped(self, timeout: float = 10.0) -> None:
        """Until the listening sshd has no child left, not even a zombie."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while _children(self.proc.pid, zombies=True):
            if time.monotonic() > deadline:
                raise RuntimeError(f"sshd's connection processes still there after "
                                   f"{timeout:.0f} s")
            time.sleep(0.005)

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


def _children(pid: int, zombies: bool = False) -> list[int]:
    """Child processes of ``pid`` (Linux /proc); zombies only if asked."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and (zombies or fields[0] != "Z"):
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

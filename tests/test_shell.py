"""contsh as a user runs it: real contshd, real contsh in tmux panes, real bash in a PTY.

Each test drives the terminal with tmux send-keys and reads it with capture-pane.
The network is cut with the impairment relay (on a thread of the test process).
"""

from __future__ import annotations

import base64
import hashlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from apps.contsh.userauth import hash_password
from relaythread import RelayThread, wait_for
from shellrig import ShellRig

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[ShellRig]:
    rig = ShellRig(tmp_path)
    try:
        yield rig
    finally:
        rig.close()


@pytest.fixture
def relay(rig: ShellRig) -> Iterator[RelayThread]:
    rig.start_server()
    relay = RelayThread(("127.0.0.1", rig.port))
    relay.do(lambda: relay.relay.set_delay(0.01))
    try:
        yield relay
    finally:
        relay.close()


def test_typing_through_an_outage_runs_every_keystroke_once(rig: ShellRig,
                                                            relay: RelayThread) -> None:
    log = rig.tmp / "typed.log"
    rig.open_pane("a", rig.client_argv("127.0.0.1", port=relay.address[1]))
    pid = rig.shell_pid("a", "first")
    rig.type("a", "echo $((6*7))=answer")
    rig.wait("a", r"^42=answer")

    relay.blackhole()
    status = rig.wait("a", r"contsh: connection lost, reconnecting, (\d+) s", timeout=15,
                      history=False)
    for n in (1, 2, 3):  # typed while the path is dead: sent once it is back
        rig.type("a", f"echo $((100+{n}))x | tee -a {log}")
    time.sleep(1.5)
    later = rig.wait("a", r"contsh: connection lost, reconnecting, (\d+) s", history=False)
    assert int(later.group(1)) > int(status.group(1))  # the status line counts
    relay.heal()
    rig.wait("a", r"^103x\s*$")
    assert rig.shell_pid("a", "after") == pid
    screen = rig.screen("a")
    for n in (1, 2, 3):
        assert len([ln for ln in screen.splitlines() if ln.strip() == f"10{n}x"]) == 1, screen
    assert log.read_text() == "101x\n102x\n103x\n"
    visible = rig.screen("a", history=False)
    assert "connection lost" not in visible  # the status line is gone, the screen intact
    rig.type("a", "exit 7")
    rig.wait("a", r"^EXIT=7\s*$")


def test_killed_client_resumes_from_a_new_process(rig: ShellRig) -> None:
    rig.start_server()
    work = rig.tmp / "work dir"
    work.mkdir()
    rig.open_pane("a", rig.client_argv("127.0.0.1"))
    pid = rig.shell_pid("a", "first")
    rig.type("a", f"export FOO=bar-$((1+1)); cd '{work}'")
    record = rig.wait_client_session("established")
    assert record.pid is not None
    os.kill(record.pid, signal.SIGKILL)
    # Killed: 137, or 255 from the launcher when the client was forked by the resumer.
    rig.wait("a", r"EXIT=(137|255)")  # the terminal stays raw: no carriage returns

    rig.open_pane("b", [*rig.client_argv("--resume", record.id[:8])])
    rig.wait("b", "taking its shell over")
    rig.type("b", "echo again=$$ foo=$FOO pwd=$PWD")
    match = rig.wait("b", r"^again=(\d+) foo=(\S+) pwd=(.+?)\s*$")
    assert (int(match.group(1)), match.group(2), match.group(3)) == (pid, "bar-2", str(work))
    assert "(taken over)" in rig.server_log()


def test_suspend_to_disk_and_a_server_restart_keep_both_shells(rig: ShellRig) -> None:
    port = rig.start_server()
    rig.open_pane("a", rig.client_argv("127.0.0.1"))
    rig.open_pane("b", rig.client_argv("127.0.0.1"))
    pid_a, pid_b = rig.shell_pid("a", "a"), rig.shell_pid("b", "b")
    rig.type("b", "B_STATE=kept")
    rig.keys("b", "Enter", "~", "C-z")  # ~^Z: suspend to disk, the client exits
    rig.wait("b", r"suspended to disk .* resume with: contsh --resume ([0-9a-f]{8})")
    rig.wait("b", r"^EXIT=0\s*$")
    suspended = rig.wait_client_session("suspended")

    said = rig.stop_server()  # both server sessions go to the store; the keeper keeps shells
    assert "2 sessions suspended" in said
    rig.start_server(port=port)
    rig.type("a", "echo after=$$")  # connected client: an outage, then the new server
    assert int(rig.wait("a", r"^after=(\d+)\s*$", timeout=40).group(1)) == pid_a

    rig.open_pane("c", rig.client_argv("--resume", suspended.id[:8]))
    rig.type("c", "echo back=$$ $B_STATE")
    match = rig.wait("c", r"^back=(\d+) (\w+)\s*$")
    assert (int(match.group(1)), match.group(2)) == (pid_b, "kept")
    rig.type("c", "exit 3")
    rig.wait("c", r"^EXIT=3\s*$")


def test_100_mib_of_output_through_a_cut_arrives_intact(rig: ShellRig,
                                                        relay: RelayThread) -> None:
    relay.do(lambda: relay.relay.set_delay(0.0))
    data = rig.tmp / "data.txt"
    with open(data, "wb") as out:  # text-like and only partly compressible, 100 MiB
        for _ in range(100):
            out.write(base64.encodebytes(os.urandom(786432)))
            out.write(b"the same line again and again\n" * 1024 + b"x" * 2048)
    assert data.stat().st_size >= 100 * 1024 * 1024
    received = rig.tmp / "received.txt"
    with open(received, "wb") as sink:
        # A raw terminal on the far side, so the bytes are not translated (\n to \r\n).
        client = rig.start_client("127.0.0.1", f"stty raw -echo; cat '{data}'",
                                  port=relay.address[1], stdout=sink)
        wait_for(lambda: received.stat().st_size > 30 * 1024 * 1024, 120, "output flowing")
        relay.cut()
        assert client.wait(180) == 0
    assert received.stat().st_size == data.stat().st_size
    assert hashlib.sha256(received.read_bytes()).digest() == \
        hashlib.sha256(data.read_bytes()).digest()


def test_refusals_are_clear_and_the_server_keeps_serving(rig: ShellRig) -> None:
    port = rig.start_server()
    assert rig.run_client("127.0.0.1", "true").returncode == 0  # pins the host key

    stranger = rig.tmp / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)],
                   check=True, timeout=30)
    wrong = rig.run_client("127.0.0.1", "true", key=stranger)
    assert wrong.returncode == 255
    assert b"permission denied: key SHA256:" in wrong.stderr, wrong.stderr

    other_user = rig.run_client("nobody-here@127.0.0.1", "true")
    assert b"permission denied for user 'nobody-here'" in other_user.stderr

    with socket.create_connection(("127.0.0.1", port)) as raw:  # garbage from the network
        raw.sendall(os.urandom(4096))
        raw.settimeout(10)
        while raw.recv(4096):
            pass
    ok = rig.run_client("127.0.0.1", "echo still-serving")
    assert ok.returncode == 0 and b"still-serving" in ok.stdout

    rig.stop_server()
    rig.start_server(port=port, host_key="another_host_key")  # an impostor
    impostor = rig.run_client("127.0.0.1", "true")
    assert impostor.returncode == 255
    assert b"host key" in impostor.stderr.lower() and b"SHA256:" in impostor.stderr


def test_window_size_forwarding_status_and_password(rig: ShellRig) -> None:
    password_file = rig.tmp / "passwd"
    password_file.write_text(hash_password("s3cret pass"))
    rig.start_server("--password-file", str(password_file))

    echo = socket.create_server(("127.0.0.1", 0))
    def serve_echo() -> None:
        conn, _ = echo.accept()
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data[::-1])
    threading.Thread(target=serve_echo, daemon=True).start()
    local = socket.create_server(("127.0.0.1", 0))
    lport = local.getsockname()[1]
    local.close()

    rig.open_pane("a", rig.client_argv(
        "-L", f"{lport}:127.0.0.1:{echo.getsockname()[1]}", "127.0.0.1"), cols=120, rows=40)
    rig.type("a", "stty size; cat \"$CONTSH_STATUS\"")
    rig.wait("a", r"^40 120\s*$")
    rig.wait("a", r"^connected \d+\s*$")
    rig.tmux("resize-window", "-t", "a", "-x", "100", "-y", "30")
    time.sleep(0.5)
    rig.type("a", "stty size")
    rig.wait("a", r"^30 100\s*$")

    with socket.create_connection(("127.0.0.1", lport), timeout=10) as conn:
        conn.sendall(b"forwarded through the session")
        got = b""
        while len(got) < 29:
            got += conn.recv(100)
    assert got == b"noisses eht hguorht dedrawrof"
    echo.close()

    # A key the server does not know, then the password.
    stranger = rig.tmp / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)],
                   check=True, timeout=30)
    rig.open_pane("p", rig.client_argv("--password", "127.0.0.1", key=stranger))
    rig.wait("p", r"password: $")
    rig.type("p", "wrong one")
    rig.wait("p", r"password: \s+\S+'s password: $")  # asked again
    rig.type("p", "s3cret pass")
    assert rig.shell_pid("p", "pw") > 0


def test_a_crashed_server_loses_sessions_not_shells(rig: ShellRig) -> None:
    """One client connected, one suspended to disk: after kill -9 of the server both
    shells are taken over, the first by itself, the second by contsh --resume."""
    port = rig.start_server()
    rig.open_pane("a", rig.client_argv("127.0.0.1"))
    rig.open_pane("b", rig.client_argv("127.0.0.1"))
    pid, pid_b = rig.shell_pid("a", "first"), rig.shell_pid("b", "b")
    rig.type("a", "CRASH_STATE=survived; echo $((2+3))set")
    rig.wait("a", r"^5set")
    rig.keys("b", "Enter", "~", "C-z")
    rig.wait("b", r"^EXIT=0\s*$")
    suspended = rig.wait_client_session("suspended")
    rig.servers[-1].kill()  # no chance to suspend anything: the keeper still has the shells
    rig.servers[-1].wait(10)
    rig.start_server(port=port)
    rig.wait("a", "the server lost this session; logging in again", timeout=40)
    rig.type("a", "echo back=$$ $CRASH_STATE")
    match = rig.wait("a", r"^back=(\d+) (\w+)\s*$")
    assert (int(match.group(1)), match.group(2)) == (pid, "survived")

    rig.open_pane("c", rig.client_argv("--resume", suspended.id[:8]))
    rig.wait("c", "the server lost session .*; taking its shell over")
    assert rig.shell_pid("c", "c") == pid_b


def test_the_status_line_gives_the_bottom_row_back(rig: ShellRig, relay: RelayThread) -> None:
    """With the prompt on the bottom row (a full screen), the status line covers it while
    offline; once back, the row shows the prompt and what was typed on it again."""
    rig.open_pane("a", rig.client_argv("127.0.0.1", port=relay.address[1]), rows=20)
    rig.type("a", "seq 1 60")
    rig.wait("a", r"^60\s*$")
    rig.keys("a", "-l", "echo half-typed")  # on the prompt line, not yet run
    time.sleep(0.5)
    before = rig.screen("a", history=False).splitlines()
    assert before[-1].rstrip().endswith("echo half-typed"), before[-3:]
    relay.blackhole()
    rig.wait("a", r"connection lost, reconnecting", history=False, timeout=15)
    assert "half-typed" not in rig.screen("a", history=False).splitlines()[-1]
    relay.heal()
    wait_for(lambda: "connection lost" not in rig.screen("a", history=False), 20,
             "the status line to go")
    after = rig.screen("a", history=False).splitlines()
    assert after[-1].rstrip() == before[-1].rstrip(), (before[-1], after[-1])
    rig.keys("a", "Enter")
    rig.wait("a", r"^half-typed\s*$")


def test_the_server_suspends_an_absent_client_and_resumes_it(rig: ShellRig) -> None:
    """--suspend-after 1: the SSH continuation runs while the client is away (its
    session goes to the store, its terminal back to the keeper); the returning client
    brings it back, compression carrying on from the saved history."""
    rig.start_server("--suspend-after", "1")
    relay = RelayThread(("127.0.0.1", rig.port))
    try:
        rig.open_pane("a", rig.client_argv("127.0.0.1", port=relay.address[1]))
        pid = rig.shell_pid("a", "first")
        rig.type("a", "seq 1000 1300 | tr '\\n' ' '; echo")
        rig.wait("a", r"1299 1300")
        relay.blackhole()
        wait_for(lambda: "suspended" in (rig.tmp / "server-run").joinpath(
            next(p.name for p in (rig.tmp / "server-run").glob("contsh-status-*"))
        ).read_text(), 30, "the server to suspend the session")
        rig.type("a", "echo $((7*6))-typed-while-suspended")
        relay.heal()
        rig.wait("a", r"^42-typed-while-suspended\s*$", timeout=40)
        rig.type("a", "seq 1000 1300 | tr '\\n' ' '; echo")  # compressed against history
        rig.wait("a", r"1299 1300(.|\n)*1299 1300")
        assert rig.shell_pid("a", "after") == pid
        log = rig.server_log()
        assert "resumed: shell" in log and "compression level" in log, log
    finally:
        relay.close()

"""The shell app's parts on their own: output framing and compression, user keys and
passwords, the escape parser, the screen tracker, and the keeper (a real process)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apps.contsh import userauth
from apps.contsh.frames import HISTORY, FrameError, OutputDecoder, OutputEncoder
from apps.contsh.keeper import KeeperClient, ensure_keeper
from apps.contsh.terminal import HELP, QUIT, SUSPEND, EscapeParser, ScreenTracker
from continuations.errors import AuthenticationError, ConfigError, ResourceError
from shellrig import need

TEXT = b"".join(b"%06d drwxr-xr-x  2 user user 4096 Nov 21 12:00 directory-%d\r\n" % (i, i % 97)
                for i in range(3000))


# --- frames --------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(pieces=st.lists(st.binary(max_size=3000), max_size=12), level=st.integers(0, 9),
       cuts=st.lists(st.integers(1, 50), min_size=1, max_size=8))
def test_frames_round_trip_across_any_split(pieces: list[bytes], level: int,
                                            cuts: list[int]) -> None:
    encoder = OutputEncoder(level)
    wire = encoder.reset(level, keep_history=False) + b"".join(map(encoder.encode, pieces))
    decoder = OutputDecoder()
    out, i, k = bytearray(), 0, 0
    while i < len(wire):
        step = cuts[k % len(cuts)]
        out += decoder.feed(wire[i:i + step])
        i, k = i + step, k + 1
    assert bytes(out) == b"".join(pieces)
    assert decoder.history == encoder.history


def test_a_fresh_decoder_with_the_history_carries_on_mid_stream() -> None:
    """What a client resumed from disk does: its decompressor is rebuilt from the saved
    history while the server's compressor just continues (the bug a zlib header caused)."""
    encoder = OutputEncoder(6)
    first = OutputDecoder()
    first.feed(encoder.reset(6, keep_history=False) + encoder.encode(TEXT[:50000]))
    later = OutputDecoder(first.level, first.history)
    assert later.feed(encoder.encode(TEXT[50000:])) == TEXT[50000:]


def test_the_ratio_survives_a_reset_with_history() -> None:
    """Output after a resume that repeats recent output (the same listing again) costs
    next to nothing with the history as dictionary, and its full size without."""
    listing = os.urandom(12000).hex().encode()  # incompressible on its own
    warm = OutputEncoder(6)
    warm.encode(TEXT[:40000] + listing)
    with_history = len(warm.reset(6)) + len(warm.encode(listing))
    without = len(OutputEncoder(6).encode(listing))
    assert with_history < without / 20, (with_history, without)
    assert len(warm.history) == HISTORY


def test_resets_change_level_and_drop_history_when_told() -> None:
    encoder, decoder = OutputEncoder(6), OutputDecoder()
    assert decoder.feed(encoder.reset(6, keep_history=False) + encoder.encode(b"abc")) == b"abc"
    assert decoder.feed(encoder.reset(0) + encoder.encode(b"plain")) == b"plain"
    assert decoder.level == 0
    assert decoder.feed(encoder.reset(1, keep_history=False) + encoder.encode(b"x")) == b"x"
    assert decoder.history == b"x"


@pytest.mark.parametrize("wire, error", [
    (b"\x07\x00\x00\x00\x00", "unknown terminal record type 7"),
    (b"\x02\x00\x00\x00\x01\x05", "malformed compression reset"),
    (b"\x02\x00\x00\x00\x02\x0a\x01", "malformed compression reset"),
    (b"\x01\x7f\x00\x00\x00", "terminal record of"),
])
def test_malformed_records_are_refused(wire: bytes, error: str) -> None:
    with pytest.raises(FrameError, match=error):
        OutputDecoder().feed(wire)


def test_corrupt_compressed_output_is_refused() -> None:
    decoder = OutputDecoder()
    decoder.feed(OutputEncoder(6).reset(6, keep_history=False))
    with pytest.raises(FrameError, match="corrupt compressed output"):
        decoder.feed(b"\x01\x00\x00\x00\x04\xff\xff\xff\xff")


def test_a_decompression_bomb_is_refused() -> None:
    z = zlib.compressobj(9, wbits=-15)
    bomb = z.compress(b"\0" * (80 * 1024 * 1024)) + z.flush(zlib.Z_SYNC_FLUSH)
    decoder = OutputDecoder(9)
    with pytest.raises(FrameError, match="expands beyond the limit"):
        decoder.feed(b"\x01" + len(bomb).to_bytes(4, "big") + bomb)


# --- user authentication -------------------------------------------------------------------


def keygen(tmp: Path, kind: str, name: str, passphrase: str = "") -> Path:
    need("ssh-keygen", "openssh-client")
    path = tmp / name
    extra = ["-b", "2048"] if kind == "rsa" else []
    subprocess.run(["ssh-keygen", "-q", "-t", kind, *extra, "-N", passphrase, "-C",
                    f"{name}@test", "-f", str(path)], check=True, timeout=60)
    return path


@pytest.mark.parametrize("kind", ["ed25519", "ecdsa", "rsa"])
def test_openssh_keys_sign_and_verify_bound_to_the_session(tmp_path: Path, kind: str) -> None:
    path = keygen(tmp_path, kind, f"id_{kind}")
    key = userauth.load_private_key(path)
    listed = userauth.parse_authorized_keys((tmp_path / f"id_{kind}.pub").read_text())
    assert len(listed) == 1 and listed[0].comment == f"id_{kind}@test"
    data = userauth.signed_data(b"B" * 32, "alice")
    signature = userauth.sign(key, data)
    assert userauth.verify(listed[0].key, signature, data)
    assert not userauth.verify(listed[0].key, signature, userauth.signed_data(b"C" * 32, "alice"))
    assert not userauth.verify(listed[0].key, signature, userauth.signed_data(b"B" * 32, "bob"))
    fingerprint = subprocess.run(["ssh-keygen", "-l", "-f", str(path) + ".pub"], check=True,
                                 capture_output=True, text=True).stdout.split()[1]
    assert userauth.key_fingerprint(listed[0].key) == fingerprint


def test_passphrase_protected_keys(tmp_path: Path) -> None:
    path = keygen(tmp_path, "ed25519", "id_locked", passphrase="open sesame")
    with pytest.raises(ConfigError, match="encrypted"):
        userauth.load_private_key(path)
    with pytest.raises(ConfigError, match="cannot load"):
        userauth.load_private_key(path, lambda: "wrong")
    assert userauth.load_private_key(path, lambda: "open sesame") is not None


def test_authorized_keys_skips_what_it_cannot_honour(tmp_path: Path) -> None:
    good = (keygen(tmp_path, "ed25519", "a").with_suffix(".pub")).read_text().strip()
    other = (keygen(tmp_path, "ed25519", "b").with_suffix(".pub")).read_text().strip()
    text = "\n".join([
        "# comment", "", good,
        f'from="10.0.0.1",command="/bin/true" {other}',  # restricted: not granted more
        "ssh-ed25519 bm90IGEga2V5",  # garbage
        "ssh-dss AAAA old",
    ])
    keys = userauth.parse_authorized_keys(text)
    assert [k.line for k in keys] == [3]
    assert userauth.find_authorized(keys, userauth.parse_public_key(good)) is not None
    assert userauth.find_authorized(keys, userauth.parse_public_key(other)) is None
    with pytest.raises(AuthenticationError, match="not an OpenSSH public key"):
        userauth.parse_public_key("ssh-ed25519 AAAA")


def test_passwords_are_scrypt_hashed_and_checked() -> None:
    stored = userauth.hash_password("correct horse")
    assert stored.startswith("scrypt$32768$8$1$") and "correct" not in stored
    assert userauth.check_password("correct horse", stored)
    assert not userauth.check_password("correct horsE", stored)
    assert not userauth.check_password("x", "scrypt$1$1$1$!!$!!")
    assert not userauth.check_password("x", "md5$whatever")


# --- the terminal --------------------------------------------------------------------------


@pytest.mark.parametrize("typed, sent, actions", [
    (b"ls\r", b"ls\r", []),
    (b"~.", b"", [QUIT]),
    (b"echo\r~.rest", b"echo\r", [QUIT]),
    (b"a~.", b"a~.", []),  # not after a newline: typed as is
    (b"\r~\x1a", b"\r", [SUSPEND]),
    (b"~~x", b"~x", []),
    (b"~x", b"~x", []),
    (b"~?ls", b"ls", [HELP]),
])
def test_escapes(typed: bytes, sent: bytes, actions: list[str]) -> None:
    assert EscapeParser().feed(typed) == (sent, actions)


def test_an_escape_split_across_reads() -> None:
    parser = EscapeParser()
    assert parser.feed(b"x\r") == (b"x\r", [])
    assert parser.feed(b"~") == (b"", [])
    assert parser.feed(b".") == (b"", [QUIT])


def test_screen_tracker() -> None:
    screen = ScreenTracker()
    screen.output(b"line one\r\n$ ")
    screen.output(b"ech")
    assert screen.line == b"$ ech"
    screen.output(b"\x1b[?1049hvim screen")
    assert screen.alternate
    screen.output(b"\x1b[?1049l")
    assert not screen.alternate
    assert screen.input(b"ab\x1b[24;3Rcd") == b"abcd"
    assert screen.cursor_row == 24


# --- the keeper ----------------------------------------------------------------------------


@pytest.fixture
def keeper(tmp_path: Path) -> KeeperClient:
    path = tmp_path / "keeper.sock"
    client = ensure_keeper(path, log_path=tmp_path / "keeper.log")
    yield client
    pid = client.call("ping")[0]["pid"]
    client.close()
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while os.path.exists(path):
        assert time.monotonic() < deadline, "keeper did not stop"
        time.sleep(0.02)


def read_until(fd: int, marker: bytes, timeout: float = 10) -> bytes:
    data, deadline = b"", time.monotonic() + timeout
    while marker not in data:
        assert time.monotonic() < deadline, data
        try:
            data += os.read(fd, 4096)
        except BlockingIOError:
            time.sleep(0.01)
    return data


def test_the_keeper_keeps_a_shell_whose_server_let_go(keeper: KeeperClient) -> None:
    reply, fds = keeper.call("spawn", id="00112233445566aa", argv=["/bin/sh"],
                             env={"PATH": os.environ["PATH"], "PS1": "$ "}, cwd="/tmp",
                             cols=90, rows=20)
    assert reply["id"] == "00112233445566aa" and len(fds) == 1
    os.write(fds[0], b"stty size; echo pid=$$\n")
    out = read_until(fds[0], b"pid=%d" % reply["pid"])
    assert b"20 90" in out
    os.close(fds[0])  # the server goes away (restart, crash, suspension)
    time.sleep(0.2)
    assert keeper.call("status", id=reply["id"])[0]["status"] is None  # no hangup
    _, fds = keeper.call("fetch", id=reply["id"])
    os.write(fds[0], b"echo still $$; exit 3\n")
    read_until(fds[0], b"still %d" % reply["pid"])
    deadline = time.monotonic() + 10
    while keeper.call("status", id=reply["id"])[0]["status"] is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert keeper.call("status", id=reply["id"])[0]["status"] == 3
    os.close(fds[0])
    keeper.call("forget", id=reply["id"])
    assert keeper.call("list")[0]["shells"] == []


def test_the_keeper_refuses_bad_requests(keeper: KeeperClient) -> None:
    with pytest.raises(ResourceError, match="no shell"):
        keeper.call("fetch", id="ffffffffffffffff")
    with pytest.raises(ResourceError, match="16 hex digits"):
        keeper.call("spawn", id="../x", argv=["/bin/sh"], env={})
    with pytest.raises(ResourceError, match="unknown request"):
        keeper.call("shell-please", id="0000000000000001")
    reply, fds = keeper.call("spawn", id="0000000000000001", argv=["/nonexistent/shell"],
                             env={}, cwd="/")
    assert b"cannot run /nonexistent/shell" in read_until(fds[0], b"cannot run")
    os.close(fds[0])
    keeper.call("forget", id=reply["id"])

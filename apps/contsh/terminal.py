"""The client's terminal: raw mode, escapes typed by the user, and the status line.

Escapes are ssh's: recognised only right after Enter (or at the very start),
``~.`` quits, ``~^Z`` suspends the session to disk, ``~?`` lists them, ``~~``
sends one ``~``; a ``~`` followed by anything else is sent as typed.

The status line ("connection lost, reconnecting, 12 s") is drawn over the bottom
row with the cursor saved and restored, so typing and output positions are not
disturbed. When the connection is back, the row is given back its content: the
text of the current line if the cursor was on that row (asked of the terminal
with a cursor position report when the line first appears), a blank row
otherwise; a full-screen program (alternate screen) is asked to redraw instead.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import struct
import termios
import tty
from collections.abc import Iterator

ESCAPE_HELP = (b"\r\nSupported escape sequences:\r\n"
               b" ~.   quit (ends the session and its shell)\r\n"
               b" ~^Z  suspend the session to disk and exit (resume: contsh --resume ID)\r\n"
               b" ~?   this message\r\n"
               b" ~~   send the escape character by typing it twice\r\n"
               b"(Escapes are only recognized immediately after newline.)\r\n")

QUIT, SUSPEND, HELP = "quit", "suspend", "help"
_NEWLINES = (b"\r", b"\n")


class EscapeParser:
    """Splits what the user types into bytes for the shell and escape actions."""

    def __init__(self, char: bytes = b"~") -> None:
        self.char = char
        self.at_line_start = True
        self.pending = False  # an escape character is waiting for the next byte

    def feed(self, data: bytes) -> tuple[bytes, list[str]]:
        out = bytearray()
        actions: list[str] = []
        for i in range(len(data)):
            byte = data[i:i + 1]
            if self.pending:
                self.pending = False
                if byte == b".":
                    actions.append(QUIT)
                    return bytes(out), actions  # nothing typed after ~. is sent
                if byte == b"\x1a":
                    actions.append(SUSPEND)
                    return bytes(out), actions
                if byte == b"?":
                    actions.append(HELP)
                    self.at_line_start = False
                    continue
                if byte != self.char:
                    out += self.char
                out += byte
                self.at_line_start = byte in _NEWLINES
                continue
            if self.at_line_start and byte == self.char:
                self.pending = True
                continue
            out += byte
            self.at_line_start = byte in _NEWLINES
        return bytes(out), actions


def window_size(fd: int) -> tuple[int, int]:
    """(cols, rows) of the terminal on ``fd``; 80x24 when it is not a terminal."""
    try:
        rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
    except OSError:
        return 80, 24
    return (cols or 80), (rows or 24)


@contextlib.contextmanager
def raw_mode(fd: int) -> Iterator[None]:
    """Raw mode on a terminal (nothing if ``fd`` is not one), restored however we leave."""
    if not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    tty.setraw(fd, termios.TCSANOW)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def read_secret(prompt: str, fd: int = 0) -> str:
    """A line typed on ``fd`` without echo (a passphrase, a password).

    ``getpass`` talks to /dev/tty, which a client forked by the resumer does not have
    (the terminal is passed to it, but is not its controlling terminal)."""
    if not os.isatty(fd):
        raise OSError("no terminal to ask for a password on")
    saved = termios.tcgetattr(fd)
    quiet = list(saved)
    quiet[3] &= ~termios.ECHO
    os.write(fd, prompt.encode())
    termios.tcsetattr(fd, termios.TCSAFLUSH, quiet)
    try:
        line = b""
        while not line.endswith(b"\n"):
            chunk = os.read(fd, 1024)
            if not chunk:
                break
            line += chunk
    finally:
        termios.tcsetattr(fd, termios.TCSAFLUSH, saved)
        os.write(fd, b"\n")
    return line.rstrip(b"\r\n").decode(errors="replace")


_ALT_SCREEN = re.compile(rb"\x1b\[\?(?:1049|1047|47)([hl])")
_CURSOR_REPORT = re.compile(rb"\x1b\[(\d+);(\d+)R")
_LAST_LINE = 4096


class ScreenTracker:
    """What the client must know of the screen to put the bottom row back: the text of
    the current line, and whether a full-screen program holds the alternate screen."""

    def __init__(self) -> None:
        self.line = b""
        self.alternate = False
        self.cursor_row: int | None = None

    def output(self, data: bytes) -> None:
        for match in _ALT_SCREEN.finditer(data):
            self.alternate = match.group(1) == b"h"
        cut = data.rfind(b"\n")
        self.line = (data[cut + 1:] if cut >= 0 else self.line + data)[-_LAST_LINE:]

    def input(self, data: bytes) -> bytes:
        """Strip a cursor position report (our own question's answer) from user input."""
        match = _CURSOR_REPORT.search(data)
        if match is None:
            return data
        self.cursor_row = int(match.group(1))
        return data[:match.start()] + data[match.end():]


class StatusLine:
    def __init__(self, out: int, screen: ScreenTracker) -> None:
        self.out = out
        self.screen = screen
        self.shown = False
        # Output to a file or a pipe is the program's, byte for byte: no status there.
        self.enabled = os.isatty(out)

    def _write(self, data: bytes) -> None:
        with contextlib.suppress(OSError):
            os.write(self.out, data)

    def show(self, text: str) -> None:
        if not self.enabled:
            return
        cols, rows = window_size(self.out)
        if not self.shown:
            self.screen.cursor_row = None
            self._write(b"\x1b[6n")  # where is the cursor? (answer arrives as input)
        self.shown = True
        body = f" {text} "[:cols].ljust(cols).encode()
        self._write(b"\x1b7\x1b[%d;1H\x1b[7m%s\x1b[0m\x1b8" % (rows, body))

    def clear(self) -> bool:
        """Give the bottom row back; True if the program should be asked to redraw."""
        if not self.shown:
            return False
        self.shown = False
        _, rows = window_size(self.out)
        restore = b""
        if not self.screen.alternate and self.screen.cursor_row == rows:
            restore = self.screen.line
        self._write(b"\x1b7\x1b[%d;1H\x1b[2K\r%s\x1b8" % (rows, restore))
        return self.screen.alternate

"""What the demo prints while it runs: one live status line on a terminal, plain
periodic lines otherwise (a log file or a CI job does not understand ``\\r``)."""

from __future__ import annotations

import shutil
import time
from typing import TextIO

PLAIN_PERIOD = 2.0
WIDTH = 100  # lines are wrapped to this, or to the terminal if it is between 80 and 140


class Progress:
    def __init__(self, out: TextIO, *, live: bool | None = None) -> None:
        self.out = out
        self.live = out.isatty() if live is None else live
        self._shown = False
        self._last_plain = 0.0
        columns = shutil.get_terminal_size((WIDTH, 24)).columns if self.live else WIDTH
        self.width = min(140, max(80, columns))

    def say(self, text: str = "") -> None:
        """A permanent line (the live line, if any, is redrawn by the next status)."""
        self._clear()
        print(text, file=self.out, flush=True)

    def status(self, text: str) -> None:
        if self.live:
            self.out.write("\r\x1b[2K" + text[: self.width - 1])
            self.out.flush()
            self._shown = True
            return
        now = time.monotonic()
        if now - self._last_plain >= PLAIN_PERIOD:
            self._last_plain = now
            print(f"  .. {text}", file=self.out, flush=True)

    def _clear(self) -> None:
        if self._shown:
            self.out.write("\r\x1b[2K")
            self._shown = False

    def end(self) -> None:
        self._clear()
        self.out.flush()

"""What a run prints while it works: messages, and the finished cells with an estimate of the time left.

On a terminal a tqdm bar counts the cells and shows the ETA, with messages printed above it; elsewhere
(CI logs, files) every finished cell is one plain line that carries the count and the ETA, so logs stay
readable. The ETA is the mean time per finished cell so far, selection included, times the cells left.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable


class Progress:
    """``say``: where messages go instead of ``stream`` (a caller's own callable; never a bar then)."""

    def __init__(self, total: int, stream=None, say: Callable[[str], None] | None = None):
        self.stream = stream or sys.stderr
        self.say = say
        self.total, self.done, self.t0 = total, 0, time.monotonic()
        self.bar = None
        if total > 1 and say is None and self.stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="cell", file=self.stream, dynamic_ncols=True, smoothing=0.1)

    def __call__(self, message: str) -> None:
        if self.say is not None:
            self.say(message)
        elif self.bar is not None:
            self.bar.write(message, file=self.stream)
        else:
            print(message, file=self.stream, flush=True)

    def extend(self, n: int) -> None:
        """``n`` more cells to run (a second pass)."""
        self.total += n
        if self.bar is not None:
            self.bar.total = self.total
            self.bar.refresh()

    def cell(self, message: str) -> None:
        """One cell finished: ``message`` says which and how it scored."""
        self.done += 1
        if self.bar is not None:
            self.bar.write(message, file=self.stream)
            self.bar.update(1)
            return
        left = (time.monotonic() - self.t0) / self.done * (self.total - self.done)
        self(f"[{self.done}/{self.total}, eta {_clock(left)}] {message.strip()}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _clock(seconds: float) -> str:
    minutes, s = divmod(int(round(seconds)), 60)
    h, m = divmod(minutes, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"

"""An iteration's progress: tqdm's bar on a terminal, whole log lines everywhere else.

A bar redraws itself with carriage returns, so in a file (render.log, `2> log`, a Slurm job's output) the next
log line is glued to the end of its last drawing and `grep ^` misses it. Without a terminal on stderr each update
is one complete log line instead, "iteration 2/10: 40/100 frames, 1.2 frames/s, ETA 0:00:50": the first one
as soon as frames arrive (the rate and ETA are known early), then at most one every PLAIN_INTERVAL_S.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from datetime import timedelta
from typing import Callable

from tqdm import tqdm

log = logging.getLogger(__name__)

PLAIN_INTERVAL_S = 15.0


class PlainProgress:
    """tqdm's `update` and context manager, writing log lines (see the module docstring)."""

    def __init__(self, total: int, initial: int, desc: str, interval_s: float = PLAIN_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic):
        self.total, self.done, self.desc = total, initial, desc
        self._initial, self._interval_s, self._clock = initial, interval_s, clock
        self._start = clock()
        self._last: float | None = None

    def __enter__(self) -> "PlainProgress":
        return self

    def __exit__(self, *exc) -> None:
        pass  # the iteration's "done" line follows: a last progress line would repeat it

    def update(self, n: int) -> None:
        self.done += n
        now = self._clock()
        if self._last is not None and now - self._last < self._interval_s:
            return
        self._last = now
        log.info("%s", self.line(now))

    def line(self, now: float) -> str:
        """'iteration 2/10: 40/100 frames, 1.2 frames/s, ETA 0:00:50' (frames kept from before a restart
        count as done, not in the rate)."""
        elapsed = now - self._start
        rate = (self.done - self._initial) / elapsed if elapsed > 0 else 0.0
        eta = str(timedelta(seconds=round((self.total - self.done) / rate))) if rate > 0 else "-"
        return f"{self.desc}: {self.done}/{self.total} frames, {rate:.2f} frames/s, ETA {eta}"


def iteration_progress(total: int, initial: int, desc: str):
    """A bar when a person watches stderr, plain lines when it goes to a file or a pipe; neither with
    TQDM_DISABLE set (bench/ sets it)."""
    if os.environ.get("TQDM_DISABLE", "").lower() not in ("", "0", "false"):
        return tqdm(total=total, initial=initial, disable=True)
    if sys.stderr.isatty():
        return tqdm(total=total, initial=initial, desc=desc, unit="frame", dynamic_ncols=True, mininterval=0.2)
    return PlainProgress(total, initial, desc)

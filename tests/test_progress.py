"""An iteration's progress without a terminal: whole log lines, the first at once, then one per interval
(engine/progress.py). tests/test_launch.py reads them in a real render's log file."""

from __future__ import annotations

import io
import logging

from tqdm import tqdm

from storyadapter.engine import progress
from storyadapter.engine.progress import PlainProgress, iteration_progress


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_plain_lines_come_at_the_first_update_then_once_per_interval(caplog):
    clock = Clock()
    caplog.set_level(logging.INFO, logger=progress.__name__)
    with PlainProgress(total=100, initial=0, desc="iteration 2/10", interval_s=15.0, clock=clock) as bar:
        for _ in range(40):  # a frame a second
            clock.now += 1.0
            bar.update(1)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["iteration 2/10: 1/100 frames, 1.00 frames/s, ETA 0:01:39",
                     "iteration 2/10: 16/100 frames, 1.00 frames/s, ETA 0:01:24",
                     "iteration 2/10: 31/100 frames, 1.00 frames/s, ETA 0:01:09"]


def test_frames_kept_from_before_a_restart_count_as_done_but_not_in_the_rate(caplog):
    clock = Clock()
    caplog.set_level(logging.INFO, logger=progress.__name__)
    bar = PlainProgress(total=100, initial=60, desc="iteration 0/1", clock=clock)
    clock.now += 4.0
    bar.update(2)
    assert [r.getMessage() for r in caplog.records] == ["iteration 0/1: 62/100 frames, 0.50 frames/s, ETA 0:01:16"]


def test_a_terminal_gets_tqdm_s_bar_and_anything_else_plain_lines(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert isinstance(iteration_progress(3, 0, "iteration 0/1"), PlainProgress)
    monkeypatch.setattr("sys.stderr", Terminal())
    with iteration_progress(3, 0, "iteration 0/1") as bar:
        assert isinstance(bar, tqdm)
    monkeypatch.setenv("TQDM_DISABLE", "1")  # bench/ silences the progress, bar and lines alike
    monkeypatch.setattr("sys.stderr", io.StringIO())
    with iteration_progress(3, 0, "iteration 0/1") as bar:
        assert isinstance(bar, tqdm) and bar.disable

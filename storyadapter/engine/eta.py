"""The whole render's ETA, not only the current iteration's: measured per kind of iteration (draft, last pass).

A draft and a last pass cost very different amounts per frame (render=swift: 4 unguided steps against 50 guided
ones), so each kind has its own seconds per frame, measured from its finished iterations. Until a kind has
finished one, its rate is the other kind's scaled by their planned denoiser evaluations per frame (passes.py).
The estimate goes to the log and to DIR/eta.json, which the web UI shows.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from ..rundir import eta_file


class RenderEta:
    def __init__(self, out_dir: Path, frames: int, kinds: list[bool], costs: tuple[int, int]):
        """`kinds`: per iteration still to render, True for a draft; `costs`: planned denoiser evaluations per
        frame of a draft and of a last pass."""
        self.out_dir, self.frames, self.kinds, self.costs = Path(out_dir), frames, list(kinds), costs
        self._seconds = {True: 0.0, False: 0.0}
        self._rendered = {True: 0, False: 0}

    def finished(self, draft: bool, frames: int, seconds: float) -> None:
        """An iteration of this kind rendered `frames` frames in `seconds` of wall time."""
        if self.kinds:
            self.kinds.pop(0)
        if frames > 0:
            self._seconds[draft] += seconds
            self._rendered[draft] += frames

    def per_frame(self, draft: bool) -> float | None:
        if self._rendered[draft]:
            return self._seconds[draft] / self._rendered[draft]
        other = not draft
        if self._rendered[other]:  # not measured yet: the other kind's rate, scaled by the planned work
            cost, other_cost = (self.costs[0], self.costs[1]) if draft else (self.costs[1], self.costs[0])
            return self._seconds[other] / self._rendered[other] * cost / max(other_cost, 1)
        return None

    def remaining_s(self) -> float | None:
        rates = [self.per_frame(kind) for kind in self.kinds]
        if any(r is None for r in rates):
            return None
        return sum(rates) * self.frames

    def report(self, log) -> None:
        if not self.kinds:  # done: nothing left to estimate
            eta_file.remove(self.out_dir)
            return
        left = self.remaining_s()
        if left is None:
            return
        rates = ", ".join(f"{name} {self.per_frame(kind):.2f} s/frame{'' if self._rendered[kind] else ' (estimated)'}"
                          for name, kind in (("draft", True), ("last pass", False)) if kind in self.kinds or self._rendered[kind])
        log.info("render ETA %s: %d iteration%s left (%s)", timedelta(seconds=round(left)), len(self.kinds),
                 "" if len(self.kinds) == 1 else "s", rates)
        eta_file.write(self.out_dir, left, len(self.kinds))

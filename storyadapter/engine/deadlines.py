"""How long an actor may go without finishing a batch before the driver gives its batches to others.

The allowance is a multiple of the typical (median) batch time measured in this run, never below a
floor. Before any batch has finished (model warm-up, torch.compile) the first-batch allowance applies.
A slow but healthy GPU stays well inside `factor` x the median; a lost node or a hung process does not.
"""

from __future__ import annotations

import statistics
from collections import deque


class BatchDeadlines:
    def __init__(self, floor_s: float, factor: float, first_batch_s: float, window: int = 200):
        self.floor_s = floor_s
        self.factor = factor
        self.first_batch_s = first_batch_s
        self._recent: deque[float] = deque(maxlen=window)

    def observe(self, batch_s: float) -> None:
        self._recent.append(batch_s)

    def allowance(self) -> float:
        if not self._recent:
            return max(self.floor_s, self.first_batch_s)
        return max(self.floor_s, self.factor * statistics.median(self._recent))

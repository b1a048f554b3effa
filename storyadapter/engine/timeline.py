"""Where an iteration's time went: from each batch's start, duration and worker, as the driver receives them.

Times are `time.time()` stamps taken by the workers, so across nodes they are as good as clock sync.
"""

from __future__ import annotations

from .protocol import BatchResult


class BatchTimeline:
    def __init__(self) -> None:
        self._spans: list[tuple[float, float, int]] = []  # (start, end, worker pid)

    def add(self, batch: BatchResult) -> None:
        self._spans.append((batch.started_at, batch.started_at + batch.busy_s, batch.worker_pid))

    @property
    def busy_s(self) -> float:
        """Rendering time summed over workers."""
        return sum(end - start for start, end, _ in self._spans)

    @property
    def barrier_s(self) -> float:
        """Summed over workers: the wait from a worker's last batch to the iteration's last batch."""
        last: dict[int, float] = {}
        for _, end, pid in self._spans:
            last[pid] = max(last.get(pid, end), end)
        return sum(max(last.values()) - end for end in last.values()) if last else 0.0

    def rendering_s(self, start: float, end: float) -> float:
        """Time within [start, end] in which at least one worker was rendering (the union of the spans)."""
        covered, reach = 0.0, start
        for s, e, _ in sorted(self._spans):
            s, e = max(s, reach), min(e, end)
            if e > s:
                covered += e - s
                reach = e
        return covered

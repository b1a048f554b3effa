"""The best any driver could do with the same batches: greedy list scheduling, no overhead.

Each GPU takes the next batch the moment it is free. What is left is the iteration barrier: the last wave
of batches leaves some GPUs idle, and a slow node finishes its last batch late. The ratio of work to
GPUs x makespan under this schedule is the ceiling the measured efficiency is shown next to.
"""

from __future__ import annotations

import heapq


def barrier_ceiling(batch_seconds: list[float], gpu_speed: list[float]) -> float:
    """Efficiency (work / (GPUs x makespan)) of greedy scheduling; work counts each batch at its GPU's speed.

    `batch_seconds`: the batches' times on a GPU of speed 1, in queue order; `gpu_speed`: a time factor per GPU.
    """
    work, makespan = greedy_makespan(batch_seconds, gpu_speed)
    return work / (len(gpu_speed) * makespan) if makespan else 1.0


def greedy_makespan(batch_seconds: list[float], gpu_speed: list[float]) -> tuple[float, float]:
    """(work, makespan) of greedy scheduling of `batch_seconds` on GPUs of `gpu_speed` (as barrier_ceiling)."""
    free = [(0.0, g) for g in range(len(gpu_speed))]
    heapq.heapify(free)
    work = makespan = 0.0
    for t in batch_seconds:
        at, g = heapq.heappop(free)
        took = t * gpu_speed[g]
        work += took
        makespan = max(makespan, at + took)
        heapq.heappush(free, (at + took, g))
    return work, makespan


def ceiling_after(iterations: list[list[float]], gpu_speed: list[float]) -> float:
    """Efficiency ceiling of a stretch of iterations (each its batches still to start, in queue order) run one
    after another with a barrier between them: summed work / (GPUs x summed greedy makespans)."""
    parts = [greedy_makespan(b, gpu_speed) for b in iterations if b]
    span = sum(m for _, m in parts)
    return sum(w for w, _ in parts) / (len(gpu_speed) * span) if span else 1.0

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
    free = [(0.0, g) for g in range(len(gpu_speed))]
    heapq.heapify(free)
    work = makespan = 0.0
    for t in batch_seconds:
        at, g = heapq.heappop(free)
        took = t * gpu_speed[g]
        work += took
        makespan = max(makespan, at + took)
        heapq.heappush(free, (at + took, g))
    return work / (len(gpu_speed) * makespan) if makespan else 1.0

"""The driver's per-iteration accounting: busy time summed over workers, and the barrier wait, i.e. how
long each worker sat idle between its last batch and the iteration's last batch."""

from __future__ import annotations

import time

import numpy as np
import pytest

from storyadapter.engine.driver import RunPlan, run_iterations
from storyadapter.story.parse import load_story
from storyadapter.engine.timeline import BatchTimeline
from storyadapter.engine.protocol import BatchResult, FrameResult

from .helpers.stories import write_story


class ScriptedExecutor:
    """Reports batches with chosen timings: frame f ends at `ends[f]` on worker pid `pids[f]`."""

    def __init__(self, ends: dict[int, float], pids: dict[int, int]):
        self.ends, self.pids = ends, pids

    def render_iteration(self, iteration, batches, bank, scale, on_batches):
        results = []
        for frames in batches:
            f = frames[0]
            batch = BatchResult([FrameResult(f, f"iter/{f}.png", np.full(4, f, np.float32)) for f in frames],
                                busy_s=1.0, started_at=self.ends[f] - 1.0, worker_pid=self.pids[f])
            on_batches([batch])
            results.extend(batch.frames)
        return results


def plan(tmp_path, n: int) -> RunPlan:
    story = load_story(write_story(tmp_path / "story.txt", [f"scene {i}" for i in range(n)]))
    return RunPlan(story, tmp_path / "out", iterations=1, batch_size=1, scale_start=0.3, scale_end=0.5, seed=1,
                   seed_policy="shared")


def test_barrier_wait_is_each_worker_s_gap_to_the_last_batch(tmp_path):
    # worker 7 finishes at t=12, worker 8 at t=10.5: worker 8 waited 1.5 s for the iteration to end.
    ends, pids = {0: 11.0, 1: 10.5, 2: 12.0, 3: 9.5}, {0: 7, 1: 8, 2: 7, 3: 8}
    stats = run_iterations(plan(tmp_path, 4), ScriptedExecutor(ends, pids))
    assert [s.iteration for s in stats] == [0, 1]
    for s in stats:
        assert s.busy_s == pytest.approx(4.0)
        assert s.barrier_s == pytest.approx(1.5)
        assert s.frames == 4


def test_one_worker_never_waits_at_the_barrier(tmp_path):
    stats = run_iterations(plan(tmp_path, 3), ScriptedExecutor({0: 1.0, 1: 2.0, 2: 3.0}, {0: 5, 1: 5, 2: 5}))
    assert all(s.barrier_s == 0.0 for s in stats)


def span(start: float, end: float, pid: int) -> BatchResult:
    return BatchResult([], busy_s=end - start, started_at=start, worker_pid=pid)


def test_rendering_time_is_the_union_of_the_workers_spans_inside_the_window():
    timeline = BatchTimeline()
    for s in (span(1.0, 3.0, 1), span(2.0, 4.0, 2), span(4.5, 5.0, 1), span(6.0, 9.0, 2), span(0.0, 0.5, 1)):
        timeline.add(s)
    # covered: [1,4] + [4.5,5] + [6,8] inside the window [0.8, 8]; 0.5 s before the window is not counted
    assert timeline.rendering_s(0.8, 8.0) == pytest.approx(3.0 + 0.5 + 2.0)
    assert timeline.busy_s == pytest.approx(2 + 2 + 0.5 + 3 + 0.5)
    # worker 2 ends last (9.0); worker 1's last batch ended at 5.0
    assert timeline.barrier_s == pytest.approx(4.0)


def test_an_iteration_with_overlapping_workers_reports_when_none_rendered(tmp_path):
    class Overlapping(ScriptedExecutor):
        def render_iteration(self, iteration, batches, bank, scale, on_batches):
            now = time.time()
            # Three 1 s batches on two workers, overlapping, ending 0.2-0.4 s into the iteration.
            self.ends = {0: now + 0.2, 1: now + 0.3, 2: now + 0.4}
            time.sleep(0.5)
            return super().render_iteration(iteration, batches, bank, scale, on_batches)

    stats = run_iterations(plan(tmp_path, 3), Overlapping({}, {0: 1, 1: 2, 2: 1}))
    for s in stats:
        # the spans cover [now-0.8, now+0.4]; clipped to the iteration that is ~0.4 s of >= 0.5 s
        assert s.busy_s == pytest.approx(3.0)
        assert 0.05 < s.none_rendering_s < s.wall_s - 0.3

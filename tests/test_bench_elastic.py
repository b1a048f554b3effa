"""bench/sim/elastic.py's arithmetic: efficiency after a cluster grows, its ceiling, a new node's first batch."""

from __future__ import annotations

import pytest

from bench.sim import report
from bench.sim.elastic import after_growth
from bench.sim.ideal import ceiling_after
from bench.sim.scenarios import Setup


def test_ceiling_after_adds_up_iterations_with_a_barrier_between():
    # Iteration a: 3 unit batches on 2 GPUs (makespan 2); iteration b: 2 (makespan 1). Work 5 over 2 x 3.
    assert ceiling_after([[1.0] * 3, [1.0] * 2], [1.0, 1.0]) == pytest.approx(5 / 6)
    assert ceiling_after([[], [1.0] * 2], [1.0, 1.0]) == pytest.approx(1.0)


def test_after_growth_counts_busy_time_from_the_growth_and_each_new_nodes_first_batch(tmp_path):
    setup = Setup(frames=4, iterations=1, jitter=0.0, slowdown=1.5)
    grown = 100.0
    batches = [  # 1 s frames, no jitter: a batch of one frame lasts 1 s
        {"iteration": 1, "frames": [0], "started_at": 99.5, "slow": False, "pid": 1, "node": "old"},  # half after
        {"iteration": 1, "frames": [1], "started_at": 100.5, "slow": False, "pid": 1, "node": "old"},
        {"iteration": 1, "frames": [2], "started_at": 102.0, "slow": False, "pid": 2, "node": "new-node-1"},
        {"iteration": 1, "frames": [3], "started_at": 100.5, "slow": False, "pid": 1, "node": "old"},  # again: copy
    ]
    events = {"grown_at": grown, "added": [("new-node-1", 99.0)]}
    r = after_growth(setup, batches, events, frame_s=1.0, gpus=2, out_dir=str(tmp_path))
    assert r["after_growth_wall_s"] == pytest.approx(3.0)  # the last batch ends at 103
    assert r["after_growth_busy_s"] == pytest.approx(0.5 + 1 + 1 + 1)
    assert r["efficiency_after_growth"] == pytest.approx(3.5 / (2 * 3.0))
    assert r["ceiling_after_growth"] == pytest.approx(3 / (2 * 2))  # frames 1, 2, 3 (not 0: started before) on 2 GPUs
    assert r["new_node_first_batch_s"] == {"new-node": 3.0}


def test_report_has_the_elastic_sections(tmp_path):
    setup = {"nodes": 8, "gpus_per_node": 1, "frames": 96, "iterations": 2, "iteration_s": 10.0, "jitter": 0.1,
             "straggler_share": 0.125, "slowdown": 1.5, "loss_at": 0.3}
    results = {"setup": setup, "machine": "2 cores", "bench_s": 1.0, "scaling": [], "label": "Small size",
               "grow_from_2": {"nodes_at_start": 2, "nodes": 8, "gpus": 8, "frame_s": 0.83, "exit": 0, "hung": False,
                               "after_growth_wall_s": 20.0, "efficiency_after_growth": 0.8, "ceiling_after_growth": 0.9,
                               "new_node_first_batch_s": {"abc": 4.0}, "render_wall_s": 60.0}}
    _, md = report.write(results, tmp_path, "small")
    text = md.read_text()
    assert "**Small size**" in text and "## Scaling" not in text
    assert "efficiency 0.800 (ceiling 0.900)" in text.split("## Grow from 2")[1]

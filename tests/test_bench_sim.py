"""bench/sim's arithmetic: the zero-overhead ceiling the measured efficiency is compared with, and the report."""

from __future__ import annotations

import json

import pytest

from bench.sim import report
from bench.sim.harness import iteration_stats
from bench.sim.ideal import barrier_ceiling


def test_barrier_ceiling_is_the_last_wave_for_equal_batches():
    # 1,000 equal batches on 64 GPUs: 16 waves, the last one 40/64 full.
    assert barrier_ceiling([1.0] * 1000, [1.0] * 64) == pytest.approx(1000 / (64 * 16))
    assert barrier_ceiling([1.0] * 128, [1.0] * 64) == pytest.approx(1.0)


def test_barrier_ceiling_counts_a_slow_gpu_at_its_speed():
    # Two GPUs, one 2x slower, 3 unit batches: greedy gives the fast GPU two (t=2), the slow one one (t=2).
    assert barrier_ceiling([1.0, 1.0, 1.0], [1.0, 2.0]) == pytest.approx((1 + 2 + 1) / (2 * 2))


def test_iteration_stats_read_the_drivers_line():
    log = ("12:00:01 INFO storyadapter.engine.driver: iteration 1/2 done: 1000 frames in 4.3 s (232.56 frames/s), scale 0.300, "
           "workers busy 270.1 s, waiting at the barrier 2.00 s, driver 0.10 s\n")
    assert iteration_stats(log) == {1: {"frames": 1000, "wall_s": 4.3, "busy_s": 270.1}}


def test_report_marks_hung_runs(tmp_path):
    setup = {"nodes": 8, "gpus_per_node": 8, "frames": 1000, "iterations": 2, "iteration_s": 4.0, "jitter": 0.1,
             "straggler_share": 0.125, "slowdown": 1.5, "loss_at": 0.3}
    results = {"setup": setup, "machine": "2 cores", "bench_s": 1.0,
               "scaling": [{"gpus": 64, "frame_s": 0.256, "exit": 0, "hung": False, "efficiency": 0.93,
                            "barrier_ceiling": 0.97, "refinement_wall_s": 9.0, "driver_peak_rss_mb": 200.0, "slow_gpus": 8}],
               "no_capacity": {"gpus_before": 64, "exit": -9, "hung": True, "hard_timeout_after_removal_s": 60.0,
                               "exit_after_removal_s": None, "error_lines": 0, "error": None, "traceback": False,
                               "frames_kept": 300}}
    js, md = report.write(results, tmp_path)
    text = md.read_text()
    assert "| 64 | 0.2560 | 8 | 9.00 | 0.930 | 0.970 | 200 | ok |" in text
    assert "**hung**" in text.split("## No capacity")[1]
    assert json.loads(js.read_text())["scaling"][0]["efficiency"] == 0.93

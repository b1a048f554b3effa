"""bench/sweeps.py, the GPU questions of issue 15, exercised at tiny size on CPU: the code paths `make bench-gpu` runs."""

from __future__ import annotations

import dataclasses

import pytest

from bench import sweeps
from bench.harness import BenchConfig, load_config


def test_gpu_preset_asks_the_issue_questions():
    cfg = load_config(["preset=gpu"])
    assert cfg.batch_sizes == [1, 2, 4, 8] and cfg.sweep_compile == [False, True]
    assert cfg.growth_frames == [25, 100, 400, 1000] and cfg.memory_caps_gb == [24.0, 80.0]
    assert cfg.shared_gpu_actors == 2 and set(cfg.parts) == {"growth", "sweeps", "loops", "shared", "flux"}
    points = sweeps.sweep_points(cfg)
    assert {(p["batch"], p["compile"]) for p in points if p["variant"] == "default"} == {
        (b, c) for b in (1, 2, 4, 8) for c in (False, True)}
    assert {p["variant"] for p in points} == {"default", *cfg.sweep_variants} and set(cfg.sweep_variants) <= set(sweeps.VARIANTS)
    with pytest.raises(SystemExit, match="parts"):
        load_config(["parts=[loops,gpu]"])


def test_memory_fit_finds_the_largest_bank_per_card():
    rows = [{"n": n, "peak_mb": 1000.0 + 3.0 * n, "peak_reserved_mb": 1200.0 + 3.0 * n} for n in (25, 100, 400)]
    fit = sweeps.memory_fit(rows, [24.0, 80.0])
    assert fit["mb_per_reference"] == pytest.approx(3.0) and fit["fixed_mb"] == pytest.approx(1200.0)  # reserved counts
    for cap, n in fit["largest_n"].items():
        budget = float(cap) * 1e9 / 2**20
        assert 1200.0 + 3.0 * n <= budget < 1200.0 + 3.0 * (n + 1)
    assert sweeps.memory_fit(rows[:1], [24.0]) is None  # one point is no line


def test_sweep_point_runs_at_tiny_size_and_reports(tiny_cache, tmp_path):
    cfg = BenchConfig(cache_dir=str(tiny_cache), steps=2, size=64, frames=3, sweep_reps=1, threads=1,
                      shared_gpu_actors=2)
    row = sweeps.sweep_child(dataclasses.asdict(cfg), str(tmp_path),
                             {"variant": "joint_sdpa", "batch": 2, "compile": False, "count_flops": True})
    assert row["per_frame_s"] > 0 and row["per_frame_s"] * 2 <= max(row["batch_s"]) + 1e-9
    assert row["flops_per_frame"] > 0 and row["peak_mb"] > 0
    result = {"config": dataclasses.asdict(cfg), "sweeps": [row], "vae_round_trip": sweeps.vae_round_trip(cfg, reps=1),
              "memory_fit": sweeps.memory_fit([{"n": 2, "peak_mb": 10.0}, {"n": 4, "peak_mb": 14.0}], [24.0]),
              "shared_gpu": {"engine-2-sharing-1-gpu": {"best": {"fps": 1.5}}, "engine-1-batch-2": {"best": {"fps": 1.2}}},
              "loops": {}}
    text = "\n".join(sweeps.markdown(result))
    assert "| joint_sdpa | 2 | no |" in text and "fp16 VAE" in text and "24.0 GB: N = " in text
    assert "engine-2-sharing-1-gpu | 1.5000" in text

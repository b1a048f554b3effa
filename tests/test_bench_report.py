"""The benchmark's arithmetic: ratios are paired within a round (or repetition), overheads are the median
round's, and the full-size FLOP counts grow with the bank the way the two loops' work does."""

from __future__ import annotations

import pytest

from bench.report import TARGETS, met, ratios


def loop(name: str, fps: list[float], workers: int = 1, idle: list[float] | None = None) -> dict:
    rounds = []
    for i, f in enumerate(fps):
        r = {"fps": f, "refine_fps": f}
        if idle is not None:
            r.update(idle_fraction=idle[i], none_rendering_fraction=idle[i] / 4, barrier_fraction=idle[i] / 2)
        rounds.append(r)
    return {"loop": name, "workers": workers, "rounds": rounds, "best": max(rounds, key=lambda r: r["fps"])}


def growth_rows(per_rep: dict[int, list[float]]) -> list[dict]:
    return [{"n": n, "per_frame_s": min(ts), "reps": [{"per_frame_s": t} for t in ts]} for n, ts in per_rep.items()]


def test_throughput_ratios_are_medians_of_per_round_ratios():
    # Round 2 was slow for everyone: paired ratios stay at 1.0, 0.9 and 1.1 whatever the load did.
    result = {
        "workers_all": 2,
        "loops": {
            "plain": loop("plain", [10.0, 5.0, 10.0]),
            "upstream": loop("upstream", [5.0, 2.5, 5.0]),
            "engine-1": loop("engine-1", [10.0, 4.5, 11.0], idle=[0.01, 0.02, 0.03]),
            "engine-2": loop("engine-2", [20.0, 9.0, 21.0], workers=2, idle=[0.06, 0.04, 0.05]),
        },
        "growth": {"engine": growth_rows({25: [1.0, 2.0, 1.0], 400: [1.2, 2.2, 1.1]}),
                   "upstream": growth_rows({25: [1.0, 1.0, 1.0], 400: [4.0, 3.0, 5.0]})},
    }
    out, spread = ratios(result)
    assert out["engine_1_vs_plain"] == pytest.approx(1.0)
    assert spread["engine_1_vs_plain"]["min"] == pytest.approx(0.9)
    assert spread["engine_1_vs_plain"]["max"] == pytest.approx(1.1)
    assert spread["engine_1_vs_plain"]["best_rounds"] == pytest.approx(11.0 / 10.0)
    assert out["engine_all_vs_upstream"] == pytest.approx(4.0)
    assert out["growth_400_over_25"] == pytest.approx(1.1)  # median of 1.2, 1.1, 1.1
    assert spread["growth_400_over_25"]["max"] == pytest.approx(1.2)
    assert out["upstream_growth_400_over_25"] == pytest.approx(4.0)
    assert out["driver_overhead"] == pytest.approx(0.05)
    assert spread["driver_overhead"]["min"] == pytest.approx(0.04)
    assert out["driver_overhead_no_actor_rendering"] == pytest.approx(0.05 / 4)
    assert out["barrier_wait"] == pytest.approx(0.025)
    assert out["driver_overhead_engine_1"] == pytest.approx(0.02)
    assert met("driver_overhead", out["driver_overhead"]) == "**no**"  # 5.0% is not < 5%
    assert met("engine_1_vs_plain", out["engine_1_vs_plain"]) == "yes"
    assert set(TARGETS) <= set(out) | {"engine_1_vs_plain_refinement", "engine_1_vs_upstream_refinement",
                                       "driver_overhead_long_story"}


def test_full_size_flops_engine_work_stays_flat_while_upstream_grows_with_the_bank():
    from bench.model_flops import full_size_flops

    counts = full_size_flops([2, 8], steps=1, size=128, prompt="a lighthouse keeper", negative="")
    engine, upstream = counts["engine"], counts["upstream"]
    assert engine[8] / engine[2] < 1.01
    assert upstream[8] > upstream[2] * 1.2  # six more image encodes per frame, and 4N more IP tokens per layer
    assert upstream[2] > engine[2]

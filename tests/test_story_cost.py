"""bench/story_cost.py: the JSON has the contract's shape ("flops_per_story" by preset), the UNet evaluations
the workers count equal the plan, and the rendered stories' achieved TFLOP/s (make bench-gpu's part, here on the
tiny model: the same code with another model and device)."""

from __future__ import annotations

import torch

from storyadapter import spec as specs


def test_story_cost_has_flops_per_story_by_preset_and_workers_count_the_planned_evaluations(tiny_source, tmp_path):
    """Fast: the tiny model stands in for the full-size one (the meta-device count is the same code), 2 steps."""
    from bench import story_cost
    from storyadapter.models.loading import load_backbone
    from storyadapter.worker.renderer import StoryRenderer

    renderer = StoryRenderer(load_backbone(tiny_source, torch.device("cpu"), torch.float32), specs.RenderSpec())
    flops = story_cost.story_flops(renderer, story_cost.PRESETS, frames=3, refinements=2, size=64)
    shape = dict(model="tiny", size=64, steps=2, draft_steps=2)
    tiny = story_cost.render_stories(story_cost.PRESETS, tmp_path, frames=2, refinements=2, **shape)
    story_cost.achieved(renderer, story_cost.PRESETS, tiny, 2, 2, peak_tflops=1.0, **shape)
    result = story_cost.report(flops, tiny, 3, 2, 64)
    assert set(result["flops_per_story"]) == {"paper", "upstream", "swift", "swift_all", "swift_refine"}
    assert all(isinstance(v, int) and v > 0 for v in result["flops_per_story"].values())
    fps = result["flops_per_story"]
    assert fps["swift_all"] < fps["swift"] < fps["paper"] == fps["upstream"]  # CFG 5 costs what CFG 7.5 does
    assert fps["swift_refine"] < fps["swift"] and result["flops_by_part"]["swift_refine"]["vae_encode"] > 0
    for name, run in tiny.items():
        assert run["unet_evaluations"] == run["planned_unet_evaluations"], name
    # paper: 2 frames x 3 iterations x 2 steps x 2 branches; swift: drafts 2 x 2 x 2 x 1, last pass 2 x 2 x 2;
    # swift_refine (strength 0.5): iteration 0 2 x 2 x 1, draft 1 2 x 1 x 1, last 2 x 1 x 2
    assert [tiny[n]["unet_evaluations"] for n in ("paper", "swift", "swift_all", "swift_refine")] == [24, 16, 12, 10]
    assert all(run["flops"] > 0 and run["achieved_tflops"] > 0 and run["utilization"] > 0 for run in tiny.values())
    assert tiny["swift"]["flops"] < tiny["paper"]["flops"]  # counted for the settings each story rendered with
    assert story_cost.markdown(result).startswith("# The cost of a story")


"""Sampler and CFG settings as upstream Story-Adapter runs them, whatever the checkpoint ships."""

from __future__ import annotations

import json
import shutil

import numpy as np
import torch

from storyadapter.launch import compose_config

from .helpers.pixels import render_pixels


def test_ddim_is_pinned_even_when_the_checkpoint_scheduler_config_lacks_the_keys(tiny_source, tmp_path):
    from dataclasses import replace

    from storyadapter.models.loading import load_pipeline

    folder = tmp_path / "sdxl"
    shutil.copytree(tiny_source.pretrained, folder)
    config_path = folder / "scheduler" / "scheduler_config.json"
    config = json.loads(config_path.read_text())
    for key in ("clip_sample", "set_alpha_to_one", "steps_offset"):
        del config[key]  # as in checkpoints that ship an Euler config: DDIM's own defaults would apply
    config["_class_name"] = "EulerDiscreteScheduler"
    config_path.write_text(json.dumps(config))
    bare = replace(tiny_source, pretrained=str(folder))

    scheduler = load_pipeline(bare, torch.device("cpu"), torch.float32).scheduler
    assert type(scheduler).__name__ == "DDIMScheduler"
    assert (scheduler.config.clip_sample, scheduler.config.set_alpha_to_one, scheduler.config.steps_offset) == (False, False, 1)
    # A predicted latent far outside [-1, 1] is kept as is, not clipped.
    scheduler.set_timesteps(2)
    t = scheduler.timesteps[0]
    sample = torch.zeros(1, 4, 8, 8)
    out = scheduler.step(torch.full_like(sample, -50.0), t, sample).pred_original_sample
    assert out.abs().max() > 10
    # And the frames are those of the folder whose config spells the values out.
    assert np.array_equal(render_pixels(bare), render_pixels(tiny_source))


def test_upstream_preset_is_the_paper_with_the_cfg_upstream_code_runs():
    paper = compose_config(["render=paper", "story.path=x.txt", "output_dir=o"]).render
    upstream = compose_config(["render=upstream", "story.path=x.txt", "output_dir=o"]).render
    assert paper.guidance_scale == 7.5 and upstream.guidance_scale == 5.0
    assert {k: v for k, v in upstream.items() if k != "guidance_scale"} == \
        {k: v for k, v in paper.items() if k != "guidance_scale"}
    assert compose_config(["story.path=x.txt", "output_dir=o"]).render.guidance_scale == 7.5  # the default stays

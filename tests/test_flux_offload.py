"""model.offload=blocks: the FLUX transformer's blocks stream in one at a time (diffusers' block-level group
offloading); the IP-Adapter's layers and GRCA's reference K/V stay on the actor's device."""

from __future__ import annotations

import numpy as np
import torch

from .helpers.flux_offload import render_frame


def test_block_offload_gives_the_same_pixels_and_loads_every_block_each_pass(flux_tiny_source, monkeypatch):
    """Onto the CPU itself (no GPU here): diffusers' hooks load each block before it runs and put it back after,
    without the CUDA stream that prefetches the next block on a GPU (diffusers needs an accelerator for it)."""
    from diffusers.hooks.group_offloading import ModuleGroup

    onloads: list[int] = []
    onload = ModuleGroup.onload_
    monkeypatch.setattr(ModuleGroup, "onload_", lambda group: (onloads.append(len(group.modules)), onload(group))[1])

    plain, offloaded = render_frame(flux_tiny_source, None), render_frame(flux_tiny_source, "blocks")
    assert np.array_equal(plain[0], offloaded[0]) and np.array_equal(plain[1], offloaded[1])
    backbone = offloaded[2]
    transformer = backbone.pipe.transformer
    blocks = len(transformer.transformer_blocks) + len(transformer.single_transformer_blocks)
    # two steps, one pass each: every block once per pass, plus the rest of the transformer (embedders, final norm)
    assert onloads.count(1) == 2 * blocks and len(onloads) == 2 * (blocks + 1)
    # GRCA's layers are not the transformer's: no hook moves them, so the K/V they project stay where they are
    hooked = {id(p) for p in transformer.parameters()}
    layers = backbone.reference_layers().values()
    assert layers and not any(id(p) in hooked for layer in layers for p in (*layer.to_k.parameters(), *layer.to_v.parameters()))
    assert backbone.device == torch.device("cpu") and not backbone.releases_text_encoders  # a GPU would release them


def test_block_offload_is_refused_in_one_line_where_there_is_no_gpu(flux_tiny_source):
    from dataclasses import replace

    import pytest

    from storyadapter.errors import UserError
    from storyadapter.launch import compose_config
    from storyadapter.models import flux_loading

    base = ["story.path=s.txt", "output_dir=o", "model=flux-tiny", "render=flux-tiny", "model.offload=blocks"]
    assert compose_config(base).model.offload == "blocks"
    with pytest.raises(UserError) as info:
        compose_config([*base, "model.device=cpu"])
    assert str(info.value).startswith("model.offload=blocks: offloading keeps weights on the CPU between uses on a GPU")
    with pytest.raises(UserError) as info:
        flux_loading.load_pipeline(replace(flux_tiny_source, offload="blocks"), torch.device("cpu"), torch.float32)
    assert str(info.value).startswith("model.offload=blocks: offloading needs a GPU") and "\n" not in str(info.value)

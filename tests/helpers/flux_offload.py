"""One frame on model=flux-tiny with or without model.offload, for the offload tests' pixel comparisons
(test_flux_offload.py, test_flux_config.py)."""

from __future__ import annotations

import numpy as np
import torch


def render_frame(source, offload: str | None):
    """A 64x64 frame, two steps, references at scale 0.5, offloaded onto the CPU itself when `offload` names a
    mode: (its pixels as int16, its image embedding, the backbone)."""
    from storyadapter.models.loading import load_backbone
    from storyadapter.worker import torch_settings
    from storyadapter.worker.renderer import RenderSettings, StoryRenderer

    settings = RenderSettings(steps=2, height=64, width=64, guidance_scale=1.0, scheduler="flow_euler")
    bank = np.random.default_rng(0).normal(size=(2, 32)).astype(np.float32)
    with torch_settings.reproducible(threads=1):
        backbone = load_backbone(source, torch.device("cpu"), torch.float32)
        if offload is not None:
            backbone.offload(offload, torch.device("cpu"))
        r = StoryRenderer(backbone, settings)
        r.set_references(bank, 0.5)
        frame = r.render([r.encode_text("a cat on a desk", "")], [1])[0]
        return np.asarray(frame, dtype=np.int16), r.embed_images([frame]), backbone

"""Render a couple of frames from a ModelSource in-process, for tests that compare weights by their pixels."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from storyadapter.renderer import RenderSettings, StoryRenderer

SETTINGS = RenderSettings(steps=2, height=64, width=64, guidance_scale=7.5)
PROMPTS = ("a lighthouse keeper climbs the stairs", "a red boat in a storm")


@lru_cache(maxsize=32)  # a ModelSource is frozen: the same source renders the same pixels, so render it once
def render_pixels(source, scale: float = 0.5) -> np.ndarray:
    """Frames of PROMPTS from a fresh pipeline, iteration-style (a fixed bank of references at `scale`)."""
    from storyadapter.models.loading import load_pipeline

    torch.set_num_threads(1)  # as the tiny_pipe fixture: fixed arithmetic, and no oversubscribed cores
    renderer = StoryRenderer(load_pipeline(source, torch.device("cpu"), torch.float32), SETTINGS)
    bank = np.random.default_rng(0).normal(size=(3, renderer.embedding_dim)).astype(np.float32)
    renderer.set_references(bank, scale)
    images = renderer.render([renderer.encode_text(p, "blurry") for p in PROMPTS], [7, 7])
    frames = np.stack([np.asarray(im, dtype=np.int16) for im in images])
    frames.flags.writeable = False  # shared by every caller of the cache
    return frames

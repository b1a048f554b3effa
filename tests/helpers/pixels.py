"""Render a couple of frames from a ModelSource in-process, for tests that compare weights by their pixels."""

from __future__ import annotations

from collections import Counter
from functools import lru_cache

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from storyadapter.worker.renderer import RenderSettings, StoryRenderer
from storyadapter.worker.torch_settings import reproducible

SETTINGS = RenderSettings(steps=2, height=64, width=64, guidance_scale=7.5)
PROMPTS = ("a lighthouse keeper climbs the stairs", "a red boat in a storm")


def _renderer_and_texts(source):
    from storyadapter.models.loading import load_backbone

    renderer = StoryRenderer(load_backbone(source, torch.device("cpu"), torch.float32), SETTINGS)
    return renderer, [renderer.encode_text(p, "blurry") for p in PROMPTS]


@lru_cache(maxsize=32)  # a ModelSource is frozen: the same source renders the same pixels, so render it once
def render_pixels(source, scale: float = 0.5) -> np.ndarray:
    """Frames of PROMPTS from a fresh pipeline, iteration-style (a fixed bank of references at `scale`)."""
    # One thread for this render only: every cached frame was computed alike, and the process's setting is put back.
    with reproducible(threads=1):
        renderer, texts = _renderer_and_texts(source)
        bank = np.random.default_rng(0).normal(size=(3, renderer.embedding_dim)).astype(np.float32)
        renderer.set_references(bank, scale)
        images = renderer.render(texts, [7, 7])
    frames = np.stack([np.asarray(im, dtype=np.int16) for im in images])
    frames.flags.writeable = False  # shared by every caller of the cache
    return frames


class _OpCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.counts: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[str(func)] += 1
        return func(*args, **(kwargs or {}))


def render_kernels(source) -> Counter[str]:
    """How often each aten op runs while rendering PROMPTS: the kernel path, which pixels alone may hide on a CPU
    whose mm and bmm happen to round alike."""
    with reproducible(threads=1):
        renderer, texts = _renderer_and_texts(source)
        bank = np.random.default_rng(0).normal(size=(3, renderer.embedding_dim)).astype(np.float32)
        renderer.set_references(bank, 0.5)
        with _OpCounter() as counter:
            renderer.render(texts, [7, 7])
    return counter.counts

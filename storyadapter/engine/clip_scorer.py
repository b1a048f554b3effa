"""The metrics' CLIP on the render actors (their GPUs), not on the driver: images split across the live actors."""

from __future__ import annotations

import numpy as np

from .actor import get_unwrapped


class ActorClipScorer:
    def __init__(self, executor, clip_model: str):
        """`executor`: a RayExecutor whose actors were started with clip= (they hold the evaluation CLIP)."""
        self.handles = executor.live_handles()
        self.clip_model = clip_model

    def image_file_embeddings(self, paths) -> np.ndarray:
        shares = np.array_split(np.array([str(p) for p in paths], dtype=object), len(self.handles))
        refs = [h.clip_embeddings.remote(self.clip_model, list(share), []) for h, share in zip(self.handles, shares) if len(share)]
        return np.concatenate([images for images, _ in get_unwrapped(refs)])

    def text_embeddings(self, texts) -> np.ndarray:
        return get_unwrapped([self.handles[0].clip_embeddings.remote(self.clip_model, [], list(texts))])[0][1]

"""The evaluation CLIP on a render actor: the metrics' scorer on the actor's device, loaded on first use.

The Ray engine calls it through `RayExecutor(..., clip=ActorClip)` without importing it (torch comes with it).
"""

from __future__ import annotations


class ActorClip:
    def __init__(self):
        self._scorer = None

    def __call__(self, clip_model: str, paths: list[str], texts: list[str]):
        """(image embeddings of `paths`, text embeddings of `texts`) by the CLIP `clip_model`."""
        if self._scorer is None or self._scorer.name != clip_model:
            import torch

            from ..outputs.metrics import ClipScorer

            self._scorer = ClipScorer(clip_model, device="cuda" if torch.cuda.is_available() else "cpu")
        return self._scorer.image_file_embeddings(paths), self._scorer.text_embeddings(texts)

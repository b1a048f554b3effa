"""Stop refining once the story has settled (`render.stop_when_stable=EPS`).

The change of a refinement iteration is the mean over frames of 1 - cosine(frame embedding now, the same
frame one iteration before), from the CLIP embeddings the manifest already stores (the next bank). Below EPS,
after at least one refinement, the remaining iterations would mostly repeat the last one: the run stops and
its outputs use the last finished iteration. A resumed run applies the same rule to the parts on disk.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from . import manifest

log = logging.getLogger(__name__)


def embedding_change(previous: np.ndarray, current: np.ndarray) -> float:
    """Mean over frames (rows) of 1 - cosine similarity."""
    a, b = (np.asarray(x, dtype=np.float64) for x in (previous, current))
    cos = np.sum(a * b, axis=1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    return float(np.mean(1.0 - cos))


def changes(out_dir: Path, iterations: list[int]) -> dict[int, float]:
    """The change of every finished refinement iteration whose predecessor is finished too (for metrics.json)."""
    banks = {it: manifest.read_bank(out_dir, it) for it in iterations}
    return {it: embedding_change(banks[it - 1], banks[it]) for it in iterations
            if it - 1 in banks and _same_frames(banks[it - 1], banks[it])}


def _same_frames(previous: np.ndarray, current: np.ndarray) -> bool:
    """Whether two banks' rows are the same frames: an edit that inserted or removed frames (edit=true) changed the
    story between them, and a frame-by-frame change means nothing there."""
    return previous.shape == current.shape


def stop_after(iteration: int, previous: np.ndarray | None, bank: np.ndarray, eps: float | None, last: int) -> bool:
    """Log the iteration's change; True when the run should stop here (and say why)."""
    if iteration == 0 or previous is None:
        return False
    change = embedding_change(previous, bank)
    log.info("iteration %d: mean embedding change from iteration %d: %.6f", iteration, iteration - 1, change)
    if eps is None or change >= eps or iteration >= last:
        return False
    log.info("stopping early: the change %.6f is below render.stop_when_stable=%g; iterations %d..%d skipped "
             "(%d frame renders saved), outputs use iteration %d",
             change, eps, iteration + 1, last, (last - iteration) * len(bank), iteration)
    return True


def stable_before_resume(out_dir: Path, start: int, eps: float | None) -> bool:
    """A resumed run whose last finished refinement was already below EPS has nothing left to render."""
    last = start - 1
    if eps is None or last < 1:
        return False
    before, now = manifest.read_bank(out_dir, last - 1), manifest.read_bank(out_dir, last)
    if not _same_frames(before, now):
        return False
    change = embedding_change(before, now)
    if change >= eps:
        return False
    log.info("nothing to resume: iteration %d changed by %.6f, below render.stop_when_stable=%g; outputs use iteration %d",
             last, change, eps, last)
    return True

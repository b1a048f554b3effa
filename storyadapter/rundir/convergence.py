"""Stop refining once the story has settled (`render.stop_when_stable=EPS`).

The change of a refinement iteration is the mean over frames of 1 - cosine(frame embedding now, the same
frame one iteration before), from the CLIP embeddings the manifest already stores (the next bank). Below EPS,
after at least one refinement, the remaining iterations would mostly repeat the last one: the run stops and
its outputs use the last finished iteration. A resumed run applies the same rule to the parts on disk.

With draft iterations before a last pass (render.draft.*), a story that settles during the drafts would end on
a draft: the iteration after the settled draft renders as the last pass instead (render.*, at the last
iteration's adapter scale), and the run stops after it.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

from . import manifest
from ..atomic import replacing

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


def stop_after(iteration: int, previous: np.ndarray | None, bank: np.ndarray, eps: float | None, last: int,
               last_pass_next: bool = False) -> bool:
    """Log the iteration's change; True when the run should stop here (and say why). `last_pass_next`: the
    iteration is a draft, and a settled one is followed by one last pass before the run stops."""
    if iteration == 0 or previous is None:
        return False
    change = embedding_change(previous, bank)
    log.info("iteration %d: mean embedding change from iteration %d: %.6f", iteration, iteration - 1, change)
    if eps is None or change >= eps or iteration >= last:
        return False
    if last_pass_next:
        log.info("the drafts settled: the change %.6f is below render.stop_when_stable=%g; iteration %d is the last "
                 "pass (at iteration %d's scale), then the run stops (%d draft renders saved)",
                 change, eps, iteration + 1, last, (last - iteration - 1) * len(bank))
        return True
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


# With drafts (render.draft.*), the iteration a settled story renders as its last pass: written before that pass
# starts, so a resume knows it from a draft without reading pixels.
LAST_PASS_FILE = "last_pass.json"


def last_pass_after_settling(out_dir: Path, start: int, eps: float | None, last: int) -> int | None:
    """With drafts before a last pass, on (re)start at iteration `start`: the iteration that is (or now becomes)
    the last pass because the drafts settled, else None. On disk already when it is below `start`."""
    if eps is None:
        return None
    marked = early_last_pass(out_dir)
    if marked is not None and marked in (start - 1, start):  # one the run went past (resumed without EPS) is void
        return marked
    settled = start - 1
    if 1 <= settled < last and embedding_change(manifest.read_bank(out_dir, settled - 1),
                                                 manifest.read_bank(out_dir, settled)) < eps:
        return settled + 1
    return None


def mark_last_pass(out_dir: Path, iteration: int) -> None:
    """Record, durably, that `iteration` renders as the last pass of a story whose drafts settled."""
    path = Path(out_dir) / LAST_PASS_FILE
    with replacing(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(json.dumps({"iteration": iteration}))
            fh.flush()
            os.fsync(fh.fileno())


def early_last_pass(out_dir: Path) -> int | None:
    """The iteration recorded by `mark_last_pass`, if any."""
    try:
        return int(json.loads((Path(out_dir) / LAST_PASS_FILE).read_text(encoding="utf-8"))["iteration"])
    except (OSError, ValueError, KeyError, TypeError):
        return None

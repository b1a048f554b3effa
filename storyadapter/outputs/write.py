"""Everything written after the last iteration, in dependency order: metrics, comic, GIF, contact
sheet, then the index that links them. Reads only the manifest and PNGs, so it can be re-run any time
(`python -m storyadapter.outputs DIR`)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from .comic import write_comic
from ..errors import UserError
from .gallery import write_contact_sheet, write_gif, write_index
from ..rundir.manifest import finished_iterations_or_fail
from .metrics import ClipScorer, run_metrics

log = logging.getLogger(__name__)


def write_all(
    out_dir: Path,
    clip_model: str | None,
    layout: str = "classic",
    caption_position: str = "below",
    device: str = "cpu",
    clip_key: str = "eval.clip_model",
    metrics: bool = True,
    scorer=None,
) -> dict[str, Any]:
    """Write metrics (CLIP-T too when `clip_model` is given), comic pages, story.gif, iterations.png, index.html.

    `scorer` runs that CLIP elsewhere (the render actors, see engine/clip_scorer.py) instead of loading it here.

    If the CLIP model cannot be loaded, the other outputs are still written (a finished render should
    not lose its comic to a missing evaluation model) and the UserError is raised at the end.
    """
    out_dir = Path(out_dir)
    iterations = finished_iterations_or_fail(out_dir)
    log.info("outputs: %s (iterations %d..%d)", out_dir, iterations[0], iterations[-1])
    result: dict[str, Any] = {"metrics": None}
    deferred: UserError | None = None
    if metrics:
        try:
            result["metrics"] = _write_metrics(out_dir, clip_model, device, clip_key, len(iterations), scorer)
        except UserError as exc:
            log.error("metrics: skipped: %s", exc)
            deferred = exc

    result["comic"] = write_comic(out_dir, layout=layout, caption_position=caption_position)
    log.info("comic: wrote %d %s pages to %s", len(result["comic"]), layout, out_dir / "comic")
    result["gif"] = write_gif(out_dir)
    log.info("gif: wrote %s", result["gif"])
    result["contact_sheet"] = write_contact_sheet(out_dir)
    log.info("contact sheet: wrote %s", result["contact_sheet"])
    result["index"] = write_index(out_dir)
    log.info("index: wrote %s", result["index"])
    if deferred is not None:
        raise deferred
    return result


def _write_metrics(out_dir: Path, clip_model: str | None, device: str, clip_key: str, n_iterations: int, scorer=None):
    if scorer is None and clip_model:
        scorer = ClipScorer(clip_model, device=device, key=clip_key)
    source = f"CLIP {clip_model}" if clip_model else "the run's own image embeddings (no eval.clip_model: no clip_t)"
    log.info("metrics: scoring %d iterations with %s", n_iterations, source)
    results = run_metrics(out_dir, scorer)
    log.info("metrics: wrote %s (final clip_t=%s consistency=%s)", out_dir / "metrics.json",
             _fmt(results[-1]["clip_t"]), _fmt(results[-1]["consistency"]))
    return results


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"

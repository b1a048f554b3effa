"""The story features around the renderer on model=flux-tiny: a character photo with render.reference_weighting=
characters, render.stop_when_stable, and a finished render extended by one iteration (the SDXL tests:
test_photos.py, test_convergence.py, test_engine.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from storyadapter.rundir import convergence, manifest
from storyadapter.story.parse import load_story

from .helpers import EXAMPLES

STORY = ["[Tom] a boy with a red cap (photo: tom.png)", "[Ana] a girl with a blue scarf", "",
         "[Tom] walks to school", "[Ana] reads a book", "[NC] an empty street", "[Ana] and [Tom] play chess"]
STORY_FILES = {"tom.png": EXAMPLES / "tom.png"}
FRAMES = 4
NAMES_TOM = {0, 3}


def test_a_photo_changes_iteration_0_frames_naming_its_character_and_no_others(story_file, flux_tiny_source, tmp_path):
    from storyadapter.worker.frame_worker import FramePrompt, FrameWorker, WorkerSpec
    from storyadapter.worker.renderer import RenderSettings

    story = load_story(story_file)
    settings = RenderSettings(steps=2, height=64, width=64, guidance_scale=1.0, distilled_guidance=3.5,
                              scheduler="flow_euler")

    def iteration_0(photos, weighting, scale):
        out = tmp_path / f"out-{len(photos)}"
        worker = FrameWorker(WorkerSpec(
            source=flux_tiny_source, settings=settings, out_dir=str(out), seed=5, seed_policy="shared", threads=1,
            prompts=tuple(FramePrompt(*story.styled(f), characters=f.characters) for f in story.frames),
            photos=photos, reference_weighting=weighting, character_weight=4.0))
        worker.begin_iteration(0, None, scale)
        batch = worker.render_batch(0, list(range(FRAMES)))  # one batch: photo and photo-less frames together
        return worker.image_encodes, [np.asarray(Image.open(out / r.image_path)) for r in batch.frames]

    _, text_only = iteration_0((), "uniform", 0.0)  # iteration 0 without photos: text alone
    encodes, got = iteration_0(tuple(story.photos.values()), "characters", 0.3)
    assert encodes == 1 + FRAMES  # the photo once when the worker starts, then the frames' embeddings
    for f in range(FRAMES):
        if f in NAMES_TOM:
            assert not np.array_equal(got[f], text_only[f]), f"frame {f} names Tom but did not see his photo"
        else:
            assert np.array_equal(got[f], text_only[f]), f"frame {f} does not name Tom but changed"


def overrides(story: Path, cache: Path, out: Path, *extra: str) -> list[str]:
    return [f"story.path={story}", "model=flux-tiny", f"model.cache_dir={cache}", "render=flux-tiny",
            "render.reference_weighting=characters", "render.character_weight=4", "cluster.workers=1",
            "outputs.enabled=false", f"output_dir={out}", *extra]


@pytest.mark.slow
def test_photo_story_extended_renders_only_new_iterations_and_stops_when_stable(story_file, flux_tiny_cache, tmp_path,
                                                                               local_ray, monkeypatch):
    """Through the Ray engine: a finished render of iterations 0..1 resumed with render.iterations=3 and
    render.stop_when_stable between its first and second refinement's change renders iteration 2 alone, stops
    there (iteration 3 skipped) and leaves the earlier files untouched; resumed again, it is settled and starts
    no actor."""
    from storyadapter.engine import executor as engine
    from storyadapter.launch import compose_config
    from storyadapter.render_story import render_story

    from .helpers import engine_hooks

    rendered: list[tuple[int, int]] = []
    engine_hooks.watch_executor(monkeypatch, on_batches=lambda ex, it, batches: rendered.extend(
        (it, r.frame) for b in batches for r in b.frames))
    out = tmp_path / "out"

    def render(*extra):
        rendered.clear()
        render_story(compose_config(overrides(story_file, flux_tiny_cache, out, *extra)), out)
        return sorted(rendered)

    assert render("render.iterations=1") == [(it, f) for it in (0, 1) for f in range(FRAMES)]
    # In iteration 0 only the frames naming Tom had a reference (his photo), at scale_start.
    assert [r.scale for r in manifest.read_records(out, 0)] == pytest.approx([0.3 if f in NAMES_TOM else 0.0
                                                                              for f in range(FRAMES)])
    assert (out / "photos.json").exists()
    kept = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("iter_*/frame_*.png")}
    assert len(kept) == 2 * FRAMES

    # EPS = the first refinement's change: not settled before the resume, settled once the next change is below it.
    eps = convergence.changes(out, [0, 1])[1]
    assert render("resume=true", "render.iterations=3", f"render.stop_when_stable={eps!r}") == [(2, f) for f in range(FRAMES)]
    assert manifest.finished_iterations(out) == [0, 1, 2] and not (out / manifest.iteration_dirname(3)).exists()
    assert 0 < convergence.changes(out, [1, 2])[2] < eps  # FLUX's frame embeddings reached the stopping rule
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in kept} == kept  # not rendered or rewritten again

    def no_actors(*args, **kwargs):
        raise AssertionError("a settled render started actors")

    monkeypatch.setattr(engine, "RayExecutor", no_actors)  # settled: nothing to render, no model to load
    assert render("resume=true", "render.iterations=3", f"render.stop_when_stable={eps!r}") == []
    assert manifest.finished_iterations(out) == [0, 1, 2]


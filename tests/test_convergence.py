"""render.stop_when_stable: stop once the frames' embeddings stop changing; resume applies the same rule."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from PIL import Image

from storyadapter.rundir import convergence, manifest
from storyadapter.engine import driver
from storyadapter.engine.protocol import BatchResult, FrameResult
from storyadapter.story.parse import load_story

from .helpers.stories import write_story

N = 4


class ConvergingWorker:
    """Frame f of iteration t embeds as base_f + 0.5**t * wobble_f: each iteration moves half as much as the last."""

    embedding_dim = 8

    def __init__(self):
        rng = np.random.default_rng(0)
        self.base, self.wobble = rng.normal(size=(2, N, self.embedding_dim))
        self.rendered: list[tuple[int, int]] = []
        self._iteration = None

    def embedding(self, iteration: int, frame: int) -> np.ndarray:
        return (self.base[frame] + 0.5**iteration * self.wobble[frame]).astype(np.float32)

    def begin_iteration(self, iteration, bank, scale):
        self._iteration = iteration

    def render_batch(self, iteration, frames):
        self.rendered += [(iteration, f) for f in frames]
        return BatchResult([FrameResult(f, f"{manifest.iteration_dirname(iteration)}/{manifest.frame_filename(f)}",
                                        self.embedding(iteration, f)) for f in frames], busy_s=0.0)


def plan(tmp_path, eps, iterations=8):
    story = load_story(write_story(tmp_path / "s.txt", [f"scene {i}" for i in range(N)]))
    return driver.RunPlan(story, tmp_path / "out", iterations=iterations, batch_size=2, scale_start=0.3,
                          scale_end=0.5, seed=1, seed_policy="shared", stop_when_stable=eps)


def test_stops_at_the_first_refinement_below_eps_and_resume_keeps_it_stopped(tmp_path, caplog):
    worker = ConvergingWorker()
    change = {t: np.mean([1 - np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b)
                          for a, b in ((worker.embedding(t - 1, f), worker.embedding(t, f)) for f in range(N))])
              for t in range(1, 9)}
    assert all(change[t + 1] < change[t] for t in range(1, 8))  # built to converge
    eps = (change[3] + change[4]) / 2  # iteration 4 is the first below it
    caplog.set_level(logging.INFO, logger="storyadapter")
    stats = driver.run_iterations(plan(tmp_path, eps), driver.LocalExecutor(worker))
    assert [s.iteration for s in stats] == [0, 1, 2, 3, 4]
    assert manifest.finished_iterations(tmp_path / "out") == [0, 1, 2, 3, 4]
    assert {it for it, _ in worker.rendered} == {0, 1, 2, 3, 4}
    assert "stopping early" in caplog.text and "iterations 5..8 skipped (16 frame renders saved)" in caplog.text
    assert convergence.changes(tmp_path / "out", [0, 1, 2, 3, 4])[4] == pytest.approx(change[4], rel=1e-5)

    caplog.clear()
    again = ConvergingWorker()
    assert driver.run_iterations(plan(tmp_path, eps), driver.LocalExecutor(again)) == []
    assert again.rendered == [] and "nothing to resume" in caplog.text
    assert manifest.finished_iterations(tmp_path / "out") == [0, 1, 2, 3, 4]


def test_off_by_default_and_never_before_a_refinement(tmp_path):
    worker = ConvergingWorker()
    stats = driver.run_iterations(plan(tmp_path, None, iterations=3), driver.LocalExecutor(worker))
    assert [s.iteration for s in stats] == [0, 1, 2, 3]
    # Even a huge EPS renders iteration 0 and one refinement before it may stop.
    (tmp_path / "b").mkdir()
    stats = driver.run_iterations(plan(tmp_path / "b", 10.0, iterations=3), driver.LocalExecutor(ConvergingWorker()))
    assert [s.iteration for s in stats] == [0, 1]


def test_early_stop_on_the_tiny_model_keeps_manifest_and_outputs_consistent(tmp_path, tiny_source, tiny_cache):
    from storyadapter.outputs import write as outputs
    from storyadapter.worker.renderer import RenderSettings
    from storyadapter.worker.frame_worker import FramePrompt, FrameWorker, WorkerSpec

    story = load_story(write_story(tmp_path / "s.txt", [f"a lighthouse keeper with a yellow coat, scene {i}" for i in range(3)]))

    def render(out, eps):
        spec = WorkerSpec(source=tiny_source, settings=RenderSettings(steps=2, height=64, width=64),
                          prompts=tuple(FramePrompt(*story.styled(f)) for f in story.frames),
                          out_dir=str(out), seed=1, seed_policy="per_frame", threads=1)
        p = driver.RunPlan(story, out, iterations=3, batch_size=1, scale_start=0.3, scale_end=0.5, seed=1,
                           seed_policy="per_frame", stop_when_stable=eps)
        driver.run_iterations(p, driver.LocalExecutor(FrameWorker(spec)))
        outputs.write_all(out, clip_model=None)

    full = tmp_path / "full"
    render(full, None)
    c = convergence.changes(full, [0, 1, 2, 3])
    rows = json.loads((full / "metrics.json").read_text())
    assert [r["embedding_change"] for r in rows] == [None] + [pytest.approx(c[t]) for t in (1, 2, 3)]
    # Stop at 2 if the render settles there, else at 1: EPS just above the first change that is below its predecessor.
    stop = 2 if c[2] < c[1] else 1
    eps = (c[1] + c[2]) / 2 if stop == 2 else c[1] * 1.001

    early = tmp_path / "early"
    render(early, eps)
    assert manifest.finished_iterations(early) == list(range(stop + 1))
    assert not (early / manifest.iteration_dirname(stop + 1)).exists()
    for it in range(stop + 1):  # the iterations it did render are the full run's
        for f in range(3):
            rel = f"{manifest.iteration_dirname(it)}/{manifest.frame_filename(f)}"
            assert np.array_equal(np.asarray(Image.open(early / rel)), np.asarray(Image.open(full / rel)))
    rows = json.loads((early / "metrics.json").read_text())
    assert [r["iteration"] for r in rows] == list(range(stop + 1))
    assert rows[-1]["embedding_change"] == pytest.approx(c[stop]) and rows[-1]["embedding_change"] < eps
    assert f"final: iteration {stop}" in (early / "index.html").read_text()


def test_resume_fingerprint_ignores_eps_and_keeps_older_renders_resumable(tmp_path):
    from storyadapter.rundir import guard as rundir
    from storyadapter.launch import compose_config

    story_file = write_story(tmp_path / "s.txt", ["scene"])
    story = load_story(story_file)

    def fp(*extra):
        return rundir.fingerprint(compose_config([f"story.path={story_file}", "model=tiny", "output_dir=x", *extra]), story)

    base = fp()
    assert "stop_when_stable" not in base["render"] and "reference_weighting" not in base["render"]
    assert fp("render.stop_when_stable=0.01") == base  # how long to refine is not a pixel setting
    assert fp("render.reference_weighting=characters")["render"]["reference_weighting"] == "characters"
    assert fp("render.reference_weighting=characters", "render.character_weight=9") != fp("render.reference_weighting=characters")


@pytest.mark.parametrize("override, key", [("render.stop_when_stable=-0.1", "render.stop_when_stable"),
                                           ("cluster.object_store_gb=-1", "cluster.object_store_gb"),
                                           ("method.id_banks=bogus", "method.id_banks"),
                                           ("render.reference_weighting=faces", "render.reference_weighting"),
                                           ("render.character_weight=0", "render.character_weight")])
def test_bad_new_keys_are_one_line_naming_the_key(tmp_path, override, key):
    from storyadapter.errors import UserError
    from storyadapter.launch import compose_config

    story_file = write_story(tmp_path / "s.txt", ["scene"])
    with pytest.raises(UserError, match=f"^{key}="):
        compose_config([f"story.path={story_file}", "model=tiny", "output_dir=x", override])

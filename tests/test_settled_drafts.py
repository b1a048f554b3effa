"""render.stop_when_stable with drafts: a story whose drafts settle skips straight to its last pass (render.*, at
the last iteration's scale), then stops; a resume, killed in that last pass or after it, keeps to the same plan."""

from __future__ import annotations

import numpy as np
import pytest

from storyadapter import passes
from storyadapter import spec as specs
from storyadapter.engine import driver
from storyadapter.engine.protocol import BatchResult, FrameResult
from storyadapter.rundir import convergence, manifest
from storyadapter.story.parse import load_story

from .helpers.stories import write_story

N = 4


class SettlingWorker:
    """Frame f of iteration t embeds as base_f + 0.5**t * wobble_f (each iteration moves half as much as the last);
    records each iteration's draft flag and scale, and can fail after `fail_after` batches (a killed driver)."""

    embedding_dim = 8

    def __init__(self, out_dir, fail_after: int | None = None):
        self.out_dir = out_dir
        rng = np.random.default_rng(0)
        self.base, self.wobble = rng.normal(size=(2, N, self.embedding_dim))
        self.began: dict[int, tuple[bool, float]] = {}
        self.rendered: list[tuple[int, int]] = []
        self.fail_after = fail_after

    def begin_iteration(self, iteration, bank, scale, draft=False):
        self.began[iteration] = (draft, scale)

    def render_batch(self, iteration, frames):
        if self.fail_after is not None and len(self.rendered) >= self.fail_after:
            raise KeyboardInterrupt("killed")
        self.rendered += [(iteration, f) for f in frames]
        results = []
        for f in frames:
            rel = f"{manifest.iteration_dirname(iteration)}/{manifest.frame_filename(f)}"
            (self.out_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            (self.out_dir / rel).write_bytes(b"")  # the journal keeps only frames whose file is there
            results.append(FrameResult(f, rel, (self.base[f] + 0.5**iteration * self.wobble[f]).astype(np.float32)))
        return BatchResult(results, busy_s=0.0)


def plan(tmp_path, eps, iterations=8):
    story = load_story(write_story(tmp_path / "s.txt", [f"scene {i}" for i in range(N)]))
    return driver.RunPlan(story, tmp_path / "out", iterations=iterations, batch_size=2, scale_start=0.3,
                          scale_end=0.5, seed=1, seed_policy="shared", stop_when_stable=eps, drafts=True)


def settle_at(tmp_path, iteration: int) -> float:
    """An EPS between the changes of `iteration` - 1 and `iteration` of SettlingWorker's story."""
    (tmp_path / "full").mkdir()
    full = plan(tmp_path / "full", None, iterations=iteration)
    driver.run_iterations(full, driver.LocalExecutor(SettlingWorker(full.out_dir)))
    c = convergence.changes(full.out_dir, list(range(iteration + 1)))
    assert c[iteration] < c[iteration - 1]
    return (c[iteration] + c[iteration - 1]) / 2


def test_settled_drafts_skip_to_the_last_pass_at_the_last_iteration_s_scale(tmp_path):
    eps = settle_at(tmp_path, 3)
    p = plan(tmp_path, eps)
    worker = SettlingWorker(p.out_dir)
    driver.run_iterations(p, driver.LocalExecutor(worker))
    assert manifest.finished_iterations(p.out_dir) == [0, 1, 2, 3, 4]  # 5..8 skipped
    assert [worker.began[it][0] for it in range(5)] == [True, True, True, True, False]  # 4: the last pass
    assert worker.began[4][1] == pytest.approx(p.scale(8)) != pytest.approx(p.scale(4))
    assert convergence.early_last_pass(p.out_dir) == 4
    assert not (p.out_dir / "eta.json").exists()  # the web UI's ETA is gone with the last pass
    again = SettlingWorker(p.out_dir)
    driver.run_iterations(p, driver.LocalExecutor(again))  # resumed: nothing left to render
    assert again.rendered == []


def test_a_driver_killed_in_the_skipped_to_last_pass_resumes_it_as_the_last_pass(tmp_path):
    eps = settle_at(tmp_path, 3)
    p = plan(tmp_path, eps)
    with pytest.raises(KeyboardInterrupt):
        driver.run_iterations(p, driver.LocalExecutor(SettlingWorker(p.out_dir, fail_after=4 * N + 2)))  # 0..3, then one batch of 4
    assert manifest.finished_iterations(p.out_dir) == [0, 1, 2, 3]
    resumed = SettlingWorker(p.out_dir)
    driver.run_iterations(p, driver.LocalExecutor(resumed))
    assert resumed.began == {4: (False, pytest.approx(p.scale(8)))} and resumed.rendered == [(4, 2), (4, 3)]
    assert manifest.finished_iterations(p.out_dir) == [0, 1, 2, 3, 4]


def test_stop_when_stable_with_drafts_is_accepted_and_counts_only_what_it_renders():
    from storyadapter.launch import compose_config

    run = specs.from_config(compose_config(["story.path=s.txt", "output_dir=o", "render=swift",
                                            "render.stop_when_stable=0.01"]))
    assert run.render.stop_when_stable == 0.01 and passes.drafting(run.render)


def test_on_the_tiny_model_settled_drafts_end_on_a_full_size_last_pass(tiny_source, tmp_path):
    from storyadapter.worker.frame_worker import FramePrompt, FrameWorker, WorkerSpec
    from PIL import Image

    settings = specs.RenderSpec(steps=2, height=64, width=64, reference_size=32,
                                draft=specs.DraftSpec(steps=1, guidance_scale=1.0, height=32, width=32))
    story = load_story(write_story(tmp_path / "s.txt", ["a fox in the snow", "a fox by a river"]))
    out = tmp_path / "out"
    worker = FrameWorker(WorkerSpec(source=tiny_source, settings=settings, out_dir=str(out), seed=1,
                                    seed_policy="per_frame", threads=1,
                                    prompts=tuple(FramePrompt(*story.styled(f)) for f in story.frames)))
    p = driver.RunPlan(story=story, out_dir=out, iterations=5, batch_size=1, scale_start=0.3, scale_end=0.5, seed=1,
                       seed_policy="per_frame", stop_when_stable=2.0, drafts=True)  # any change is below 2: settles at 1
    driver.run_iterations(p, driver.LocalExecutor(worker))
    assert manifest.finished_iterations(out) == [0, 1, 2]
    sizes = [Image.open(out / manifest.iteration_dirname(it) / manifest.frame_filename(0)).size for it in range(3)]
    assert sizes == [(32, 32), (32, 32), (64, 64)]
    # drafts 0 and 1: 2 frames x 1 step x 1 branch; the last pass: 2 frames x 2 steps x 2 branches
    assert worker.renderer.backbone.unet_evaluations == 2 + 2 + 8

"""StoryDiffusion as upstream makes its pictures (issue 24): identity noise from one batched draw, and FreeU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from storyadapter.errors import UserError
from storyadapter.rundir import guard, manifest
from storyadapter.story.parse import load_story

from .conftest import write_story
from .test_csa import TOM_LISA, config, worker_for

N_FRAMES = len(TOM_LISA) - 3


@pytest.fixture()
def story_path(tmp_path) -> Path:
    return write_story(tmp_path / "tom_lisa.txt", TOM_LISA)


def identity_noise(worker, character: str, monkeypatch) -> torch.Tensor:
    """The starting noise of `character`'s write batch, as the worker hands it to the backbone."""
    seen = []
    backbone = worker.renderer.backbone
    real = backbone.initial_latents
    monkeypatch.setattr(backbone, "initial_latents", lambda noise: seen.append(noise.clone()) or real(noise))
    worker.begin_iteration(0, None, 0.0)
    worker._identity(worker.spec.consistent.owned(character))
    monkeypatch.undo()
    (noise,) = seen
    return noise


# --- identity noise ----------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["storydiffusion", "hybrid"])
def test_identity_noise_is_one_batched_draw_from_one_generator_as_upstream(story_path, tmp_path, tiny_cache, method,
                                                                          monkeypatch):
    """Upstream: pipe(id_prompts, generator=torch.Generator().manual_seed(seed)), whose latents diffusers draws as
    randn((id_length, 4, h/8, w/8), generator): identity frame i starts from slice i, the same for every character."""
    worker = worker_for(story_path, tmp_path / "out", tiny_cache, method, "method.id_length=3", "render.seed=7")
    upstream = torch.randn((3, 4, 8, 8), generator=torch.Generator("cpu").manual_seed(7), dtype=torch.float32)
    for character in ("Tom", "Lisa"):  # Tom: 3 story frames; Lisa: 1 story frame + 2 synthesized
        noise = identity_noise(worker, character, monkeypatch)
        assert torch.equal(noise, upstream), character
    assert not torch.equal(upstream[0], upstream[1])  # each identity frame its own noise


def test_identity_noise_under_per_frame_is_each_frames_own(story_path, tmp_path, tiny_cache, monkeypatch):
    from storyadapter.story import schedule
    from storyadapter.worker.renderer import initial_noise

    worker = worker_for(story_path, tmp_path / "out", tiny_cache, "storydiffusion", "method.id_length=2",
                        "render.seed=7", "render.seed_policy=per_frame")
    tom = worker.spec.consistent.owned("Tom")  # identity frames: story frames 0 and 4
    noise = identity_noise(worker, "Tom", monkeypatch)
    expected = torch.cat([initial_noise(schedule.frame_seed(7, "per_frame", f), (1, 4, 8, 8)) for f in (0, 4)])
    assert tom.batch_seed is None and torch.equal(noise, expected)


def test_read_frames_keep_the_shared_seed(story_path, tmp_path, tiny_cache, monkeypatch):
    """Upstream seeds a new generator with the seed for every read frame: each starts from randn((1, ...))."""
    worker = worker_for(story_path, tmp_path / "out", tiny_cache, "storydiffusion", "render.seed=7")
    seen = []
    backbone = worker.renderer.backbone
    real = backbone.initial_latents
    worker.begin_iteration(0, None, 0.0)
    for name in ("Tom", "Lisa"):
        worker._identity(worker.spec.consistent.owned(name))  # banks first: only the read's noise is recorded
    monkeypatch.setattr(backbone, "initial_latents", lambda noise: seen.append(noise.clone()) or real(noise))
    worker.render_batch(0, [3, 2])  # the [NC] frame and the frame with both
    single = torch.randn((1, 4, 8, 8), generator=torch.Generator("cpu").manual_seed(7), dtype=torch.float32)
    assert torch.equal(seen[0], torch.cat([single, single]))


def test_csa_frames_are_the_same_on_one_and_two_workers(story_path, tiny_cache, tmp_path):
    import ray
    from storyadapter.launch import compose_config
    from storyadapter.render_story import render_story

    def render(workers: int) -> Path:
        out = tmp_path / f"w{workers}"
        cfg = compose_config([
            f"story.path={story_path}", "model=tiny", f"model.cache_dir={tiny_cache}", "render=tiny",
            "render.steps=2", "render.batch_size=2", "method=storydiffusion", "method.id_length=3",
            f"cluster.workers={workers}", "outputs.enabled=false", f"output_dir={out}"])
        return render_story(cfg, out)

    ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False)
    try:
        one, two = render(1), render(2)
    finally:
        ray.shutdown()
    d1, d2 = one / manifest.iteration_dirname(0), two / manifest.iteration_dirname(0)
    for f in range(N_FRAMES):
        name = manifest.frame_filename(f)
        assert np.array_equal(np.asarray(Image.open(d1 / name)), np.asarray(Image.open(d2 / name))), f"frame {f}"
    np.testing.assert_array_equal(manifest.read_bank(one, 0), manifest.read_bank(two, 0))


# --- the resume fingerprint --------------------------------------------------------------------------


def test_the_identity_noise_marker_is_in_csa_fingerprints_only(story_path, tmp_path, tiny_cache):
    story = load_story(story_path)
    fp = {m: guard.fingerprint(config(story_path, tmp_path, tiny_cache, m), story) for m in
          ("storydiffusion", "hybrid", "story_adapter")}
    assert fp["storydiffusion"]["method"]["identity_noise"] == guard.IDENTITY_NOISE
    assert fp["hybrid"]["method"]["identity_noise"] == guard.IDENTITY_NOISE
    assert "method" not in fp["story_adapter"]  # story_adapter's fingerprint is as before
    per_frame = guard.fingerprint(config(story_path, tmp_path, tiny_cache, "hybrid", "render.seed_policy=per_frame"), story)
    assert "identity_noise" not in per_frame["method"]  # per_frame's identity noise did not change


def test_a_csa_render_from_before_the_batched_identity_noise_is_refused_on_resume(story_path, tmp_path, tiny_cache):
    out = tmp_path / "out"
    cfg = config(story_path, out, tiny_cache, "storydiffusion")
    story = load_story(story_path)
    guard.write_config(out, cfg, story, 0, 0)
    saved = yaml.safe_load((out / guard.CONFIG_FILE).read_text())
    del saved["fingerprint"]["method"]["identity_noise"]  # as a render made before this change wrote it
    (out / guard.CONFIG_FILE).write_text(yaml.safe_dump(saved))
    with pytest.raises(UserError, match="resume=true refused: .*method.identity_noise"):
        guard.check(out, cfg, story, resume=True, iterations=0)

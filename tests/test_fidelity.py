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

from .helpers.csa import config, worker_for
from .helpers.stories import TOM_LISA, write_story

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


# --- FreeU ------------------------------------------------------------------------------------------


def test_freeu_is_diffusers_enable_freeu_with_upstreams_factors(tiny_source):
    """The backbone's FreeU renders exactly as diffusers' pipeline after upstream's
    pipe.enable_freeu(s1=0.6, s2=0.4, b1=1.1, b2=1.2), from the same noise."""
    from diffusers import DDIMScheduler, StableDiffusionXLPipeline

    from storyadapter.methods import FreeUSettings
    from storyadapter.models.loading import load_backbone
    from storyadapter.worker import torch_settings
    from storyadapter.worker.renderer import RenderSettings, StoryRenderer, initial_noise

    prompt = "a young explorer with a green scarf reads a map"
    with torch_settings.reproducible(threads=1):  # as workers render: batched arithmetic depends on the threads
        renderer = StoryRenderer(load_backbone(tiny_source, torch.device("cpu"), torch.float32),
                                 RenderSettings(steps=2, height=64, width=64, guidance_scale=7.5))
        renderer.set_references(None, 0.0)
        text = renderer.encode_text(prompt, "")
        off = np.asarray(renderer.render([text], [11])[0])
        renderer.backbone.set_freeu(FreeUSettings())  # the defaults: upstream's factors
        ours = np.asarray(renderer.render([text], [11])[0])
        renderer.backbone.set_freeu(None)
        off_again = np.asarray(renderer.render([text], [11])[0])

        plain = StableDiffusionXLPipeline.from_pretrained(tiny_source.pretrained)
        plain.scheduler = DDIMScheduler.from_config(plain.scheduler.config)
        plain.set_progress_bar_config(disable=True)
        plain.enable_freeu(s1=0.6, s2=0.4, b1=1.1, b2=1.2)
        theirs = np.asarray(plain(prompt=prompt, num_inference_steps=2, guidance_scale=7.5, height=64, width=64,
                                  latents=initial_noise(11, (1, 4, 8, 8))).images[0])
    assert np.array_equal(ours, theirs)
    assert not np.array_equal(ours, off)  # FreeU changed the picture: the comparison means something
    assert np.array_equal(off, off_again)


def freeu_of(worker, iteration: int) -> tuple:
    bank = None if iteration == 0 else np.zeros((N_FRAMES, worker.embedding_dim), np.float32)
    worker.begin_iteration(iteration, bank, 0.0 if iteration == 0 else 0.4)
    block = worker.renderer.backbone.pipe.unet.up_blocks[0]
    return tuple(getattr(block, k, None) for k in ("s1", "s2", "b1", "b2"))


def test_freeu_follows_each_methods_default(story_path, tmp_path, tiny_cache):
    upstream, off = (0.6, 0.4, 1.1, 1.2), (None,) * 4
    sd = worker_for(story_path, tmp_path / "sd", tiny_cache, "storydiffusion")
    assert freeu_of(sd, 0) == upstream
    hybrid = worker_for(story_path, tmp_path / "h", tiny_cache, "hybrid")
    assert [freeu_of(hybrid, it) for it in (0, 1, 2)] == [upstream, off, off]  # the CSA pass only
    plain = worker_for(story_path, tmp_path / "sa", tiny_cache, "story_adapter")
    assert plain.spec.freeu is None and freeu_of(plain, 1) == off
    chosen = worker_for(story_path, tmp_path / "sa2", tiny_cache, "story_adapter", "method.freeu.enabled=true",
                        "method.freeu.b2=1.4")
    assert [freeu_of(chosen, it) for it in (0, 1)] == [(0.6, 0.4, 1.1, 1.4)] * 2  # every iteration
    no_freeu = worker_for(story_path, tmp_path / "sd2", tiny_cache, "storydiffusion", "method.freeu.enabled=false")
    assert no_freeu.spec.freeu is None and freeu_of(no_freeu, 0) == off


def test_freeu_is_in_the_fingerprint_only_when_on(story_path, tmp_path, tiny_cache):
    story = load_story(story_path)

    def fp(method, *extra):
        return guard.fingerprint(config(story_path, tmp_path, tiny_cache, method, *extra), story)

    upstream = {"s1": 0.6, "s2": 0.4, "b1": 1.1, "b2": 1.2}
    assert fp("storydiffusion")["method"]["freeu"] == upstream
    assert fp("hybrid", "method.freeu.b1=1.3")["method"]["freeu"] == {**upstream, "b1": 1.3}
    assert "freeu" not in fp("storydiffusion", "method.freeu.enabled=false")["method"]
    assert "method" not in fp("story_adapter")  # off: story_adapter's fingerprint is as before
    assert fp("story_adapter", "method.freeu.enabled=true")["method"] == {"freeu": upstream}


def test_a_render_with_freeu_is_not_resumed_without_it(story_path, tmp_path, tiny_cache):
    out = tmp_path / "out"
    story = load_story(story_path)
    guard.write_config(out, config(story_path, out, tiny_cache, "storydiffusion"), story, 0, 0)
    without = config(story_path, out, tiny_cache, "storydiffusion", "method.freeu.enabled=false")
    with pytest.raises(UserError, match=r"resume=true refused: .*method\.freeu"):
        guard.check(out, without, story, resume=True, iterations=0)
    guard.check(out, config(story_path, out, tiny_cache, "storydiffusion"), story, resume=True, iterations=0)


def test_a_freeu_factor_of_zero_is_one_line(story_path, tmp_path, tiny_cache):
    """diffusers reads a factor of 0 as FreeU off, silently ignoring the other three."""
    from storyadapter.spec import ConfigError, from_config

    with pytest.raises(ConfigError, match=r"^method\.freeu\.s2=0\.0: must be positive$"):
        from_config(config(story_path, tmp_path, tiny_cache, "storydiffusion", "method.freeu.s2=0"))

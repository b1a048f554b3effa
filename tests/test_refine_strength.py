"""render.refine_strength (SDEdit warm starts): a refinement starts from the previous iteration's frame, noised to
the strength as diffusers' img2img does, and runs only the last int(strength x steps) steps of its pass. The UNet
evaluations equal the plan; the noise depends on (seed, frame, iteration) alone, so 1 and 2 workers and a killed
and resumed driver give the same bytes (with a draft VAE too, render.draft.vae); bad strengths are one line; the
key joins the fingerprint only when set."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from storyadapter import passes
from storyadapter import spec as specs
from storyadapter.errors import UserError
from storyadapter.rundir import manifest

from .helpers.renders import assert_same_bytes
from .helpers.stories import write_story

FRAMES = ["a fox in the snow", "a fox by a river"]


def render_in_process(tiny_source, out: Path, settings, iterations: int = 2):
    """driver.run_iterations with one in-process worker; returns the worker."""
    from storyadapter.engine import driver
    from storyadapter.story.parse import load_story
    from storyadapter.worker.frame_worker import FramePrompt, FrameWorker, WorkerSpec

    story = load_story(write_story(out.parent / f"{out.name}.txt", FRAMES))
    worker = FrameWorker(WorkerSpec(source=tiny_source, settings=settings, out_dir=str(out), seed=1,
                                    seed_policy="shared", threads=1,
                                    prompts=tuple(FramePrompt(*story.styled(f)) for f in story.frames)))
    plan = driver.RunPlan(story=story, out_dir=out, iterations=iterations, batch_size=1, scale_start=0.3,
                          scale_end=0.5, seed=1, seed_policy="shared", drafts=passes.drafting(settings),
                          all_drafts=settings.draft.final)
    driver.run_iterations(plan, driver.LocalExecutor(worker))
    return worker


def frame(out: Path, iteration: int, f: int) -> np.ndarray:
    return np.asarray(Image.open(out / manifest.iteration_dirname(iteration) / manifest.frame_filename(f)), dtype=np.int16)


def test_refinements_run_only_the_last_steps_of_their_own_pass(tiny_source, tmp_path):
    # drafts: 4 steps without guidance at 32 px; the last pass: 5 guided steps at 64 px; strength 0.5
    settings = specs.RenderSpec(steps=5, height=64, width=64, reference_size=32, refine_strength=0.5,
                                draft=specs.DraftSpec(steps=4, scheduler="euler_trailing", guidance_scale=0.0,
                                                      height=32, width=32))
    worker = render_in_process(tiny_source, tmp_path / "out", settings)
    # iteration 0: 2 frames x 4 steps x 1 branch (from noise); 1 (draft): 2 x int(0.5 x 4) x 1; 2 (last): 2 x int(0.5 x 5) x 2
    assert worker.renderer.backbone.unet_evaluations == 8 + 4 + 8 == passes.unet_evaluations(settings, 2, 2)
    cold = render_in_process(tiny_source, tmp_path / "cold", dataclasses.replace(settings, refine_strength=None))
    assert cold.renderer.backbone.unet_evaluations == 8 + 8 + 20
    assert np.array_equal(frame(tmp_path / "out", 0, 0), frame(tmp_path / "cold", 0, 0))  # iteration 0 starts from noise
    assert not np.array_equal(frame(tmp_path / "out", 1, 0), frame(tmp_path / "cold", 1, 0))  # a refinement does not


def test_an_edit_s_worker_starts_from_the_render_s_own_frames(tiny_source, tmp_path):
    """edit=true renders into a staging folder (WorkerSpec.out_dir) and reads warm starts from the render
    (frames_dir): frame 0 of the last iteration, rendered again there, has the render's bytes."""
    from storyadapter.engine import driver
    from storyadapter.worker.frame_worker import FramePrompt, FrameWorker, WorkerSpec

    settings = specs.RenderSpec(steps=4, height=64, width=64, reference_size=32, refine_strength=0.5)
    out = tmp_path / "out"
    worker = render_in_process(tiny_source, out, settings)
    staging = FrameWorker(dataclasses.replace(worker.spec, out_dir=str(tmp_path / "staging"), frames_dir=str(out)))
    plan = driver.RunPlan(story=None, out_dir=out, iterations=2, batch_size=1, scale_start=0.3, scale_end=0.5, seed=1,
                          seed_policy="shared")
    staging.begin_iteration(2, manifest.read_bank(out, 1), plan.scale(2))
    again = staging.render_batch(2, [0]).frames[0].image_path
    rel = Path(manifest.iteration_dirname(2)) / manifest.frame_filename(0)
    assert (tmp_path / "staging" / again).read_bytes() == (out / rel).read_bytes()


def test_a_warm_start_is_diffusers_img2img_arithmetic(tiny_source):
    """The backbone's encode and noising equal StableDiffusionXLImg2ImgPipeline.prepare_latents and get_timesteps
    with the same generators (DDIM, strength 0.6 of 5 steps: the last 3 timesteps)."""
    from diffusers import StableDiffusionXLImg2ImgPipeline

    from storyadapter.models.loading import load_backbone
    from storyadapter.worker.renderer import WarmStart

    backbone = load_backbone(tiny_source, torch.device("cpu"), torch.float32)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    warm = WarmStart([image], [123])
    timesteps = backbone.warm_timesteps(5, 0.6, 64, 64)
    latents = backbone.noised_start(backbone.encode_latents([image], 64, 64, warm.encode_generators()),
                                    warm.noise(backbone.latent_shape(64, 64)), timesteps[0])
    pipe = StableDiffusionXLImg2ImgPipeline(**{k: v for k, v in backbone.pipe.components.items()})
    expected_steps, n = pipe.get_timesteps(5, 0.6, "cpu")
    assert n == 3 and torch.equal(timesteps, expected_steps)
    pixels = pipe.image_processor.preprocess([image], height=64, width=64)
    # one generator for the encode and one for the noise: diffusers draws both from its generator in turn
    clean = pipe.prepare_latents(pixels, expected_steps[:1], 1, 1, torch.float32, "cpu",
                                 warm.encode_generators(), add_noise=False)
    noise = warm.noise(backbone.latent_shape(64, 64))
    assert torch.equal(latents, pipe.scheduler.add_noise(clean, noise, expected_steps[:1]))


@pytest.mark.parametrize("value, message", [
    ("0", "render.refine_strength=0.0: must be in (0, 1]"),
    ("1.5", "render.refine_strength=1.5: must be in (0, 1]"),
    ("-0.2", "render.refine_strength=-0.2: must be in (0, 1]"),
    ("0.1", "render.refine_strength=0.1: leaves no denoising step of render.draft.steps=4"),
])
def test_a_bad_refine_strength_is_one_line_before_anything_starts(value, message):
    from storyadapter.launch import compose_config

    with pytest.raises(UserError) as err:
        compose_config(["story.path=s.txt", "output_dir=o", "model=tiny", "render=swift",
                        f"render.refine_strength={value}"])
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_refine_strength_is_in_the_fingerprint_only_when_set(tmp_path):
    from storyadapter.launch import compose_config
    from storyadapter.rundir.guard import fingerprint
    from storyadapter.story.parse import load_story

    story = load_story(write_story(tmp_path / "s.txt", FRAMES))
    base = ["story.path=s.txt", "output_dir=o", "model=tiny"]
    for preset in ([], ["render=swift"]):
        assert "refine_strength" not in fingerprint(compose_config(base + preset), story)["render"]
    assert fingerprint(compose_config(base + ["render.refine_strength=0.6"]), story)["render"]["refine_strength"] == 0.6


# --- the engine: 1 and 2 workers, a driver killed inside a warm-started refinement -----------------------------

def engine_overrides(story_file: Path, tiny_cache: Path, out: Path, workers: int, *extra: str) -> list[str]:
    from storyadapter.models import tiny

    draft_vae = tiny.build_draft_vae(tiny.draft_vae_dir(tiny_cache))
    return [f"render.draft.vae={draft_vae}", f"story.path={story_file}", "model=tiny", f"model.cache_dir={tiny_cache}", "render=swift",
            "render.iterations=2", "render.steps=4", "render.height=64", "render.width=64", "render.draft.steps=2",
            "render.draft.scheduler=lcm", "render.draft.height=32", "render.draft.width=32",
            "render.refine_strength=0.5", "render.batch_size=1", f"cluster.workers={workers}",
            "outputs.enabled=false", f"output_dir={out}", *extra]


@pytest.fixture(scope="module")
def engine_story(tmp_path_factory) -> Path:
    return write_story(tmp_path_factory.mktemp("refine") / "s.txt", [f"a kite over a hill, scene {i}" for i in range(4)])


def engine_render(story_file, tiny_cache, out, workers, *extra) -> Path:
    from storyadapter.launch import compose_config
    from storyadapter.render_story import render_story

    return render_story(compose_config(engine_overrides(story_file, tiny_cache, out, workers, *extra)), out)


@pytest.mark.slow
def test_warm_starts_give_the_same_bytes_on_1_or_2_workers_and_after_a_killed_driver(
        engine_story, tiny_cache, tmp_path, request):
    """Killed inside draft refinement 1 on 1 worker, resumed on 2: the rest of iteration 1 and the whole last pass
    are warm-started on 2 workers, and every byte equals a render on 1 worker. The drafts decode with a draft VAE:
    its frames are the ones the warm starts read."""
    from .helpers import engine_hooks

    killed = tmp_path / "killed" / "out"
    killed.parent.mkdir()
    engine_hooks.kill_driver_at("journal:1:1", engine_overrides(engine_story, tiny_cache, killed, 1), killed.parent)
    assert manifest.finished_iterations(killed) == [0]
    request.getfixturevalue("local_ray")  # the in-process Ray starts only after the kill
    one = engine_render(engine_story, tiny_cache, tmp_path / "one", 1)
    engine_render(engine_story, tiny_cache, killed, 2, "resume=true")
    assert_same_bytes(one, killed, iterations=3, frames=4)

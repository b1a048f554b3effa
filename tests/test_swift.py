"""Fast stories (render=swift): draft iterations with their own steps, scheduler, guidance and size, then the
last pass at render.*; the bad draft settings refused in one line; the resume fingerprint; 1 and 2 workers and
a killed driver giving the same bytes."""

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

FRAMES = ["a fox in the snow", "a fox by a river", "a fox asleep under a tree"]


def draft(**kw):
    return specs.DraftSpec(**kw)


def render_in_process(tiny_source, out: Path, settings, batch_size: int = 1, iterations: int = 2, frames=FRAMES):
    """driver.run_iterations with one in-process worker; returns the worker."""
    from storyadapter.engine import driver
    from storyadapter.story.parse import load_story
    from storyadapter.worker.frame_worker import FramePrompt, FrameWorker, WorkerSpec

    story = load_story(write_story(out.parent / f"{out.name}.txt", frames))
    worker = FrameWorker(WorkerSpec(source=tiny_source, settings=settings, out_dir=str(out), seed=1,
                                    seed_policy="per_frame", threads=1,
                                    prompts=tuple(FramePrompt(*story.styled(f)) for f in story.frames)))
    plan = driver.RunPlan(story=story, out_dir=out, iterations=iterations, batch_size=batch_size, scale_start=0.3,
                          scale_end=0.5, seed=1, seed_policy="per_frame", drafts=passes.drafting(settings),
                          all_drafts=settings.draft.final)
    driver.run_iterations(plan, driver.LocalExecutor(worker))
    return worker


def sizes(out: Path, iterations: int = 2) -> list[tuple[int, int]]:
    return [Image.open(out / manifest.iteration_dirname(it) / manifest.frame_filename(0)).size for it in range(iterations + 1)]


@pytest.mark.parametrize("scheduler", ["euler_trailing", "lcm"])
def test_drafts_render_at_their_own_settings_and_the_last_pass_at_render_s(tiny_source, tmp_path, scheduler):
    settings = specs.RenderSpec(steps=2, height=64, width=64, reference_size=32,
                                draft=draft(steps=3, scheduler=scheduler, guidance_scale=1.0, height=32, width=48))
    worker = render_in_process(tiny_source, tmp_path / "out", settings)
    assert sizes(tmp_path / "out") == [(48, 32), (48, 32), (64, 64)]
    # drafts: 2 iterations x 3 frames x 3 steps x 1 branch; the last: 3 frames x 2 steps x 2 branches
    assert worker.renderer.backbone.unet_evaluations == 2 * 3 * 3 + 3 * 2 * 2 == passes.unet_evaluations(settings, 3, 2)
    assert worker.renderer.backbone.pipe.scheduler is worker.renderer.backbone._schedulers["ddim"]  # back for the last pass


def test_all_drafts_renders_the_last_iteration_as_a_draft_too(tiny_source, tmp_path):
    settings = specs.RenderSpec(steps=2, height=64, width=64, reference_size=32,
                                draft=draft(steps=1, guidance_scale=0.0, height=32, width=32, final=True))
    worker = render_in_process(tiny_source, tmp_path / "out", settings)
    assert sizes(tmp_path / "out") == [(32, 32)] * 3
    assert worker.renderer.backbone.unet_evaluations == 3 * 3 * 1 * 1 == passes.unet_evaluations(settings, 3, 2)


def test_without_draft_settings_every_iteration_is_the_paper_s(tiny_source, tmp_path):
    settings = specs.RenderSpec(steps=2, height=64, width=64, reference_size=32)
    worker = render_in_process(tiny_source, tmp_path / "out", settings)
    assert not passes.drafting(settings) and sizes(tmp_path / "out") == [(64, 64)] * 3
    assert worker.renderer.backbone.unet_evaluations == 3 * 3 * 2 * 2


def test_a_stochastic_draft_scheduler_gives_the_same_pixels_in_any_batch(tiny_source, tmp_path):
    """LCM adds noise between steps: it comes from each frame's own generator, never from the batch's."""
    settings = specs.RenderSpec(steps=2, height=64, width=64, reference_size=32,
                                draft=draft(steps=3, scheduler="lcm", guidance_scale=0.0))
    render_in_process(tiny_source, tmp_path / "one", settings, batch_size=1)
    render_in_process(tiny_source, tmp_path / "two", settings, batch_size=3)
    for it in range(3):
        for f in range(3):
            rel = Path(manifest.iteration_dirname(it)) / manifest.frame_filename(f)
            a, b = (np.asarray(Image.open(tmp_path / d / rel), dtype=np.int16) for d in ("one", "two"))
            # batched arithmetic may differ in the last bit (tests/test_engine.py), never by the noise
            assert np.abs(a - b).max() <= 2, rel


@pytest.mark.parametrize("override, message", [
    ("render.draft.steps=0", "render.draft.steps=0: must be at least 1"),
    ("render.draft.scheduler=dpm", "render.draft.scheduler=dpm: expected one of ddim, euler_trailing, lcm, tcd"),
    ("render.draft.height=100", "render.draft.height=100: must be a positive multiple of 8"),
    ("render.draft.width=0", "render.draft.width=0: must be a positive multiple of 8"),
    ("render.draft.guidance_scale=-1", "render.draft.guidance_scale=-1.0: must be 0 or more"),
    ("render.scheduler=unipc", "render.scheduler=unipc: expected one of ddim, euler_trailing, lcm, tcd"),
])
def test_bad_draft_settings_are_one_line_before_anything_starts(override, message):
    from storyadapter.launch import compose_config

    with pytest.raises(UserError) as err:
        compose_config(["story.path=s.txt", "output_dir=o", "model=tiny", "render=swift", override])
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_draft_settings_are_in_the_fingerprint_only_when_set(tmp_path):
    from storyadapter.launch import compose_config
    from storyadapter.rundir.guard import fingerprint
    from storyadapter.story.parse import load_story

    story = load_story(write_story(tmp_path / "s.txt", FRAMES))
    base = ["story.path=s.txt", "output_dir=o", "model=tiny"]
    paper = fingerprint(compose_config(base), story)["render"]
    assert "draft" not in paper and "scheduler" not in paper  # renders made before drafts still resume
    swift = fingerprint(compose_config(base + ["render=swift"]), story)["render"]
    assert swift["draft"]["steps"] == 4 and swift["draft"]["scheduler"] == "euler_trailing"
    final = fingerprint(compose_config(base + ["render=swift", "render.draft.final=true"]), story)["render"]
    assert final["draft"]["final"] is True


def test_render_swift_is_the_paper_s_last_pass_after_guidance_free_drafts():
    from storyadapter.launch import compose_config

    run = specs.from_config(compose_config(["story.path=s.txt", "output_dir=o", "render=swift"]))
    paper = specs.from_config(compose_config(["story.path=s.txt", "output_dir=o", "render=paper"]))
    assert dataclasses.replace(run.render, draft=paper.render.draft) == paper.render  # the last pass is the paper's
    d = run.render.for_pass(True)
    assert (d.steps, d.scheduler, passes.branches(d)) == (4, "euler_trailing", 1)
    assert passes.unet_evaluations(run.render, 100, 10) <= passes.unet_evaluations(paper.render, 100, 10) / 5


# --- the engine: 1 and 2 workers, a driver killed in a draft iteration and in the last ---------------------

def engine_overrides(story_file: Path, tiny_cache: Path, out: Path, workers: int, *extra: str) -> list[str]:
    return [f"story.path={story_file}", "model=tiny", f"model.cache_dir={tiny_cache}", "render=swift",
            "render.iterations=2", "render.steps=2", "render.height=64", "render.width=64", "render.draft.steps=2",
            "render.draft.scheduler=lcm", "render.draft.height=32", "render.draft.width=32",
            "render.seed_policy=per_frame", "render.batch_size=2", f"cluster.workers={workers}",
            "outputs.enabled=false", f"output_dir={out}", *extra]


@pytest.fixture(scope="module")
def engine_story(tmp_path_factory) -> Path:
    return write_story(tmp_path_factory.mktemp("swift") / "s.txt", [f"a kite over a hill, scene {i}" for i in range(6)])


def engine_render(story_file, tiny_cache, out, workers, *extra) -> Path:
    from storyadapter.launch import compose_config
    from storyadapter.render_story import render_story

    return render_story(compose_config(engine_overrides(story_file, tiny_cache, out, workers, *extra)), out)


def kill_driver_at(story_file, tiny_cache, out: Path, point: str) -> None:
    from .helpers import engine_hooks

    engine_hooks.kill_driver_at(point, engine_overrides(story_file, tiny_cache, out, 1), out.parent)


@pytest.mark.slow
def test_swift_resumes_to_identical_bytes_from_a_draft_or_the_last_iteration_on_1_or_2_workers(
        engine_story, tiny_cache, tmp_path, request):
    killed = {}
    for point in ("journal:1:2", "journal:2:2"):  # inside draft iteration 1; inside the last, iteration 2
        out = tmp_path / point.replace(":", "_") / "out"
        out.parent.mkdir()
        kill_driver_at(engine_story, tiny_cache, out, point)
        assert int(point.split(":")[1]) not in manifest.finished_iterations(out)
        killed[point] = out
    request.getfixturevalue("local_ray")  # the in-process Ray starts only after the kills
    reference = engine_render(engine_story, tiny_cache, tmp_path / "one", 1)
    assert_same_bytes(reference, engine_render(engine_story, tiny_cache, tmp_path / "two", 2), iterations=3, frames=6)
    for out in killed.values():
        engine_render(engine_story, tiny_cache, out, 2, "resume=true")
        assert_same_bytes(reference, out, iterations=3, frames=6)



# --- the draft LoRA -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def draft_lora(tiny_source, tmp_path_factory) -> Path:
    import shutil

    from .helpers.lora import build_lora

    folder = tmp_path_factory.mktemp("lora") / "sdxl"
    shutil.copytree(tiny_source.pretrained, folder)
    return build_lora(folder)


def first_frame(worker, draft: bool) -> bytes:
    worker.begin_iteration(0, None, 0.0, draft=draft)
    result = worker.render_batch(0, [0])
    return (Path(worker.spec.out_dir) / result.frames[0].image_path).read_bytes()


def test_the_draft_lora_is_on_for_drafts_and_off_for_the_last_pass(tiny_source, draft_lora, tmp_path):
    from storyadapter.worker.frame_worker import FramePrompt, FrameWorker, WorkerSpec

    def worker(name, lora):
        settings = specs.RenderSpec(steps=2, height=64, width=64, reference_size=32, draft=draft(lora=lora))
        return FrameWorker(WorkerSpec(source=tiny_source, settings=settings, prompts=(FramePrompt("a fox", ""),),
                                      out_dir=str(tmp_path / name), seed=1, seed_policy="shared", threads=1))

    plain, with_lora = worker("plain", None), worker("lora", str(draft_lora))
    last = first_frame(with_lora, draft=False)
    assert last == first_frame(plain, draft=False)  # switched off: the plain model's bytes
    assert first_frame(with_lora, draft=True) != last  # on for a draft
    assert first_frame(with_lora, draft=False) == last  # and off again at the next boundary


def test_a_draft_lora_that_fits_nothing_is_one_line(tiny_source, tmp_path):
    from safetensors.torch import save_file

    from storyadapter.models import lora

    nomatch = tmp_path / "nomatch.safetensors"
    save_file({"unet.no_such_block.to_q.lora_A.weight": torch.zeros(4, 8),
               "unet.no_such_block.to_q.lora_B.weight": torch.zeros(8, 4)}, str(nomatch))
    not_lora = tmp_path / "not-lora.safetensors"
    save_file({"weight": torch.zeros(2)}, str(not_lora))
    with pytest.raises(UserError) as err:  # the launcher's check, before any worker
        lora.check(str(not_lora), 0, key="render.draft.lora")
    assert str(err.value).startswith(f"render.draft.lora={not_lora}: holds no LoRA weights")
    from storyadapter.models.loading import load_pipeline

    pipe = load_pipeline(tiny_source, torch.device("cpu"), torch.float32)
    with pytest.raises(UserError) as err:  # the worker's, at load
        lora.load_draft(pipe, str(nomatch), 1.0)
    assert str(err.value).startswith(f"render.draft.lora={nomatch}: ") and "\n" not in str(err.value)


def test_the_draft_lora_is_in_the_fingerprint_by_content(draft_lora, tmp_path):
    import shutil

    from storyadapter.launch import compose_config
    from storyadapter.rundir.guard import fingerprint
    from storyadapter.story.parse import load_story

    story = load_story(write_story(tmp_path / "s.txt", FRAMES))
    moved = tmp_path / "moved.safetensors"
    shutil.copy(draft_lora, moved)
    base = ["story.path=s.txt", "output_dir=o", "model=tiny", "render=swift"]
    a, b = (fingerprint(compose_config(base + [f"render.draft.lora={p}"]), story)["render"]["draft"] for p in (draft_lora, moved))
    assert a == b and len(a["lora"]["sha256"]) == 64


# --- the whole render's ETA ----------------------------------------------------------------------------------------

def test_the_render_eta_counts_each_kind_at_its_own_measured_rate(tmp_path):
    import json
    import logging

    from storyadapter.engine.eta import RenderEta
    from storyadapter.rundir.eta_file import ETA_FILE

    # render=swift-like: 3 drafts at 4 evaluations per frame, then a last pass at 100
    eta = RenderEta(tmp_path, frames=10, kinds=[True, True, True, False], costs=(4, 100))
    assert eta.remaining_s() is None  # nothing measured yet
    eta.finished(True, 10, 20.0)  # 2 s per draft frame
    assert eta.remaining_s() == 2 * 10 * 2.0 + 10 * 2.0 * 100 / 4  # the last pass estimated from the drafts
    eta.finished(True, 10, 20.0)
    eta.finished(True, 10, 20.0)
    eta.report(logging.getLogger("test"))
    assert json.loads((tmp_path / ETA_FILE).read_text())["eta_s"] == 500.0
    eta.finished(False, 10, 300.0)
    eta.report(logging.getLogger("test"))
    assert not (tmp_path / ETA_FILE).exists()  # done


def test_the_driver_writes_the_eta_between_iterations(tiny_source, tmp_path, caplog):
    import logging

    settings = specs.RenderSpec(steps=2, height=64, width=64, reference_size=32, draft=draft(steps=1, guidance_scale=1.0))
    with caplog.at_level(logging.INFO, logger="storyadapter.engine.driver"):
        render_in_process(tiny_source, tmp_path / "out", settings)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("render ETA")]
    assert len(lines) == 2 and "2 iterations left" in lines[0] and "last pass" in lines[0] and "(estimated)" in lines[0]


def test_extending_a_finished_swift_render_keeps_its_iterations_and_drafts_the_new_middle_ones(tiny_source, tmp_path):
    settings = specs.RenderSpec(steps=2, height=64, width=64, reference_size=32,
                                draft=draft(steps=1, guidance_scale=1.0, height=32, width=32))
    out = tmp_path / "out"
    render_in_process(tiny_source, out, settings, iterations=1)
    kept = {p: p.stat().st_mtime_ns for p in out.glob("iter_0[01]/*.png")}
    worker = render_in_process(tiny_source, out, settings, iterations=3)
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # nothing rendered again
    assert sizes(out, 3) == [(32, 32), (64, 64), (32, 32), (64, 64)]  # the old last pass stays; 2 is a draft now
    assert worker.renderer.backbone.unet_evaluations == 3 * 1 * 1 + 3 * 2 * 2

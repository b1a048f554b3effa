"""render.draft.vae: an AutoencoderTiny (TAESDXL layout) decodes the draft iterations only, the model's VAE the
last pass; a bad one is refused in one line; its content is in the resume fingerprint only when set. (1 and 2
workers with it: tests/test_refine_strength.py's engine test renders with it.)"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from storyadapter import passes
from storyadapter import spec as specs
from storyadapter.errors import UserError

from .helpers.stories import write_story

FRAMES = ["a fox in the snow", "a fox by a river", "a fox asleep under a tree"]


@pytest.fixture(scope="module")
def draft_vae(tiny_cache) -> Path:
    from storyadapter.models import tiny

    return tiny.build_draft_vae(tiny.draft_vae_dir(tiny_cache))


def test_drafts_are_decoded_by_the_draft_vae_and_the_last_pass_by_the_model_s(tiny_source, draft_vae, tmp_path):
    from storyadapter.engine import driver
    from storyadapter.story.parse import load_story
    from storyadapter.worker.frame_worker import FramePrompt, FrameWorker, WorkerSpec

    def render(name, vae):
        settings = specs.RenderSpec(steps=2, height=64, width=64, reference_size=32,
                                    draft=specs.DraftSpec(steps=1, guidance_scale=1.0, vae=vae))
        story = load_story(write_story(tmp_path / f"{name}.txt", FRAMES))
        worker = FrameWorker(WorkerSpec(source=tiny_source, settings=settings, out_dir=str(tmp_path / name), seed=1,
                                        seed_policy="per_frame", threads=1,
                                        prompts=tuple(FramePrompt(*story.styled(f)) for f in story.frames)))
        plan = driver.RunPlan(story=story, out_dir=tmp_path / name, iterations=2, batch_size=1, scale_start=0.3,
                              scale_end=0.5, seed=1, seed_policy="per_frame", drafts=passes.drafting(settings))
        driver.run_iterations(plan, driver.LocalExecutor(worker))
        return worker.renderer.backbone

    tiny_vae, full = render("tiny", str(draft_vae)), render("full", None)
    assert tiny_vae.decodes == {"draft_vae": 2 * 3, "vae": 3}  # iterations 0 and 1 are drafts, 2 the last pass
    assert full.decodes == {"draft_vae": 0, "vae": 3 * 3}
    frame = "iter_00/frame_0000.png"
    assert (tmp_path / "tiny" / frame).read_bytes() != (tmp_path / "full" / frame).read_bytes()


def test_a_bad_draft_vae_is_one_line(tiny_source, tmp_path):
    from safetensors.torch import save_file

    from storyadapter.models import vae

    not_tiny = tmp_path / "weights.safetensors"
    save_file({"decoder.conv_out.weight": torch.zeros(3, 8, 3, 3)}, str(not_tiny))
    kl_folder = Path(tiny_source.pretrained) / "vae"  # the tiny model's AutoencoderKL
    for ref, message in [(tmp_path / "missing", "no such folder with a config.json"),
                         (kl_folder, "config.json says AutoencoderKL, not AutoencoderTiny"),
                         (not_tiny, "holds no AutoencoderTiny decoder weights")]:
        with pytest.raises(UserError) as err:
            vae.check_tiny(str(ref))
        assert str(err.value).startswith(f"render.draft.vae={ref}: {message}") and "\n" not in str(err.value)


def test_the_draft_vae_is_in_the_fingerprint_by_content_only_when_set(draft_vae, tmp_path):
    from storyadapter.launch import compose_config
    from storyadapter.rundir.guard import fingerprint
    from storyadapter.story.parse import load_story

    story = load_story(write_story(tmp_path / "s.txt", FRAMES))
    base = ["story.path=s.txt", "output_dir=o", "model=tiny", "render=swift"]
    assert "vae" not in fingerprint(compose_config(base), story)["render"]["draft"]  # swift renders made before it resume
    moved = tmp_path / "moved"
    shutil.copytree(draft_vae, moved)
    a, b = (fingerprint(compose_config(base + [f"render.draft.vae={p}"]), story)["render"]["draft"]["vae"]
            for p in (draft_vae, moved))
    assert a == b and len(a["sha256"]) == 64
    (moved / "config.json").write_text((moved / "config.json").read_text().replace("relu", "silu"))
    assert fingerprint(compose_config(base + [f"render.draft.vae={moved}"]), story)["render"]["draft"]["vae"] != a

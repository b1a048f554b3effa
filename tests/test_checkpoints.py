"""The weights users bring: single-file SDXL checkpoints, LoRAs and VAEs, on tiny weights built here.

Loaded weights are judged by the pixels they render (tests/helpers/pixels.py), against the tiny model's own folder.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from storyadapter.errors import UserError
from storyadapter.models.lora import LoraWeights

from .helpers.launcher import launch, render
from .helpers.pixels import render_kernels, render_pixels
from .helpers.single_file_export import config_only, export
from .helpers.stories import write_story
from .helpers.lora import build_lora


@pytest.fixture(scope="module")
def tiny_parts(tiny_source, tmp_path_factory):
    """The tiny model as a community checkpoint: one original-layout file, plus its configs without weights."""
    d = tmp_path_factory.mktemp("single-file")
    checkpoint = export(Path(tiny_source.pretrained), d / "tiny-sdxl.safetensors")
    return checkpoint, config_only(Path(tiny_source.pretrained), d / "configs")


@pytest.fixture(scope="module")
def single_source(tiny_source, tiny_parts):
    checkpoint, configs = tiny_parts
    return replace(tiny_source, pretrained=str(checkpoint), single_file_config=str(configs))


@pytest.fixture(scope="module")
def tiny_lora(tiny_source, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("lora") / "sdxl"
    shutil.copytree(tiny_source.pretrained, folder)
    return build_lora(folder)


# ------------------------------------------------------------------ single-file checkpoints


def test_single_file_checkpoint_renders_the_pixels_of_the_folder_it_came_from(tiny_source, single_source):
    assert np.array_equal(render_pixels(single_source), render_pixels(tiny_source))


def test_packaged_sdxl_configs_describe_sdxl_base(tmp_path):
    """The offline default for model.single_file_config builds SDXL base's UNet (2.57 B parameters) and tokenizers."""
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTokenizer

    from storyadapter.models import sdxl_config

    folder = sdxl_config.build(tmp_path)
    assert sdxl_config.build(tmp_path) == folder  # built once
    assert StableDiffusionXLPipeline.load_config(str(folder))["unet"] == ["diffusers", "UNet2DConditionModel"]
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(str(folder / "unet")))
    assert sum(p.numel() for p in unet.parameters()) == 2_567_463_684
    assert CLIPTokenizer.from_pretrained(str(folder / "tokenizer_2")).pad_token == "!"
    assert CLIPTokenizer.from_pretrained(str(folder / "tokenizer"))("a cat").input_ids == [49406, 320, 2368, 49407]


def _one_line(info) -> str:
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def _rewrite(source: Path, target: Path, edit) -> Path:
    state = load_file(str(source))
    save_file(edit(state), str(target))
    return target


@pytest.mark.parametrize("case, needle", [
    ("missing", "no such file"),
    ("garbage", "not a readable .safetensors"),
    ("truncated", "not a readable .safetensors"),
    ("sd15", "1.x/2.x"),
    ("no_vae", "VAE"),
    ("unet_only", "text encoder"),
    ("sdxl_base_configs", "UNet input conv"),
])
def test_bad_checkpoint_is_one_line_from_the_driver_check(case, needle, single_source, tiny_parts, tmp_path):
    from storyadapter.models.loading import check_available

    checkpoint, _ = tiny_parts
    path = tmp_path / f"{case}.safetensors"
    source = replace(single_source, pretrained=str(path))
    if case == "garbage":
        path.write_bytes(b"this is not a checkpoint")
    elif case == "truncated":
        path.write_bytes(checkpoint.read_bytes()[:100_000])
    elif case == "sd15":
        _rewrite(checkpoint, path, lambda s: {k.replace("conditioner.embedders.0.", "cond_stage_model."): v for k, v in s.items()})
    elif case == "no_vae":
        _rewrite(checkpoint, path, lambda s: {k: v for k, v in s.items() if not k.startswith("first_stage_model.")})
    elif case == "unet_only":
        _rewrite(checkpoint, path, lambda s: {k: v for k, v in s.items() if k.startswith("model.diffusion_model.")})
    elif case == "sdxl_base_configs":  # the tiny file against SDXL base's real sizes
        source = replace(single_source, single_file_config=None, cache_dir=str(tmp_path / "cache"))
        path = checkpoint
    with pytest.raises(UserError) as info:
        check_available(source)
    message = _one_line(info)
    assert message.startswith(f"model.pretrained={path}") and needle in message, message


def test_checkpoint_without_vae_is_fine_when_model_vae_gives_one(single_source, tiny_source, tiny_parts, tmp_path):
    from storyadapter.models.loading import check_available

    checkpoint, _ = tiny_parts
    path = _rewrite(checkpoint, tmp_path / "no-vae.safetensors",
                    lambda s: {k: v for k, v in s.items() if not k.startswith("first_stage_model.")})
    source = replace(single_source, pretrained=str(path), vae=tiny_source.pretrained)
    check_available(source)
    assert np.array_equal(render_pixels(source), render_pixels(tiny_source))


# ------------------------------------------------------------------ LoRA


def test_lora_changes_the_frames_and_scale_zero_leaves_them_unchanged(tiny_source, tiny_lora):
    plain = render_pixels(tiny_source)
    full = render_pixels(replace(tiny_source, loras=(LoraWeights(str(tiny_lora), 1.0),)))
    zero = render_pixels(replace(tiny_source, loras=(LoraWeights(str(tiny_lora), 0.0),)))
    assert np.array_equal(zero, plain)
    assert np.abs(full - plain).mean() > 1.0  # pixel levels, on average: not a rounding-level difference


def test_a_fused_lora_runs_the_kernels_of_the_plain_pipeline(tiny_source, tiny_lora):
    """peft freezes the base weights it adapts; torch's matmul picks mm or bmm by that flag even under no_grad,
    so a frozen pipeline would sum in another order than the plain one (a pixel level off on some CPUs)."""
    lora = replace(tiny_source, loras=(LoraWeights(str(tiny_lora), 1.0),))
    assert render_kernels(lora) == render_kernels(tiny_source)


def test_a_lora_at_scale_zero_is_not_loaded(tiny_source, tiny_lora):
    from storyadapter.models.loading import load_pipeline

    pipe = load_pipeline(replace(tiny_source, loras=(LoraWeights(str(tiny_lora), 0.0),)), torch.device("cpu"), torch.float32)
    assert not getattr(pipe, "_merged_adapters", None) and not getattr(pipe.unet, "_hf_peft_config_loaded", None)


def test_two_loras_mix_at_their_scales(tiny_source, tiny_lora):
    half_twice = render_pixels(replace(tiny_source, loras=(LoraWeights(str(tiny_lora), 0.5),) * 2))
    once = render_pixels(replace(tiny_source, loras=(LoraWeights(str(tiny_lora), 1.0),)))
    assert np.abs(half_twice - once).max() <= 2  # 0.5 + 0.5 of one LoRA is that LoRA, up to float rounding


def test_lora_on_a_single_file_checkpoint(single_source, tiny_source, tiny_lora):
    lora = (LoraWeights(str(tiny_lora), 1.0),)
    assert np.array_equal(render_pixels(replace(single_source, loras=lora)), render_pixels(replace(tiny_source, loras=lora)))


def test_lora_that_does_not_fit_is_one_line(tiny_source, tiny_lora, tmp_path):
    from storyadapter.models.loading import check_available, load_pipeline

    state = load_file(str(tiny_lora))
    nomatch = tmp_path / "nomatch.safetensors"
    save_file({"unet.no_such_block.to_q.lora_A.weight": torch.zeros(4, 8),
               "unet.no_such_block.to_q.lora_B.weight": torch.zeros(8, 4)}, str(nomatch))
    wrong = tmp_path / "wrong-shape.safetensors"
    key = next(k for k in state if k.endswith("lora_A.weight"))
    save_file({**state, key: torch.zeros(4, 999)}, str(wrong))
    not_lora = tmp_path / "not-lora.safetensors"
    save_file({"weight": torch.zeros(2)}, str(not_lora))
    for path, needle, stage in ((nomatch, "not found", "worker"), (wrong, "size mismatch", "worker"),
                                (not_lora, "no LoRA weights", "driver"), (tmp_path / "gone.safetensors", "no such file", "driver")):
        source = replace(tiny_source, loras=(LoraWeights(str(tiny_lora)), LoraWeights(str(path))))
        with pytest.raises(UserError) as info:
            check_available(source)
            assert stage == "worker", f"{path.name} passed the driver's check"
            load_pipeline(source, torch.device("cpu"), torch.float32)
        message = _one_line(info)
        assert message.startswith(f"model.loras[1].path={path}") and needle in message, message


def test_lora_identity_in_the_resume_fingerprint_is_its_content(tiny_lora, tmp_path):
    from storyadapter.launch import compose_config
    from storyadapter.rundir.guard import fingerprint
    from storyadapter.story.parse import load_story

    story = load_story(write_story(tmp_path / "s.txt", ["a boat"]))
    moved = tmp_path / "elsewhere" / "style.safetensors"
    moved.parent.mkdir()
    shutil.copy(tiny_lora, moved)
    other = tmp_path / "other.safetensors"
    state = load_file(str(tiny_lora))
    key = next(iter(state))
    save_file({**state, key: state[key] + 1}, str(other))

    def fp(path, scale=0.8):
        cfg = compose_config(["story.path=s.txt", "output_dir=o", "model=tiny", f"model.loras=[{{path: {path}, scale: {scale}}}]"])
        return fingerprint(cfg, story)

    assert fp(tiny_lora) == fp(moved)
    assert fp(tiny_lora) != fp(other)
    assert fp(tiny_lora) != fp(tiny_lora, 0.7)
    plain = fingerprint(compose_config(["story.path=s.txt", "output_dir=o", "model=tiny"]), story)
    assert "loras" not in plain["model"]  # renders from before LoRA support resume as they were


# ------------------------------------------------------------------ VAE


def test_model_vae_replaces_the_checkpoints_vae(tiny_source, single_source, tiny_parts, tmp_path):
    from diffusers import AutoencoderKL

    plain = render_pixels(tiny_source)
    # The same VAE by every route: a VAE folder (a pipeline's vae/ is found too, tested above), a single file.
    assert np.array_equal(render_pixels(replace(tiny_source, vae=str(Path(tiny_source.pretrained) / "vae"))), plain)
    checkpoint, configs = tiny_parts
    assert np.array_equal(render_pixels(replace(single_source, vae=str(checkpoint))), plain)
    # Another VAE: other pixels.
    vae = AutoencoderKL.from_pretrained(Path(tiny_source.pretrained) / "vae")
    torch.manual_seed(5)
    for p in vae.decoder.parameters():
        p.data.add_(torch.randn_like(p) * 0.05)
    vae.save_pretrained(tmp_path / "other-vae")
    assert not np.array_equal(render_pixels(replace(tiny_source, vae=str(tmp_path / "other-vae"))), plain)


def test_bad_vae_is_one_line(tiny_source, tmp_path, monkeypatch):
    from storyadapter.models.loading import check_available, load_pipeline

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "empty").mkdir()
    garbage = tmp_path / "vae.safetensors"
    garbage.write_bytes(b"nope")
    for ref, needle in ((str(tmp_path / "empty"), "config.json"), (str(tmp_path / "missing"), "config.json"),
                        (str(garbage), "not a readable"), ("someone/sdxl-vae-fp16-fix", "HF_HUB_OFFLINE")):
        with pytest.raises(UserError) as info:
            check_available(replace(tiny_source, vae=ref))
        message = _one_line(info)
        assert message.startswith(f"model.vae={ref}") and needle in message, message
    # A VAE of another latent shape: caught when the worker loads it.
    config = json.loads((Path(tiny_source.pretrained) / "vae" / "config.json").read_text())
    from diffusers import AutoencoderKL

    AutoencoderKL.from_config({**config, "latent_channels": 16}).save_pretrained(tmp_path / "vae16")
    with pytest.raises(UserError) as info:
        load_pipeline(replace(tiny_source, vae=str(tmp_path / "vae16")), torch.device("cpu"), torch.float32)
    assert "latent channels" in _one_line(info)


# ------------------------------------------------------------------ through the Ray engine


@pytest.mark.slow
def test_single_file_with_lora_renders_the_same_pixels_on_one_and_two_ray_workers(local_ray, tiny_parts, tiny_source,
                                                                                   tiny_lora, tmp_path):
    from PIL import Image

    checkpoint, configs = tiny_parts
    story = write_story(tmp_path / "story.txt", [f"a lighthouse keeper, scene {i}" for i in range(4)])
    common = [f"story.path={story}", "model=tiny", "model.kind=hub", "model.device=cpu", f"model.pretrained={checkpoint}",
              f"model.single_file_config={configs}", f"model.ip_adapter={tiny_source.ip_adapter}",
              f"model.loras=[{{path: {tiny_lora}, scale: 0.8}}]", "render.iterations=1", "render.steps=2",
              "render.height=64", "render.width=64", "render.seed_policy=per_frame", "outputs.enabled=false"]
    runs = {workers: render(tmp_path / f"w{workers}", *common, f"cluster.workers={workers}") for workers in (1, 2)}
    frames = sorted(p.relative_to(runs[1]) for p in runs[1].glob("iter_*/frame_*.png"))
    assert len(frames) == 8
    for rel in frames:
        assert np.array_equal(np.asarray(Image.open(runs[1] / rel)), np.asarray(Image.open(runs[2] / rel))), rel
    # The LoRA's content, not its path, is what config.yaml pins for a resume.
    saved = (runs[2] / "config.yaml").read_text()
    from storyadapter.rundir.file_digest import digest

    assert digest(str(tiny_lora)) in saved


def test_launch_reports_a_bad_checkpoint_in_one_line_and_writes_nothing(tiny_source, tmp_path):
    story = write_story(tmp_path / "story.txt", ["a boat"])
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"\0" * 64)
    out = tmp_path / "out"
    proc = launch(f"story.path={story}", "model=tiny", "model.kind=hub", f"model.pretrained={bad}",
                  f"model.single_file_config={tiny_source.pretrained}", f"model.ip_adapter={tiny_source.ip_adapter}",
                  f"output_dir={out}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: model.pretrained={bad}: not a readable .safetensors"), proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()

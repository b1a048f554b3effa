"""What FLUX refuses, each in one line before any worker starts; FLUX LoRAs through diffusers' FLUX LoRA loading;
model.offload; the model table's presets."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from storyadapter.errors import UserError
from storyadapter.models.lora import LoraWeights

from .helpers.flux_offload import render_frame

BASE = ["story.path=s.txt", "output_dir=o"]
FLUX = [*BASE, "model=flux-tiny", "render=flux-tiny"]


def one_line(info) -> str:
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    return message


@pytest.mark.parametrize("overrides, message", [
    ([*FLUX, "render.height=72"], "render.height=72: must be a multiple of 16 on FLUX"),
    ([*FLUX, "render.draft.width=40"], "render.draft.width=40: must be a multiple of 16 on FLUX"),
    ([*FLUX, "method=storydiffusion"], "method.name=storydiffusion: not on FLUX: consistent self-attention is written for a UNet"),
    ([*FLUX, "method=hybrid"], "method.name=hybrid: not on FLUX"),
    ([*FLUX, "method.freeu.enabled=true"], "method.freeu.enabled=True: FreeU rescales a UNet's decoder"),
    ([*BASE, "model=flux-tiny"], "render.scheduler=ddim: FLUX denoises with flow-matching Euler only"),
    ([*FLUX, "render.draft.scheduler=lcm"], "render.draft.scheduler=lcm: FLUX denoises with flow-matching Euler only"),
    ([*FLUX, "render.draft.lora=x.safetensors"], "render.draft.lora=x.safetensors: draft LoRAs are SDXL's"),
    ([*FLUX, "render.draft.vae=x.safetensors"], "render.draft.vae=x.safetensors: a draft VAE is SDXL's"),
    ([*FLUX, "render.refine_strength=0.5"], "render.refine_strength=0.5: warm starts are SDXL's"),
    ([*FLUX, "model.device=cpu", "model.offload=model"], "model.offload=model: offloading keeps weights on the CPU"),
    ([*FLUX, "model.offload=sequential"], "model.offload=sequential: diffusers' sequential offload fails"),
    ([*BASE, "model=tiny", "render=flux-tiny"], "render.scheduler=flow_euler: FLUX's scheduler"),
    ([*BASE, "model=tiny", "render.distilled_guidance=3.5"], "render.distilled_guidance=3.5: SDXL has no guidance embedding"),
    ([*BASE, "model=tiny", "model.offload=model"], "model.offload=model: FLUX only"),
])
def test_what_flux_cannot_take_is_one_line_before_anything_starts(overrides, message):
    from storyadapter.launch import compose_config

    with pytest.raises(UserError) as info:
        compose_config(overrides)
    assert one_line(info).startswith(message), str(info.value)


def _lora_file(path: Path, keys: list[str]) -> Path:
    save_file({k: torch.zeros(2, 2) for k in keys}, str(path))
    return path


SDXL_LORAS = {"peft": ["unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight"],
              "kohya": ["lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight"]}
FLUX_LORAS = {"peft": ["transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight"],
              "kohya": ["lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight"],
              "xlabs": ["double_blocks.0.processor.qkv_lora1.down.weight"]}


def test_a_lora_of_the_other_family_is_one_line_from_its_key_names(flux_tiny_cache, tiny_cache, tmp_path):
    from storyadapter import spec
    from storyadapter.launch import compose_config
    from storyadapter.render_story import resolve_model

    for model, cache, wrong, family in (("flux-tiny", flux_tiny_cache, SDXL_LORAS, "an SDXL"),
                                        ("tiny", tiny_cache, FLUX_LORAS, "a FLUX")):
        for layout, keys in wrong.items():
            path = _lora_file(tmp_path / f"{model}-{layout}.safetensors", keys)
            render = ["render=flux-tiny"] if model == "flux-tiny" else []
            run = spec.from_config(compose_config([*BASE, f"model={model}", *render, f"model.cache_dir={cache}",
                                                   f"model.loras=[{{path: {path}, scale: 1.0}}]"]))
            with pytest.raises(UserError) as info:
                resolve_model(run.model)
            assert one_line(info).startswith(f"model.loras[0].path={path}: is {family} LoRA"), layout


def test_an_sdxl_ip_adapter_on_flux_is_one_line(flux_tiny_cache, tiny_cache):
    from storyadapter import spec
    from storyadapter.launch import compose_config
    from storyadapter.models import flux_tiny, tiny
    from storyadapter.render_story import resolve_model

    flux, sdxl = flux_tiny.flux_tiny_dir(flux_tiny_cache), tiny.tiny_dir(tiny_cache)
    run = spec.from_config(compose_config([*BASE, "model=flux", "render=flux-tiny", f"model.pretrained={flux / 'flux'}",
                                           f"model.ip_adapter={sdxl / 'ip-adapter'}", "model.ip_adapter_subfolder=sdxl_models",
                                           "model.ip_adapter_weight=ip-adapter_sdxl.safetensors",
                                           f"model.image_encoder_folder={flux / 'clip-vision'}"]))
    with pytest.raises(UserError) as info:
        resolve_model(run.model)
    assert one_line(info).startswith(f"model.ip_adapter={sdxl / 'ip-adapter'}: ip-adapter_sdxl.safetensors is not a FLUX IP-Adapter")


def test_flux_weights_missing_offline_say_how_to_get_them(monkeypatch):
    from storyadapter import spec
    from storyadapter.launch import compose_config
    from storyadapter.render_story import resolve_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", "/nonexistent-hf-cache")
    run = spec.from_config(compose_config([*BASE, "model=flux", "render=flux"]))
    with pytest.raises(UserError) as info:
        resolve_model(run.model)
    message = one_line(info)
    assert message.startswith("model.pretrained=black-forest-labs/FLUX.1-dev: weights are not in the local Hugging Face cache")
    assert "hf download XLabs-AI/flux-ip-adapter-v2 ip_adapter.safetensors" in message


def test_a_flux_lora_is_fused_at_its_scale_and_fingerprinted_by_content(flux_tiny_source, tmp_path):
    from storyadapter.launch import compose_config
    from storyadapter.models.loading import load_backbone
    from storyadapter.rundir.guard import fingerprint
    from storyadapter.story.parse import load_story
    from storyadapter.worker import torch_settings
    from storyadapter.worker.renderer import RenderSettings, StoryRenderer

    from .helpers.flux_lora import build_flux_lora
    from .helpers.stories import write_story

    lora = build_flux_lora(Path(flux_tiny_source.pretrained), tmp_path / "lora")
    settings = RenderSettings(steps=2, height=64, width=64, guidance_scale=1.0, scheduler="flow_euler")

    def frame(source):
        with torch_settings.reproducible(threads=1):
            r = StoryRenderer(load_backbone(source, torch.device("cpu"), torch.float32), settings)
            return np.asarray(r.render([r.encode_text("a cat on a desk", "")], [3])[0], dtype=np.int16)

    plain = frame(flux_tiny_source)
    assert np.array_equal(frame(replace(flux_tiny_source, loras=(LoraWeights(str(lora), 0.0),))), plain)
    assert np.abs(frame(replace(flux_tiny_source, loras=(LoraWeights(str(lora), 1.0),))) - plain).mean() > 1.0
    story = load_story(write_story(tmp_path / "s.txt", ["a cat"]))
    cfg = compose_config([*FLUX, f"model.loras=[{{path: {lora}, scale: 0.8}}]"])
    assert fingerprint(cfg, story)["model"]["loras"][0]["sha256"]


def test_offloading_on_a_cpu_worker_is_one_line(flux_tiny_source):
    from storyadapter.models import flux_loading

    with pytest.raises(UserError) as info:
        flux_loading.load_pipeline(replace(flux_tiny_source, offload="model"), torch.device("cpu"), torch.float32)
    assert one_line(info).startswith("model.offload=model: offloading needs a GPU")


def test_model_offload_gives_the_same_pixels(flux_tiny_source):
    """model.offload=model, onto the CPU itself (no GPU here): diffusers' hooks move each component in and out, the
    IP-Adapter's layers stay put, GRCA still reaches them; frames and their embeddings are those without offload."""
    plain, offloaded = render_frame(flux_tiny_source, None), render_frame(flux_tiny_source, "model")
    assert offloaded[2]._offloaded and not plain[2]._offloaded
    assert np.array_equal(plain[0], offloaded[0]) and np.array_equal(plain[1], offloaded[1])


def test_the_sdxl_fingerprint_is_unchanged_and_flux_s_names_its_family(tmp_path):
    from storyadapter.launch import compose_config
    from storyadapter.rundir.guard import fingerprint
    from storyadapter.story.parse import load_story

    from .helpers.stories import write_story

    story = load_story(write_story(tmp_path / "s.txt", ["a cat"]))
    sdxl = fingerprint(compose_config([*BASE, "model=tiny"]), story)
    assert "family" not in sdxl["model"] and "offload" not in sdxl["model"]
    assert "distilled_guidance" not in sdxl["render"]
    flux = fingerprint(compose_config(FLUX), story)
    assert flux["model"]["family"] == "flux" and flux["render"]["scheduler"] == "flow_euler"


def test_the_web_ui_offers_flux_with_its_own_preset_and_checks():
    from storyadapter.launch import compose_config
    from storyadapter.webui.jobs import RenderRequest

    request = RenderRequest.from_json({"story": "a cat", "model": "flux-tiny", "size": 64, "steps": 2, "iterations": 1})
    cfg = compose_config(request.overrides("s.txt", "o"))
    assert (cfg.model.family, cfg.render.scheduler, cfg.render.steps) == ("flux", "flow_euler", 2)
    for field, value, message in (("size", 72, "request.size: must be a multiple of 16 on FLUX"),
                                  ("method", "hybrid", "request.method: not on FLUX")):
        with pytest.raises(UserError) as info:
            RenderRequest.from_json({"story": "a cat", "model": "flux-tiny", field: value})
        assert one_line(info).startswith(message)

"""model=sdxl-random has SDXL's and IP-Adapter SDXL's exact sizes; checked on the meta device (no memory)."""

from __future__ import annotations

import pytest
import torch

from storyadapter.models import sdxl_random

# Parameter counts of the released checkpoints (stabilityai/stable-diffusion-xl-base-1.0, h94/IP-Adapter sdxl_models).
SDXL = {
    "unet": 2_567_463_684,
    "text_encoder": 123_060_480,  # CLIP ViT-L/14 text tower
    "text_encoder_2": 694_659_840,  # OpenCLIP ViT-bigG/14 text tower + projection
    "vae": 83_653_863,
    "image_encoder": 1_844_907_264,  # OpenCLIP ViT-bigG/14 vision tower + projection
}


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_components_have_sdxl_parameter_counts_on_meta():
    parts = sdxl_random.build_components("meta", torch.bfloat16)
    for name, expected in SDXL.items():
        module = parts[name]
        assert _count(module) == pytest.approx(expected, rel=0.01), name
        assert all(p.is_meta and p.dtype == torch.bfloat16 for p in module.parameters()), name

    unet = parts["unet"]
    assert unet.config.cross_attention_dim == 2048 and unet.config.addition_time_embed_dim == 256
    assert parts["vae"].config.scaling_factor == 0.13025 and parts["vae"].config.force_upcast
    assert parts["image_encoder"].config.projection_dim == 1280

    # IP-Adapter SDXL: the image projection to 4 x 2048 tokens and one to_k_ip/to_v_ip pair per cross-attention layer.
    state = sdxl_random.ip_adapter_state_dict(unet, 1280, "meta", torch.bfloat16)
    assert state["image_proj"]["proj.weight"].shape == (4 * 2048, 1280)
    assert state["image_proj"]["norm.weight"].shape == (2048,)
    cross_layers = [n for n in unet.attn_processors if n.endswith("attn2.processor")]
    assert len(cross_layers) == 70
    assert sorted(int(k.split(".")[0]) for k in state["ip_adapter"] if k.endswith("to_k_ip.weight")) == list(range(1, 140, 2))
    ip_params = sum(t.numel() for part in state.values() for t in part.values())
    assert ip_params == pytest.approx(351_285_248, rel=0.01)  # ip-adapter_sdxl.safetensors: 703 MB in fp16


def test_source_is_the_marker_load_pipeline_dispatches_on():
    src = sdxl_random.source()
    assert src.pretrained == "random:sdxl" and src.ip_adapter == "random:sdxl"

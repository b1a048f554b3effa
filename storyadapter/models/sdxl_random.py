"""Full-size SDXL + IP-Adapter SDXL with random weights, built in memory on the target device.

Same architecture and sizes as stabilityai/stable-diffusion-xl-base-1.0 (UNet 2.57 B parameters, CLIP
ViT-L + OpenCLIP bigG text encoders, the SDXL VAE) and h94/IP-Adapter `sdxl_models` (ViT-bigG image
encoder, 4-token image projection, to_k_ip/to_v_ip for every cross-attention layer). For honest GPU
timings with no download: the arithmetic is exactly that of the real model, the images are noise.

Modules are constructed directly on `device` in `dtype` (no fp32 copy on the host), so building takes
seconds on a GPU. `device="meta"` builds the shapes only (for parameter counts, no memory). The
IP-Adapter goes in through `pipe.load_ip_adapter(state_dict, ...)`, the path real weights take.
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

import torch

from .clip_vocab import write_tokenizer_files
from .sdxl_arch import (IMAGE_CONFIG, IP_TOKENS, SCHEDULER_CONFIG, TEXT_1, TEXT_2, TEXT_CONFIG, UNET_CONFIG,
                        VAE_CONFIG)
from .source import ModelSource

MARKER = "random:sdxl"  # ModelSource.pretrained / ip_adapter for this model; see loading.load_pipeline


def source() -> ModelSource:
    """What `model=sdxl-random` resolves to: no files, the marker tells `load_pipeline` to build."""
    return ModelSource(MARKER, MARKER)


@contextlib.contextmanager
def building_on(device: torch.device | str, dtype: torch.dtype):
    """Create parameters directly on `device` in `dtype` (floating point only; integer buffers keep theirs)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def build_components(device: torch.device | str = "meta", dtype: torch.dtype = torch.bfloat16) -> dict:
    """UNet, VAE, both text encoders and the image encoder, random weights, on `device` in `dtype`."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPVisionConfig
    from transformers import CLIPVisionModelWithProjection

    with building_on(device, dtype), torch.no_grad():
        parts = dict(
            unet=UNet2DConditionModel(**UNET_CONFIG),
            vae=AutoencoderKL(**VAE_CONFIG),
            text_encoder=CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG, **TEXT_1)),
            text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**TEXT_CONFIG, **TEXT_2)),
            image_encoder=CLIPVisionModelWithProjection(CLIPVisionConfig(**IMAGE_CONFIG)),
        )
    for module in parts.values():
        module.eval().requires_grad_(False)
    return parts


def ip_adapter_state_dict(unet, image_embed_dim: int, device, dtype, std: float = 0.02) -> dict[str, dict[str, torch.Tensor]]:
    """IP-Adapter SDXL weights in the layout `load_ip_adapter` takes as a dict: {"image_proj": ..., "ip_adapter": ...}.

    The checkpoint numbers all attention processors in `unet.attn_processors` order; cross-attention
    (attn2) ones get the odd ids 1, 3, 5, ...
    """
    cross = unet.config.cross_attention_dim

    def normal(*shape):
        return torch.randn(*shape, device=device, dtype=dtype) * std

    image_proj = {
        "proj.weight": normal(IP_TOKENS * cross, image_embed_dim),
        "proj.bias": torch.zeros(IP_TOKENS * cross, device=device, dtype=dtype),
        "norm.weight": torch.ones(cross, device=device, dtype=dtype),
        "norm.bias": torch.zeros(cross, device=device, dtype=dtype),
    }
    ip_adapter = {}
    key_id = 1
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        hidden = unet.get_submodule(name.removesuffix(".processor")).to_k.out_features
        ip_adapter[f"{key_id}.to_k_ip.weight"] = normal(hidden, cross)
        ip_adapter[f"{key_id}.to_v_ip.weight"] = normal(hidden, cross)
        key_id += 2
    return {"image_proj": image_proj, "ip_adapter": ip_adapter}


def _tokenizers():
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory(prefix="sdxl-random-tok-") as tmp:
        files = write_tokenizer_files(Path(tmp))
        tokenizer = CLIPTokenizer.from_pretrained(files)
        tokenizer_2 = CLIPTokenizer.from_pretrained(files, pad_token="!")  # SDXL's second tokenizer pads with "!"
    return tokenizer, tokenizer_2


def build_pipeline(device: torch.device | str, dtype: torch.dtype, seed: int = 0):
    """StableDiffusionXLPipeline with full-size random weights and the IP-Adapter loaded, on `device`."""
    from diffusers import DDIMScheduler, StableDiffusionXLPipeline

    device = torch.device(device)
    torch.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.manual_seed_all(seed)
    parts = build_components(device, dtype)
    tokenizer, tokenizer_2 = _tokenizers()
    pipe = StableDiffusionXLPipeline(
        vae=parts["vae"], text_encoder=parts["text_encoder"], text_encoder_2=parts["text_encoder_2"],
        tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=parts["unet"],
        scheduler=DDIMScheduler(**SCHEDULER_CONFIG), force_zeros_for_empty_prompt=True, add_watermarker=False,
    )
    # Registered first, so load_ip_adapter keeps it instead of looking for an image_encoder folder.
    pipe.register_modules(image_encoder=parts["image_encoder"])
    state = ip_adapter_state_dict(pipe.unet, IMAGE_CONFIG["projection_dim"], device, dtype)
    pipe.load_ip_adapter(state, subfolder="", weight_name="")
    return pipe

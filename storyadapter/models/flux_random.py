"""Full-size FLUX.1-dev + XLabs FLUX IP-Adapter v2 with random weights, built in memory on the target device.

Same architecture and sizes as black-forest-labs/FLUX.1-dev (transformer 11.9 B parameters: 19 double + 38 single
blocks; T5-XXL encoder 4.76 B; CLIP ViT-L/14 text tower; the 16-channel VAE) and XLabs-AI/flux-ip-adapter-v2
(4 image tokens, to_k_ip/to_v_ip in the 19 double blocks, CLIP ViT-L/14 image encoder); flux_config.py says where
each number comes from. For GPU timing with no download: the arithmetic is that of the real model, the images
are noise.

Modules are constructed directly on `device` in `dtype` (no fp32 copy on the host). `device="meta"` builds the
shapes only: parameter counts, FLOPs and bytes with no memory (bench/model_flops.py, bench/flux_memory.py).
The IP-Adapter goes in through `pipe.load_ip_adapter(state_dict, ...)`, the path real weights take.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from .flux_config import (CLIP_MAX_TOKENS, CLIP_TEXT_CONFIG, IMAGE_CONFIG, IP_CROSS_DIM, IP_HIDDEN, IP_LAYERS,
                          IP_TOKENS, SCHEDULER_CONFIG, T5_CONFIG, T5_MAX_TOKENS, TRANSFORMER_CONFIG, VAE_CONFIG)
from .sdxl_random import building_on
from .source import ModelSource

MARKER = "random:flux"  # ModelSource.pretrained / ip_adapter for this model; load_pipeline builds on seeing it


def source() -> ModelSource:
    """What `model=flux-random` resolves to: no files, the marker tells the loader to build."""
    return ModelSource(MARKER, MARKER)


def build_components(device: torch.device | str = "meta", dtype: torch.dtype = torch.bfloat16) -> dict:
    """Transformer, VAE, both text encoders and the image encoder, random weights, on `device` in `dtype`."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import (CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModelWithProjection,
                              T5Config, T5EncoderModel)

    with building_on(device, dtype), torch.no_grad():
        parts = dict(
            transformer=FluxTransformer2DModel(**TRANSFORMER_CONFIG),
            vae=AutoencoderKL(**VAE_CONFIG),
            text_encoder=CLIPTextModel(CLIPTextConfig(**CLIP_TEXT_CONFIG)),
            text_encoder_2=T5EncoderModel(T5Config(**T5_CONFIG)),
            image_encoder=CLIPVisionModelWithProjection(CLIPVisionConfig(**IMAGE_CONFIG)),
        )
    for module in parts.values():
        module.eval().requires_grad_(False)
    return parts


def ip_adapter_state_dict(device, dtype, std: float = 0.02) -> dict[str, dict[str, torch.Tensor]]:
    """XLabs FLUX IP-Adapter weights in the layout `load_ip_adapter` takes as a dict (what diffusers makes of
    ip_adapter.safetensors): the image projection to 4 x 4096 tokens, and per double block i a biased
    to_k_ip/to_v_ip 4096 -> 3072."""
    embed = IMAGE_CONFIG["projection_dim"]

    def normal(*shape):
        return torch.randn(*shape, device=device, dtype=dtype) * std

    def zeros(n):
        return torch.zeros(n, device=device, dtype=dtype)

    image_proj = {"proj.weight": normal(IP_TOKENS * IP_CROSS_DIM, embed), "proj.bias": zeros(IP_TOKENS * IP_CROSS_DIM),
                  "norm.weight": torch.ones(IP_CROSS_DIM, device=device, dtype=dtype), "norm.bias": zeros(IP_CROSS_DIM)}
    ip_adapter = {}
    for i in range(IP_LAYERS):
        for name in ("to_k_ip", "to_v_ip"):
            ip_adapter[f"{i}.{name}.weight"] = normal(IP_HIDDEN, IP_CROSS_DIM)
            ip_adapter[f"{i}.{name}.bias"] = zeros(IP_HIDDEN)
    return {"image_proj": image_proj, "ip_adapter": ip_adapter}


def _clip_tokenizer():
    from transformers import CLIPTokenizer

    from .clip_vocab import write_tokenizer_files

    with tempfile.TemporaryDirectory(prefix="flux-random-tok-") as tmp:
        return CLIPTokenizer.from_pretrained(write_tokenizer_files(Path(tmp)), model_max_length=CLIP_MAX_TOKENS)


def _t5_tokenizer(folder: str | Path | None):
    """T5's tokenizer from `folder`, or from the offline one (models/t5_vocab.py) when that module exists; None
    leaves the pipeline without it (prompts then go in as embeddings, as the meta-device counts do)."""
    from transformers import AutoTokenizer

    if folder is None:
        try:
            from . import t5_vocab  # written with model=flux-tiny
        except ImportError:
            return None
        with tempfile.TemporaryDirectory(prefix="flux-random-t5-") as tmp:
            return AutoTokenizer.from_pretrained(t5_vocab.write_tokenizer_files(Path(tmp)), model_max_length=T5_MAX_TOKENS)
    return AutoTokenizer.from_pretrained(str(folder), model_max_length=T5_MAX_TOKENS)


def build_pipeline(device: torch.device | str, dtype: torch.dtype, seed: int = 0, t5_tokenizer: str | Path | None = None):
    """FluxPipeline with full-size random weights and the IP-Adapter loaded, on `device`."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    device = torch.device(device)
    torch.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.manual_seed_all(seed)
    parts = build_components(device, dtype)
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG), vae=parts["vae"],
        text_encoder=parts["text_encoder"], tokenizer=_clip_tokenizer(),
        text_encoder_2=parts["text_encoder_2"], tokenizer_2=_t5_tokenizer(t5_tokenizer),
        transformer=parts["transformer"],
    )
    # Registered first, so load_ip_adapter keeps it instead of loading an image encoder by name.
    pipe.register_modules(image_encoder=parts["image_encoder"])
    # The image projection is built inside load_ip_adapter: on `device` in `dtype` too, not in fp32 on the host.
    with building_on(device, dtype):
        pipe.load_ip_adapter(ip_adapter_state_dict(device, dtype), weight_name="", low_cpu_mem_usage=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe

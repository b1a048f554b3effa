"""Load an SDXL pipeline with IP-Adapter the same way for real and tiny weights, and the backbone around it."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..errors import UserError
from .source import ModelSource, is_local, offline

log = logging.getLogger(__name__)

# Upstream Story-Adapter's DDIMScheduler arguments beyond the beta schedule.
UPSTREAM_DDIM = dict(clip_sample=False, set_alpha_to_one=False, steps_offset=1)


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def pick_dtype(requested: str, device: torch.device) -> torch.dtype:
    if requested == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    try:
        return {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
                "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}[requested]
    except KeyError:
        raise UserError(f"model.dtype={requested}: expected auto, float32, float16 or bfloat16") from None


def _fetch_hint(source: ModelSource) -> str:
    return (
        f"fetch them once with `hf download {source.pretrained}` and "
        f"`hf download {source.ip_adapter} --include '{source.ip_adapter_subfolder}/*'` "
        "(or set model.pretrained / model.ip_adapter to local folders)"
    )


def check_available(source: ModelSource, key: str = "model.pretrained") -> None:
    """Fail fast, before any worker starts, with one line saying how to get missing or unusable weights."""
    from . import lora, single_file, vae

    if source.family == "flux":
        from . import flux_loading

        flux_loading.check_available(source)
        for index, weights in enumerate(source.loras):
            lora.check(weights.path, index, family="flux")
        return
    refs = [(source.ip_adapter, f"{source.ip_adapter_subfolder}/{source.ip_adapter_weight}", "model.ip_adapter")]
    if single_file.is_single_file(source.pretrained):
        components = source.components_dir()
        if not (components / "model_index.json").is_file():
            raise UserError(f"model.single_file_config={components}: model_index.json not found in that folder")
        single_file.check(source.pretrained, components, has_vae=bool(source.vae), key=key)
    else:
        refs.insert(0, (source.pretrained, "model_index.json", key))
    if source.vae:
        vae.check(source.vae)
    for index, weights in enumerate(source.loras):
        lora.check(weights.path, index, family="sdxl")
    for ref, marker, name in refs:
        if is_local(ref):
            if not (Path(ref).expanduser() / marker).is_file():
                raise UserError(f"{name}={ref}: {marker} not found in that folder")
            continue
        if offline():
            from huggingface_hub import try_to_load_from_cache

            if not isinstance(try_to_load_from_cache(ref, marker), str):
                raise UserError(f"{name}={ref}: weights are not in the local Hugging Face cache and HF_HUB_OFFLINE is set; {_fetch_hint(source)}")


def load_pipeline(source: ModelSource, device: torch.device, dtype: torch.dtype):
    """StableDiffusionXLPipeline from a hub id, folder or single file, LoRAs fused, IP-Adapter, the VAE asked for,
    DDIM as upstream runs it; on `device`."""
    from diffusers import DDIMScheduler, StableDiffusionXLPipeline

    from ..logs import quiet_libraries
    from . import lora, single_file, vae as vae_weights

    quiet_libraries()  # now that diffusers is imported, silence its per-component loading bars
    vae = vae_weights.load(source.vae, dtype, source.components_dir) if source.vae else None
    if source.pretrained == "random:sdxl":  # model=sdxl-random: full-size SDXL, random weights, built in memory
        from .sdxl_random import build_pipeline

        pipe = build_pipeline(device, dtype)
        lora.apply(pipe, source.loras)
    elif single_file.is_single_file(source.pretrained):
        pipe = single_file.load(source.pretrained, source.components_dir(), dtype, vae=vae)
        lora.apply(pipe, source.loras)  # fused into plain layers before IP-Adapter swaps the attention processors
        _load_ip_adapter(pipe, source)
    else:
        try:
            pipe = StableDiffusionXLPipeline.from_pretrained(source.pretrained, dtype=dtype, variant=source.variant)
        except (OSError, EnvironmentError) as exc:
            raise UserError(f"model.pretrained={source.pretrained}: could not load weights ({exc}); {_fetch_hint(source)}") from None
        lora.apply(pipe, source.loras)
        _load_ip_adapter(pipe, source)
    if vae is not None:
        pipe.vae = vae
        vae_weights.check_fits(pipe, source.vae)
    # Story-Adapter samples with DDIM: the checkpoint's noise schedule (betas, prediction type), but these three
    # pinned as upstream passes them. A checkpoint whose scheduler config lacks them would otherwise get
    # DDIM's defaults, which clip every predicted latent to [-1, 1] and end on alpha 1.
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, **UPSTREAM_DDIM)
    pipe.set_progress_bar_config(disable=True)
    pipe.image_encoder.to(dtype)
    return pipe.to(device)


def load_backbone(source: ModelSource, device: torch.device, dtype: torch.dtype):
    """The renderer's view of the model (backbones/base.py), by model family: SDXL or FLUX, each with its
    IP-Adapter."""
    if source.family == "flux":
        from ..backbones.flux import FluxBackbone
        from . import flux_loading

        backbone = FluxBackbone(flux_loading.load_pipeline(source, device, dtype))
        if source.offload != "none":
            backbone.offload(source.offload, device)
        return backbone
    from ..backbones.sdxl import SDXLBackbone

    return SDXLBackbone(load_pipeline(source, device, dtype))


def _load_ip_adapter(pipe, source: ModelSource) -> None:
    try:
        pipe.load_ip_adapter(
            source.ip_adapter,
            subfolder=source.ip_adapter_subfolder,
            weight_name=source.ip_adapter_weight,
            image_encoder_folder=source.image_encoder_folder,
        )
    except (OSError, EnvironmentError) as exc:
        raise UserError(f"model.ip_adapter={source.ip_adapter}: could not load weights ({exc}); {_fetch_hint(source)}") from None

"""Load an SDXL pipeline with IP-Adapter the same way for real and tiny weights."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import UserError
from .lora import LoraWeights

log = logging.getLogger(__name__)

# Upstream Story-Adapter's DDIMScheduler arguments beyond the beta schedule.
UPSTREAM_DDIM = dict(clip_sample=False, set_alpha_to_one=False, steps_offset=1)


@dataclass(frozen=True)
class ModelSource:
    """Where the weights live: hub ids or local folders in the hub repos' layout, or one checkpoint file.

    Picklable: every Ray actor loads its own pipeline from it.
    """

    pretrained: str  # hub id, diffusers folder, or an original-layout SDXL .safetensors file
    ip_adapter: str
    ip_adapter_subfolder: str = "sdxl_models"
    ip_adapter_weight: str = "ip-adapter_sdxl.safetensors"
    image_encoder_folder: str = "image_encoder"
    variant: str | None = None
    single_file_config: str | None = None  # component configs for a .safetensors `pretrained`; None: SDXL base's
    vae: str | None = None  # replaces the checkpoint's VAE: hub id, folder, or .safetensors file
    loras: tuple[LoraWeights, ...] = ()
    cache_dir: str | None = None  # where SDXL base's configs are written when single_file_config is None

    def components_dir(self) -> Path:
        """The folder of component configs a single-file checkpoint (or VAE) is built around."""
        if self.single_file_config:
            return Path(self.single_file_config).expanduser()
        from . import sdxl_config
        from .tiny import default_cache_root

        return sdxl_config.build(Path(self.cache_dir) if self.cache_dir else default_cache_root())


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


def _is_local(ref: str) -> bool:
    return ref.startswith((".", "/", "~")) or Path(ref).expanduser().exists()


def _fetch_hint(source: ModelSource) -> str:
    return (
        f"fetch them once with `hf download {source.pretrained}` and "
        f"`hf download {source.ip_adapter} --include '{source.ip_adapter_subfolder}/*'` "
        "(or set model.pretrained / model.ip_adapter to local folders)"
    )


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def check_available(source: ModelSource, key: str = "model.pretrained") -> None:
    """Fail fast, before any worker starts, with one line saying how to get missing or unusable weights."""
    from . import lora, single_file

    refs = [(source.ip_adapter, f"{source.ip_adapter_subfolder}/{source.ip_adapter_weight}", "model.ip_adapter")]
    if single_file.is_single_file(source.pretrained):
        components = source.components_dir()
        if not (components / "model_index.json").is_file():
            raise UserError(f"model.single_file_config={components}: model_index.json not found in that folder")
        single_file.check(source.pretrained, components, has_vae=bool(source.vae), key=key)
    else:
        refs.insert(0, (source.pretrained, "model_index.json", key))
    if source.vae:
        check_vae(source)
    for index, weights in enumerate(source.loras):
        lora.check(weights.path, index)
    for ref, marker, name in refs:
        if _is_local(ref):
            if not (Path(ref).expanduser() / marker).is_file():
                raise UserError(f"{name}={ref}: {marker} not found in that folder")
            continue
        if _offline():
            from huggingface_hub import try_to_load_from_cache

            if not isinstance(try_to_load_from_cache(ref, marker), str):
                raise UserError(f"{name}={ref}: weights are not in the local Hugging Face cache and HF_HUB_OFFLINE is set; {_fetch_hint(source)}")


def _vae_is_file(ref: str) -> bool:
    return ref.lower().endswith(".safetensors")


def check_vae(source: ModelSource) -> None:
    """model.vae names something loadable: a folder with a VAE config, a readable file, or a cached hub id."""
    ref = source.vae
    where = f"model.vae={ref}"
    path = Path(ref).expanduser()
    if _vae_is_file(ref):
        from safetensors import SafetensorError, safe_open

        if not path.is_file():
            raise UserError(f"{where}: no such file")
        try:
            with safe_open(str(path), framework="pt") as handle:
                keys = list(handle.keys())
        except (SafetensorError, OSError, ValueError) as exc:
            raise UserError(f"{where}: not a readable .safetensors file ({exc})") from None
        if not any(k.endswith("decoder.conv_out.weight") for k in keys):
            raise UserError(f"{where}: holds no VAE decoder weights")
        return
    if _is_local(ref):
        if not ((path / "config.json").is_file() or (path / "vae" / "config.json").is_file()):
            raise UserError(f"{where}: neither config.json nor vae/config.json in that folder")
        return
    if _offline():
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(ref, "config.json"), str):
            raise UserError(f"{where}: not in the local Hugging Face cache and HF_HUB_OFFLINE is set; "
                            f"fetch it once with `hf download {ref}`")


def load_vae(source: ModelSource, dtype: torch.dtype):
    from diffusers import AutoencoderKL

    ref = source.vae
    path = Path(ref).expanduser()
    try:
        if _vae_is_file(ref):
            return AutoencoderKL.from_single_file(str(path), config=str(source.components_dir()), subfolder="vae",
                                                  local_files_only=True, torch_dtype=dtype)
        subfolder = "vae" if (path / "vae" / "config.json").is_file() else None  # a whole pipeline folder
        return AutoencoderKL.from_pretrained(ref, subfolder=subfolder, torch_dtype=dtype)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise UserError(f"model.vae={ref}: could not load a VAE ({exc})") from None


def _check_vae_fits(pipe, ref: str) -> None:
    latent, unet = pipe.vae.config.latent_channels, pipe.unet.config.in_channels
    if latent != unet:
        raise UserError(f"model.vae={ref}: {latent} latent channels, but the UNet takes {unet}; not an SDXL VAE")


def load_pipeline(source: ModelSource, device: torch.device, dtype: torch.dtype):
    """StableDiffusionXLPipeline + IP-Adapter + DDIM scheduler, on `device`; then the VAE and LoRAs asked for."""
    from diffusers import DDIMScheduler, StableDiffusionXLPipeline

    from ..logs import quiet_libraries
    from . import lora, single_file

    quiet_libraries()  # now that diffusers is imported, silence its per-component loading bars
    vae = load_vae(source, dtype) if source.vae else None
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
        _check_vae_fits(pipe, source.vae)
    # Story-Adapter samples with DDIM: the checkpoint's noise schedule (betas, prediction type), but these three
    # pinned as upstream passes them. A checkpoint whose scheduler config lacks them would otherwise get
    # DDIM's defaults, which clip every predicted latent to [-1, 1] and end on alpha 1.
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, **UPSTREAM_DDIM)
    pipe.set_progress_bar_config(disable=True)
    pipe.image_encoder.to(dtype)
    return pipe.to(device)


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

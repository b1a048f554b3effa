"""model.vae: a VAE that replaces the checkpoint's (e.g. an fp16-safe SDXL VAE), from a hub id, folder or file."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from ..errors import UserError
from .source import is_local, offline


def _is_file(ref: str) -> bool:
    return ref.lower().endswith(".safetensors")


def _check_cached(ref: str, where: str) -> None:
    """A hub id: offline, it must already be in the local Hugging Face cache."""
    if offline():
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(ref, "config.json"), str):
            raise UserError(f"{where}: not in the local Hugging Face cache and HF_HUB_OFFLINE is set; "
                            f"fetch it once with `hf download {ref}`")


def check(ref: str) -> None:
    """Before any worker starts: `ref` names a folder with a VAE config, a readable VAE file, or a cached hub id."""
    where = f"model.vae={ref}"
    path = Path(ref).expanduser()
    if _is_file(ref):
        from .safetensors_header import tensor_shapes

        keys = tensor_shapes(path, where)
        if not any(k.endswith("decoder.conv_out.weight") for k in keys):
            raise UserError(f"{where}: holds no VAE decoder weights")
        return
    if is_local(ref):
        if not ((path / "config.json").is_file() or (path / "vae" / "config.json").is_file()):
            raise UserError(f"{where}: neither config.json nor vae/config.json in that folder")
        return
    _check_cached(ref, where)


def load(ref: str, dtype: torch.dtype, components_dir: Callable[[], Path]):
    """AutoencoderKL from `ref`; a single file is built around the VAE config in `components_dir()`."""
    from diffusers import AutoencoderKL

    path = Path(ref).expanduser()
    try:
        if _is_file(ref):
            return AutoencoderKL.from_single_file(str(path), config=str(components_dir()), subfolder="vae",
                                                  local_files_only=True, torch_dtype=dtype)
        subfolder = "vae" if (path / "vae" / "config.json").is_file() else None  # a whole pipeline folder
        return AutoencoderKL.from_pretrained(ref, subfolder=subfolder, torch_dtype=dtype)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise UserError(f"model.vae={ref}: could not load a VAE ({exc})") from None


def check_fits(pipe, ref: str) -> None:
    latent, unet = pipe.vae.config.latent_channels, pipe.unet.config.in_channels
    if latent != unet:
        raise UserError(f"model.vae={ref}: {latent} latent channels, but the UNet takes {unet}; not an SDXL VAE")


# --- render.draft.vae: an AutoencoderTiny (TAESD's layout) that decodes the drafts only -------------------------

DRAFT_KEY = "render.draft.vae"


def _tiny_config_dir(path: Path) -> Path | None:
    for folder in (path, path / "vae"):
        if (folder / "config.json").is_file():
            return folder
    return None


def check_tiny(ref: str) -> None:
    """Before any worker starts: `ref` names an AutoencoderTiny: a diffusers folder whose config says so, a
    .safetensors with its decoder's weights, or a cached hub id."""
    import json

    where = f"{DRAFT_KEY}={ref}"
    path = Path(ref).expanduser()
    if _is_file(ref):
        from .safetensors_header import tensor_shapes

        if not any(k.startswith("decoder.layers.") for k in tensor_shapes(path, where)):
            raise UserError(f"{where}: holds no AutoencoderTiny decoder weights (decoder.layers.*; TAESDXL in diffusers' layout)")
        return
    if is_local(ref):
        folder = _tiny_config_dir(path)
        if folder is None:
            raise UserError(f"{where}: no such folder with a config.json" if not path.exists()
                            else f"{where}: neither config.json nor vae/config.json in that folder")
        try:
            kind = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("_class_name")
        except (OSError, ValueError) as exc:
            raise UserError(f"{where}: config.json unreadable ({exc})") from None
        if kind != "AutoencoderTiny":
            raise UserError(f"{where}: config.json says {kind}, not AutoencoderTiny (TAESDXL); a draft VAE only decodes")
        return
    _check_cached(ref, where)


def load_tiny(ref: str, dtype: torch.dtype):
    """AutoencoderTiny from `ref`; a single .safetensors is loaded into TAESDXL's configuration (diffusers' defaults)."""
    from diffusers import AutoencoderTiny

    path = Path(ref).expanduser()
    try:
        if _is_file(ref):
            from safetensors.torch import load_file

            model = AutoencoderTiny()
            model.load_state_dict(load_file(str(path)))
            return model.to(dtype).eval()
        subfolder = "vae" if is_local(ref) and _tiny_config_dir(path) == path / "vae" else None
        return AutoencoderTiny.from_pretrained(ref, subfolder=subfolder, torch_dtype=dtype).eval()
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise UserError(f"{DRAFT_KEY}={ref}: could not load an AutoencoderTiny ({str(exc).splitlines()[0]})") from None

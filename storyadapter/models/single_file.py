"""Community SDXL checkpoints: one original-layout `.safetensors` file, loaded through diffusers' single-file loader.

`check` reads only the file's header (names and shapes, no tensors), so a missing, corrupt or non-SDXL file is
reported in one line by the driver before any worker starts. `load` runs on each worker.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import UserError

# One tensor per part the SDXL pipeline needs, under the names the original (Stability) layout uses.
_UNET_IN = "model.diffusion_model.input_blocks.0.0.weight"
_UNET_ADD = "model.diffusion_model.label_emb.0.0.weight"  # SDXL's pooled-text + size conditioning
_VAE_OUT = "first_stage_model.decoder.conv_out.weight"
_TEXT_1 = "conditioner.embedders.0.transformer.text_model.embeddings.position_embedding.weight"
_TEXT_2 = "conditioner.embedders.1.model.positional_embedding"


def is_single_file(ref: str) -> bool:
    return ref.lower().endswith(".safetensors")


def _configs(config_dir: Path) -> dict[str, dict]:
    parts = {}
    for part, name in (("unet", "config.json"), ("text_encoder", "config.json"), ("text_encoder_2", "config.json")):
        path = config_dir / part / name
        try:
            parts[part] = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise UserError(f"model.single_file_config={config_dir}: {part}/{name} unreadable ({type(exc).__name__}); "
                            "expected a diffusers SDXL folder (model_index.json, unet/, vae/, text_encoder*/, tokenizer*/)") from None
    return parts


def check(path: str, config_dir: Path, has_vae: bool, key: str = "model.pretrained") -> None:
    """One line naming `key` if `path` is not an SDXL checkpoint matching the component configs in `config_dir`."""
    from .safetensors_header import tensor_shapes

    where = f"{key}={path}"
    shapes = tensor_shapes(path, where)
    if any(k.startswith("cond_stage_model.") for k in shapes):
        raise UserError(f"{where}: a Stable Diffusion 1.x/2.x checkpoint, not SDXL")
    if any(k.startswith("conditioner.embedders.0.model.") for k in shapes):
        raise UserError(f"{where}: an SDXL refiner checkpoint; Story-Adapter needs an SDXL base model")
    required = {_UNET_IN: "UNet", _UNET_ADD: "SDXL UNet conditioning", _TEXT_1: "first text encoder (CLIP ViT-L)",
                _TEXT_2: "second text encoder (OpenCLIP bigG)"}
    if not has_vae:
        required[_VAE_OUT] = "VAE (or set model.vae)"
    missing = [what for name, what in required.items() if name not in shapes]
    if missing:
        raise UserError(f"{where}: not an SDXL checkpoint in the original single-file layout: no {', '.join(missing)} weights")
    cfg = _configs(config_dir)
    unet = cfg["unet"]
    cross = next((s for k, s in shapes.items() if k.startswith("model.diffusion_model.") and k.endswith("attn2.to_k.weight")), None)
    expected = [
        ("UNet input conv", shapes[_UNET_IN], (unet["block_out_channels"][0], unet["in_channels"], 3, 3)),
        ("UNet added-conditioning width", shapes[_UNET_ADD][1:], (unet["projection_class_embeddings_input_dim"],)),
        ("UNet cross-attention width", cross[1:] if cross else None, (unet["cross_attention_dim"],)),
        ("first text encoder width", shapes[_TEXT_1][-1:], (cfg["text_encoder"]["hidden_size"],)),
        ("second text encoder width", shapes[_TEXT_2][-1:], (cfg["text_encoder_2"]["hidden_size"],)),
    ]
    for what, got, want in expected:
        if tuple(got or ()) != tuple(want):
            raise UserError(f"{where}: {what} is {got}, but the SDXL component configs in {config_dir} expect {want}; "
                            "not an SDXL checkpoint of that shape (set model.single_file_config to its configs)")


def load(path: str, config_dir: Path, dtype: torch.dtype, vae=None):
    """StableDiffusionXLPipeline from the single file, built around the configs (and tokenizers) in `config_dir`."""
    from diffusers import StableDiffusionXLPipeline

    extra = {"vae": vae} if vae is not None else {}
    try:
        pipe = StableDiffusionXLPipeline.from_single_file(str(Path(path).expanduser()), config=str(config_dir),
                                                          local_files_only=True, torch_dtype=dtype, **extra)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise UserError(f"model.pretrained={path}: could not load the checkpoint ({exc})") from None
    for part in ("unet", "vae", "text_encoder", "text_encoder_2"):
        # Weights the file lacks stay unallocated ("meta") instead of failing; refuse them here.
        missing = [n for n, p in getattr(pipe, part).named_parameters() if p.is_meta]
        if missing:
            raise UserError(f"model.pretrained={path}: the checkpoint has no {part} weights for {missing[0]}"
                            f"{f' and {len(missing) - 1} more' if len(missing) > 1 else ''}")
    return pipe

"""SDXL base 1.0's component configs as a diffusers folder without weights, written offline.

A community checkpoint is one `.safetensors` file of weights; diffusers' single-file loader still needs each
component's config (layer sizes, tokenizers, scheduler) to build the pipeline around it. It would fetch them
from the hub; this folder gives them offline, from the same architecture constants `sdxl_random` builds (sdxl_arch.py).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .build_once import build_once
from .sdxl_arch import SCHEDULER_CONFIG, TEXT_1, TEXT_2, TEXT_CONFIG, UNET_CONFIG, VAE_CONFIG

VERSION = "sdxl-config-v1"  # bump when what is written below changes, so stale folders are rebuilt

_MODEL_INDEX = {
    "_class_name": "StableDiffusionXLPipeline",  # the image encoder comes with the IP-Adapter, not the checkpoint
    "force_zeros_for_empty_prompt": True,
    "feature_extractor": [None, None],
    "image_encoder": [None, None],
    "scheduler": ["diffusers", "DDIMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "tokenizer_2": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}


def config_dir(root: Path) -> Path:
    return Path(root) / VERSION


def _write_json(path: Path, document: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2))


def build(root: Path) -> Path:
    """Write the folder under `root` once (idempotent, safe if several workers race to it); return its path."""
    return build_once(config_dir(root), VERSION, _write_configs)


def _write_configs(staging: Path) -> None:
    from diffusers import DDIMScheduler
    from transformers import CLIPTextConfig, CLIPTokenizer

    from .clip_vocab import write_tokenizer_files

    _write_json(staging / "model_index.json", _MODEL_INDEX)
    _write_json(staging / "unet" / "config.json", {"_class_name": "UNet2DConditionModel", **UNET_CONFIG})
    _write_json(staging / "vae" / "config.json", {"_class_name": "AutoencoderKL", **VAE_CONFIG})
    CLIPTextConfig(**TEXT_CONFIG, **TEXT_1, architectures=["CLIPTextModel"]).save_pretrained(staging / "text_encoder")
    CLIPTextConfig(**TEXT_CONFIG, **TEXT_2, architectures=["CLIPTextModelWithProjection"]).save_pretrained(
        staging / "text_encoder_2")
    DDIMScheduler(**SCHEDULER_CONFIG).save_config(staging / "scheduler")
    files = write_tokenizer_files(staging / "vocab")
    CLIPTokenizer.from_pretrained(files).save_pretrained(staging / "tokenizer")
    CLIPTokenizer.from_pretrained(files, pad_token="!").save_pretrained(staging / "tokenizer_2")  # SDXL's second pads with "!"
    shutil.rmtree(files)

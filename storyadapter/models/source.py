"""Where a model's weights come from (`ModelSource`), and whether a reference names a local file or needs the hub.

Torch-free: the driver checks a model's references and the workers load the pipeline from the same picklable value.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .lora import LoraWeights


@dataclass(frozen=True)
class ModelSource:
    """Where the weights live: hub ids or local folders in the hub repos' layout, or one checkpoint file.

    Picklable: every Ray actor loads its own pipeline from it.
    """

    pretrained: str  # hub id, diffusers folder, or an original-layout SDXL .safetensors file
    ip_adapter: str
    ip_adapter_subfolder: str = "sdxl_models"
    ip_adapter_weight: str = "ip-adapter_sdxl.safetensors"
    # SDXL: the image encoder's subfolder of `ip_adapter`; FLUX: its own hub id or folder (XLabs' adapter uses
    # openai/clip-vit-large-patch14, which lives in a repo of its own)
    image_encoder_folder: str = "image_encoder"
    variant: str | None = None
    single_file_config: str | None = None  # component configs for a .safetensors `pretrained`; None: SDXL base's
    vae: str | None = None  # replaces the checkpoint's VAE: hub id, folder, or .safetensors file
    loras: tuple[LoraWeights, ...] = ()
    cache_dir: str | None = None  # where SDXL base's configs are written when single_file_config is None
    family: str = "sdxl"  # sdxl | flux: which pipeline and backbone load these weights (model.family)
    offload: str = "none"  # none | model | blocks: CPU offload of the pipeline (model.offload; FluxBackbone.offload)

    def components_dir(self) -> Path:
        """The folder of component configs a single-file checkpoint (or VAE) is built around."""
        if self.single_file_config:
            return Path(self.single_file_config).expanduser()
        from . import sdxl_config
        from .tiny import default_cache_root

        return sdxl_config.build(Path(self.cache_dir) if self.cache_dir else default_cache_root())


def is_local(ref: str) -> bool:
    """`ref` is a path (or an existing file or folder), not a hub id."""
    return ref.startswith((".", "/", "~")) or Path(ref).expanduser().exists()


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")

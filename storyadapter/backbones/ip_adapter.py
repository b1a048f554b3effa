"""What the SDXL and FLUX backbones share: a diffusers pipeline with an IP-Adapter loaded, taken over.

Taking it over keeps the adapter's image projection and each adapter layer's `to_k_ip`/`to_v_ip` for GRCA, and
gives every attention layer the family's plain processor: reference tokens are fed once per iteration
(attention/), never by the denoiser. References are encoded by the pipeline's CLIP image encoder.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
from PIL import Image
from torch import nn

from .base import Backbone, ReferenceLayer


class IPAdapterBackbone(Backbone):
    """A backbone over `self.pipe`, whose denoiser is the pipeline attribute named by DENOISER."""

    DENOISER = "unet"

    @property
    def _denoiser(self) -> nn.Module:
        # Read from the pipeline on each call: compile() replaces it there.
        return getattr(self.pipe, self.DENOISER)

    def _take_over(self, pipe, adapter_processor: type, plain_processor: type, adapter_layers: str) -> None:
        """Keep the adapter's projection and K/V layers, then detach the adapter from the denoiser.
        `adapter_layers` names what is looked for, in the error when none is found."""
        if pipe.image_encoder is None:
            raise ValueError("the pipeline needs an IP-Adapter image encoder (call load_ip_adapter first)")
        self.pipe = pipe
        denoiser = self._denoiser
        self._reference_layers: dict[str, ReferenceLayer] = {}
        plain: dict[str, nn.Module] = {}
        for name, proc in denoiser.attn_processors.items():
            layer = name.removesuffix(".processor")
            if isinstance(proc, adapter_processor):
                self._reference_layers[layer] = ReferenceLayer(proc.to_k_ip[0], proc.to_v_ip[0],
                                                               denoiser.get_submodule(layer).heads)
            plain[name] = plain_processor()
        if not self._reference_layers:
            raise RuntimeError(f"no {adapter_layers} found; was load_ip_adapter called?")
        self._projection = denoiser.encoder_hid_proj.image_projection_layers[0]  # CLIP embedding -> 4 tokens
        denoiser.set_attn_processor(plain)
        denoiser.encoder_hid_proj = None  # the denoiser's own per-call image projection is detached

    # references ---------------------------------------------------------------------------------
    @property
    def embedding_dim(self) -> int:
        return int(self.pipe.image_encoder.config.projection_dim)

    def _image_encoder_device(self, encoder: nn.Module) -> torch.device:
        """Where the image encoder computes."""
        return encoder.device

    @torch.no_grad()
    def encode_images(self, images: list[Image.Image]) -> np.ndarray:
        pixels = self.pipe.feature_extractor(images, return_tensors="pt").pixel_values
        encoder = self.pipe.image_encoder
        out = encoder(pixels.to(self._image_encoder_device(encoder), encoder.dtype)).image_embeds
        return out.float().cpu().numpy()

    @torch.no_grad()
    def image_tokens(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self._projection(embeddings)

    # attention layers ---------------------------------------------------------------------------
    def reference_layers(self) -> Mapping[str, ReferenceLayer]:
        return dict(self._reference_layers)

    def set_attention_processors(self, processors: Mapping[str, nn.Module]) -> None:
        denoiser = self._denoiser
        installed = dict(denoiser.attn_processors)
        unknown = [name for name in processors if f"{name}.processor" not in installed]
        if unknown:
            raise KeyError(f"no attention layer named {unknown[0]}")
        installed.update({f"{name}.processor": proc for name, proc in processors.items()})
        denoiser.set_attn_processor(installed)

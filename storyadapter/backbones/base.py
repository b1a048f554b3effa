"""The interface between the Story-Adapter algorithm and a model family: everything the renderer, GRCA and CSA
ask of the model, and nothing else.

The renderer (worker/renderer.py) runs the algorithm: seeds, classifier-free guidance, references, the CSA
phases. A backbone owns the pipeline's components and knows their call shapes: the text encoders, the denoiser
(SDXL's UNet; a DiT for another family) with its scheduler, the VAE, the image encoder and IP-Adapter
projection of the references, and which attention layers exist. A second model family is a new module next
to sdxl.py implementing this class; the renderer and attention/ need no edit to use it.

Conventions every backbone keeps:
  * `predict_noise` returns the two guidance branches; the renderer combines them (the guidance formula is the
    algorithm's, not the model's);
  * a frame's starting noise comes from a CPU generator seeded by the renderer, in `latent_shape`, so pixels
    never depend on the device or the batch;
  * attention layers are named by module path; processors from attention/ are installed by those names.
    SDXL's processors (attention/) work on diffusers' `Attention` with the guidance batch laid out
    [unconditional; conditional]; a family whose attention has another call shape brings processors of its own.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..methods import FreeUSettings


@dataclass
class TextEmbedding:
    """One frame's conditioning: the prompt's token embeddings and pooled vector, and the negative prompt's."""

    tokens: torch.Tensor
    pooled: torch.Tensor
    negative_tokens: torch.Tensor
    negative_pooled: torch.Tensor


@dataclass(frozen=True)
class ReferenceLayer:
    """An IP-Adapter cross-attention layer: the projections of image tokens to its keys and values."""

    to_k: nn.Linear
    to_v: nn.Linear
    heads: int


def guidance_batch(texts: list[TextEmbedding], guided: bool, device: torch.device,
                   dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch's token embeddings and pooled vectors, laid out as the guidance batch: every negative prompt's
    first, then every prompt's (`guided=False`: the prompts' alone)."""
    negative = [e.negative_tokens for e in texts] if guided else []
    negative_pooled = [e.negative_pooled for e in texts] if guided else []
    tokens = torch.cat(negative + [e.tokens for e in texts]).to(device, dtype)
    pooled = torch.cat(negative_pooled + [e.pooled for e in texts]).to(device, dtype)
    return tokens, pooled


def guidance_branches(noise: torch.Tensor, guided: bool) -> tuple[torch.Tensor | None, torch.Tensor]:
    """The denoiser's output on a guidance batch as `predict_noise` returns it: (unconditional, conditional)."""
    if not guided:
        return None, noise
    uncond, cond = noise.chunk(2)
    return uncond, cond


class Backbone(ABC):
    """A loaded model family, as the renderer, GRCA and CSA call it."""

    # the model ----------------------------------------------------------------------------------
    @property
    @abstractmethod
    def device(self) -> torch.device:
        """Where the denoiser runs."""

    @property
    @abstractmethod
    def dtype(self) -> torch.dtype:
        """The denoiser's dtype: conditioning and reference tokens are cast to it."""

    def compile(self) -> None:
        """Compile the denoiser (torch.compile); before the renderer first calls it."""
        raise NotImplementedError(f"{type(self).__name__} cannot be compiled")

    def set_freeu(self, freeu: FreeUSettings | None) -> None:
        """FreeU in a UNet's decoder (method.freeu) for the following calls; None turns it off. Optional: a family
        without a UNet refuses it."""
        if freeu is not None:
            raise NotImplementedError(f"{type(self).__name__} has no FreeU (method.freeu.enabled=true)")

    # text ---------------------------------------------------------------------------------------
    @abstractmethod
    def text_windows(self, texts: list[str]) -> int:
        """How many encoder windows the longest of `texts` needs: every frame of a story is encoded with
        this many, so a frame's conditioning never depends on its batch."""

    @abstractmethod
    def encode_text(self, prompt: str, negative: str, windows: int) -> TextEmbedding:
        """A frame's prompt and negative prompt, encoded once for the whole run."""

    @property
    def releases_text_encoders(self) -> bool:
        """Whether the worker should encode every frame's prompt up front and then call `release_text_encoders`
        (FLUX on a GPU: T5 alone is 9.5 GB in bf16). False: prompts are encoded as frames first need them."""
        return False

    def release_text_encoders(self) -> None:
        """Every prompt of the run is encoded: the text encoders may leave the accelerator."""

    # denoising ----------------------------------------------------------------------------------
    @abstractmethod
    def timesteps(self, steps: int, height: int, width: int) -> torch.Tensor:
        """Set the scheduler up for `steps` steps at this image size; the timesteps, in order."""

    @abstractmethod
    def latent_shape(self, height: int, width: int) -> tuple[int, ...]:
        """Shape of one frame's starting noise, batch 1."""

    @abstractmethod
    def initial_latents(self, noise: torch.Tensor) -> torch.Tensor:
        """The batch's starting noise (from the renderer's seeds) as the denoiser's first input latents."""

    @abstractmethod
    def conditioning(self, texts: list[TextEmbedding], height: int, width: int, guided: bool = True) -> Any:
        """Everything the denoiser takes besides latents and timestep, for a batch of frames (opaque to the
        renderer: passed back to `predict_noise`). `guided=False`: the conditional branch alone."""

    @abstractmethod
    def predict_noise(self, latents: torch.Tensor, t: torch.Tensor, conditioning: Any) -> tuple[torch.Tensor | None, torch.Tensor]:
        """The denoiser's (unconditional, conditional) predictions for `latents` at timestep `t`; the
        unconditional one is None (not computed) for a conditioning built with `guided=False`."""

    @abstractmethod
    def step(self, noise: torch.Tensor, t: torch.Tensor, latents: torch.Tensor,
             generators: list[torch.Generator] | None = None) -> torch.Tensor:
        """One scheduler step: the latents at the next timestep. A stochastic scheduler (LCM, TCD) draws its
        noise from `generators`, one CPU generator per frame of the batch, so pixels never depend on the batch."""

    # warm starts (render.refine_strength): SDEdit, as diffusers' img2img pipelines do it -----------------------
    def warm_timesteps(self, steps: int, strength: float, height: int, width: int) -> torch.Tensor:
        """Set the scheduler up for `steps` steps and start it `strength` of the way from the end: the last
        passes.refine_steps(steps, strength) timesteps, in order (img2img's `get_timesteps`)."""
        raise NotImplementedError(f"{type(self).__name__} has no warm starts (render.refine_strength)")

    def encode_latents(self, images: list[Image.Image], height: int, width: int,
                       generators: list[torch.Generator]) -> torch.Tensor:
        """`images` resized to height x width, as clean latents: the VAE's encoding, sampled (when it samples)
        from `generators`, one CPU generator per image, each image encoded alone so that nothing depends on the batch."""
        raise NotImplementedError(f"{type(self).__name__} has no warm starts (render.refine_strength)")

    def noised_start(self, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Clean `latents` noised to timestep `t` (the first of `warm_timesteps`) with `noise` from the renderer's
        seeds: the denoiser's first input latents of a warm start (the scheduler's `add_noise`)."""
        raise NotImplementedError(f"{type(self).__name__} has no warm starts (render.refine_strength)")

    def load_draft_lora(self, path: str, scale: float) -> None:
        """Load a LoRA for draft iterations only, switched off (render.draft.lora)."""
        raise NotImplementedError(f"{type(self).__name__} takes no draft LoRA")

    def use_draft_lora(self, on: bool) -> None:
        """Switch the draft LoRA on (a draft iteration) or off (the last pass); a no-op without one."""

    def set_distilled_guidance(self, scale: float | None) -> None:
        """The guidance embedding's scale for the following calls (render.distilled_guidance), for a
        guidance-distilled denoiser (FLUX.1-dev); None: the family's default. A family without one refuses a value."""
        if scale is not None:
            raise NotImplementedError(f"{type(self).__name__} has no guidance embedding (render.distilled_guidance)")

    def load_draft_vae(self, ref: str) -> None:
        """Load a small decoder for draft iterations only (render.draft.vae), off until `use_draft_vae(True)`."""
        raise NotImplementedError(f"{type(self).__name__} takes no draft VAE")

    def use_draft_vae(self, on: bool) -> None:
        """Decode with the draft VAE (a draft iteration) or the model's own (the last pass); a no-op without one."""

    def set_scheduler(self, name: str) -> None:
        """Denoise with scheduler `name` (spec.SCHEDULERS) from the next `timesteps` call on."""
        if name != "ddim":
            raise NotImplementedError(f"{type(self).__name__} has no {name} scheduler")

    @abstractmethod
    def decode(self, latents: torch.Tensor) -> list[Image.Image]:
        """Final latents to images."""

    # references ---------------------------------------------------------------------------------
    @property
    @abstractmethod
    def embedding_dim(self) -> int:
        """Length of a reference's image embedding (a row of the bank)."""

    @abstractmethod
    def encode_images(self, images: list[Image.Image]) -> np.ndarray:
        """Image-encoder embeddings of `images`, (len(images), embedding_dim) float32, in one pass."""

    @abstractmethod
    def image_tokens(self, embeddings: torch.Tensor) -> torch.Tensor:
        """The IP-Adapter's tokens of each reference: (N, embedding_dim) -> (N, tokens per reference, C)."""

    # attention layers ---------------------------------------------------------------------------
    @abstractmethod
    def reference_layers(self) -> Mapping[str, ReferenceLayer]:
        """The IP-Adapter cross-attention layers by name, where GRCA attends to the references."""

    @abstractmethod
    def self_attention_layers(self) -> Mapping[str, int]:
        """The self-attention layers consistent self-attention takes over, by name -> resolution rank
        (0: the coarsest resolution among them, 1: the next, ...)."""

    @abstractmethod
    def set_attention_processors(self, processors: Mapping[str, nn.Module]) -> None:
        """Install `processors` on the layers they are keyed by; every other layer keeps its processor."""

    def reference_processor_class(self) -> type | None:
        """GRCA's processor class for this family's reference layers, built as cls(to_k, to_v, heads, joint); None:
        attention/grca.py's, for diffusers' `Attention` (SDXL). A family whose attention has another call shape
        (FLUX: attention/grca_flux.py) returns its own, with the same members."""
        return None

"""SDXL + IP-Adapter behind the backbone interface (base.py), wrapping diffusers' StableDiffusionXLPipeline.

The pipeline comes from models/loading.py with the IP-Adapter loaded. Taking it over (ip_adapter.py), the backbone
keeps the adapter's image projection and its per-layer `to_k_ip`/`to_v_ip` for GRCA, and gives every attention layer
diffusers' plain processor: reference tokens are fed once per iteration (attention/grca.py), never by the UNet.
The denoising calls are those of `StableDiffusionXLPipeline.__call__`, op for op, so that scale 0 renders its
pixels exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
from PIL import Image

from . import sdxl_text
from .. import passes
from ..methods import FreeUSettings
from .base import TextEmbedding, guidance_batch, guidance_branches
from .ip_adapter import IPAdapterBackbone


@dataclass(frozen=True)
class SDXLConditioning:
    tokens: torch.Tensor  # (2B, windows*77, 2048): unconditional half first, as diffusers lays out guidance
    added: dict  # the UNet's added conditions: pooled text embeddings and size time ids
    guided: bool = True  # False: (B, ...), the conditional branch alone


class SDXLBackbone(IPAdapterBackbone):
    def __init__(self, pipe):
        from diffusers.models.attention_processor import AttnProcessor2_0, IPAdapterAttnProcessor2_0

        self._take_over(pipe, IPAdapterAttnProcessor2_0, AttnProcessor2_0, "IP-Adapter cross-attention layers")
        if pipe.vae.dtype == torch.float16 and pipe.vae.config.force_upcast:
            # SDXL's VAE overflows in fp16. Upcast it once, so decoding casts latents, never weights (diffusers'
            # pipeline converts the VAE fp16 -> fp32 -> fp16 on every call). Same pixels: fp16 -> fp32 is exact.
            pipe.vae.to(torch.float32)
        self._vae_dtype = pipe.vae.dtype
        self.unet_evaluations = 0  # frames through the UNet, one per guidance branch and step (benchmarks, tests)
        self.decodes = {"vae": 0, "draft_vae": 0}  # frames decoded by each VAE (tests)
        self._draft_vae, self._decoding_draft = None, False
        self._schedulers = {"ddim": pipe.scheduler}  # as loaded (models/loading.py); the others built on first use

    # the model ----------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.pipe.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.pipe.unet.dtype

    def compile(self) -> None:
        self.pipe.unet = torch.compile(self.pipe.unet)

    def set_freeu(self, freeu: FreeUSettings | None) -> None:
        # diffusers' own FreeU (what upstream's pipe.enable_freeu calls): factors set on the UNet's up blocks.
        if freeu is None:
            self.pipe.unet.disable_freeu()
        else:
            self.pipe.unet.enable_freeu(s1=freeu.s1, s2=freeu.s2, b1=freeu.b1, b2=freeu.b2)

    # text ---------------------------------------------------------------------------------------
    def text_windows(self, texts: list[str]) -> int:
        return sdxl_text.story_windows(self.pipe, texts)

    def encode_text(self, prompt: str, negative: str, windows: int) -> TextEmbedding:
        return sdxl_text.encode(self.pipe, prompt, negative, windows)

    # denoising ----------------------------------------------------------------------------------
    def load_draft_lora(self, path: str, scale: float) -> None:
        from ..models import lora

        lora.load_draft(self.pipe, path, scale)
        self._draft_lora = True

    def use_draft_lora(self, on: bool) -> None:
        if getattr(self, "_draft_lora", False):
            from ..models import lora

            lora.switch_draft(self.pipe, on)

    def load_draft_vae(self, ref: str) -> None:
        from ..models import vae

        self._draft_vae = vae.load_tiny(ref, self.dtype).to(self.device)

    def use_draft_vae(self, on: bool) -> None:
        self._decoding_draft = on and self._draft_vae is not None

    def set_scheduler(self, name: str) -> None:
        if name not in self._schedulers:
            self._schedulers[name] = _scheduler(name, self._schedulers["ddim"].config)
        self.pipe.scheduler = self._schedulers[name]

    def timesteps(self, steps: int, height: int, width: int) -> torch.Tensor:
        self.pipe.scheduler.set_timesteps(steps, device=self.device)
        return self.pipe.scheduler.timesteps

    def warm_timesteps(self, steps: int, strength: float, height: int, width: int) -> torch.Tensor:
        # StableDiffusionXLImg2ImgPipeline.get_timesteps: skip the first steps - int(steps x strength) steps.
        timesteps = self.timesteps(steps, height, width)
        scheduler = self.pipe.scheduler
        start = (steps - passes.refine_steps(steps, strength)) * scheduler.order
        if hasattr(scheduler, "set_begin_index"):  # Euler, LCM, TCD count their steps from it; DDIM has none
            scheduler.set_begin_index(start)
        return timesteps[start:]

    @torch.no_grad()
    def encode_latents(self, images: list[Image.Image], height: int, width: int,
                       generators: list[torch.Generator]) -> torch.Tensor:
        # StableDiffusionXLImg2ImgPipeline.prepare_latents with one generator per image: each image encoded alone,
        # its latent sampled from the VAE's distribution with its own generator.
        from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl_img2img import retrieve_latents

        vae = self.pipe.vae
        pixels = self.pipe.image_processor.preprocess(images, height=height, width=width)
        pixels = pixels.to(self.device, self._vae_dtype)
        latents = torch.cat([retrieve_latents(vae.encode(pixels[i:i + 1]), generator=g) for i, g in enumerate(generators)])
        return latents.to(self.dtype) * vae.config.scaling_factor

    def noised_start(self, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        noise = noise.to(latents.device, latents.dtype)
        return self.pipe.scheduler.add_noise(latents, noise, t.reshape(1).repeat(latents.shape[0]))

    def latent_shape(self, height: int, width: int) -> tuple[int, ...]:
        factor = self.pipe.vae_scale_factor
        return (1, self.pipe.unet.config.in_channels, height // factor, width // factor)

    def initial_latents(self, noise: torch.Tensor) -> torch.Tensor:
        return noise.to(self.device, self.dtype) * self.pipe.scheduler.init_noise_sigma

    def conditioning(self, texts: list[TextEmbedding], height: int, width: int, guided: bool = True) -> SDXLConditioning:
        # Read once: diffusers' ModelMixin.device/.dtype walk every UNet module (~2000 in SDXL) on each access.
        device, dtype = self.device, self.dtype
        tokens, pooled = guidance_batch(texts, guided, device, dtype)
        size = (height, width)
        time_ids = torch.tensor([list(size + (0, 0) + size)], dtype=dtype, device=device).repeat(tokens.shape[0], 1)
        return SDXLConditioning(tokens, {"text_embeds": pooled, "time_ids": time_ids}, guided)

    @torch.no_grad()
    def predict_noise(self, latents: torch.Tensor, t: torch.Tensor, conditioning: SDXLConditioning):
        # One UNet call on the guidance batch [unconditional; conditional], as diffusers does (attention/ relies on it).
        model_in = self.pipe.scheduler.scale_model_input(torch.cat([latents] * 2) if conditioning.guided else latents, t)
        noise = self.pipe.unet(model_in, t, encoder_hidden_states=conditioning.tokens,
                               added_cond_kwargs=conditioning.added, return_dict=False)[0]
        self.unet_evaluations += model_in.shape[0]
        return guidance_branches(noise, conditioning.guided)

    def step(self, noise: torch.Tensor, t: torch.Tensor, latents: torch.Tensor,
             generators: list[torch.Generator] | None = None) -> torch.Tensor:
        return self.pipe.scheduler.step(noise, t, latents, generator=generators, return_dict=False)[0]

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> list[Image.Image]:
        # The VAE keeps one dtype for the whole run (see __init__); only the latents are cast. A draft VAE
        # (AutoencoderTiny, TAESDXL) decodes the same scaled latents, as diffusers' pipelines call it: its
        # scaling_factor is 1.0 and its output is in [-1, 1] like the VAE's.
        vae, dtype = (self._draft_vae, self.dtype) if self._decoding_draft else (self.pipe.vae, self._vae_dtype)
        self.decodes["draft_vae" if self._decoding_draft else "vae"] += latents.shape[0]
        latents = latents.to(dtype) / vae.config.scaling_factor
        images = vae.decode(latents, return_dict=False)[0]
        return self.pipe.image_processor.postprocess(images, output_type="pil")

    # attention layers ---------------------------------------------------------------------------
    def self_attention_layers(self) -> Mapping[str, int]:
        """The up blocks' attn1 (StoryDiffusion's choice), ranked by up block: SDXL's go coarse to fine
        (30 layers at 1/32 of the image, 6 at 1/16)."""
        layers = [name.removesuffix(".processor") for name in self.pipe.unet.attn_processors
                  if name.startswith("up_blocks.") and name.endswith("attn1.processor")]
        blocks = sorted({int(layer.split(".")[1]) for layer in layers})
        return {layer: blocks.index(int(layer.split(".")[1])) for layer in layers}


def _scheduler(name: str, ddim_config):
    """A diffusers scheduler on the loaded DDIM's noise schedule, set up as the distillation LoRAs' model cards
    use it (README, "Fast stories")."""
    from diffusers import EulerDiscreteScheduler, LCMScheduler, TCDScheduler

    if name == "euler_trailing":  # SDXL-Lightning
        return EulerDiscreteScheduler.from_config(ddim_config, timestep_spacing="trailing")
    if name == "lcm":
        return LCMScheduler.from_config(ddim_config)
    if name == "tcd":
        return TCDScheduler.from_config(ddim_config)
    raise ValueError(f"unknown scheduler {name}")

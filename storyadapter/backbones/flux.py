"""FLUX + the XLabs IP-Adapter behind the backbone interface (base.py), wrapping diffusers' FluxPipeline.

The pipeline comes from models/flux_loading.py with the IP-Adapter loaded. Taking it over (ip_adapter.py), the
backbone keeps the adapter's image projection and each double-stream block's `to_k_ip`/`to_v_ip` for GRCA
(attention/grca_flux.py), and gives every attention layer diffusers' plain `FluxAttnProcessor`: reference tokens are
fed once per iteration, never by the transformer. The denoising calls are those of `FluxPipeline.__call__`, op for op:
  * flow-matching Euler with the resolution-dependent shift (`mu` from the image's token count);
  * latents 2x2-packed into tokens; the renderer's noise is drawn unpacked, (1, 16, H/8, W/8), as diffusers draws it;
  * guidance: FLUX.1-dev is guidance-distilled: the guidance embedding takes render.distilled_guidance (diffusers'
    default 3.5) and one transformer pass per step does it. True CFG (render.guidance_scale > 1) adds the negative
    prompt's pass, batched [unconditional; conditional] as on SDXL; the renderer combines the two as diffusers'
    `true_cfg_scale` does;
  * text: T5 up to 512 tokens (no 77-token windows) and CLIP's pooled vector, truncated at 77 tokens as diffusers does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch
from PIL import Image
from torch import nn

from .base import TextEmbedding, guidance_batch, guidance_branches
from .ip_adapter import IPAdapterBackbone

DEFAULT_DISTILLED_GUIDANCE = 3.5  # FluxPipeline.__call__'s guidance_scale default
MAX_T5_TOKENS = 512  # FluxPipeline's max_sequence_length (its largest)
SCHEDULER = "flow_euler"  # the one scheduler FLUX denoises with here (spec.SCHEDULERS)


@dataclass(frozen=True)
class FluxConditioning:
    tokens: torch.Tensor  # (branches * B, 512, joint dim): T5; the unconditional half first with true CFG
    pooled: torch.Tensor  # (branches * B, 768): CLIP's pooled vector
    text_ids: torch.Tensor  # (512, 3): zeros, as diffusers' encode_prompt makes them
    image_ids: torch.Tensor  # (tokens, 3): the packed latents' positions
    guided: bool  # True: true CFG, two branches


class FluxBackbone(IPAdapterBackbone):
    DENOISER = "transformer"

    def __init__(self, pipe):
        from diffusers.models.transformers.transformer_flux import FluxAttnProcessor, FluxIPAdapterAttnProcessor

        self._take_over(pipe, FluxIPAdapterAttnProcessor, FluxAttnProcessor, "FLUX IP-Adapter layers")
        self._guidance = DEFAULT_DISTILLED_GUIDANCE
        self._offload_mode = "none"  # model.offload (offload())
        self._offload_device: torch.device | None = None  # where offloaded weights compute
        self._latent_size: tuple[int, int] | None = None  # (H/8, W/8) of the batch being denoised, for decode
        self.unet_evaluations = 0  # frames through the denoiser, one per branch and step (benchmarks, tests)

    # the model ----------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        # Under model.offload the weights rest on the host; the actor's GPU is where they compute.
        if self._offload_mode == "model":
            return self.pipe._execution_device  # as accelerate's hooks name it
        return self._offload_device if self._offload_device is not None else self.pipe.transformer.device

    @property
    def _offloaded(self) -> bool:
        return self._offload_device is not None

    @property
    def dtype(self) -> torch.dtype:
        return self.pipe.transformer.dtype

    def compile(self) -> None:
        self.pipe.transformer = torch.compile(self.pipe.transformer)

    def offload(self, mode: str, device: torch.device) -> None:
        """model.offload onto `device` (docs/flux.md, "Memory"):
          model   diffusers' enable_model_cpu_offload: each component moves in whole when it runs;
          blocks  diffusers' block-level group offloading of the transformer: its 57 blocks rest in (pinned) host
                  memory and stream in one at a time, the next one copied on a side CUDA stream while the current
                  one computes; the rest of the transformer (embedders, final norm) moves in for each pass. The text
                  encoders, VAE and image encoder sit on `device` (the text encoders leave after encoding:
                  release_text_encoders).
        Either way, the IP-Adapter's projection and K/V layers, which GRCA calls outside the transformer's forward
        once per iteration, stay on `device` (about 1 GB for XLabs' adapter in bf16), so the reference K/V are
        computed there and stay there while the blocks stream."""
        if mode == "model":
            self.pipe.enable_model_cpu_offload(device=device)
        elif mode == "blocks":
            for name in ("text_encoder", "text_encoder_2", "vae", "image_encoder"):
                getattr(self.pipe, name).to(device)
            # Streams need an accelerator; without one (tests offload onto the CPU itself) the blocks load in turn.
            self.pipe.transformer.enable_group_offload(onload_device=device, offload_device=torch.device("cpu"),
                                                       offload_type="block_level", num_blocks_per_group=1,
                                                       use_stream=device.type == "cuda")
        else:
            raise ValueError(f"unknown offload mode {mode}")
        self._offload_mode, self._offload_device = mode, device
        self._projection.to(device)
        for layer in self._reference_layers.values():
            layer.to_k.to(device)
            layer.to_v.to(device)

    def set_distilled_guidance(self, scale: float | None) -> None:
        self._guidance = DEFAULT_DISTILLED_GUIDANCE if scale is None else float(scale)

    def set_scheduler(self, name: str) -> None:
        if name != SCHEDULER:
            raise NotImplementedError(f"FLUX denoises with {SCHEDULER} only, not {name}")

    # text ---------------------------------------------------------------------------------------
    def text_windows(self, texts: list[str]) -> int:
        return 1  # T5 reads up to 512 tokens at once: no 77-token windows to split a long prompt into

    @torch.no_grad()
    def encode_text(self, prompt: str, negative: str, windows: int) -> TextEmbedding:
        tokens, pooled = self._encode(prompt)
        negative_tokens, negative_pooled = self._encode(negative)
        return TextEmbedding(tokens, pooled, negative_tokens, negative_pooled)

    def _encode(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        tokens, pooled, _ = self.pipe.encode_prompt(prompt=text, prompt_2=None, device=self.device,
                                                    max_sequence_length=MAX_T5_TOKENS)
        # Kept on the host (4 MB of T5 tokens per prompt in bf16 at full size); `conditioning` copies a batch's in.
        return tokens.cpu(), pooled.cpu()

    @property
    def releases_text_encoders(self) -> bool:
        # model offload already moves them out after use; under blocks (and none) they sit on the GPU until released
        return self.device.type == "cuda" and self._offload_mode != "model"

    def release_text_encoders(self) -> None:
        self.pipe.text_encoder.to("cpu")
        self.pipe.text_encoder_2.to("cpu")
        torch.cuda.empty_cache()

    # denoising ----------------------------------------------------------------------------------
    def timesteps(self, steps: int, height: int, width: int) -> torch.Tensor:
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift, retrieve_timesteps

        scheduler = self.pipe.scheduler
        sigmas = np.linspace(1.0, 1 / steps, steps)
        mu = calculate_shift(self._tokens(height, width), scheduler.config.get("base_image_seq_len", 256),
                             scheduler.config.get("max_image_seq_len", 4096), scheduler.config.get("base_shift", 0.5),
                             scheduler.config.get("max_shift", 1.15))
        timesteps, _ = retrieve_timesteps(scheduler, steps, self.device, sigmas=sigmas, mu=mu)
        scheduler.set_begin_index(0)
        return timesteps

    def _tokens(self, height: int, width: int) -> int:
        """The packed latents' token count: one per 2x2 patch of the VAE's latents."""
        factor = self.pipe.vae_scale_factor * 2
        return (height // factor) * (width // factor)

    def latent_shape(self, height: int, width: int) -> tuple[int, ...]:
        factor = self.pipe.vae_scale_factor * 2
        channels = self.pipe.transformer.config.in_channels // 4
        return (1, channels, 2 * (height // factor), 2 * (width // factor))

    def initial_latents(self, noise: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = noise.shape
        self._latent_size = (height, width)
        packed = self.pipe._pack_latents(noise, batch, channels, height, width)
        return packed.to(self.device, self.dtype)

    def conditioning(self, texts: list[TextEmbedding], height: int, width: int, guided: bool = True) -> FluxConditioning:
        device, dtype = self.device, self.dtype
        tokens, pooled = guidance_batch(texts, guided, device, dtype)
        text_ids = torch.zeros(tokens.shape[1], 3).to(device=device, dtype=dtype)
        factor = self.pipe.vae_scale_factor * 2
        image_ids = self.pipe._prepare_latent_image_ids(1, height // factor, width // factor, device, dtype)
        return FluxConditioning(tokens, pooled, text_ids, image_ids, guided)

    @torch.no_grad()
    def predict_noise(self, latents: torch.Tensor, t: torch.Tensor, conditioning: FluxConditioning):
        model_in = torch.cat([latents] * 2) if conditioning.guided else latents
        guidance = torch.full([1], self._guidance, device=self.device, dtype=torch.float32).expand(model_in.shape[0])
        timestep = t.expand(model_in.shape[0]).to(model_in.dtype)
        noise = self.pipe.transformer(hidden_states=model_in, timestep=timestep / 1000, guidance=guidance,
                                      pooled_projections=conditioning.pooled, encoder_hidden_states=conditioning.tokens,
                                      txt_ids=conditioning.text_ids, img_ids=conditioning.image_ids,
                                      return_dict=False)[0]
        self.unet_evaluations += model_in.shape[0]
        return guidance_branches(noise, conditioning.guided)

    def step(self, noise: torch.Tensor, t: torch.Tensor, latents: torch.Tensor,
             generators: list[torch.Generator] | None = None) -> torch.Tensor:
        return self.pipe.scheduler.step(noise, t, latents, return_dict=False)[0]  # deterministic: no generators

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> list[Image.Image]:
        vae = self.pipe.vae
        height, width = self._latent_size
        factor = self.pipe.vae_scale_factor
        latents = self.pipe._unpack_latents(latents, height * factor, width * factor, factor)
        latents = (latents / vae.config.scaling_factor) + vae.config.shift_factor
        images = vae.decode(latents.to(_execution_device(vae)), return_dict=False)[0]
        return self.pipe.image_processor.postprocess(images, output_type="pil")

    # references ---------------------------------------------------------------------------------
    def _image_encoder_device(self, encoder: nn.Module) -> torch.device:
        return _execution_device(encoder)

    # attention layers ---------------------------------------------------------------------------
    def reference_processor_class(self) -> type:
        from ..attention.grca_flux import FluxGlobalReferenceAttnProcessor

        return FluxGlobalReferenceAttnProcessor

    def self_attention_layers(self) -> Mapping[str, int]:
        return {}  # consistent self-attention is written for a UNet's self-attention (spec.py refuses it on FLUX)


def _execution_device(module: nn.Module) -> torch.device:
    """Where `module` computes: its GPU under model.offload, where its weights rest on the host (or on `meta`)."""
    from diffusers.utils.torch_utils import get_module_execution_device

    return get_module_execution_device(module)

"""Baseline: the refinement loop as the upstream Story-Adapter script runs it, on our loaded pipeline.

Mirrors jwmao1/story-adapter (`run.py` + `ip_adapter.StoryAdapterXL.generate` + `IPAttnProcessor`):

* one full `StableDiffusionXLPipeline.__call__` per frame;
* the prompt and negative prompt are re-encoded (`pipe.encode_prompt`) for every frame of every iteration;
* every frame passes *all* N reference images of the previous iteration through the CLIP image
  encoder again (N images per frame, N² per iteration);
* the 4N image tokens are appended to the 77 text tokens and travel through the UNet as
  `encoder_hidden_states`, so every cross-attention layer projects them with to_k_ip/to_v_ip at every
  denoising step, then attends to all 4N in one softmax;
* the unconditional branch carries 4N tokens of the all-zero embedding (N identical copies);
* in iteration 0 (no images) the image branch still runs on the text tokens, with scale 0.

It is built from the same pieces as the engine (`load_pipeline`: same weights, DDIM scheduler, VAE,
image projection and to_k_ip/to_v_ip), with the same noise, so the two render the same images up
to float rounding. Kernels are generous to the baseline: SDPA everywhere (upstream's IPAttnProcessor
uses bmm + an explicit softmax) and no attention-map side output.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from storyadapter.attention.processors import CrossAttentionProcessor, split_heads, text_attention
from storyadapter.worker.renderer import RenderSettings, initial_noise

TEXT_TOKENS = 77  # upstream splits encoder_hidden_states at a fixed 77: text | image tokens


class UpstreamIPAttnProcessor(CrossAttentionProcessor):
    """Story-Adapter's IPAttnProcessor: text attention + scale * attention over every appended image token."""

    def __init__(self, to_k_ip: nn.Linear, to_v_ip: nn.Linear, text_tokens: int = TEXT_TOKENS):
        super().__init__()
        self.to_k_ip = to_k_ip
        self.to_v_ip = to_v_ip
        self.text_tokens = text_tokens
        self.scale = 1.0

    def attend(self, attn, query, context):
        if context.shape[1] == self.text_tokens:  # no images: upstream attends to the text, scale 0
            text, image, scale = context, context, 0.0
        else:
            text, image = context[:, : self.text_tokens], context[:, self.text_tokens :]
            scale = self.scale
        out = text_attention(attn, query, text)
        # The reference tokens are projected again in every layer, at every step, for every frame.
        ip_key, ip_value = split_heads(self.to_k_ip(image), attn.heads), split_heads(self.to_v_ip(image), attn.heads)
        return out + scale * F.scaled_dot_product_attention(query, ip_key, ip_value)


class UpstreamStoryAdapter:
    """`StoryAdapterXL` on a pipeline from `load_pipeline` (IP-Adapter loaded, not yet touched by GRCA)."""

    def __init__(self, pipe, settings: RenderSettings):
        from diffusers.models.attention_processor import AttnProcessor2_0, IPAdapterAttnProcessor2_0

        self.pipe = pipe
        self.settings = settings
        unet = pipe.unet
        self.projection = unet.encoder_hid_proj.image_projection_layers[0]  # upstream's ImageProjModel: proj + norm
        processors = {}
        for name, proc in unet.attn_processors.items():
            if isinstance(proc, IPAdapterAttnProcessor2_0):
                processors[name] = UpstreamIPAttnProcessor(proc.to_k_ip[0], proc.to_v_ip[0])
            else:
                processors[name] = AttnProcessor2_0()
        unet.set_attn_processor(processors)
        unet.encoder_hid_proj = None  # upstream projects the image embeddings itself and appends them to the prompt
        self.image_encodes = 0  # images through the CLIP image encoder
        self.text_encodes = 0  # encode_prompt calls

    @property
    def device(self) -> torch.device:
        return self.pipe.unet.device

    def set_scale(self, scale: float) -> None:
        for proc in self.pipe.unet.attn_processors.values():
            if isinstance(proc, UpstreamIPAttnProcessor):
                proc.scale = float(scale)

    @torch.no_grad()
    def get_image_embeds(self, images: list[Image.Image]) -> tuple[torch.Tensor, torch.Tensor]:
        encoder = self.pipe.image_encoder
        pixels = self.pipe.feature_extractor(images, return_tensors="pt").pixel_values
        embeds = encoder(pixels.to(encoder.device, encoder.dtype)).image_embeds
        self.image_encodes += len(images)
        embeds = embeds.to(self.projection.image_embeds.weight.dtype)
        cond = self.projection(embeds)
        uncond = self.projection(torch.zeros_like(embeds))
        return cond.reshape(1, -1, cond.shape[-1]), uncond.reshape(1, -1, uncond.shape[-1])  # (1, 4N, C)

    @torch.no_grad()
    def generate(self, prompt: str, negative: str, references: list[Image.Image] | None, scale: float, seed: int) -> Image.Image:
        pipe, s = self.pipe, self.settings
        self.set_scale(scale)
        tokens, neg_tokens, pooled, neg_pooled = pipe.encode_prompt(
            prompt, device=self.device, num_images_per_prompt=1, do_classifier_free_guidance=True,
            negative_prompt=negative if negative.strip() else None,
        )
        self.text_encodes += 1
        if references:
            cond, uncond = self.get_image_embeds(references)
            tokens = torch.cat([tokens, cond.to(tokens.dtype)], dim=1)
            neg_tokens = torch.cat([neg_tokens, uncond.to(neg_tokens.dtype)], dim=1)
        shape = (1, pipe.unet.config.in_channels, s.height // pipe.vae_scale_factor, s.width // pipe.vae_scale_factor)
        return pipe(
            prompt_embeds=tokens, negative_prompt_embeds=neg_tokens,
            pooled_prompt_embeds=pooled, negative_pooled_prompt_embeds=neg_pooled,
            height=s.height, width=s.width, num_inference_steps=s.steps, guidance_scale=s.guidance_scale,
            latents=initial_noise(seed, shape).to(self.device, tokens.dtype),
        ).images[0]


@dataclass
class UpstreamIteration:
    iteration: int
    frames: int
    wall_s: float
    image_encodes: int
    text_encodes: int


def run_story(
    adapter: UpstreamStoryAdapter,
    prompts: list[tuple[str, str]],
    iterations: int,
    scale: Callable[[int], float],
    seed: Callable[[int], int],
    out_dir: Path,
) -> tuple[list[UpstreamIteration], list[Image.Image]]:
    """Iteration 0 from text, then `iterations` refinements, every frame conditioned on all previous frames."""
    size = adapter.settings.reference_size
    references: list[Image.Image] | None = None
    stats = []
    images: list[Image.Image] = []
    for it in range(iterations + 1):
        start, encodes, texts = time.perf_counter(), adapter.image_encodes, adapter.text_encodes
        folder = Path(out_dir) / f"iter_{it:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        images = []
        for frame, (prompt, negative) in enumerate(prompts):
            image = adapter.generate(prompt, negative, references if it > 0 else None, scale(it), seed(frame))
            image.save(folder / f"frame_{frame:04d}.png")
            images.append(image)
        references = [im.resize((size, size), Image.Resampling.BICUBIC) for im in images]
        stats.append(UpstreamIteration(it, len(prompts), time.perf_counter() - start,
                                       adapter.image_encodes - encodes, adapter.text_encodes - texts))
    return stats, images

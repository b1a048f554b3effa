"""The Story-Adapter renderer for one process: SDXL + IP-Adapter with Global Reference Cross-Attention.

Reads top to bottom as the algorithm:
  1. `encode_text`       - prompt embeddings, once per frame for the whole run;
  2. `set_references`    - CLIP global embeddings of all N reference frames -> 4N tokens -> K/V, once per iteration;
     `set_reference_weights` - optional per-frame logits/gates over those references, per batch (references.py);
  3. `render`            - DDIM denoising with classifier-free guidance for a batch of frames;
  4. `embed_images`      - each new frame resized to 256 px and encoded once: the next iteration's bank.
With consistent self-attention (method=storydiffusion|hybrid, csa.py), step 3 comes in two phases:
  3a. `render_identity`  - a character's identity frames as one batch, filling its ID bank;
  3b. `render_consistent` - frames attending to the ID banks of the characters they name.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ..attention import csa, grca
from ..backbones import sdxl_text as text


@dataclass(frozen=True)
class RenderSettings:
    steps: int = 50
    height: int = 1024
    width: int = 1024
    guidance_scale: float = 7.5
    reference_size: int = 256
    reference_sdpa: str = "split"  # split | joint: reference attention as 2 SDPA calls per layer or 1 (grca.py)


def initial_noise(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Starting latents from a CPU generator: the same numbers on any device and in any batch."""
    return torch.randn(shape, generator=torch.Generator("cpu").manual_seed(int(seed)), dtype=torch.float32)


class StoryRenderer:
    def __init__(self, pipe, settings: RenderSettings, consistency: csa.CSASettings | None = None):
        if pipe.image_encoder is None:
            raise ValueError("the pipeline needs an IP-Adapter image encoder (call load_ip_adapter first)")
        self.pipe = pipe
        self.settings = settings
        self.projection, self.processors = grca.install(pipe.unet)
        for proc in self.processors.values():
            proc.joint = settings.reference_sdpa == "joint"
        # CSA goes in after GRCA, which re-creates every processor; None leaves SDXL's self-attention untouched.
        self.csa = csa.install(pipe.unet, consistency) if consistency is not None else None
        self._heads = {name: self._attention_heads(name) for name in self.processors}
        self._cross_dim = int(pipe.unet.config.cross_attention_dim)
        self._tokens_per_reference = 0  # IP-Adapter tokens per bank row, known once a bank is loaded
        if pipe.vae.dtype == torch.float16 and pipe.vae.config.force_upcast:
            # SDXL's VAE overflows in fp16. Upcast it once, so decoding casts latents, never weights (diffusers'
            # pipeline converts the VAE fp16 -> fp32 -> fp16 on every call). Same pixels: fp16 -> fp32 is exact.
            pipe.vae.to(torch.float32)
        self._vae_dtype = pipe.vae.dtype

    @property
    def device(self) -> torch.device:
        return self.pipe.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.pipe.unet.dtype

    @property
    def embedding_dim(self) -> int:
        return int(self.pipe.image_encoder.config.projection_dim)

    def _attention_heads(self, processor_name: str) -> int:
        module = self.pipe.unet.get_submodule(processor_name.removesuffix(".processor"))
        return module.heads

    # 1. text -------------------------------------------------------------------------------------
    def encode_text(self, prompt: str, negative: str, windows: int = 1) -> text.TextEmbedding:
        return text.encode(self.pipe, prompt, negative, windows)

    # 2. references -------------------------------------------------------------------------------
    @torch.no_grad()
    def set_references(self, bank: np.ndarray | None, scale: float) -> None:
        """Load the iteration's reference bank (N, D) into every GRCA layer; None means text only.

        Clears any per-frame weights: they index the rows of one bank.
        """
        self.set_reference_weights(None, None)
        if bank is None or scale == 0.0:
            for proc in self.processors.values():
                proc.set_references(None, None, 0)
                proc.scale = 0.0
            return
        embeds = torch.tensor(np.asarray(bank), dtype=self.dtype, device=self.device)  # copy: Ray hands read-only arrays
        cond = self.projection(embeds).reshape(1, -1, self._cross_dim)  # (1, 4N, C)
        # The unconditional branch sees the tokens of an all-zero embedding. Its N copies are identical,
        # and a softmax over identical copies equals one over a single copy, so 4 tokens suffice.
        uncond = self.projection(torch.zeros_like(embeds[:1])).reshape(1, -1, self._cross_dim)
        self._tokens_per_reference = cond.shape[1] // len(embeds)
        for name, proc in self.processors.items():
            proc.set_references(cond, uncond, self._heads[name])
            proc.scale = float(scale)

    @torch.no_grad()
    def set_reference_weights(self, bias: np.ndarray | None, gate: np.ndarray | None) -> None:
        """Per-frame weights for the next `render` call: `bias` (batch, N) logits added to each bank row's
        tokens, `gate` (batch,) multiplier of each frame's reference branch. None, None: uniform (the paper)."""
        bias_t = gate_t = None
        if bias is not None:
            bias_t = torch.tensor(np.asarray(bias), dtype=self.dtype, device=self.device)
            bias_t = bias_t.repeat_interleave(self._tokens_per_reference, dim=1)[:, None, None, :]
        if gate is not None:
            g = torch.tensor(np.asarray(gate), dtype=self.dtype, device=self.device)
            gate_t = torch.cat([g, g])[:, None, None, None]  # unconditional half first, as in `render`
        for proc in self.processors.values():
            proc.ref_bias, proc.ref_gate = bias_t, gate_t

    # 3. denoising --------------------------------------------------------------------------------
    @torch.no_grad()
    def render(self, embeddings: list[text.TextEmbedding], seeds: list[int], decode_singly: bool = False) -> list[Image.Image]:
        pipe, s = self.pipe, self.settings
        # Read once: diffusers' ModelMixin.device/.dtype walk every UNet module (~2000 in SDXL) on each access.
        device, dtype = self.device, self.dtype
        batch = len(embeddings)
        scheduler = pipe.scheduler
        scheduler.set_timesteps(s.steps, device=device)

        latent_shape = (1, pipe.unet.config.in_channels, s.height // pipe.vae_scale_factor, s.width // pipe.vae_scale_factor)
        latents = torch.cat([initial_noise(seed, latent_shape) for seed in seeds]).to(device, dtype)
        latents = latents * scheduler.init_noise_sigma

        # Classifier-free guidance layout: unconditional half first, as diffusers does.
        tokens = torch.cat([e.negative_tokens for e in embeddings] + [e.tokens for e in embeddings]).to(device, dtype)
        pooled = torch.cat([e.negative_pooled for e in embeddings] + [e.pooled for e in embeddings]).to(device, dtype)
        size = (s.height, s.width)
        time_ids = torch.tensor([list(size + (0, 0) + size)], dtype=dtype, device=device).repeat(2 * batch, 1)
        added = {"text_embeds": pooled, "time_ids": time_ids}

        for step, t in enumerate(scheduler.timesteps):
            if self.csa is not None:
                self.csa.begin_step(step)
            model_in = scheduler.scale_model_input(torch.cat([latents] * 2), t)
            noise = pipe.unet(model_in, t, encoder_hidden_states=tokens, added_cond_kwargs=added, return_dict=False)[0]
            uncond, cond = noise.chunk(2)
            noise = uncond + s.guidance_scale * (cond - uncond)
            latents = scheduler.step(noise, t, latents, return_dict=False)[0]
        if decode_singly:
            return [image for i in range(batch) for image in self._decode(latents[i:i + 1])]
        return self._decode(latents)

    # 3a/3b. consistent self-attention -----------------------------------------------------------
    def render_identity(self, character: str, embeddings: list[text.TextEmbedding], seeds: list[int],
                        draw_seed: int) -> list[Image.Image]:
        """Write phase: `character`'s identity frames in one batch, each attending to the others; stores its ID bank.

        The batch is fixed at `id_length` frames, so its VAE decode (in fp32 for SDXL's VAE) would be the GPU's
        peak: the frames are decoded one at a time (README, "Methods": what fits in 24 GB)."""
        with self.csa.writing(character, len(embeddings), draw_seed):
            return self.render(embeddings, seeds, decode_singly=True)

    def render_consistent(self, embeddings: list[text.TextEmbedding], seeds: list[int],
                          characters: list[tuple[str, ...]], draw_seeds: list[int]) -> list[Image.Image]:
        """Read phase: each frame attends to the ID banks of its characters (none: plain self-attention)."""
        with self.csa.reading(characters, draw_seeds):
            return self.render(embeddings, seeds)

    def _decode(self, latents: torch.Tensor) -> list[Image.Image]:
        # The VAE keeps one dtype for the whole run (see __init__); only the latents are cast.
        vae = self.pipe.vae
        latents = latents.to(self._vae_dtype) / vae.config.scaling_factor
        images = vae.decode(latents, return_dict=False)[0]
        return self.pipe.image_processor.postprocess(images, output_type="pil")

    # 4. reference embeddings ---------------------------------------------------------------------
    @torch.no_grad()
    def embed_images(self, images: list[Image.Image]) -> np.ndarray:
        """CLIP global (projected) embeddings, (len(images), D) float32; one encoder pass per call."""
        size = self.settings.reference_size
        small = [im.convert("RGB").resize((size, size), Image.Resampling.BICUBIC) for im in images]
        pixels = self.pipe.feature_extractor(small, return_tensors="pt").pixel_values
        encoder = self.pipe.image_encoder
        out = encoder(pixels.to(encoder.device, encoder.dtype)).image_embeds
        return out.float().cpu().numpy()

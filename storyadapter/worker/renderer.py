"""The Story-Adapter renderer for one process: a backbone (backbones/: SDXL + IP-Adapter) with Global Reference
Cross-Attention. The model's calls go through the backbone; what is here is the algorithm.

Reads top to bottom as the algorithm:
  1. `encode_text`       - prompt embeddings, once per frame for the whole run;
  2. `set_references`    - CLIP global embeddings of all N reference frames -> 4N tokens -> K/V, once per iteration;
     `set_reference_weights` - optional per-frame logits/gates over those references, per batch (references.py);
  3. `render`            - denoising with classifier-free guidance for a batch of frames (SDXL: DDIM);
  4. `embed_images`      - each new frame resized to 256 px and encoded once: the next iteration's bank.
With consistent self-attention (method=storydiffusion|hybrid, csa.py), step 3 comes in two phases:
  3a. `render_identity`  - a character's identity frames as one batch, filling its ID bank;
  3b. `render_consistent` - frames attending to the ID banks of the characters they name.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from .. import passes
from ..attention import csa, grca
from ..backbones.base import Backbone, TextEmbedding
from ..spec import RenderSpec


# The render.* settings as the config defines them (config.RenderConfig, frozen): a new render key reaches the
# renderer as a field, with no copy in between. reference_sdpa: split | joint, 2 SDPA calls per layer or 1 (grca.py).
RenderSettings = RenderSpec


def initial_noise(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Starting latents from a CPU generator: the same numbers on any device and in any batch."""
    return torch.randn(shape, generator=torch.Generator("cpu").manual_seed(int(seed)), dtype=torch.float32)


def batch_noise(seed: int, frames: int, shape: tuple[int, ...]) -> torch.Tensor:
    """`frames` starting latents as ONE draw from one generator: frame i gets the i-th slice. This is how upstream
    StoryDiffusion's identity batch starts: one pipeline call with one seeded generator, whose latents diffusers'
    `randn_tensor` draws for the whole batch at once. Not `frames` draws of one frame each: a CPU generator's
    normal draw depends on the draw's size, so only the same call gives the same numbers."""
    return initial_noise(seed, (frames, *shape[1:]))


def step_generator(seed: int) -> torch.Generator:
    """A frame's generator for the noise a stochastic scheduler adds between steps: a function of the frame's
    seed alone, kept apart from its starting noise's stream."""
    return torch.Generator("cpu").manual_seed((int(seed) * 1_000_003 + 0x5EED) % 2**63)


class StoryRenderer:
    def __init__(self, backbone: Backbone, settings: RenderSettings, consistency: csa.CSASettings | None = None):
        self.backbone = backbone
        self.grca = grca.install(backbone, joint=settings.reference_sdpa == "joint")
        # CSA goes in after GRCA; None leaves the backbone's self-attention untouched.
        self.csa = csa.install(backbone, consistency) if consistency is not None else None
        self._tokens_per_reference = 0  # IP-Adapter tokens per bank row, known once a bank is loaded
        self.use(settings)

    def use(self, settings: RenderSettings, draft_lora: bool = False) -> None:
        """Render with `settings` from now on: a draft iteration's or the last pass's (RenderSpec.for_pass), the
        draft LoRA on or off. Called at iteration boundaries, before the iteration's references and batches."""
        self.settings = settings
        self.backbone.set_scheduler(settings.scheduler)
        self.backbone.set_distilled_guidance(settings.distilled_guidance)
        self.backbone.use_draft_lora(draft_lora)
        branches = 2 if self.guided else 1  # the attention processors' batch: [unconditional; conditional] or [conditional]
        for proc in self.grca.values():
            proc.branches = branches
        if self.csa is not None:
            self.csa.branches = branches

    @property
    def guided(self) -> bool:
        """Classifier-free guidance on: at a scale of 1 or less only the conditional branch counts (as in diffusers)."""
        return passes.branches(self.settings) == 2

    @property
    def device(self) -> torch.device:
        return self.backbone.device

    @property
    def dtype(self) -> torch.dtype:
        return self.backbone.dtype

    @property
    def embedding_dim(self) -> int:
        return self.backbone.embedding_dim

    # 1. text -------------------------------------------------------------------------------------
    def encode_text(self, prompt: str, negative: str, windows: int = 1) -> TextEmbedding:
        return self.backbone.encode_text(prompt, negative, windows)

    # 2. references -------------------------------------------------------------------------------
    @torch.no_grad()
    def set_references(self, bank: np.ndarray | None, scale: float) -> None:
        """Load the iteration's reference bank (N, D) into every GRCA layer; None means text only.

        Clears any per-frame weights: they index the rows of one bank.
        """
        self.set_reference_weights(None, None)
        if bank is None or scale == 0.0:
            for proc in self.grca.values():
                proc.set_references(None, None)
                proc.scale = 0.0
            return
        embeds = torch.tensor(np.asarray(bank), dtype=self.dtype, device=self.device)  # copy: Ray hands read-only arrays
        tokens = self.backbone.image_tokens(embeds)  # (N, T, C)
        cond = tokens.reshape(1, -1, tokens.shape[-1])  # (1, TN, C)
        # The unconditional branch sees the tokens of an all-zero embedding. Its N copies are identical,
        # and a softmax over identical copies equals one over a single copy, so T tokens suffice.
        zero = self.backbone.image_tokens(torch.zeros_like(embeds[:1]))
        uncond = zero.reshape(1, -1, zero.shape[-1])
        self._tokens_per_reference = tokens.shape[1]
        for proc in self.grca.values():
            proc.set_references(cond, uncond)
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
            gate_t = (torch.cat([g, g]) if self.guided else g)[:, None, None, None]  # unconditional half first, as in `render`
        for proc in self.grca.values():
            proc.ref_bias, proc.ref_gate = bias_t, gate_t

    # 3. denoising --------------------------------------------------------------------------------
    @torch.no_grad()
    def render(self, embeddings: list[TextEmbedding], seeds: list[int], decode_singly: bool = False,
               batch_seed: int | None = None) -> list[Image.Image]:
        """`seeds`: each frame's own noise; or `batch_seed`: the batch's frames start from one draw (`batch_noise`)."""
        model, s = self.backbone, self.settings
        timesteps = model.timesteps(s.steps, s.height, s.width)
        shape = model.latent_shape(s.height, s.width)
        if batch_seed is not None:
            noise = batch_noise(batch_seed, len(embeddings), shape)
        else:
            noise = torch.cat([initial_noise(seed, shape) for seed in seeds])
        latents = model.initial_latents(noise)
        guided = self.guided
        conditioning = model.conditioning(embeddings, s.height, s.width, guided=guided)
        # Used by stochastic schedulers only (LCM, TCD); a batch from one draw has no per-frame seeds: its i-th frame's.
        step_seeds = list(seeds) if batch_seed is None else [batch_seed + i for i in range(len(embeddings))]
        step_noise = [step_generator(seed) for seed in step_seeds]

        for step, t in enumerate(timesteps):
            if self.csa is not None:
                self.csa.begin_step(step)
            uncond, cond = model.predict_noise(latents, t, conditioning)
            noise = uncond + s.guidance_scale * (cond - uncond) if guided else cond  # classifier-free guidance
            latents = model.step(noise, t, latents, step_noise)
        if decode_singly:
            return [image for i in range(len(embeddings)) for image in model.decode(latents[i:i + 1])]
        return model.decode(latents)

    # 3a/3b. consistent self-attention -----------------------------------------------------------
    def render_identity(self, character: str, embeddings: list[TextEmbedding], seeds: list[int],
                        draw_seed: int, batch_seed: int | None = None) -> list[Image.Image]:
        """Write phase: `character`'s identity frames in one batch, each attending to the others; stores its ID bank.
        Their noise: `seeds` per frame, or one draw from `batch_seed` (render.seed_policy=shared, as upstream).

        The batch is fixed at `id_length` frames, so its VAE decode (in fp32 for SDXL's VAE) would be the GPU's
        peak: the frames are decoded one at a time (docs/methods.md, "The ID bank, measured": what fits in 24 GB)."""
        with self.csa.writing(character, len(embeddings), draw_seed):
            return self.render(embeddings, seeds, decode_singly=True, batch_seed=batch_seed)

    def render_consistent(self, embeddings: list[TextEmbedding], seeds: list[int],
                          characters: list[tuple[str, ...]], draw_seeds: list[int]) -> list[Image.Image]:
        """Read phase: each frame attends to the ID banks of its characters (none: plain self-attention)."""
        with self.csa.reading(characters, draw_seeds):
            return self.render(embeddings, seeds)

    # 4. reference embeddings ---------------------------------------------------------------------
    @torch.no_grad()
    def embed_images(self, images: list[Image.Image]) -> np.ndarray:
        """Image-encoder global (projected) embeddings, (len(images), D) float32; one encoder pass per call."""
        size = self.settings.reference_size
        small = [im.convert("RGB").resize((size, size), Image.Resampling.BICUBIC) for im in images]
        return self.backbone.encode_images(small)

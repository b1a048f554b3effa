"""FLOPs per frame of the full-size model (SDXL + IP-Adapter SDXL shapes) at any resolution, counted on
the meta device: shapes only, no weights, no memory, seconds on a CPU.

For the engine and for the upstream-style loop, per frame at a bank of N:
  engine   = steps x UNet step (CFG batch 2, GRCA over 4N reference tokens with K/V precomputed)
             + VAE decode + 1 image encode + set_references / N (once per iteration)
  upstream = steps x UNet step (CFG batch 2, to_k_ip/to_v_ip over 4N tokens in every layer, every step)
             + VAE decode + N image encodes + text encode
These are counts, not timings: they say how the work grows with N where no GPU is at hand.
"""

from __future__ import annotations

import numpy as np
import torch


def _unet_step(pipe, text, size: int, device, dtype, extra_tokens=None):
    tokens = torch.cat([text.negative_tokens, text.tokens]).to(device, dtype)
    if extra_tokens is not None:
        tokens = torch.cat([tokens, extra_tokens.to(device, dtype)], dim=1)
    added = {"text_embeds": torch.cat([text.negative_pooled, text.pooled]).to(device, dtype),
             "time_ids": torch.zeros(2, 6, device=device, dtype=dtype)}
    latents = torch.zeros(2, pipe.unet.config.in_channels, size // 8, size // 8, device=device, dtype=dtype)
    return lambda: pipe.unet(latents, 10, encoder_hidden_states=tokens, added_cond_kwargs=added, return_dict=False)


def full_size_flops(ns: list[int], steps: int, size: int, prompt: str, negative: str) -> dict:
    from bench.harness import count_flops
    from bench.upstream_loop import UpstreamStoryAdapter
    from storyadapter.backbones.sdxl import SDXLBackbone
    from storyadapter.models import sdxl_random
    from storyadapter.worker.renderer import RenderSettings, StoryRenderer

    device, dtype = torch.device("meta"), torch.bfloat16
    pipe = sdxl_random.build_pipeline(device, dtype)
    settings = RenderSettings(steps=steps, height=size, width=size, guidance_scale=7.5)
    renderer = StoryRenderer(SDXLBackbone(pipe), settings)
    text = renderer.encode_text(prompt, negative)
    text_flops = count_flops(lambda: renderer.encode_text(prompt, negative))
    decode = count_flops(lambda: pipe.vae.decode(torch.zeros(1, 4, size // 8, size // 8, device=device, dtype=dtype)))
    px = settings.reference_size
    encode = count_flops(lambda: pipe.image_encoder(torch.zeros(1, 3, 224, 224, device=device, dtype=dtype)))
    engine = {}
    for n in ns:
        bank = np.zeros((n, pipe.image_encoder.config.projection_dim), np.float32)
        set_refs = count_flops(lambda: renderer.set_references(bank, 0.4))
        step = count_flops(_unet_step(pipe, text, size, device, dtype))
        engine[n] = steps * step + decode + encode + set_refs / n
    # GRCA took the IP-Adapter's processors and image projection over: upstream gets a pipeline of its own.
    pipe = sdxl_random.build_pipeline(device, dtype)
    upstream_adapter = UpstreamStoryAdapter(pipe, settings)
    upstream = {}
    for n in ns:
        embeds = torch.zeros(n, pipe.image_encoder.config.projection_dim, device=device, dtype=dtype)
        project = count_flops(lambda: upstream_adapter.projection(embeds))
        image_tokens = upstream_adapter.projection(embeds).reshape(1, -1, pipe.unet.config.cross_attention_dim)
        step = count_flops(_unet_step(pipe, text, size, device, dtype, torch.cat([image_tokens] * 2)))
        upstream[n] = steps * step + decode + n * encode + 2 * project + text_flops
    return {"size": size, "steps": steps, "reference_px": px, "engine": engine, "upstream": upstream}

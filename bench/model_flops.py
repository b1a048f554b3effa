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


# --- FLUX.1-dev + XLabs IP-Adapter v2 ----------------------------------------------------------------

FLUX_REFERENCE_PX = 224  # CLIP ViT-L/14's input: every reference and frame embedding is taken at this size


def flux_step_inputs(pipe, size: int, batch: int, device, dtype):
    """The transformer's inputs for one step at `size`: packed latents (one token per 16x16 pixels), T5 tokens,
    CLIP's pooled embedding, the distilled guidance scale and the RoPE ids (as FluxPipeline builds them)."""
    from storyadapter.models.flux_config import T5_MAX_TOKENS

    cfg = pipe.transformer.config
    side = size // 16
    img_ids = torch.zeros(side * side, 3, device=device, dtype=dtype)
    return dict(hidden_states=torch.zeros(batch, side * side, cfg.in_channels, device=device, dtype=dtype),
                encoder_hidden_states=torch.zeros(batch, T5_MAX_TOKENS, cfg.joint_attention_dim, device=device, dtype=dtype),
                pooled_projections=torch.zeros(batch, cfg.pooled_projection_dim, device=device, dtype=dtype),
                timestep=torch.ones(batch, device=device, dtype=dtype), img_ids=img_ids,
                txt_ids=torch.zeros(T5_MAX_TOKENS, 3, device=device, dtype=dtype),
                guidance=torch.full((batch,), 3.5, device=device, dtype=dtype), return_dict=False)


def flux_parts(pipe, size: int = 1024, batch: int = 1, ns: tuple[int, ...] = (25, 100, 400)) -> dict:
    """FLOPs of each part of a FLUX frame render at `size`, counted on the meta device: T5 (512 tokens) and CLIP
    text encodes, one transformer pass (`batch` 1: distilled guidance; 2: true CFG) without and with the
    IP-Adapter's attention over 4N reference tokens, the IP K/V projections of 4N tokens, VAE decode, one image
    encode; and the parameter count of each component. `pipe`: flux_random.build_pipeline("meta", torch.bfloat16)."""
    from bench.harness import count_flops
    from storyadapter.models.flux_config import CLIP_MAX_TOKENS, IP_TOKENS, T5_MAX_TOKENS

    device, dtype = torch.device("meta"), torch.bfloat16
    transformer, cross = pipe.transformer, pipe.transformer.config.joint_attention_dim
    ip_layers = [p for p in transformer.attn_processors.values() if isinstance(p, torch.nn.Module)]
    ids = lambda n: torch.zeros(1, n, device=device, dtype=torch.long)  # noqa: E731
    out = {"size": size, "batch": batch, "reference_px": FLUX_REFERENCE_PX,
           "t5": count_flops(lambda: pipe.text_encoder_2(ids(T5_MAX_TOKENS))),
           "clip_text": count_flops(lambda: pipe.text_encoder(ids(CLIP_MAX_TOKENS))),
           "vae_decode": count_flops(lambda: pipe.vae.decode(
               torch.zeros(1, pipe.vae.config.latent_channels, size // 8, size // 8, device=device, dtype=dtype))),
           "image_encode": count_flops(lambda: pipe.image_encoder(
               torch.zeros(1, 3, FLUX_REFERENCE_PX, FLUX_REFERENCE_PX, device=device, dtype=dtype))),
           "image_project": count_flops(lambda: transformer.encoder_hid_proj(
               [torch.zeros(1, 1, pipe.image_encoder.config.projection_dim, device=device, dtype=dtype)])),
           "parameters": {name: sum(p.numel() for p in getattr(pipe, name).parameters())
                          for name in ("transformer", "text_encoder", "text_encoder_2", "vae", "image_encoder")}}
    adapter = sum(p.numel() for layer in ip_layers for p in layer.parameters())
    adapter += sum(p.numel() for p in transformer.encoder_hid_proj.parameters())
    out["parameters"]["transformer"] -= adapter
    out["parameters"]["ip_adapter"] = adapter
    # Without references: the stock processor with no image tokens is FLUX's own attention (plus zeros).
    inputs = flux_step_inputs(pipe, size, batch, device, dtype)
    no_refs = [torch.zeros(batch, 0, cross, device=device, dtype=dtype)]
    out["transformer_step"] = count_flops(lambda: transformer(**inputs, joint_attention_kwargs={"ip_hidden_states": no_refs}))
    out["ip_step"], out["ip_kv"] = {}, {}
    for n in ns:
        tokens = torch.zeros(batch, IP_TOKENS * n, cross, device=device, dtype=dtype)
        with_refs = count_flops(lambda: transformer(**flux_step_inputs(pipe, size, batch, device, dtype),
                                                    joint_attention_kwargs={"ip_hidden_states": [tokens]}))
        kv = count_flops(lambda: [(layer.to_k_ip[0](tokens), layer.to_v_ip[0](tokens)) for layer in ip_layers])
        out["ip_kv"][n] = kv  # what the stock processor recomputes at every step; GRCA once per iteration
        out["ip_step"][n] = with_refs - out["transformer_step"] - kv  # the attention over 4N tokens itself
    return out


def flux_frame_flops(parts: dict, steps: int) -> dict[int, dict]:
    """Per refinement frame at a bank of N, as the engine renders FLUX (GRCA: reference tokens and their K/V once
    per iteration, shared by the N frames): text once per frame (the worker encodes every prompt once per run;
    true CFG also encodes the negative prompt), `steps` transformer passes attending to 4N tokens, VAE decode, and
    the one image encode that puts this frame into the next iteration's bank."""
    text = (parts["t5"] + parts["clip_text"]) * parts["batch"]
    rows = {}
    for n, ip in parts["ip_step"].items():
        step = parts["transformer_step"] + ip
        references = (n * parts["image_project"] + parts["ip_kv"][n]) / n  # once per iteration, over N frames
        rows[n] = {"total": steps * step + text + parts["vae_decode"] + parts["image_encode"] + references,
                   "transformer": steps * step, "ip_attention": steps * ip, "text": text,
                   "vae_decode": parts["vae_decode"], "image_encode": parts["image_encode"], "references": references}
    return rows


def flux_flops(ns: list[int], steps: int = 28, size: int = 1024) -> dict:
    """FLUX per-frame FLOPs with distilled guidance (one transformer pass per step) and with true CFG (two)."""
    from storyadapter.models import flux_random

    pipe = flux_random.build_pipeline("meta", torch.bfloat16)
    out = {"size": size, "steps": steps, "reference_px": FLUX_REFERENCE_PX}
    for name, batch in (("distilled", 1), ("true_cfg", 2)):
        parts = flux_parts(pipe, size, batch, tuple(ns))
        out[name] = {"parts": parts, "frame": flux_frame_flops(parts, steps)}
    out["parameters"] = out["distilled"]["parts"]["parameters"]
    return out


def flux_markdown(flux: dict, sdxl: dict | None) -> list[str]:
    """The FLUX table of the benchmark report, with SDXL's engine figure at the same N beside it."""
    d, c = flux["distilled"], flux["true_cfg"]
    p = d["parts"]
    lines = ["", f"## FLUX.1-dev + XLabs IP-Adapter v2, {flux['size']}x{flux['size']}, {flux['steps']} steps: TFLOP per "
             "refinement frame", "",
             "Counted on the meta device like the SDXL table (models/flux_random.py's full-size shapes). Distilled "
             "guidance runs the transformer once per step; true CFG twice (and encodes the negative prompt too). "
             "Per frame: the steps, the IP-Adapter's attention over 4N reference tokens in the 19 double blocks, "
             "T5 (512 tokens) + CLIP text once, VAE decode, one CLIP image encode at "
             f"{flux['reference_px']} px, the reference K/V once per iteration / N.", "",
             "| N | FLUX distilled | FLUX true CFG | of which IP attention (distilled) | SDXL engine (CFG) |",
             "|---:|---:|---:|---:|---:|"]
    sdxl_engine = {int(n): v for n, v in (sdxl or {}).get("engine", {}).items()}
    for n, row in d["frame"].items():
        s = sdxl_engine.get(int(n))
        lines.append(f"| {n} | {row['total'] / 1e12:.0f} | {c['frame'][n]['total'] / 1e12:.0f} | "
                     f"{row['ip_attention'] / 1e12:.1f} | {f'{s / 1e12:.0f}' if s else '-'} |")
    params = ", ".join(f"{k} {v / 1e9:.2f} B" for k, v in flux["parameters"].items())
    lines += ["", f"One transformer pass {p['transformer_step'] / 1e12:.1f} TFLOP without references; T5 "
              f"{p['t5'] / 1e12:.2f}, CLIP text {p['clip_text'] / 1e12:.3f}, VAE decode {p['vae_decode'] / 1e12:.2f}, "
              f"image encode {p['image_encode'] / 1e12:.3f} TFLOP. Parameters: {params}."]
    return lines

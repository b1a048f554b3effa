"""Bytes of a StoryDiffusion ID bank for the full-size model (SDXL + IP-Adapter shapes), counted on the meta
device: one UNet step runs on shapes only, and a hook records the input of every self-attention layer that
CSA replaces (the up blocks). Per identity image and step a bank holds, for each such layer, the sampled
tokens of both classifier-free-guidance halves: 2 x rate x tokens x channels values.

    python -m bench.csa_bank [--size 1024] [--steps 50] [--id-length 4] [--dtype float16]
"""

from __future__ import annotations

import json

import torch

from storyadapter.methods import CSASettings
from storyadapter.errors import ArgumentParser


def up_block_self_attention_shapes(size: int) -> tuple[dict[str, tuple[int, int]], dict[str, int]]:
    """Layer name -> (tokens, channels) of each up-block attn1 input, from a meta-device UNet step; and the
    parameter count of each pipeline component (what the GPU holds besides activations and bank slices)."""
    from storyadapter.models import sdxl_random

    device, dtype = torch.device("meta"), torch.bfloat16
    pipe = sdxl_random.build_pipeline(device, dtype)
    unet = pipe.unet
    shapes: dict[str, tuple[int, int]] = {}
    for name, module in unet.named_modules():
        if name.startswith("up_blocks.") and name.endswith(".attn1"):
            module.register_forward_pre_hook(lambda m, args, name=name: shapes.update({name: tuple(args[0].shape[1:])}))
    latents = torch.zeros(2, unet.config.in_channels, size // 8, size // 8, device=device, dtype=dtype)
    tokens = torch.zeros(2, 77, unet.config.cross_attention_dim, device=device, dtype=dtype)
    added = {"text_embeds": torch.zeros(2, 1280, device=device, dtype=dtype),
             "time_ids": torch.zeros(2, 6, device=device, dtype=dtype)}
    image_embeds = [torch.zeros(2, 1, pipe.image_encoder.config.projection_dim, device=device, dtype=dtype)]
    with torch.no_grad():
        unet(latents, 10, encoder_hidden_states=tokens, added_cond_kwargs={**added, "image_embeds": image_embeds},
             return_dict=False)
    params = {name: sum(p.numel() for p in module.parameters())
              for name in ("unet", "text_encoder", "text_encoder_2", "vae", "image_encoder")
              if (module := getattr(pipe, name, None)) is not None}
    return shapes, params


def bank_bytes(size: int, steps: int, settings: CSASettings, bytes_per_value: int) -> dict:
    shapes, params = up_block_self_attention_shapes(size)
    low = min(t for t, _ in shapes.values())  # the 1/32 resolution samples at sa32, the rest at sa64
    per_image_step = sum(2 * (settings.sa32 if t == low else settings.sa64) * t * c * bytes_per_value
                         for t, c in shapes.values())
    stored_steps = sum(1 for s in range(steps) if settings.rate(s) > 0)  # plain steps store nothing
    per_character = per_image_step * stored_steps * settings.id_length
    return {
        "size": size, "steps": steps, "stored_steps": stored_steps, "id_length": settings.id_length,
        "sa32": settings.sa32, "sa64": settings.sa64, "bytes_per_value": bytes_per_value,
        "layers": len(shapes), "layers_at_1_32": sum(1 for t, _ in shapes.values() if t == low),
        "bytes_per_identity_image_per_step": int(per_image_step),
        "bytes_per_character": int(per_character),
        "bytes_per_character_per_step": int(per_image_step * settings.id_length),  # what one read step moves
        "weights_bytes": {name: n * bytes_per_value for name, n in params.items()},
    }


def main() -> None:
    from bench.harness import bench_environment

    bench_environment()
    p = ArgumentParser(prog="python -m bench.csa_bank", description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--id-length", type=int, default=4)
    p.add_argument("--dtype", choices=("float16", "float32"), default="float16")
    a = p.parse_args()
    out = bank_bytes(a.size, a.steps, CSASettings(id_length=a.id_length), 2 if a.dtype == "float16" else 4)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

"""GPU memory of FLUX.1-dev + XLabs IP-Adapter v2 per `model.offload` choice, counted on the meta device (as
bench/csa_bank.py counts a bank): which GPUs render FLUX at 1024².

Weights: each component's parameters x 2 bytes (bf16), from models/flux_random.py's full-size shapes.
Activations: the peak of live tensors while each phase runs on meta tensors (bench/meta_memory.py: every tensor an
op makes counted until freed, attention as a fused kernel): text (T5 at 512 tokens + CLIP), one transformer pass at
the size (batch 1: distilled guidance; 2: true CFG) with the adapter over 4N reference tokens, VAE decode, image
encode. Also on the GPU for the whole iteration: GRCA's reference K/V (19 layers x 2 x 4N tokens x 3072). The
worker's text embeddings (T5 512 x 4096 + pooled 768 per prompt) stay in host memory (backbones/flux.py).

Peak resident bytes per `model.offload` choice, as backbones/flux.py and frame_worker.py place the weights:
  none        the whole pipeline is loaded onto the GPU and the worker encodes every prompt (start-up), then the text
              encoders leave it (rendering): the larger of the two;
  model       diffusers' enable_model_cpu_offload: one component at a time, the largest component plus its
              activations; the IP-Adapter's projection and K/V layers stay on the GPU (GRCA calls them outside the
              transformer);
  blocks      diffusers' block-level group offloading of the transformer (backbones/flux.py): its blocks rest in host
              memory and stream in one at a time, the next one prefetched on a side stream while the current one
              computes (2 blocks in flight); the rest of the transformer (embedders, final norm) moves in for each
              pass; the VAE, image encoder and the IP-Adapter's layers stay on the GPU; the text encoders are on it
              while the prompts are encoded (start-up), then leave: the larger of the two phases;
  sequential  diffusers' enable_sequential_cpu_offload: one layer at a time, the largest layer plus the largest
              activations (every step streams all 24 GB of transformer weights from host memory). Refused by
              spec.py in this environment (accelerate / transformers); counted for reference.
Counted, not measured on a GPU; a card also needs its CUDA context and allocator slack (`--margin-gib`).

    python -m bench.flux_memory [--size 1024] [--n 25 100 400] [--out bench/results]
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from storyadapter.errors import ArgumentParser

GIB = 2**30
BYTES = 2  # bf16
OFFLOAD = ("none", "model", "blocks", "sequential")
CARDS_GIB = (24, 48, 80)


def _weights(pipe) -> dict[str, int]:
    transformer = pipe.transformer
    ip_layers = [p for p in transformer.attn_processors.values() if isinstance(p, torch.nn.Module)]
    adapter = sum(p.numel() for m in ip_layers + [transformer.encoder_hid_proj] for p in m.parameters())
    params = {name: sum(p.numel() for p in getattr(pipe, name).parameters())
              for name in ("transformer", "text_encoder_2", "text_encoder", "vae", "image_encoder")}
    params["transformer"] -= adapter
    params["ip_adapter"] = adapter
    return {name: n * BYTES for name, n in params.items()}


def _largest_layer(pipe) -> int:
    """Bytes of the largest module that owns parameters directly (what sequential offload moves at once)."""
    return max(sum(p.numel() for p in m.parameters(recurse=False)) * BYTES
               for name in ("transformer", "text_encoder_2", "text_encoder", "vae", "image_encoder")
               for m in getattr(pipe, name).modules())


def streamed(pipe) -> dict[str, int]:
    """Bytes of block offload's resident transformer: the parameters outside its block lists (embedders, final
    norm: moved in for each pass) and the largest two consecutive blocks (the one computing and the one
    prefetched), in the order they run (19 double-stream blocks, then 38 single-stream)."""
    transformer = pipe.transformer
    lists = [m for m in transformer.children() if isinstance(m, torch.nn.ModuleList)]
    own = lambda m: sum(p.numel() for n, p in m.named_parameters() if "processor" not in n.split("."))  # noqa: E731
    blocks = [own(b) * BYTES for blocks in lists for b in blocks]
    outside = sum(own(m) for n, m in transformer.named_children()
                  if not isinstance(m, torch.nn.ModuleList) and n != "encoder_hid_proj")  # the adapter's projection
    return {"transformer_root": outside * BYTES, "blocks_in_flight": max(a + b for a, b in zip(blocks, blocks[1:])),
            "blocks": len(blocks)}


def activations(pipe, size: int, n: int, batch: int) -> dict[str, int]:
    from bench.meta_memory import peak_activation_bytes
    from bench.model_flops import FLUX_REFERENCE_PX, flux_step_inputs
    from storyadapter.models.flux_config import CLIP_MAX_TOKENS, IP_TOKENS, T5_MAX_TOKENS

    meta, dtype = torch.device("meta"), torch.bfloat16

    def text():
        pipe.text_encoder_2(torch.zeros(batch, T5_MAX_TOKENS, dtype=torch.long, device=meta))
        pipe.text_encoder(torch.zeros(batch, CLIP_MAX_TOKENS, dtype=torch.long, device=meta))

    def step():
        tokens = torch.zeros(batch, IP_TOKENS * n, pipe.transformer.config.joint_attention_dim, device=meta, dtype=dtype)
        pipe.transformer(**flux_step_inputs(pipe, size, batch, meta, dtype), joint_attention_kwargs={"ip_hidden_states": [tokens]})

    def decode():
        pipe.vae.decode(torch.zeros(1, pipe.vae.config.latent_channels, size // 8, size // 8, device=meta, dtype=dtype))

    def encode():
        pipe.image_encoder(torch.zeros(1, 3, FLUX_REFERENCE_PX, FLUX_REFERENCE_PX, device=meta, dtype=dtype))

    phases = dict(text=text, transformer=step, vae=decode, image_encoder=encode)
    return {name: peak_activation_bytes(fn) for name, fn in phases.items()}


def held(n: int, frames: int, batch: int) -> dict[str, int]:
    """GRCA's reference K/V (on the GPU through an iteration) and the text embeddings of `frames` prompts (host)."""
    from storyadapter.models.flux_config import (IP_HIDDEN, IP_LAYERS, IP_TOKENS, T5_CONFIG, T5_MAX_TOKENS,
                                                 TRANSFORMER_CONFIG)

    per_prompt = (T5_MAX_TOKENS * T5_CONFIG["d_model"] + TRANSFORMER_CONFIG["pooled_projection_dim"]) * BYTES
    return {"reference_kv": IP_LAYERS * 2 * IP_TOKENS * n * IP_HIDDEN * BYTES, "text_embeddings": frames * batch * per_prompt}


def peaks(weights: dict[str, int], act: dict[str, int], kept: dict[str, int], largest_layer: int,
          stream: dict[str, int]) -> dict[str, int]:
    """Peak GPU bytes per offload choice, and the two phases of `none` and `blocks` (start-up and rendering)."""
    text_w = weights["text_encoder_2"] + weights["text_encoder"]
    denoise_w = weights["transformer"] + weights["ip_adapter"] + weights["vae"] + weights["image_encoder"]
    kv = kept["reference_kv"]
    startup = text_w + denoise_w + act["text"]  # no references yet at start-up
    rendering = denoise_w + kv + max(act["transformer"], act["vae"], act["image_encoder"])
    # model: the adapter's layers and the K/V stay; T5, CLIP, the transformer, the VAE, the image encoder take turns
    by_component = {"text": weights["text_encoder_2"], "transformer": weights["transformer"], "vae": weights["vae"],
                    "image_encoder": weights["image_encoder"]}
    # blocks: the transformer streams; the rest of the pipeline as with none
    resident = weights["ip_adapter"] + weights["vae"] + weights["image_encoder"]
    blocks_startup = text_w + resident + act["text"]  # every block on the host until the first pass
    blocks_rendering = (resident + stream["transformer_root"] + stream["blocks_in_flight"] + kv
                        + max(act["transformer"], act["vae"], act["image_encoder"]))
    return {
        "none": max(startup, rendering), "none_startup": startup, "none_rendering": rendering,
        "blocks": max(blocks_startup, blocks_rendering), "blocks_startup": blocks_startup,
        "blocks_rendering": blocks_rendering,
        "model": weights["ip_adapter"] + kv + max(w + act[c] for c, w in by_component.items()),
        "sequential": kv + largest_layer + max(act.values()),
    }


def count(size: int, ns: list[int], margin_gib: float) -> dict:
    from storyadapter.models import flux_random

    pipe = flux_random.build_pipeline("meta", torch.bfloat16)
    weights, largest, stream = _weights(pipe), _largest_layer(pipe), streamed(pipe)
    out = {"size": size, "bytes_per_value": BYTES, "margin_gib": margin_gib, "cards_gib": list(CARDS_GIB),
           "weights_bytes": weights, "largest_layer_bytes": largest, "streamed_bytes": stream, "guidance": {}}
    for guidance, batch in (("distilled", 1), ("true_cfg", 2)):
        rows = {}
        for n in ns:
            act = activations(pipe, size, n, batch)
            kept = held(n, n, batch)  # one worker rendering all N frames keeps N prompts' embeddings (host)
            peak = peaks(weights, act, kept, largest, stream)
            fits = {mode: [c for c in CARDS_GIB if peak[mode] / GIB + margin_gib <= c] for mode in OFFLOAD}
            rows[n] = {"activations_bytes": act, "held_bytes": kept, "peak_bytes": peak, "fits_gib": fits}
        out["guidance"][guidance] = rows
    return out


def markdown(result: dict) -> str:
    w = result["weights_bytes"]
    gib = lambda b: f"{b / GIB:.1f}"  # noqa: E731
    lines = [f"# FLUX.1-dev + XLabs IP-Adapter v2: GPU memory at {result['size']}² (bf16, counted on the meta device)", "",
             "| component | weights GiB |", "|---|---:|"]
    names = {"transformer": "transformer (FLUX.1-dev)", "text_encoder_2": "T5-XXL encoder", "text_encoder": "CLIP-L text",
             "vae": "VAE", "ip_adapter": "IP-Adapter v2", "image_encoder": "CLIP-L image encoder"}
    lines += [f"| {names[k]} | {gib(v)} |" for k, v in w.items()]
    lines += [f"| all | {gib(sum(w.values()))} |", ""]
    for guidance, rows in result["guidance"].items():
        lines += [f"## {guidance.replace('_', ' ')}: peak resident GiB by `model.offload` "
                  f"(fits: peak + {result['margin_gib']:g} GiB <= card)", "",
                  "| N | none | of which start-up / rendering | model | blocks | of which start-up / rendering "
                  "| sequential (refused here) | activations: transformer / VAE decode | reference K/V "
                  "| text embeddings (host) |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for n, r in rows.items():
            p, f, a, h = r["peak_bytes"], r["fits_gib"], r["activations_bytes"], r["held_bytes"]
            cells = [f"{gib(p[m])} ({min(f[m]) if f[m] else '>' + str(max(result['cards_gib']))})" for m in OFFLOAD]
            cells.insert(1, f"{gib(p['none_startup'])} / {gib(p['none_rendering'])}")
            cells.insert(4, f"{gib(p['blocks_startup'])} / {gib(p['blocks_rendering'])}")
            lines.append(f"| {n} | " + " | ".join(cells) + f" | {gib(a['transformer'])} / {gib(a['vae'])} | "
                         f"{gib(h['reference_kv'])} | {gib(h['text_embeddings'])} |")
        lines.append("")
    lines += ["In brackets: the smallest of 24 / 48 / 80 GiB cards it fits. `none`: the whole pipeline on the GPU "
              "while the worker encodes every prompt at start-up, then without the text encoders; `model`: "
              "enable_model_cpu_offload, the IP-Adapter's layers and the reference K/V staying on the GPU; `blocks`: "
              f"the transformer's {result['streamed_bytes']['blocks']} blocks streamed in one at a time (2 in flight: "
              f"{gib(result['streamed_bytes']['blocks_in_flight'])} GiB, plus "
              f"{gib(result['streamed_bytes']['transformer_root'])} GiB of embedders and final norm), the text "
              "encoders on the GPU while the prompts are encoded at start-up, then gone; "
              "`sequential`: enable_sequential_cpu_offload (streams the weights every step; refused in this "
              "environment). Text embeddings: one worker holding all N frames' prompts, in host memory."]
    return "\n".join(lines) + "\n"


def main() -> None:
    from bench.harness import bench_environment

    bench_environment()
    p = ArgumentParser(prog="python -m bench.flux_memory", description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--n", type=int, nargs="+", default=[25, 100, 400])
    p.add_argument("--margin-gib", type=float, default=1.0, help="CUDA context and allocator slack per card")
    p.add_argument("--out", default="bench/results")
    p.add_argument("--name", default="flux_memory")
    a = p.parse_args()
    result = count(a.size, a.n, a.margin_gib)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{a.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result)
    (out / f"{a.name}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()

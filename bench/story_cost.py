"""The cost of a story, counted: FLOPs per story for each render preset, and a tiny-model story per preset on CPU.

    python -m bench.story_cost            (run by `make bench`; writes bench/results/story_cost.{json,md})
    python -m bench.story_cost --model sdxl-random --device cuda --render-size 1024 --render-frames 2 \
        --render-refinements 2 --peak-tflops 989 --name story_cost_gpu           (run by `make bench-gpu`)

1. FLOPs per story of the full-size model (SDXL + IP-Adapter shapes, random weights on the meta device: shapes
   only, seconds on a CPU) for FRAMES frames and REFINEMENTS refinements at 1024², every part counted: text
   encoding (once per frame), every denoiser step of every iteration (its size, guidance and reference bank),
   VAE decode, the CLIP encode of each new frame, the reference K/V of each iteration, and with
   render.refine_strength each refinement's VAE encode of the previous frame (its denoiser steps cut to
   int(strength x steps), passes.steps_of).
2. The same presets render a story in this process: the tiny model on CPU (64 px; make bench), or with
   `--model sdxl-random --device cuda --render-size 1024` the full-size model on a GPU (make bench-gpu). Wall-clock
   ratios, the UNet evaluations the worker counted (they must equal the plan), and the TFLOP/s achieved: the
   story's FLOPs counted on the same model's shapes over its wall time (with --peak-tflops, a measured utilization).
3. An H100 estimate, labelled as one: FLOPs / (989 TFLOP/s x a utilization derived from a published SDXL
   measurement: diffusers' "Accelerate inference of text-to-image diffusion models" tutorial, SDXL 1024², 30 steps,
   batch 1, bf16 + SDPA + torch.compile, 2.54 s on an 80 GB A100 (312 TFLOP/s bf16 dense), divided into the FLOPs
   counted here for that render).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

from storyadapter import passes

RESULTS = Path(__file__).parent / "results"
FRAMES, REFINEMENTS, SIZE = 100, 10, 1024
# name -> Hydra overrides of the render preset
PRESETS = {
    "paper": ["render=paper"],
    "upstream": ["render=upstream"],
    "swift": ["render=swift"],
    "swift_all": ["render=swift", "render.draft.final=true"],
    # warm-started refinements at an example strength (not a tuned value: quality is not measurable here):
    # drafts 1..9 run 2 of their 4 steps, the last pass 25 of its 50
    "swift_refine": ["render=swift", "render.refine_strength=0.5"],
}
H100_PEAK = 989e12  # dense bf16, H100 SXM
PUBLISHED = {  # the measurement the utilization comes from
    "source": "https://huggingface.co/docs/diffusers/tutorials/fast_diffusion (diffusers docs, removed in "
              "huggingface/diffusers#11583; SDPA + torch.compile of UNet and VAE)",
    "gpu": "A100 80GB 400W", "peak_flops": 312e12, "steps": 30, "size": 1024, "seconds": 2.54,
}
TARGETS = {"swift": 1 / 5, "swift_all": 1 / 10}  # share of paper's FLOPs per story


def render_spec(overrides: list[str]):
    from storyadapter import spec
    from storyadapter.launch import compose_config

    return spec.from_config(compose_config(["story.path=story.txt", "output_dir=out", *overrides])).render


# --- 1. FLOPs ---------------------------------------------------------------------------------------------------

class FlopCounts:
    """FLOPs of each part of a render on one backbone, counted once per shape and cached."""

    def __init__(self, renderer, bank_rows: int, prompt: str = "a lighthouse keeper with a yellow coat",
                 negative: str = ""):
        from bench.harness import count_flops

        self.count, self.renderer, self.backbone = count_flops, renderer, renderer.backbone
        self.text = renderer.encode_text(prompt, negative)
        self.text_flops = count_flops(lambda: renderer.encode_text(prompt, negative))
        self.bank = np.zeros((bank_rows, renderer.embedding_dim), np.float32)
        self.set_references_flops = count_flops(lambda: renderer.set_references(self.bank, 0.4))
        pipe = self.backbone.pipe
        device, dtype = self.backbone.device, self.backbone.dtype
        px = pipe.image_encoder.config.image_size  # 224 for SDXL's CLIP ViT-H: every reference is resized to it
        self.image_encode_flops = count_flops(lambda: pipe.image_encoder(torch.zeros(1, 3, px, px, device=device, dtype=dtype)))
        self._cache: dict = {}

    def denoiser_step(self, settings, with_bank: bool) -> int:
        """One step of one frame: a UNet call on its guidance batch (2 or 1), GRCA over the bank when it has one."""
        key = ("step", settings.height, settings.width, passes.branches(settings), with_bank)
        if key not in self._cache:
            r, b = self.renderer, self.backbone
            r.use(dataclasses.replace(settings, scheduler="ddim"))  # the scheduler's own arithmetic is negligible
            r.set_references(self.bank if with_bank else None, 0.4 if with_bank else 0.0)
            cond = b.conditioning([self.text], settings.height, settings.width, guided=r.guided)
            latents = torch.zeros(b.latent_shape(settings.height, settings.width), device=b.device, dtype=b.dtype)
            self._cache[key] = self.count(lambda: b.predict_noise(latents, 10, cond))
        return self._cache[key]

    def decode(self, height: int, width: int) -> int:
        key = ("decode", height, width)
        if key not in self._cache:
            vae, b = self.backbone.pipe.vae, self.backbone
            z = torch.zeros(b.latent_shape(height, width), device=b.device, dtype=vae.dtype)
            self._cache[key] = self.count(lambda: vae.decode(z))
        return self._cache[key]

    def encode(self, height: int, width: int) -> int:
        """A warm start's VAE encode of one frame at its pass's size."""
        key = ("encode", height, width)
        if key not in self._cache:
            vae = self.backbone.pipe.vae
            x = torch.zeros(1, 3, height, width, device=self.backbone.device, dtype=vae.dtype)
            self._cache[key] = self.count(lambda: vae.encode(x))
        return self._cache[key]

    def story(self, render, frames: int, refinements: int) -> dict:
        """FLOPs of a whole story by part (one worker: set_references runs once per iteration and worker)."""
        parts = {"text_encode": frames * self.text_flops, "denoiser": 0, "vae_decode": 0, "clip_encode": 0,
                 "reference_kv": 0, "vae_encode": 0}
        for it in range(refinements + 1):
            s = render.for_pass(passes.is_draft(render, it, refinements))
            parts["denoiser"] += frames * passes.steps_of(s, it) * self.denoiser_step(s, with_bank=it > 0)
            parts["vae_decode"] += frames * self.decode(s.height, s.width)
            if it > 0 and s.refine_strength is not None:
                parts["vae_encode"] += frames * self.encode(s.height, s.width)
            parts["clip_encode"] += frames * self.image_encode_flops
            parts["reference_kv"] += self.set_references_flops if it > 0 else 0
        parts["total"] = sum(parts.values())
        return parts

    def plain_render(self, steps: int, size: int) -> int:
        """A text-only render as the published measurement ran it: text encode, steps x CFG UNet, VAE decode."""
        from storyadapter.spec import RenderSpec

        s = RenderSpec(steps=steps, height=size, width=size)
        return self.text_flops + steps * self.denoiser_step(s, with_bank=False) + self.decode(size, size)


def full_size_renderer():
    from storyadapter.backbones.sdxl import SDXLBackbone
    from storyadapter.models import sdxl_random
    from storyadapter.spec import RenderSpec
    from storyadapter.worker.renderer import StoryRenderer

    pipe = sdxl_random.build_pipeline(torch.device("meta"), torch.bfloat16)
    return StoryRenderer(SDXLBackbone(pipe), RenderSpec())


def story_flops(renderer, presets: dict, frames: int, refinements: int, size: int) -> dict:
    counts = FlopCounts(renderer, frames)
    out = {}
    for name, overrides in presets.items():
        render = render_spec(overrides + [f"render.height={size}", f"render.width={size}"])
        out[name] = counts.story(render, frames, refinements)
    published = counts.plain_render(PUBLISHED["steps"], PUBLISHED["size"]) if size == PUBLISHED["size"] else None
    return {"parts": out, "published_render_flops": published}


# --- 2. the same presets rendered: the tiny model on CPU (make bench), the full-size one on a GPU (make bench-gpu) ---

MODELS = ("tiny", "sdxl-random")


def rendered_spec(overrides: list[str], model: str, size: int, steps: int | None = None, draft_steps: int | None = None):
    """A preset's render settings as `render_stories` renders it: at `size` (drafts too), optionally fewer steps;
    the tiny model's CLIP takes 32-px references."""
    render = render_spec(overrides)
    draft = render.draft
    return dataclasses.replace(render, height=size, width=size, steps=steps or render.steps,
                               reference_size=32 if model == "tiny" else render.reference_size,
                               draft=dataclasses.replace(draft, height=None, width=None,
                                                         steps=(draft_steps or draft.steps) if draft.steps else None))


def render_stories(presets: dict, work: Path, frames: int, refinements: int, size: int = 64, steps: int | None = None,
                   draft_steps: int | None = None, model: str = "tiny", device: str = "cpu") -> dict:
    """Each preset renders the same story in this process (one worker, model `tiny` or `sdxl-random`, full size with
    random weights); wall seconds (the model's load left out) and the worker's UNet evaluations."""
    from storyadapter.engine import driver
    from storyadapter.story.parse import load_story
    from storyadapter.worker.frame_worker import FramePrompt, FrameWorker, WorkerSpec

    if model == "tiny":
        from storyadapter.models import tiny
        from storyadapter.models.loading import ModelSource

        d = tiny.tiny_dir(work / "cache")
        if not (d / "sdxl").exists():
            tiny.build(d)
        source = ModelSource(str(d / "sdxl"), str(d / "ip-adapter"))
    else:
        from storyadapter.models import sdxl_random

        source = sdxl_random.source()
    story_file = work / "story.txt"
    story_file.write_text("".join(f"a lighthouse keeper with a yellow coat, scene {i}\n" for i in range(frames)))
    story = load_story(story_file)
    out = {}
    for name, overrides in presets.items():
        render = rendered_spec(overrides, model, size, steps, draft_steps)
        worker = FrameWorker(WorkerSpec(source=source, settings=render, out_dir=str(work / name), seed=render.seed,
                                        seed_policy=render.seed_policy, threads=1, device=device,
                                        prompts=tuple(FramePrompt(*story.styled(f)) for f in story.frames)))
        plan = driver.RunPlan(story=story, out_dir=work / name, iterations=refinements, batch_size=1,
                              scale_start=render.scale_start, scale_end=render.scale_end, seed=render.seed,
                              seed_policy=render.seed_policy, drafts=passes.drafting(render),
                              all_drafts=render.draft.final)
        start = time.perf_counter()
        driver.run_iterations(plan, driver.LocalExecutor(worker))
        out[name] = {"wall_s": round(time.perf_counter() - start, 3),
                     "unet_evaluations": worker.renderer.backbone.unet_evaluations,
                     "planned_unet_evaluations": passes.unet_evaluations(render, frames, refinements)}
        del worker
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    paper = out.get("paper", next(iter(out.values())))
    for r in out.values():
        r["wall_vs_paper"] = round(r["wall_s"] / paper["wall_s"], 4)
    return out


def achieved(renderer, presets: dict, rendered: dict, frames: int, refinements: int, model: str, size: int,
             steps: int | None = None, draft_steps: int | None = None, peak_tflops: float | None = None) -> None:
    """Add to each rendered story its FLOPs, counted on `renderer` (the same model's shapes) for the settings it
    rendered with, and the TFLOP/s that makes (with `peak_tflops`: the share of the peak, a measured utilization)."""
    counts = FlopCounts(renderer, frames)
    for name, r in rendered.items():
        flops = counts.story(rendered_spec(presets[name], model, size, steps, draft_steps), frames, refinements)["total"]
        r["flops"] = flops
        r["achieved_tflops"] = round(flops / r["wall_s"] / 1e12, 4)
        if peak_tflops:
            r["utilization"] = round(flops / r["wall_s"] / (peak_tflops * 1e12), 4)


def tiny_renderer(work: Path):
    """The tiny model on CPU, for counting the FLOPs of the stories it rendered."""
    from storyadapter.models import tiny
    from storyadapter.models.loading import ModelSource, load_backbone
    from storyadapter.spec import RenderSpec
    from storyadapter.worker.renderer import StoryRenderer

    d = tiny.tiny_dir(work / "cache")
    source = ModelSource(str(d / "sdxl"), str(d / "ip-adapter"))
    return StoryRenderer(load_backbone(source, torch.device("cpu"), torch.float32), RenderSpec())


# --- the report -------------------------------------------------------------------------------------------------

def report(flops: dict, tiny: dict, frames: int, refinements: int, size: int, rendered_with: dict | None = None) -> dict:
    parts = flops["parts"]
    paper = parts["paper"]["total"]
    result = {
        "frames": frames, "refinements": refinements, "size": size,
        "flops_per_story": {name: p["total"] for name, p in parts.items()},
        "flops_by_part": parts,
        "share_of_paper": {name: round(p["total"] / paper, 5) for name, p in parts.items()},
        "targets": {name: {"at_most": t, "share": round(parts[name]["total"] / paper, 5),
                           "met": parts[name]["total"] <= t * paper} for name, t in TARGETS.items() if name in parts},
        "tiny_cpu_story": tiny,  # the rendered stories (the full-size model on a GPU with --model sdxl-random)
        "rendered_with": rendered_with or {"model": "tiny", "device": "cpu", "size": 64},
    }
    published = flops["published_render_flops"]
    if published:
        utilization = published / (PUBLISHED["seconds"] * PUBLISHED["peak_flops"])
        result["h100_estimate"] = {
            "label": "ESTIMATE, not a measurement: FLOPs / (989 TFLOP/s x utilization)",
            "utilization": round(utilization, 4), "published": PUBLISHED, "published_render_flops": published,
            "minutes_per_story_one_h100": {name: round(p["total"] / (H100_PEAK * utilization) / 60, 2)
                                           for name, p in parts.items()},
        }
    return result


def markdown(r: dict) -> str:
    lines = [f"# The cost of a story: {r['frames']} frames, {r['refinements']} refinements, {r['size']}²", "",
             "Counted by `python -m bench.story_cost` (full-size SDXL + IP-Adapter shapes on the meta device; "
             "one worker). PFLOP per story:", "",
             "| preset | total | denoiser | VAE decode | VAE encode | CLIP encode | text | reference K/V | share of paper |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, p in r["flops_by_part"].items():
        lines.append(f"| {name} | {p['total'] / 1e15:.1f} | {p['denoiser'] / 1e15:.1f} | {p['vae_decode'] / 1e15:.2f} | {p['vae_encode'] / 1e15:.2f} | "
                     f"{p['clip_encode'] / 1e15:.3f} | {p['text_encode'] / 1e15:.4f} | {p['reference_kv'] / 1e15:.4f} | "
                     f"{r['share_of_paper'][name]:.4f} |")
    lines += ["", "Targets (results, not timed tests): " + "; ".join(
        f"{n} <= {t['at_most']:.2f} of paper: {t['share']:.4f} ({'met' if t['met'] else 'NOT met'})" for n, t in r["targets"].items())]
    est = r.get("h100_estimate")
    if est:
        p = est["published"]
        lines += ["", f"**H100 estimate (not measured):** utilization {est['utilization']:.3f}, from {p['seconds']} s for a "
                      f"{p['steps']}-step {p['size']}² SDXL render on an {p['gpu']} ({p['source']}), applied to 989 TFLOP/s. "
                      "Minutes per story on one H100: " + ", ".join(f"{n} {m}" for n, m in est["minutes_per_story_one_h100"].items())
                  + "; divide by the GPU count for a cluster (frames of an iteration are independent)."]
    t, w = r["tiny_cpu_story"], r["rendered_with"]
    lines += ["", f"Rendered here (model={w['model']} on {w['device']}, {w['size']} px; the presets' own steps, guidance "
                  "and iterations):", "",
              "| preset | wall s | vs paper | UNet evaluations (workers) | planned | TFLOP/s achieved | utilization |",
              "|---|---|---|---|---|---|---|"]
    lines += [f"| {n} | {x['wall_s']} | {x['wall_vs_paper']} | {x['unet_evaluations']} | {x['planned_unet_evaluations']} | "
              f"{x.get('achieved_tflops', '')} | {x.get('utilization', '')} |" for n, x in t.items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    from bench.harness import bench_environment

    bench_environment()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=FRAMES)
    parser.add_argument("--refinements", type=int, default=REFINEMENTS)
    parser.add_argument("--size", type=int, default=SIZE)
    parser.add_argument("--model", choices=MODELS, default="tiny",
                        help="what renders the stories: tiny (CPU, make bench) or sdxl-random (full size, make bench-gpu)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--render-size", type=int, default=64, help="the rendered stories' size in px")
    parser.add_argument("--tiny-frames", "--render-frames", dest="tiny_frames", type=int, default=3)
    parser.add_argument("--render-refinements", type=int, default=None, help="the rendered stories' (default: --refinements)")
    parser.add_argument("--tiny-steps", type=int, default=None, help="the last pass's steps on the tiny model (default: the preset's)")
    parser.add_argument("--tiny-draft-steps", type=int, default=None)
    parser.add_argument("--peak-tflops", type=float, default=None, help="one device's dense peak: adds a measured utilization")
    parser.add_argument("--name", default="story_cost", help="results file name (bench/results/NAME.{json,md})")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--work", type=Path, default=None, help="scratch folder for the renders (default: a temporary one)")
    args = parser.parse_args(argv)
    import tempfile

    if args.device == "cpu":
        torch.set_num_threads(1)
    full = full_size_renderer()
    flops = story_flops(full, PRESETS, args.frames, args.refinements, args.size)
    refinements = args.refinements if args.render_refinements is None else args.render_refinements
    shape = dict(model=args.model, size=args.render_size, steps=args.tiny_steps, draft_steps=args.tiny_draft_steps)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        rendered = render_stories(PRESETS, work, args.tiny_frames, refinements, device=args.device, **shape)
        counter = full if args.model == "sdxl-random" else tiny_renderer(work)
        achieved(counter, PRESETS, rendered, args.tiny_frames, refinements, peak_tflops=args.peak_tflops, **shape)
    result = report(flops, rendered, args.frames, args.refinements, args.size,
                    {"model": args.model, "device": args.device, "size": args.render_size})
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / f"{args.name}.md").write_text(markdown(result))
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()

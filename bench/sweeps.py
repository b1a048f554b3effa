"""The GPU questions of issue 15 that the loops in throughput.py do not answer, each in a clean child process:

  * seconds per frame render by batch size, with and without torch.compile, and under kernel variants
    (`sweep_variants`: cuDNN autotuning, one SDPA call for both CFG halves, fp16 instead of the preset's dtype),
    with the achieved TFLOP/s and share of peak (FLOPs per frame counted once in the growth section);
  * what the per-batch fp16 -> fp32 -> fp16 VAE conversion the renderer no longer does would cost;
  * peak memory against bank size N, fitted to a line, and the largest N that fits a 24 GB and an 80 GB card.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from pathlib import Path

import numpy as np
import torch

VARIANTS = {  # name -> (WorkerSpec fields, RenderSettings fields)
    "default": ({}, {}),
    "nondeterministic": ({"deterministic": False}, {}),  # model.deterministic=false: cudnn.benchmark on
    "joint_sdpa": ({}, {"reference_sdpa": "joint"}),  # render.reference_sdpa=joint
    "float16": ({"dtype": "float16"}, {}),  # fp16 UNet, VAE upcast once to fp32
}


def sweep_points(cfg) -> list[dict]:
    points = [{"variant": "default", "batch": b, "compile": c} for c in cfg.sweep_compile for b in cfg.batch_sizes]
    points += [{"variant": v, "batch": cfg.batch_sizes[0], "compile": False} for v in cfg.sweep_variants]
    return points


def sweep_child(cfg_dict: dict, work: str, point: dict) -> dict:
    """Time `sweep_reps` batches of `point['batch']` refinement frames (bank of `frames` references) on one worker."""
    from bench.harness import PeakMemory, child_config, make_story, model_source, sync, worker_spec
    from storyadapter.worker.frame_worker import FrameWorker

    cfg = child_config(cfg_dict)
    spec_fields, settings_fields = VARIANTS[point["variant"]]
    batch = point["batch"]
    out = Path(work) / f"sweep-{point['variant']}-b{batch}-c{int(point['compile'])}"
    out.mkdir(parents=True, exist_ok=True)
    story = make_story(cfg, batch, out)
    spec = worker_spec(cfg, story, model_source(cfg), out, point["compile"])
    spec = dataclasses.replace(spec, settings=dataclasses.replace(spec.settings, **settings_fields), **spec_fields)
    t = time.perf_counter()
    worker = FrameWorker(spec)
    load_s = time.perf_counter() - t
    bank = np.random.default_rng(0).normal(size=(cfg.frames, worker.embedding_dim)).astype(np.float32)
    worker.begin_iteration(1, bank, 0.4)
    frames = list(range(batch))
    t = time.perf_counter()
    worker.render_batch(1, frames)  # warm-up; with torch.compile, the compilation for this batch shape
    sync(cfg.device)
    warmup_s = time.perf_counter() - t
    times = []
    with PeakMemory(cfg.device) as mem:
        for _ in range(cfg.sweep_reps):
            t = time.perf_counter()
            worker.render_batch(1, frames)
            sync(cfg.device)
            times.append(time.perf_counter() - t)
    flops = None
    if point.get("count_flops"):  # FLOPs of one refinement frame: the same for every batch size and variant
        from bench.harness import engine_frame_flops

        flops = engine_frame_flops(worker.renderer, story, bank, cfg)["total"]
    return {**point, "flops_per_frame": flops, "per_frame_s": min(times) / batch, "median_per_frame_s": statistics.median(times) / batch,
            "batch_s": times, "load_s": load_s, "warmup_s": warmup_s, "peak_mb": mem.peak_mb,
            "peak_reserved_mb": mem.reserved_mb}


def vae_round_trip(cfg, reps: int = 5) -> dict:
    """The per-batch weight conversion the renderer used to do for an fp16 VAE with force_upcast (SDXL's)."""
    from diffusers import AutoencoderKL

    from bench.harness import sync

    if cfg.model == "sdxl-random":
        from storyadapter.models.sdxl_arch import VAE_CONFIG

        vae = AutoencoderKL(**VAE_CONFIG)
    else:
        from storyadapter.models.tiny import _vae

        vae = _vae()
    vae = vae.to(cfg.device, torch.float16)
    times = []
    for _ in range(reps):
        sync(cfg.device)
        t = time.perf_counter()
        vae.to(torch.float32)
        vae.to(torch.float16)
        sync(cfg.device)
        times.append(time.perf_counter() - t)
    params = sum(p.numel() for p in vae.parameters())
    del vae
    return {"params": params, "round_trip_s": min(times), "median_s": statistics.median(times)}


def memory_fit(rows: list[dict], caps_gb: list[float]) -> dict | None:
    """Least-squares line through (N, peak MB) and the largest N under each card size (an extrapolation)."""
    points = [(r["n"], r.get("peak_reserved_mb") or r["peak_mb"]) for r in rows if r.get("peak_mb")]
    if len(points) < 2:
        return None
    n, mb = (np.array(v, dtype=float) for v in zip(*points))
    slope, intercept = np.polyfit(n, mb, 1)
    largest = {}
    for cap in caps_gb:
        budget = cap * 1e9 / 2**20  # a "24 GB" card: 24e9 bytes
        largest[str(cap)] = None if slope <= 0 else int(max(0.0, (budget - intercept) / slope))
    return {"mb_per_reference": float(slope), "fixed_mb": float(intercept), "largest_n": largest,
            "measured": [{"n": int(a), "mb": float(b)} for a, b in points]}


def run(cfg, work: Path) -> list[dict]:
    import concurrent.futures
    import logging
    import multiprocessing

    from bench import sweeps as this  # picklable by module name

    log = logging.getLogger("bench")
    rows = []
    ctx = multiprocessing.get_context("spawn")
    for i, point in enumerate(sweep_points(cfg)):
        point = {**point, "count_flops": cfg.flops and i == 0}
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as pool:
            row = pool.submit(this.sweep_child, dataclasses.asdict(cfg), str(work), point).result()
        log.info("sweep %s batch %d compile %s: %.4f s/frame", point["variant"], point["batch"], point["compile"],
                 row["per_frame_s"])
        rows.append(row)
    return rows


def markdown(result: dict) -> list[str]:
    cfg = result["config"]
    lines = []
    rows = result.get("sweeps") or []
    sf = (result.get("growth") or {}).get("story_frame_flops")
    frame_flops = next((r["flops_per_frame"] for r in rows if r.get("flops_per_frame")), sf["total"] if sf else None)
    peak = cfg.get("peak_tflops")
    if rows:
        lines += ["", f"## Per frame render by batch size (one worker in process, bank of N={cfg['frames']}, "
                  f"best of {cfg['sweep_reps']} batches after a warm-up)", "",
                  "| variant | batch | compile | s/frame | median s/frame | TFLOP/s | of peak | peak MB | warm-up s |",
                  "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            tflops = frame_flops / r["per_frame_s"] / 1e12 if frame_flops else None
            share = f"{tflops / peak:.1%}" if tflops is not None and peak else "n/a"
            tf = f"{tflops:.3f}" if tflops is not None else "n/a"
            lines.append(f"| {r['variant']} | {r['batch']} | {'yes' if r['compile'] else 'no'} | {r['per_frame_s']:.4f} | "
                         f"{r['median_per_frame_s']:.4f} | {tf} | {share} | {r['peak_mb']:.0f} | {r['warmup_s']:.1f} |")
        lines.append(f"\nTFLOP/s = {frame_flops / 1e9 if frame_flops else float('nan'):.1f} GFLOP per refinement frame (counted) / s per frame; the same FLOPs "
                     "for every batch size and variant (`joint_sdpa` does a little more reference attention than counted). "
                     "Goal on an H100 at full size: <= 1.7 s per frame render.")
    vae = result.get("vae_round_trip")
    if vae:
        lines.append(f"\nfp16 VAE ({vae['params'] / 1e6:.1f} M parameters) converted fp16 -> fp32 -> fp16, as the renderer "
                     f"used to do on every batch: {vae['round_trip_s'] * 1e3:.1f} ms (median {vae['median_s'] * 1e3:.1f} ms); "
                     "now done once at start-up.")
    fit = result.get("memory_fit")
    if fit:
        caps = ", ".join(f"{cap} GB: N = {n}" for cap, n in fit["largest_n"].items())
        measured = ", ".join(f"N={p['n']}: {p['mb']:.0f} MB" for p in fit["measured"])
        lines.append(f"\nPeak memory per worker against bank size ({measured}) "
                     f"fits {fit['fixed_mb']:.0f} MB + {fit['mb_per_reference']:.2f} MB per reference; largest bank "
                     f"(extrapolated) for {caps}.")
    shared = result.get("shared_gpu")
    if shared:
        k = cfg["shared_gpu_actors"]
        fps = {name: loop["best"]["fps"] for name, loop in shared.items()}
        plain = result["loops"].get("engine-1", {}).get("best", {}).get("fps")
        lines += ["", f"## {k} actors sharing one GPU (`cluster.gpus_per_worker={1 / k:g}`) vs one actor with batches of {k}", "",
                  "| loop | frames/s (best round) |", "|---|---:|"]
        lines += [f"| {name} | {v:.4f} |" for name, v in fps.items()]
        if plain:
            lines.append(f"| engine-1 (batch 1, from the loops above) | {plain:.4f} |")
    return lines

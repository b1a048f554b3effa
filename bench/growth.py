"""Cost growth with story length: per-frame time, peak memory and FLOPs of one refinement iteration with a bank
of N (25/100/400 random embeddings, a fixed sample of frames), for the engine's worker and the upstream loop, each
in a clean child process."""

from __future__ import annotations

import dataclasses
import logging
import statistics
import time
from pathlib import Path

import numpy as np

from bench.harness import (
    BenchConfig, PeakMemory, child_config, engine_frame_flops, make_story, model_source, settings, sync, upstream_frame_flops,
    worker_spec,
)

log = logging.getLogger("bench")


def growth_child(kind: str, cfg_dict: dict, work: str) -> dict:
    """measure_growth in a clean child process (its environment, library logging and thread count set here)."""
    return measure_growth(kind, child_config(cfg_dict), work)


def measure_growth(kind: str, cfg: BenchConfig, work: str) -> dict:
    """Per-frame time, peak memory and FLOPs of one refinement iteration with a bank of N, for each N.

    Each N is measured `growth_reps` times, in order then reversed (25,100,400,400,100,25), so a drift in
    machine load does not masquerade as growth. Within a repetition a time is the median over the sampled frames;
    across repetitions the fastest counts (other load only adds time); memory is the peak over repetitions."""
    source = model_source(cfg)
    work_dir = Path(work) / f"growth-{kind}"
    work_dir.mkdir(parents=True, exist_ok=True)
    story = make_story(cfg, cfg.growth_sample, work_dir)
    prompts = [story.styled(f) for f in story.frames]
    rng = np.random.default_rng(0)
    iteration = iter(range(1, 1 << 30))
    sizes = cfg.growth_frames if kind == "engine" else (cfg.upstream_growth_frames or cfg.growth_frames)

    if kind == "engine":
        from storyadapter.worker.frame_worker import FrameWorker

        worker = FrameWorker(worker_spec(cfg, story, source, work_dir))
        r = worker.renderer
        inputs = {n: rng.normal(size=(n, r.embedding_dim)).astype(np.float32) for n in cfg.growth_frames}
        worker.begin_iteration(0, None, 0.0)
        worker.render_batch(0, [0])  # warm-up

        def once(n: int) -> dict:
            bank = inputs[n]
            with PeakMemory(cfg.device) as mem:
                sync(cfg.device)
                t = time.perf_counter()
                it = next(iteration)
                worker.begin_iteration(it, bank, 0.4)
                sync(cfg.device)
                set_refs_s = time.perf_counter() - t
                times = []
                for f in range(cfg.growth_sample):
                    t = time.perf_counter()
                    worker.render_batch(it, [f])
                    sync(cfg.device)
                    times.append(time.perf_counter() - t)
            render_s = statistics.median(times[1:] or times)
            return {"set_references_s": set_refs_s, "render_s": render_s, "first_frame_s": times[0],
                    "per_frame_s": render_s + set_refs_s / n,  # set_references runs once for all N frames
                    "peak_mb": mem.peak_mb, "peak_reserved_mb": mem.reserved_mb}

        def flops(n: int) -> dict:
            return engine_frame_flops(r, story, inputs[n], cfg)
    else:
        from PIL import Image

        from bench.upstream_loop import UpstreamStoryAdapter
        from storyadapter.models.loading import load_pipeline, pick_device, pick_dtype

        device = pick_device(cfg.device)
        adapter = UpstreamStoryAdapter(load_pipeline(source, device, pick_dtype(cfg.dtype, device)), settings(cfg))
        inputs = {n: [Image.fromarray(rng.integers(0, 256, size=(256, 256, 3), dtype=np.uint8)) for _ in range(n)]
                  for n in sizes}
        adapter.generate(*prompts[0], None, 0.0, cfg.seed)  # warm-up

        def once(n: int) -> dict:
            with PeakMemory(cfg.device) as mem:
                times = []
                for f, (prompt, negative) in enumerate(prompts):
                    t = time.perf_counter()
                    adapter.generate(prompt, negative, inputs[n], 0.4, cfg.seed).save(work_dir / f"frame_{f:04d}.png")
                    sync(cfg.device)
                    times.append(time.perf_counter() - t)
            return {"per_frame_s": statistics.median(times), "first_frame_s": times[0], "peak_mb": mem.peak_mb}

        def flops(n: int) -> dict:
            return upstream_frame_flops(adapter, prompts[0], inputs[n], cfg)

    reps: dict[int, list[dict]] = {n: [] for n in sizes}
    for rep in range(max(1, cfg.growth_reps if kind == "engine" else cfg.upstream_growth_reps)):
        for n in (sizes if rep % 2 == 0 else sizes[::-1]):
            reps[n].append(once(n))
    rows = []
    for n in sizes:
        row = {"n": n, "reps": reps[n]}
        for key in reps[n][0]:
            values = [m[key] for m in reps[n]]
            row[key] = max(values) if key.startswith("peak") else min(values)
        if cfg.flops:
            row["flops_per_frame"] = flops(n)
        rows.append(row)
    story_flops = None
    if cfg.flops and kind == "engine":  # a frame of the throughput runs: bank of `frames`
        inputs[cfg.frames] = rng.normal(size=(cfg.frames, r.embedding_dim)).astype(np.float32)
        story_flops = flops(cfg.frames)
    return {"rows": rows, "story_frame_flops": story_flops}


def bench_growth(cfg: BenchConfig, work: Path, kinds: tuple[str, ...] = ("engine", "upstream")) -> dict:
    import concurrent.futures
    import multiprocessing

    from bench import growth as this  # the child finds growth_child by module name

    out = {}
    ctx = multiprocessing.get_context("spawn")
    for kind in kinds:
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as pool:
            child = pool.submit(this.growth_child, kind, dataclasses.asdict(cfg), str(work)).result()
        out[kind] = child["rows"]
        if child["story_frame_flops"] is not None:
            out["story_frame_flops"] = child["story_frame_flops"]
        log.info("growth %s: %s", kind, [(r["n"], round(r["per_frame_s"], 4)) for r in out[kind]])
    return out


"""Throughput benchmark: the engine against the upstream-style loop and a plain loop, in one run.

    python -m bench.throughput                      # CPU, tiny model (make bench)
    python -m bench.throughput preset=gpu           # full-size random SDXL, bf16, 1024², 50 steps (make bench-gpu)
    python -m bench.throughput preset=gpu compile=true peak_tflops=989

Any field of `BenchConfig` can be overridden as key=value (typed by OmegaConf, like the app's Hydra config).

Measured side by side, same model, steps and size: the engine, the upstream-style loop and a plain loop
(bench/loops.py). Then cost growth (bench/growth.py) with story length (bank of N = 25/100/400 random embeddings, a fixed sample of frames),
peak memory per worker, driver overhead from the engine runs' IterationStats, and FLOPs per frame.
Writes bench/results/<name>.json, .md and .png (bench/report.py); bench/harness.py holds the config and set-up.
"""

from __future__ import annotations

import os

import dataclasses
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # `python bench/throughput.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from bench import flux, report, sweeps
from bench.growth import bench_growth
from bench.harness import environment, load_config, make_story, model_source, release
from bench.loops import run_loops

log = logging.getLogger("bench")
FLUX_STEPS = 28  # FLUX.1-dev's default (models/flux_config.py)


def main(argv: list[str] | None = None) -> dict:
    from bench.harness import bench_environment

    bench_environment()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    cfg = load_config(sys.argv[1:] if argv is None else argv)
    from storyadapter.logs import quiet_libraries

    quiet_libraries()
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"device={cfg.device}: torch {torch.__version__} sees no CUDA GPU (install a CUDA build of torch)")
    started = time.perf_counter()
    workers_all = cfg.workers or (torch.cuda.device_count() if cfg.device != "cpu" else (os.cpu_count() or 1))
    work = Path(cfg.work_dir) if cfg.work_dir else Path(tempfile.mkdtemp(prefix="storyadapter-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    source = model_source(cfg)  # builds the tiny model once, before any child process needs it
    story = make_story(cfg, cfg.frames, work)
    result = {"config": dataclasses.asdict(cfg), "environment": environment(cfg), "workers_all": workers_all, "loops": {}}
    try:
        if "growth" in cfg.parts:
            log.info("cost growth with story length (one child process per loop)")
            result["growth"] = bench_growth(cfg, work)
            result["memory_fit"] = sweeps.memory_fit(result["growth"]["engine"], cfg.memory_caps_gb)
        if "sweeps" in cfg.parts and cfg.batch_sizes:
            log.info("per-frame time by batch size, torch.compile and kernel variant (one child process each)")
            result["sweeps"] = sweeps.run(cfg, work)
        if "sweeps" in cfg.parts and cfg.vae_round_trip:
            result["vae_round_trip"] = sweeps.vae_round_trip(cfg)
            release()

        if "loops" in cfg.parts or "shared" in cfg.parts:
            run_loops(cfg, result, source, story, work, workers_all)
        if "flux" in cfg.parts:
            result["flux"] = flux.run(cfg, work)
            release()
    finally:
        if not cfg.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    if cfg.full_size_flops:
        from bench.model_flops import full_size_flops

        log.info("full-size model FLOPs per frame at %d px (meta device)", cfg.full_size_px)
        prompt, negative = story.styled(story.frames[0])
        result["full_size_flops"] = full_size_flops(cfg.growth_frames, cfg.full_size_steps, cfg.full_size_px, prompt, negative)
        from bench.model_flops import flux_flops

        log.info("FLUX.1-dev + XLabs IP-Adapter FLOPs per frame at %d px, %d steps (meta device)", cfg.full_size_px, FLUX_STEPS)
        result["flux_flops"] = flux_flops(cfg.growth_frames, FLUX_STEPS, cfg.full_size_px)
    result["ratios"], result["ratio_spread"] = report.ratios(result)
    result["flops"] = report.flops_section(cfg, result) if cfg.flops else None
    result["bench_wall_s"] = time.perf_counter() - started
    result["environment"]["loadavg_end"] = os.getloadavg()

    out = Path(cfg.out_dir)
    text = report.write(result, out, cfg.name, sweeps.markdown(result) + flux.markdown(result, cfg.peak_tflops))
    print(text)
    log.info("wrote %s/%s.{json,md,png} in %.0f s", out, cfg.name, result["bench_wall_s"])
    return result


if __name__ == "__main__":
    main()

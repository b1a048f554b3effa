"""The `flux` part of the throughput benchmark: FLUX.1-dev's settings (flow-matching Euler with its shift, distilled
guidance 3.5: one transformer pass per step) on the preset's device. `flux_parts` picks what runs:

  loops   the plain in-process loop against the engine with one actor, on model=flux-tiny (`make bench`): what the
          engine costs on FLUX, as the cpu preset measures it on model=tiny. No upstream loop: bench/upstream_loop.py
          is SDXL's pipeline.
  growth  per-frame time, peak GPU memory and FLOPs of one refinement iteration with a bank of N = 25/100/400, on
          model=flux-random at the preset's size with 28 steps (`make bench-gpu`: 1024²).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from bench.harness import BenchConfig, make_story, model_source

log = logging.getLogger("bench")

FLUX_SETTINGS = dict(family="flux", scheduler="flow_euler", guidance_scale=1.0, distilled_guidance=3.5)


def flux_config(cfg: BenchConfig) -> BenchConfig:
    """The preset's config with FLUX in place of SDXL: flux-tiny where the preset runs model=tiny, else the
    full-size flux-random with FLUX.1-dev's 28 steps."""
    from storyadapter.models.flux_config import STEPS

    full = cfg.model != "tiny"
    return dataclasses.replace(cfg, model="flux-random" if full else "tiny", steps=STEPS if full else cfg.steps,
                               growth_frames=list(cfg.flux_growth_frames), **FLUX_SETTINGS)


def run(cfg: BenchConfig, work: Path) -> dict:
    fcfg = flux_config(cfg)
    work = work / "flux"
    work.mkdir(parents=True, exist_ok=True)
    out = {"config": {k: getattr(fcfg, k) for k in ("model", "family", "size", "steps", "scheduler", "guidance_scale",
                                                     "distilled_guidance", "device", "dtype")}}
    if "growth" in fcfg.flux_parts:
        from bench.growth import bench_growth

        log.info("FLUX cost growth with story length (%s, %d px, %d steps)", fcfg.model, fcfg.size, fcfg.steps)
        out["growth"] = bench_growth(fcfg, work, kinds=("engine",))
    if "loops" in fcfg.flux_parts:
        out.update(_loops(fcfg, work))
    return out


def _loops(cfg: BenchConfig, work: Path) -> dict:
    from bench import report
    from bench.loops import EngineLoop, PlainLoop, measure

    try:
        import ray

        from storyadapter.engine import cluster as engine
    except ImportError as exc:
        log.warning("Ray is not importable (%s): the FLUX engine loop is skipped", exc)
        return {}
    source = model_source(cfg)
    story = make_story(cfg, cfg.frames, work)
    started = engine.connect("local", None, 1, 1.0)
    try:
        loops = measure([PlainLoop("plain", cfg, story, work / "plain", 1),
                         EngineLoop("engine-1", cfg, story, work / "engine-1", 1)], source, cfg.rounds)
    finally:
        if started:
            ray.shutdown()
    ratio, spread = report.ratios({"loops": loops, "workers_all": 1})
    return {"loops": loops, "engine_1_vs_plain": ratio["engine_1_vs_plain"], "spread": spread["engine_1_vs_plain"]}


def markdown(result: dict, peak_tflops: float | None) -> list[str]:
    flux = result.get("flux")
    if not flux:
        return []
    c = flux["config"]
    lines = ["", f"## FLUX ({c['model']}, family flux): {c['size']}x{c['size']}, {c['steps']} steps, flow-matching "
             f"Euler, distilled guidance {c['distilled_guidance']:g}", ""]
    if "engine_1_vs_plain" in flux:
        s = flux["spread"]
        lines.append(f"Engine with one actor vs the plain in-process loop: **{flux['engine_1_vs_plain']:.3f}** "
                     f"(median of {len(s['rounds'])} interleaved rounds; range {s['min']:.3f}-{s['max']:.3f}).")
    rows = (flux.get("growth") or {}).get("engine", [])
    if rows:
        lines += ["", "| N | s/frame | TFLOP/frame | TFLOP/s | share of peak | peak memory GiB (allocated / reserved) |",
                  "|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            total = r.get("flops_per_frame", {}).get("total")
            tflops = total / r["per_frame_s"] / 1e12 if total else None
            share = f"{tflops / peak_tflops:.1%}" if tflops and peak_tflops else "-"
            lines.append(f"| {r['n']} | {r['per_frame_s']:.3f} | {total / 1e12 if total else float('nan'):.1f} | "
                         f"{tflops if tflops else float('nan'):.1f} | {share} | {r['peak_mb'] / 1024:.1f} / "
                         f"{(r.get('peak_reserved_mb') or 0) / 1024:.1f} |")
    return lines

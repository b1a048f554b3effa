"""Throughput benchmark: the engine against the upstream-style loop and a plain loop, in one run.

    python -m bench.throughput                      # CPU, tiny model (make bench)
    python -m bench.throughput preset=gpu           # full-size random SDXL, bf16, 1024², 50 steps (make bench-gpu)
    python -m bench.throughput preset=gpu compile=true peak_tflops=989

Any field of `BenchConfig` can be overridden as key=value (typed by OmegaConf, like the app's Hydra config).

Measured side by side, same model, steps and size:
  * upstream      - bench/upstream_loop.py: one pipeline call per frame, N reference images re-encoded per
                    frame, reference K/V recomputed every step, text re-encoded every iteration;
  * plain         - FrameWorker + LocalExecutor + driver.run_iterations in this process (no Ray), the same work as the engine;
  * engine-1      - RayExecutor with one actor; engine-all: one actor per GPU (per core on CPU).
Then cost growth with story length (bank of N = 25/100/400 random embeddings, a fixed sample of frames),
peak memory per worker, driver overhead from the engine runs' IterationStats, and FLOPs per frame.
Writes bench/results/<name>.json, .md and .png.
"""

from __future__ import annotations

import os

os.environ.setdefault("TQDM_DISABLE", "1")  # driver.run_iterations's progress bars; before tqdm is imported
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import dataclasses
import json
import logging
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # `python bench/throughput.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from bench.harness import (
    BenchConfig, PeakMemory, engine_frame_flops, load_config, make_story, model_source, release, run_plan, settings,
    sync, upstream_frame_flops, worker_spec,
)

log = logging.getLogger("bench")
TARGETS = {
    "engine_1_vs_plain": (">=", 0.95),
    "engine_1_vs_upstream": (">=", 1.10),  # "clearly faster"
    "engine_1_vs_plain_refinement": (">=", 0.95),
    "engine_1_vs_upstream_refinement": (">=", 1.10),
    "growth_400_over_25": ("<=", 1.30),
    "driver_overhead": ("<", 0.05),
    "driver_overhead_no_actor_rendering": ("<", 0.05),
    "driver_overhead_long_story": ("<", 0.05),
}


# --- the loops: set up once, warmed up, then measured in interleaved rounds ----------------------------

def _round_summary(iters: list[dict], workers: int) -> dict:
    frames = sum(i["frames"] for i in iters)
    wall = sum(i["wall_s"] for i in iters)
    refine = [i for i in iters if i["iteration"] > 0]
    out = {"frames": frames, "wall_s": wall, "fps": frames / wall, "iterations": iters}
    if refine:
        out["refine_fps"] = sum(i["frames"] for i in refine) / sum(i["wall_s"] for i in refine)
    if all("busy_s" in i for i in iters):
        busy = sum(i["busy_s"] for i in iters)
        driver_s = sum(i["driver_s"] for i in iters)
        barrier_s = sum(i.get("barrier_s", 0.0) for i in iters)
        none_s = sum(i.get("none_rendering_s", 0.0) for i in iters)
        out.update(busy_s=busy, driver_s=driver_s, barrier_s=barrier_s, none_rendering_s=none_s,
                   idle_fraction=1 - busy / (workers * wall), driver_fraction=driver_s / wall,
                   barrier_fraction=barrier_s / (workers * wall), none_rendering_fraction=none_s / wall)
    return out


def _median_round(rounds: list[dict], field: str = "fps") -> dict:
    return sorted(rounds, key=lambda r: r[field])[len(rounds) // 2]


def _best_round(rounds: list[dict]) -> dict:
    """The fastest round: other load on the machine only ever adds time, so the best round is the closest
    estimate of the loop's own cost (the usual best-of-N of timing tools); medians are reported beside it."""
    return max(rounds, key=lambda r: r["fps"])


class DriverLoop:
    """driver.run_iterations over an executor: the plain in-process loop (LocalExecutor) or the engine (RayExecutor)."""

    def __init__(self, name: str, cfg: BenchConfig, story, out_dir: Path, workers: int, iterations: int | None = None,
                 batch_size: int = 1, gpu_share: float = 1.0):
        self.name, self.cfg, self.story, self.out_dir, self.workers = name, cfg, story, out_dir, workers
        self.iterations = cfg.iterations if iterations is None else iterations
        self.batch_size, self.gpu_share = batch_size, gpu_share
        self.executor = None
        self.info: dict = {}

    def _fresh(self) -> None:  # driver.run_iterations resumes after finished iterations; every run starts from nothing
        from storyadapter.rundir import manifest

        shutil.rmtree(self.out_dir / manifest.MANIFEST_DIR, ignore_errors=True)

    def _run(self, story, iterations: int) -> list[dict]:
        from storyadapter.engine import driver

        if self.cfg.device == "cpu":
            torch.set_num_threads(self.cfg.threads)
        self._fresh()
        stats = driver.run_iterations(run_plan(self.cfg, story, self.out_dir, iterations, self.batch_size), self.executor)
        return [dataclasses.asdict(s) for s in stats]

    def warm_up(self) -> None:
        """The first frames (one per worker), with and without references: first-call costs stay out of the rounds.
        With torch.compile the whole story: a bank of another size would compile again inside the rounds."""
        frames = len(self.story.frames) if self.cfg.compile else max(1, self.workers)
        self._warm_frames = frames
        self._run(dataclasses.replace(self.story, frames=self.story.frames[:frames]), 1)

    def round(self) -> dict:
        return _round_summary(self._run(self.story, self.iterations), self.workers)

    def frames_rendered(self, rounds: int) -> int:
        return 2 * self._warm_frames + rounds * len(self.story.frames) * (self.iterations + 1)


class PlainLoop(DriverLoop):
    def setup(self, source) -> None:
        from storyadapter.engine.driver import LocalExecutor
        from storyadapter.worker.frame_worker import FrameWorker

        t = time.perf_counter()
        self.worker = FrameWorker(worker_spec(self.cfg, self.story, source, self.out_dir, self.cfg.compile))
        self.executor = LocalExecutor(self.worker)
        self.info["load_s"] = time.perf_counter() - t

    def close(self, rounds: int) -> None:
        self.info["image_encodes_per_frame"] = self.worker.image_encodes / self.frames_rendered(rounds)
        self.executor = self.worker = None
        release()


class EngineLoop(DriverLoop):
    def setup(self, source) -> None:
        from storyadapter.engine import executor as engine, placement

        gpu = self.cfg.device != "cpu"
        res = placement.ActorResources(workers=self.workers, gpus_per_worker=self.gpu_share if gpu else 0.0, cpus_per_worker=1.0,
                                    max_restarts=0, ready_timeout_s=1800.0)
        t = time.perf_counter()
        self.executor = engine.RayExecutor(worker_spec(self.cfg, self.story, source, self.out_dir, self.cfg.compile), res,
                                           use_gpu=gpu, fixed_cluster=True)
        self.info["startup_s"] = time.perf_counter() - t

    def close(self, rounds: int) -> None:
        if self.executor is not None:
            self.info["image_encodes_per_frame"] = self.executor.image_encodes() / self.frames_rendered(rounds)
            self.executor.shutdown()
            self.executor = None


class UpstreamLoop:
    """bench/upstream_loop.py on its own pipeline from load_pipeline (GRCA would replace its processors)."""

    def __init__(self, name: str, cfg: BenchConfig, story, out_dir: Path, threads: int):
        self.name, self.cfg, self.story, self.out_dir, self.threads = name, cfg, story, out_dir, threads
        self.workers = 1
        self.info: dict = {}
        self.prompts = [story.styled(f) for f in story.frames]

    def setup(self, source) -> None:
        from bench.upstream_loop import UpstreamStoryAdapter
        from storyadapter.models.loading import load_pipeline, pick_device, pick_dtype

        device = pick_device(self.cfg.device)
        t = time.perf_counter()
        self.adapter = UpstreamStoryAdapter(load_pipeline(source, device, pick_dtype(self.cfg.dtype, device)), settings(self.cfg))
        self.info["load_s"] = time.perf_counter() - t

    def _run(self, prompts, iterations: int):
        from bench.upstream_loop import run_story
        from storyadapter.story import schedule

        if self.cfg.device == "cpu":
            torch.set_num_threads(self.threads)
        try:
            stats, _ = run_story(self.adapter, prompts, iterations,
                                 lambda it: schedule.adapter_scale(it, iterations, 0.3, 0.5),
                                 lambda frame: schedule.frame_seed(self.cfg.seed, self.cfg.seed_policy, frame), self.out_dir)
            sync(self.cfg.device)
        finally:
            torch.set_num_threads(self.cfg.threads)
        return stats

    def warm_up(self) -> None:
        self._run(self.prompts[:1], 1)

    def round(self) -> dict:
        stats = self._run(self.prompts, self.cfg.iterations)
        self.info["image_encodes_per_refinement_iteration"] = stats[-1].image_encodes
        self.info["text_encodes_per_iteration"] = stats[-1].text_encodes
        return _round_summary([dataclasses.asdict(s) for s in stats], 1)

    def close(self, rounds: int) -> None:
        self.adapter = None
        release()


def measure(loops: list, source, rounds: int) -> dict:
    """Set up and warm up every loop, then run the rounds interleaved (rotating the order each round) so that
    changes in the machine's load over time hit every loop alike."""
    for loop in loops:
        log.info("set up %s", loop.name)
        loop.setup(source)
        loop.warm_up()
    results = {loop.name: [] for loop in loops}
    try:
        for r in range(rounds):
            order = loops[r % len(loops):] + loops[: r % len(loops)]
            for loop in order:
                results[loop.name].append(loop.round())
            log.info("round %d/%d: %s", r + 1, rounds,
                     ", ".join(f"{name} {res[-1]['fps']:.3f} frames/s" for name, res in results.items()))
    finally:
        for loop in loops:
            loop.close(rounds)
    return {loop.name: {"loop": loop.name, "workers": loop.workers, **loop.info, "rounds": results[loop.name],
                        "best": _best_round(results[loop.name]), "median": _median_round(results[loop.name])}
            for loop in loops}


# --- cost growth with story length (child processes: one clean worker each) --------------------------

def growth_child(kind: str, cfg_dict: dict, work: str) -> list[dict]:
    """Per-frame time, peak memory and FLOPs of one refinement iteration with a bank of N, for each N.

    Each N is measured `growth_reps` times, in order then reversed (25,100,400,400,100,25), so a drift in
    machine load does not masquerade as growth. Within a repetition a time is the median over the sampled frames;
    across repetitions the fastest counts (other load only adds time); memory is the peak over repetitions."""
    from storyadapter.logs import quiet_libraries

    quiet_libraries()
    cfg = BenchConfig(**cfg_dict)
    if cfg.device == "cpu":
        torch.set_num_threads(cfg.threads)
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


def bench_growth(cfg: BenchConfig, work: Path) -> dict:
    import concurrent.futures
    import multiprocessing

    from bench import throughput as this  # picklable by module name even when run as __main__

    out = {}
    ctx = multiprocessing.get_context("spawn")
    for kind in ("engine", "upstream"):
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as pool:
            child = pool.submit(this.growth_child, kind, dataclasses.asdict(cfg), str(work)).result()
        out[kind] = child["rows"]
        if child["story_frame_flops"] is not None:
            out["story_frame_flops"] = child["story_frame_flops"]
        log.info("growth %s: %s", kind, [(r["n"], round(r["per_frame_s"], 4)) for r in out[kind]])
    return out


# --- report ------------------------------------------------------------------------------------------

def environment(cfg: BenchConfig) -> dict:
    import diffusers
    import transformers

    try:
        import ray

        ray_version = ray.__version__
    except ImportError:
        ray_version = "not installed"
    env = {"python": platform.python_version(), "torch": torch.__version__, "diffusers": diffusers.__version__,
           "transformers": transformers.__version__, "ray": ray_version, "cpu_count": os.cpu_count(),
           "platform": platform.platform(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
           "loadavg_start": os.getloadavg()}
    if cfg.device.startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
        env["gpus"] = torch.cuda.device_count()
        env["cuda"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version()
        try:  # the driver version, as the issue asks results to state it
            import subprocess

            env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                           capture_output=True, text=True, timeout=30).stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            env["driver"] = None
    return env


def _paired(per_round: list[float], best: float) -> dict:
    return {"min": min(per_round), "max": max(per_round), "best_rounds": best, "rounds": per_round}


def ratios(result: dict) -> tuple[dict, dict]:
    """Headline values and their spread over rounds.

    A throughput ratio is the median over rounds of the two loops' ratio within one round: the rounds are
    interleaved, so a change in the machine's load hits both loops of a round alike, which the ratio of
    each loop's separately chosen best round does not (that one is kept as `best_rounds`).
    `*_refinement` use refinement iterations only. Driver overhead is the median round's.
    """
    loops = result["loops"]
    all_name = f"engine-{result['workers_all']}"
    out, spread = {}, {}

    def paired(key: str, a: str, b: str, field: str = "fps") -> None:
        per_round = [ra[field] / rb[field] for ra, rb in zip(loops[a]["rounds"], loops[b]["rounds"])]
        out[key] = statistics.median(per_round)
        spread[key] = _paired(per_round, loops[a]["best"][field] / loops[b]["best"][field])

    pairs = {"engine_1_vs_plain": ("engine-1", "plain"), "engine_1_vs_upstream": ("engine-1", "upstream"),
             "engine_all_vs_upstream": (all_name, "upstream")}
    if "engine-1" not in loops:  # no Ray: what the plain loop (the engine's worker, in process) gains on upstream
        pairs = {"plain_vs_upstream": ("plain", "upstream")}
    if "upstream-all-cores" in loops:
        pairs["engine_all_vs_upstream_all_cores"] = (all_name, "upstream-all-cores")
    for key, (a, b) in pairs.items():
        if a not in loops or b not in loops:  # a run of some `parts` only
            continue
        paired(key, a, b)
        if "refine_fps" in loops[a]["best"]:
            paired(f"{key}_refinement", a, b, "refine_fps")
    growth = result.get("growth") or {}
    for kind in ("engine", "upstream"):
        rows = {r["n"]: r for r in growth.get(kind, [])}
        if rows:
            lo, hi = min(rows), max(rows)
            key = f"growth_{hi}_over_{lo}" if kind == "engine" else f"upstream_growth_{hi}_over_{lo}"
            # Paired by repetition (N=lo and N=hi measured seconds apart), like the throughput rounds.
            per_rep = [h["per_frame_s"] / l["per_frame_s"] for h, l in zip(rows[hi]["reps"], rows[lo]["reps"])]
            out[key] = statistics.median(per_rep)
            spread[key] = _paired(per_rep, rows[hi]["per_frame_s"] / rows[lo]["per_frame_s"])
    full = result.get("full_size_flops")
    if full:
        for kind in ("engine", "upstream"):
            rows = {int(n): v for n, v in full[kind].items()}
            lo, hi = min(rows), max(rows)
            out[f"full_size_flops_{kind}_{hi}_over_{lo}"] = rows[hi] / rows[lo]
    long = result.get("long_story")
    overheads = (("driver_overhead_no_actor_rendering", loops.get(all_name), "none_rendering_fraction"),
                 ("driver_overhead", loops.get(all_name), "idle_fraction"),
                 ("barrier_wait", loops.get(all_name), "barrier_fraction"),
                 ("driver_overhead_long_story", long, "idle_fraction"),
                 ("driver_overhead_engine_1", loops.get("engine-1") if all_name != "engine-1" else None, "idle_fraction"))
    for key, loop, field in overheads:
        if loop is not None and field in loop["best"]:
            per_round = [r[field] for r in loop["rounds"]]
            out[key] = statistics.median(per_round)
            spread[key] = _paired(per_round, min(per_round))
    return out, spread


def _met(key: str, value: float) -> str:
    if key not in TARGETS:
        return ""
    op, bound = TARGETS[key]
    ok = {">=": value >= bound, "<=": value <= bound, "<": value < bound}[op]
    return "yes" if ok else "**no**"


def markdown(result: dict) -> str:
    cfg, env, r = result["config"], result["environment"], result["ratios"]
    device = env.get("gpu", f"CPU ({env['cpu_count']} cores)")
    if env.get("gpu"):
        device += f" (driver {env.get('driver')}, CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')})"
    lines = [
        f"# Throughput benchmark: `{cfg['name']}`",
        "",
        f"{device}; model `{cfg['model']}` {cfg['dtype']}, {cfg['size']}x{cfg['size']}, {cfg['steps']} steps, "
        f"CFG {cfg['guidance_scale']}; story of {cfg['frames']} frames, iteration 0 + {cfg['iterations']} refinement "
        f"iteration(s); {cfg['rounds']} interleaved round(s) per loop after a warm-up. A throughput ratio is the median "
        f"over rounds of the two loops' ratio within a round (run back to back, so under nearly the same load); "
        f"the range over rounds and the ratio of each loop's best round are beside it"
        + (f"; {cfg['threads']} torch thread(s) per worker" if cfg["device"] == "cpu" else "")
        + ("; torch.compile" if cfg["compile"] else "") + ".",
        f"torch {env['torch']}, diffusers {env['diffusers']}, transformers {env['transformers']}, ray {env['ray']}; {env['date']}; "
        f"load average (1/5/15 min) at start {'/'.join(f'{x:.1f}' for x in env['loadavg_start'])}, at end "
        f"{'/'.join(f'{x:.1f}' for x in env.get('loadavg_end', ()))} on {env['cpu_count']} cores (other processes share this machine).",
        "",
        "## Headline ratios (one run)",
        "",
        *(["Ray was not importable here: the engine loops were skipped (the plain loop is the engine's worker "
           "in process).", ""] if result.get("engine_skipped") else []),
        "| ratio | value | range over rounds | best round(s) | target | met |",
        "|---|---:|---:|---:|---|---|",
    ]
    w = result["workers_all"]
    label = {
        "engine_1_vs_plain": "frames/s: engine 1 worker / plain in-process loop",
        "engine_1_vs_upstream": "frames/s: engine 1 worker / upstream-style loop",
        "engine_all_vs_upstream": f"frames/s: engine all workers ({w}) / upstream-style loop",
        "engine_all_vs_upstream_all_cores": f"frames/s: engine all workers ({w}) / upstream-style loop on all cores",
        "driver_overhead_no_actor_rendering": f"driver overhead, engine {w} worker(s): share of wall time with no actor rendering, median round",
        "driver_overhead": f"driver overhead, engine {w} worker(s), stricter: 1 - busy/(workers x wall), median round",
        "driver_overhead_long_story": f"same, stricter, on a {cfg.get('long_frames')}-frame story "
                                      f"({cfg.get('long_iterations')} refinement iteration(s))",
        "driver_overhead_engine_1": "driver overhead, engine 1 worker, median round",
        "barrier_wait": f"of which waiting at the iteration barrier for the last frames, engine {w} worker(s)",
        "plain_vs_upstream": "frames/s: plain in-process loop (the engine's worker, no Ray) / upstream-style loop",
    }
    for key, value in r.items():
        if key.endswith("_refinement"):
            text = label[key.removesuffix("_refinement")] + ", refinement iterations only"
        elif key.startswith("growth_"):
            text = f"engine per-frame time, N={key.split('_')[1]} / N={key.split('_')[3]}"
        elif key.startswith("upstream_growth_"):
            text = f"upstream per-frame time, N={key.split('_')[2]} / N={key.split('_')[4]}"
        elif key.startswith("full_size_flops_"):
            kind, hi, _, lo = key.removeprefix("full_size_flops_").split("_")
            text = (f"{kind} FLOPs per frame, full-size model at {result['full_size_flops']['size']} px, N={hi} / N={lo} "
                    f"(counted, not timed)")
        else:
            text = label.get(key, key)
        target_key = "growth_400_over_25" if key.startswith("growth_") else key
        target = TARGETS.get(target_key)
        share = "overhead" in key or key == "barrier_wait"

        def fmt(v: float) -> str:
            return f"{v:.1%}" if share else f"{v:.2f}x"

        tgt = "" if target is None else f"{target[0]} {target[1]:.0%}" if share else f"{target[0]} {target[1]:.2f}x"
        sp = result.get("ratio_spread", {}).get(key)
        rng, best = (f"{fmt(sp['min'])} - {fmt(sp['max'])}", fmt(sp["best_rounds"])) if sp else ("", "")
        lines.append(f"| {text} | {fmt(value)} | {rng} | {best} | {tgt} | {_met(target_key, value)} |")

    lines += ["", "## Throughput", "",
              "| loop | workers | frames/s whole run: best | median (min) | frames/s refinement iterations: best | s/frame (best) | image-encoder passes | load/startup s |",
              "|---|---:|---:|---:|---:|---:|---|---:|"]
    n = cfg["frames"]
    for name, loop in result["loops"].items():
        m, med = loop["best"], loop["median"]
        if "image_encodes_per_refinement_iteration" in loop:
            enc = f"{loop['image_encodes_per_refinement_iteration']} per refinement iteration (N²={n * n})"
        else:
            enc = f"{loop['image_encodes_per_frame']:.0f} per frame ({n} per iteration)"
        startup = loop.get("startup_s", loop.get("load_s", 0.0))
        worst = min(rd["fps"] for rd in loop["rounds"])
        lines.append(f"| {name} | {loop['workers']} | {m['fps']:.3f} | {med['fps']:.3f} ({worst:.3f}) | "
                     f"{m.get('refine_fps', float('nan')):.3f} | {1 / m['fps']:.4f} | {enc} | {startup:.1f} |")

    growth = result.get("growth")
    if growth:
        mem = "peak CUDA MB" if cfg["device"].startswith("cuda") else "peak RSS MB"
        lines += ["", f"## Cost growth with story length (one refinement iteration, bank of N, {cfg['growth_sample']} sampled frames)", "",
                  f"| N | engine s/frame | engine set_references s (once per iteration) | engine {mem} | upstream s/frame | upstream {mem} | upstream / engine |",
                  "|---:|---:|---:|---:|---:|---:|---:|"]
        up = {row["n"]: row for row in growth.get("upstream", [])}
        for row in growth["engine"]:
            u = up.get(row["n"], {})
            ratio = u.get("per_frame_s", float("nan")) / row["per_frame_s"]
            lines.append(f"| {row['n']} | {row['per_frame_s']:.4f} | {row['set_references_s']:.4f} | {row['peak_mb']:.0f} | "
                         f"{u.get('per_frame_s', float('nan')):.4f} | {u.get('peak_mb', float('nan')):.0f} | {ratio:.2f}x |")

    lines += ["", "## Driver overhead (engine runs: the round at the median idle share, the upper of the middle two "
              "for an even count)", "",
              "| engine | frames rendered | wall s | busy s (sum over workers) | no actor rendering | idle: 1 - busy/(workers x wall) | "
              "of which barrier wait | driver bank+manifest s | driver share of wall |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    engine_runs = [(name, loop) for name, loop in result["loops"].items() if name.startswith("engine")]
    if result.get("long_story"):
        engine_runs.append((result["long_story"]["loop"], result["long_story"]))
    for name, loop in engine_runs:
        if "busy_s" in loop["best"]:
            m = _median_round(loop["rounds"], "idle_fraction")
            lines.append(f"| {name} | {m['frames']} | {m['wall_s']:.2f} | {m['busy_s']:.2f} | {m.get('none_rendering_fraction', 0.0):.1%} | "
                         f"{m['idle_fraction']:.1%} | {m.get('barrier_fraction', 0.0):.1%} | {m['driver_s']:.3f} | "
                         f"{m['driver_fraction']:.1%} |")

    flops = result.get("flops")
    if flops:
        lines += ["", "## FLOPs and achieved throughput", "",
                  "| what | GFLOP/frame | achieved TFLOP/s | of peak |", "|---|---:|---:|---:|"]
        for row in flops["rows"]:
            peak = f"{row['fraction_of_peak']:.1%}" if row.get("fraction_of_peak") is not None else "n/a"
            lines.append(f"| {row['what']} | {row['gflop_per_frame']:.2f} | {row['tflops']:.4f} | {peak} |")
        sf = (result.get("growth") or {}).get("story_frame_flops")
        if sf:
            cfg_steps = cfg["steps"]
            lines.append(f"\nEngine frame = {cfg_steps} x UNet step with CFG ({sf['unet_step'] / 1e9:.2f} GFLOP) + VAE decode "
                         f"({sf['vae_decode'] / 1e9:.2f}) + image encode ({sf['image_encode'] / 1e9:.3f}) + text "
                         f"({sf['text'] / 1e9:.3f}, once per run) + set_references ({sf['set_references'] / 1e9:.3f}, once "
                         f"per iteration) GFLOP.")
        if flops.get("peak_tflops"):
            lines.append(f"\nPeak: {flops['peak_tflops']:g} TFLOP/s per device (`peak_tflops=`).")
    full = result.get("full_size_flops")
    if full:
        lines += ["", f"## Full-size model (SDXL + IP-Adapter SDXL shapes), {full['size']}x{full['size']}, {full['steps']} steps: "
                  "TFLOP per refinement frame", "",
                  "Counted with torch's FlopCounterMode on the meta device (shapes only, no weights): how the work per "
                  "frame grows with the bank, where this machine cannot time the full-size model.", "",
                  "| N | engine TFLOP/frame | upstream TFLOP/frame | upstream / engine |", "|---:|---:|---:|---:|"]
        for n, e in full["engine"].items():
            u = full["upstream"][n]
            lines.append(f"| {n} | {e / 1e12:.1f} | {u / 1e12:.1f} | {u / e:.2f}x |")
    lines += ["", "Notes:", "",
              "- upstream: bench/upstream_loop.py (one pipeline call per frame; N reference images re-encoded per frame; "
              "to_k_ip/to_v_ip over 4N tokens at every step; text re-encoded every call). SDPA kernels, same model, "
              "noise, steps and size as the engine.",
              "- plain: FrameWorker + LocalExecutor + driver.run_iterations in one process (no Ray).",
              "- per-frame time at N: median over the sampled frames (the engine's after the first, which also sets the "
              "references), fastest of the repetitions, plus set_references / N for the engine (it runs once per "
              "iteration for all N frames). The N=400 / N=25 ratio is the median over repetitions of the ratio within "
              "one repetition (measured back to back), its range beside it; the tables show each N's fastest repetition.",
              "- driver overhead counts every moment a worker is not inside render_batch: Ray dispatch, result "
              "transfer, barrier waits at the end of an iteration, and the driver's manifest write + bank build. "
              "The barrier wait is each worker's time from its last batch to the iteration's last batch: with "
              "frames as the unit of work it is about half a frame per worker per iteration even with perfect "
              "balancing, so its share falls as stories get longer.",
              ""]
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    fig, axes = plt.subplots(1, 4, figsize=(20, 4.6))
    names = list(result["loops"])
    fps = [result["loops"][n]["best"]["fps"] for n in names]
    lo = [f - min(r["fps"] for r in result["loops"][n]["rounds"]) for n, f in zip(names, fps)]
    hi = [0.0 for _ in names]
    colors = ["tab:gray" if n.startswith("upstream") else "tab:blue" if n == "plain" else "tab:green" for n in names]
    ax = axes[0]
    ax.bar(names, fps, color=colors, yerr=[lo, hi], capsize=4)
    for i, v in enumerate(fps):
        ax.text(i, v / 2, f"{v:.2f}", ha="center", va="center", fontsize=9, color="white")
    ax.set_ylabel("frames / s (best round; bar down to the worst)")
    ax.set_title(f"Throughput, {result['config']['frames']}-frame story")
    ax.tick_params(axis="x", labelrotation=15, labelsize=8)

    growth = result.get("growth") or {}
    for ax, key, label, title in ((axes[1], "per_frame_s", "s / frame (refinement iteration)", "Per-frame time vs story length"),
                                  (axes[2], "peak_mb", "peak memory per worker, MB", "Peak memory vs story length")):
        for kind, style in (("engine", "o-"), ("upstream", "s--")):
            rows = growth.get(kind, [])
            if rows:
                ax.plot([r["n"] for r in rows], [r[key] for r in rows], style, label=kind,
                        color="tab:green" if kind == "engine" else "tab:gray")
        ax.set_xscale("log")
        ax.set_xticks([r["n"] for r in growth.get("engine", [])])
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("story length N (bank of 4N reference tokens)")
        ax.set_ylabel(label)
        ax.set_ylim(bottom=0)
        ax.set_title(title)
        ax.legend()

    ax = axes[3]
    engines = [n for n in names if n.startswith("engine")]
    if not engines:
        ax.text(0.5, 0.5, "engine not measured (Ray not installed)", ha="center", va="center")
    median = {n: _median_round(result["loops"][n]["rounds"], "idle_fraction") for n in engines}
    busy = [1 - median[n]["idle_fraction"] for n in engines]
    drv = [median[n]["driver_fraction"] for n in engines]
    barrier = [median[n].get("barrier_fraction", 0.0) for n in engines]
    other = [1 - b - d - w for b, d, w in zip(busy, drv, barrier)]
    bottom = busy
    ax.bar(engines, busy, label="workers rendering", color="tab:green")
    for part, label, color in ((barrier, "barrier wait (last frames)", "tab:purple"), (drv, "driver bank+manifest", "tab:orange"),
                               (other, "dispatch / transfer", "tab:red")):
        ax.bar(engines, part, bottom=bottom, label=label, color=color)
        bottom = [x + y for x, y in zip(bottom, part)]
    for i, b in enumerate(busy):
        ax.text(i, b - 0.02, f"idle {1 - b:.1%}", ha="center", va="center", fontsize=9, color="white")
    ax.set_ylabel("share of worker time")
    ax.set_ylim(min(busy + [1.0]) - 0.1, 1)
    ax.set_title("Engine: where worker time goes (median round)")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def flops_section(cfg: BenchConfig, result: dict) -> dict | None:
    growth = result.get("growth") or {}
    rows = []
    peak = cfg.peak_tflops
    for kind in ("engine", "upstream"):
        for row in growth.get(kind, []):
            if "flops_per_frame" not in row:
                continue
            total = row["flops_per_frame"]["total"]
            tflops = total / row["per_frame_s"] / 1e12
            rows.append({"what": f"{kind}, one worker, N={row['n']}", "gflop_per_frame": total / 1e9, "tflops": tflops,
                         "fraction_of_peak": tflops / peak if peak else None})
    if growth.get("story_frame_flops"):
        # A refinement frame of the throughput story (bank of `frames`); iteration-0 frames skip the reference
        # attention, a fraction of a percent less, so this slightly overstates the whole run.
        per_frame = growth["story_frame_flops"]["total"]
        for name, loop in result["loops"].items():
            if name.startswith("engine"):
                tflops = per_frame * loop["best"]["fps"] / 1e12
                devices = loop["workers"] if cfg.device != "cpu" else 1
                rows.append({"what": f"{name}, whole run ({loop['workers']} worker(s))", "gflop_per_frame": per_frame / 1e9,
                             "tflops": tflops, "fraction_of_peak": tflops / (peak * devices) if peak else None})
    return {"peak_tflops": peak, "rows": rows} if rows else None


def run_loops(cfg: BenchConfig, result: dict, source, story, work: Path, workers_all: int) -> None:
    """The throughput loops measured in interleaved rounds, and actors sharing a GPU; results into `result`."""
    try:
        import ray

        from storyadapter.engine import cluster as engine
    except ImportError as exc:  # e.g. a GPU box with torch but no Ray: the loops without the engine still run
        log.warning("Ray is not importable (%s): the engine loops are skipped", exc)
        ray = engine = None
    result["engine_skipped"] = engine is None

    measure_loops = "loops" in cfg.parts
    k = cfg.shared_gpu_actors if "shared" in cfg.parts else 0
    loops = [PlainLoop("plain", cfg, story, work / "plain", 1), UpstreamLoop("upstream", cfg, story, work / "upstream", cfg.threads)]
    if not measure_loops:
        loops = []
    elif cfg.upstream_all_cores and cfg.device == "cpu" and (os.cpu_count() or 1) > cfg.threads:
        loops.append(UpstreamLoop("upstream-all-cores", cfg, story, work / "upstream-all", os.cpu_count() or 1))
    engines = sorted({1, workers_all})
    # CPU actors of both engine sizes can be alive together (Ray's CPUs are logical; only one loop runs at a
    # time), so every loop takes part in the same interleaved rounds. GPUs cannot be over-subscribed.
    together = engines if cfg.device == "cpu" else [1]
    if engine is None or not measure_loops:
        engines = together = []
    t = time.perf_counter()
    cpus = max(sum(together), k) if cfg.device == "cpu" else workers_all
    started_ray = engine is not None and (together or k) and engine.connect("local", None, cpus, 1.0)
    result["ray_init_s"] = time.perf_counter() - t
    try:
        loops += [EngineLoop(f"engine-{w}", cfg, story, work / f"engine-{w}", w) for w in together]
        if loops:
            result["loops"] = measure(loops, source, cfg.rounds)
        for w in engines:
            if w not in together:
                result["loops"].update(measure([EngineLoop(f"engine-{w}", cfg, story, work / f"engine-{w}", w)],
                                               source, cfg.rounds))
        if cfg.long_frames and engine is not None and measure_loops:
            log.info("driver overhead on a %d-frame story", cfg.long_frames)
            long_story = make_story(cfg, cfg.long_frames, work)
            name = f"engine-{workers_all}-{cfg.long_frames}-frames"
            result["long_story"] = measure([EngineLoop(name, cfg, long_story, work / name, workers_all, cfg.long_iterations)],
                                           source, cfg.long_rounds)[name]
        if k and engine is not None:
            # k actors on one GPU (cluster.gpus_per_worker=1/k) against one actor rendering batches of k.
            # Measured one after the other: together they would ask Ray for two GPUs' worth.
            log.info("%d actors sharing one GPU vs one actor with batches of %d", k, k)
            shared = {}
            for loop in (EngineLoop(f"engine-{k}-sharing-1-gpu", cfg, story, work / "shared", k, gpu_share=1.0 / k),
                         EngineLoop(f"engine-1-batch-{k}", cfg, story, work / "batched", 1, batch_size=k)):
                shared.update(measure([loop], source, cfg.rounds))
            result["shared_gpu"] = shared
    finally:
        if started_ray:
            ray.shutdown()


# --- main --------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    cfg = load_config(sys.argv[1:] if argv is None else argv)
    from bench import sweeps
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
    finally:
        if not cfg.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    if cfg.full_size_flops:
        from bench.model_flops import full_size_flops

        log.info("full-size model FLOPs per frame at %d px (meta device)", cfg.full_size_px)
        prompt, negative = story.styled(story.frames[0])
        result["full_size_flops"] = full_size_flops(cfg.growth_frames, cfg.full_size_steps, cfg.full_size_px, prompt, negative)
    result["ratios"], result["ratio_spread"] = ratios(result)
    result["flops"] = flops_section(cfg, result) if cfg.flops else None
    result["bench_wall_s"] = time.perf_counter() - started
    result["environment"]["loadavg_end"] = os.getloadavg()

    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{cfg.name}.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    text = markdown(result) + "\n".join(sweeps.markdown(result)) + "\n"
    (out / f"{cfg.name}.md").write_text(text)
    plot(result, out / f"{cfg.name}.png")
    print(text)
    log.info("wrote %s/%s.{json,md,png} in %.0f s", out, cfg.name, result["bench_wall_s"])
    return result


if __name__ == "__main__":
    main()

"""The benchmarks' shared harness: the config and presets, the model, story and worker set-up, and the measuring
tools (device sync, peak memory, FLOPs counted by torch, round summaries, the machine's description) that
bench/loops.py, bench/growth.py and bench/sweeps.py use, and bench/model_flops.py counts with."""

from __future__ import annotations

import os
import dataclasses
import gc
import platform
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
STORY = REPO / "storyadapter" / "examples" / "explorer_24.txt"


@dataclass
class BenchConfig:
    preset: str = "cpu"
    name: str = "cpu"  # results file stem: bench/results/<name>.{json,md,png}
    model: str = "tiny"  # tiny | sdxl-random | flux-random
    family: str = "sdxl"  # sdxl | flux (model.family): with model=tiny, flux is model=flux-tiny
    device: str = "cpu"
    dtype: str = "float32"
    frames: int = 24  # story length of the throughput runs (also the reference bank size N there)
    iterations: int = 1  # refinement iterations after iteration 0
    steps: int = 4
    size: int = 64
    guidance_scale: float = 7.5
    scheduler: str = "ddim"  # render.scheduler (FLUX: flow_euler)
    distilled_guidance: Optional[float] = None  # render.distilled_guidance (FLUX.1-dev's guidance embedding)
    rounds: int = 3  # measured runs per loop (after one warm-up run); the median is reported
    threads: int = 1  # torch intra-op threads per worker (CPU)
    workers: int = 0  # "all workers" engine run: 0 = one per GPU, or one per core on CPU
    compile: bool = False  # torch.compile the UNet in the plain loop and the engine
    upstream_all_cores: bool = False  # also time the upstream loop with torch using every core (CPU)
    long_frames: int = 0  # > 0: also measure driver overhead of the all-workers engine on a story this long
    long_iterations: int = 1
    long_rounds: int = 3
    full_size_flops: bool = True  # FLOPs per frame of the full-size model at full_size_px, counted on the meta device
    full_size_px: int = 1024
    full_size_steps: int = 50
    growth_frames: list[int] = field(default_factory=lambda: [25, 100, 400])
    growth_sample: int = 8  # frames rendered per bank size
    growth_reps: int = 3  # measurements per bank size (alternating order); the fastest counts
    upstream_growth_frames: Optional[list[int]] = None  # default growth_frames; upstream holds all N images at once
    upstream_growth_reps: int = 2  # the same for the upstream loop (slow at N=400: N image encodes per frame)
    flops: bool = True
    peak_tflops: Optional[float] = None  # the device's dense peak for `dtype` (H100 SXM bf16: 989)
    # bench/sweeps.py: per-frame time by batch size x torch.compile, and kernel variants at the first batch size
    batch_sizes: list[int] = field(default_factory=lambda: [1])  # empty: no sweep
    sweep_compile: list[bool] = field(default_factory=lambda: [False])
    sweep_variants: list[str] = field(default_factory=list)  # nondeterministic | joint_sdpa | float16
    sweep_reps: int = 2
    vae_round_trip: bool = True  # time the per-batch fp16 VAE conversion the renderer no longer does
    shared_gpu_actors: int = 0  # > 0: that many engine actors sharing one GPU vs one actor with that batch size
    memory_caps_gb: list[float] = field(default_factory=lambda: [24.0, 80.0])
    # What to run: growth (cost vs N, memory), sweeps (batch sizes, compile, variants), loops (upstream / plain /
    # engine throughput), shared (actors sharing a GPU), flux (bench/flux.py: FLUX.1-dev's settings, flux_parts of
    # loops and growth). A GPU lease runs them in separate calls under its time limit.
    parts: list[str] = field(default_factory=lambda: ["growth", "sweeps", "loops", "shared", "flux"])
    # The flux part: flux-tiny on CPU (plain vs engine-1: the engine's cost), flux-random on a GPU (cost vs N).
    flux_parts: list[str] = field(default_factory=lambda: ["loops"])
    flux_growth_frames: list[int] = field(default_factory=lambda: [25, 100, 400])
    seed: int = 2024
    seed_policy: str = "shared"
    cache_dir: Optional[str] = None  # where model=tiny is built
    out_dir: str = "bench/results"
    work_dir: Optional[str] = None  # rendered frames go here; default a temporary folder, removed afterwards


PRESETS = {
    "cpu": dict(name="cpu", model="tiny", device="cpu", dtype="float32", frames=24, iterations=2, steps=4, size=64,
                rounds=4, threads=1, growth_sample=8, growth_reps=3, peak_tflops=None, long_frames=100, long_rounds=2),
    "gpu": dict(name="gpu", model="sdxl-random", device="cuda", dtype="bfloat16", frames=8, iterations=1, steps=50,
                size=1024, rounds=1, threads=1, growth_frames=[25, 100, 400, 1000], upstream_growth_frames=[25, 100, 400],
                growth_sample=2, growth_reps=1,
                upstream_growth_reps=1, peak_tflops=989.0, batch_sizes=[1, 2, 4, 8], sweep_compile=[False, True],
                sweep_variants=["nondeterministic", "joint_sdpa", "float16"], shared_gpu_actors=2, flux_parts=["growth"]),
}
def load_config(argv: list[str]) -> BenchConfig:
    from omegaconf import OmegaConf

    cli = OmegaConf.from_dotlist(argv)
    preset = cli.get("preset", "cpu")
    if preset not in PRESETS:
        raise SystemExit(f"preset={preset}: expected one of {', '.join(PRESETS)}")
    merged = OmegaConf.merge(OmegaConf.structured(BenchConfig), PRESETS[preset], cli)
    cfg = OmegaConf.to_object(merged)
    unknown = set(cfg.parts) - {"growth", "sweeps", "loops", "shared", "flux"}
    if unknown:
        raise SystemExit(f"parts={cfg.parts}: unknown {sorted(unknown)}; expected growth, sweeps, loops, shared, flux")
    unknown = set(cfg.flux_parts) - {"growth", "loops"}
    if unknown:
        raise SystemExit(f"flux_parts={cfg.flux_parts}: unknown {sorted(unknown)}; expected growth, loops")
    return cfg


# --- shared set-up -----------------------------------------------------------------------------------

def model_source(cfg: BenchConfig):
    from storyadapter.render_story import resolve_model
    from storyadapter.spec import ModelSpec

    return resolve_model(ModelSpec(kind=cfg.model, family=cfg.family, cache_dir=cfg.cache_dir))[0]


def make_story(cfg: BenchConfig, frames: int, work: Path):
    """`frames` prompts cycled from the shipped 24-frame example (short prompts: one 77-token window)."""
    from storyadapter.story.parse import load_story

    lines = [ln for ln in STORY.read_text(encoding="utf-8").splitlines() if ln.strip()]
    path = work / f"story_{frames}.txt"
    path.write_text("\n".join(lines[i % len(lines)] for i in range(frames)) + "\n", encoding="utf-8")
    return load_story(path)


def settings(cfg: BenchConfig):
    from storyadapter.worker.renderer import RenderSettings

    return RenderSettings(steps=cfg.steps, height=cfg.size, width=cfg.size, guidance_scale=cfg.guidance_scale,
                          scheduler=cfg.scheduler, distilled_guidance=cfg.distilled_guidance)


def worker_spec(cfg: BenchConfig, story, source, out_dir: Path, compile: bool = False):
    from storyadapter.worker.frame_worker import FramePrompt, WorkerSpec

    return WorkerSpec(source=source, settings=settings(cfg), prompts=tuple(FramePrompt(*story.styled(f)) for f in story.frames),
                      out_dir=str(out_dir.resolve()), seed=cfg.seed, seed_policy=cfg.seed_policy, device=cfg.device,
                      dtype=cfg.dtype, threads=cfg.threads if cfg.device == "cpu" else 0, compile=compile)


def run_plan(cfg: BenchConfig, story, out_dir: Path, iterations: int, batch_size: int = 1):
    from storyadapter.engine.driver import RunPlan

    return RunPlan(story=story, out_dir=out_dir, iterations=iterations, batch_size=batch_size, scale_start=0.3, scale_end=0.5,
                   seed=cfg.seed, seed_policy=cfg.seed_policy)


def bench_environment() -> None:
    """A benchmark process's environment, set by each benchmark's main (and child), never on import: tests import
    these modules, and a variable set then would reach every launcher the test process starts. No progress bars or
    lines (a benchmark prints its own summary), no hub, no tokenizer threads beside the measured ones."""
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def child_config(cfg_dict: dict) -> BenchConfig:
    """The config inside a spawned child process, which starts bare: quiet library logs, the CPU thread count."""
    from storyadapter.logs import quiet_libraries

    bench_environment()
    quiet_libraries()
    cfg = BenchConfig(**cfg_dict)
    if cfg.device == "cpu":
        torch.set_num_threads(cfg.threads)
    return cfg


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def release() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class PeakMemory:
    """Peak memory of this process while the block runs: CUDA allocated bytes on GPU, RSS (sampled) on CPU."""

    def __init__(self, device: str, interval_s: float = 0.005):
        self.cuda = device.startswith("cuda")
        self.interval_s = interval_s
        self.peak_mb = 0.0
        self.reserved_mb = 0.0  # CUDA: what the caching allocator held, closer to what the card must have

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            return self
        import psutil

        proc = psutil.Process()
        self._stop = threading.Event()
        self._peak = proc.memory_info().rss

        def sample():
            while not self._stop.wait(self.interval_s):
                self._peak = max(self._peak, proc.memory_info().rss)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
            self.peak_mb = torch.cuda.max_memory_allocated() / 2**20
            self.reserved_mb = torch.cuda.max_memory_reserved() / 2**20
        else:
            import psutil

            self._stop.set()
            self._thread.join()
            self.peak_mb = max(self._peak, psutil.Process().memory_info().rss) / 2**20
        return False


def count_flops(fn) -> int:
    """FLOPs of fn() by torch's FlopCounterMode (matmuls, convolutions, SDPA incl. the CPU flash kernel)."""
    from torch.utils.flop_counter import FlopCounterMode

    def sdpa(query, key, value, *args, out_shape=None, **kwargs):
        b, h, sq, d = query
        return 2 * b * h * sq * key[-2] * d + 2 * b * h * sq * key[-2] * value[-1]

    custom = {}
    cpu_flash = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if cpu_flash is not None:
        custom[cpu_flash] = sdpa
    with FlopCounterMode(display=False, custom_mapping=custom) as counter:
        fn()
    return int(counter.get_total_flops())


# --- FLOPs per frame ------------------------------------------------------------------------------------

def engine_frame_flops(r, story, bank: np.ndarray, cfg: BenchConfig) -> dict:
    """FLOPs of one refinement frame as the engine renders it: steps x UNet(CFG batch 2) + VAE decode + one
    image encode, plus text encoding (once per frame per run) and set_references (once per iteration) amortised."""
    prompt, negative = story.styled(story.frames[0])
    emb = r.encode_text(prompt, negative)
    text = count_flops(lambda: r.encode_text(prompt, negative))
    set_refs = count_flops(lambda: r.set_references(bank, 0.4))
    base = r.settings
    try:
        r.settings = dataclasses.replace(base, steps=1)
        one = count_flops(lambda: r.render([emb], [cfg.seed]))
        r.settings = dataclasses.replace(base, steps=2)
        images = []
        two = count_flops(lambda: images.extend(r.render([emb], [cfg.seed])))
    finally:
        r.settings = base
    unet_step = two - one
    embed = count_flops(lambda: r.embed_images(images))
    decode = one - unet_step
    total = cfg.steps * unet_step + decode + embed + text / (cfg.iterations + 1) + set_refs / len(bank)
    return {"total": total, "unet_step": unet_step, "vae_decode": decode, "image_encode": embed, "text": text,
            "set_references": set_refs}


def upstream_frame_flops(adapter, prompt: tuple[str, str], refs, cfg: BenchConfig) -> dict:
    base = adapter.settings
    try:
        adapter.settings = dataclasses.replace(base, steps=1)
        one = count_flops(lambda: adapter.generate(*prompt, refs, 0.4, cfg.seed))
        adapter.settings = dataclasses.replace(base, steps=2)
        two = count_flops(lambda: adapter.generate(*prompt, refs, 0.4, cfg.seed))
    finally:
        adapter.settings = base
    unet_step = two - one
    return {"total": one + (cfg.steps - 1) * unet_step, "unet_step": unet_step, "per_frame_fixed": one - unet_step}


# --- a round of a loop, and the machine it ran on ---------------------------------------------------

def round_summary(iters: list[dict], workers: int) -> dict:
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


def median_round(rounds: list[dict], field: str = "fps") -> dict:
    return sorted(rounds, key=lambda r: r[field])[len(rounds) // 2]


def best_round(rounds: list[dict]) -> dict:
    """The fastest round: other load on the machine only ever adds time, so the best round is the closest
    estimate of the loop's own cost (the usual best-of-N of timing tools); medians are reported beside it."""
    return max(rounds, key=lambda r: r["fps"])


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

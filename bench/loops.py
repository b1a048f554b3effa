"""The measured loops of the throughput benchmark, set up once, warmed up, then run in interleaved rounds:

  * upstream      - bench/upstream_loop.py: one pipeline call per frame, N reference images re-encoded per
                    frame, reference K/V recomputed every step, text re-encoded every iteration;
  * plain         - FrameWorker + LocalExecutor + driver.run_iterations in this process (no Ray), the same work as the engine;
  * engine-1      - RayExecutor with one actor; engine-all: one actor per GPU (per core on CPU).

`run_loops` measures them all into the result dict, plus a long story and actors sharing a GPU.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
from pathlib import Path

import torch

from bench.harness import (
    BenchConfig, best_round, make_story, median_round, release, round_summary, run_plan, settings, sync, worker_spec,
)

log = logging.getLogger("bench")


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
        return round_summary(self._run(self.story, self.iterations), self.workers)

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
                                    max_restarts=0, ready_timeout_s=1800.0,
                                    min_workers=self.workers)  # measured with every actor from the start
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
        return round_summary([dataclasses.asdict(s) for s in stats], 1)

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
                        "best": best_round(results[loop.name]), "median": median_round(results[loop.name])}
            for loop in loops}


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


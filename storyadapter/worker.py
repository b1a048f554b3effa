"""A frame worker: owns one loaded pipeline and renders batches of frames of one story.

Runs in-process (tests, notebooks) or inside a Ray actor (the engine); it knows nothing of Ray.
"""

from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import manifest, schedule, torch_settings
from .frame_writer import FrameWriter
from .models.loading import ModelSource, load_pipeline, pick_device, pick_dtype
from .renderer import RenderSettings, StoryRenderer
from .results import BatchResult, FrameResult, StaleIterationError, fsync_dir


@dataclass(frozen=True)
class FramePrompt:
    prompt: str  # styled
    negative: str


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs, picklable, so Ray can rebuild a worker after a crash."""

    source: ModelSource
    settings: RenderSettings
    prompts: tuple[FramePrompt, ...]
    out_dir: str
    seed: int
    seed_policy: str
    device: str = "auto"
    dtype: str = "auto"
    threads: int = 0  # 0: leave torch's default
    compile: bool = False
    deterministic: bool = True  # cuDNN: deterministic kernels, no autotuning (see ModelConfig.deterministic)

    def build(self) -> "FrameWorker":
        return FrameWorker(self)


def _reproducible(method):
    """Run a FrameWorker method with its spec's thread count and cuDNN mode (deterministic unless
    model.deterministic=false), restoring the caller's settings afterwards: they are process-wide, and tests
    and notebooks share the process."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        spec = getattr(self, "spec", None) or args[0]
        with torch_settings.reproducible(spec.threads, spec.deterministic):
            return method(self, *args, **kwargs)

    return wrapper


class FrameWorker:
    @_reproducible
    def __init__(self, spec: WorkerSpec):
        from .logs import quiet_libraries

        quiet_libraries()
        device = pick_device(spec.device)
        pipe = load_pipeline(spec.source, device, pick_dtype(spec.dtype, device))
        if spec.compile:
            pipe.unet = torch.compile(pipe.unet)
        self.spec = spec
        self.renderer = StoryRenderer(pipe, spec.settings)
        from .text import story_windows

        self._windows = story_windows(pipe, [p for fp in spec.prompts for p in (fp.prompt, fp.negative)])
        self._text: dict[int, object] = {}
        self._iteration: int | None = None  # the iteration whose bank the renderer holds
        self.image_encodes = 0  # images passed through the CLIP image encoder, for tests and benchmarks
        self._writer = FrameWriter()

    @property
    def embedding_dim(self) -> int:
        return self.renderer.embedding_dim

    def _text_for(self, frame: int):
        # Text conditioning never changes across iterations: encode each frame once per worker.
        if frame not in self._text:
            fp = self.spec.prompts[frame]
            self._text[frame] = self.renderer.encode_text(fp.prompt, fp.negative, self._windows)
        return self._text[frame]

    @_reproducible
    def begin_iteration(self, iteration: int, bank: np.ndarray | None, scale: float) -> None:
        """Load this iteration's bank: reference K/V once per iteration, shared by all its batches."""
        self.renderer.set_references(bank, scale)
        self._iteration = iteration

    @_reproducible
    def render_batch(self, iteration: int, frames: list[int]) -> BatchResult:
        if iteration != self._iteration:
            raise StaleIterationError(f"batch for iteration {iteration}, but the worker holds the bank of {self._iteration}")
        started_at, start = time.time(), time.perf_counter()
        seeds = [schedule.frame_seed(self.spec.seed, self.spec.seed_policy, f) for f in frames]
        images = self.renderer.render([self._text_for(f) for f in frames], seeds)
        out_dir = Path(self.spec.out_dir)
        rel_dir = manifest.iteration_dirname(iteration)
        if not (out_dir / rel_dir).is_dir():
            (out_dir / rel_dir).mkdir(parents=True, exist_ok=True)
            fsync_dir(out_dir)  # the new directory's entry must be durable before any record names a file in it
        paths = [f"{rel_dir}/{manifest.frame_filename(frame)}" for frame in frames]
        # PNGs are written in the background while the CLIP pass runs (frame_writer.py explains the choice);
        # the batch is reported only once every file is durable, and a failed write fails it.
        writes = [self._writer.submit(image, out_dir / rel) for image, rel in zip(images, paths)]
        try:
            embeddings = self.renderer.embed_images(images)
        finally:
            self._writer.wait(writes)
        self.image_encodes += len(images)
        results = [FrameResult(f, p, e) for f, p, e in zip(frames, paths, embeddings)]
        return BatchResult(results, time.perf_counter() - start, started_at, os.getpid())

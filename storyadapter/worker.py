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

from . import manifest, references, schedule, torch_settings
from .frame_writer import FrameWriter
from .identity import ConsistentPass, IdentityBatch
from .models.loading import ModelSource, load_pipeline, pick_device, pick_dtype
from .photos import CharacterPhoto
from .renderer import RenderSettings, StoryRenderer
from .results import BatchResult, FrameResult, StaleIterationError, fsync_dir


@dataclass(frozen=True)
class FramePrompt:
    prompt: str  # styled
    negative: str
    characters: tuple[str, ...] = ()  # named in the frame: they pick its references under `characters` weighting


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
    consistent: ConsistentPass | None = None  # method=storydiffusion|hybrid: iteration 0 by CSA
    reference_weighting: str = references.UNIFORM
    character_weight: float = 1.0
    photos: tuple[CharacterPhoto, ...] = ()  # file bytes travel with the spec to actors on any node

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
        consistent = spec.consistent
        self.renderer = StoryRenderer(pipe, spec.settings, consistent.settings if consistent else None)
        from .text import story_windows

        texts = [p for fp in spec.prompts for p in (fp.prompt, fp.negative)]
        if consistent:  # identity prompts share the story's text windows (one conditioning length for all)
            texts += [p for b in consistent.identities for pair in b.prompts for p in pair]
        self._windows = story_windows(pipe, texts)
        self._identity_images: dict[str, dict[int, object]] = {}  # character -> its shown identity frames
        self._text: dict[int, object] = {}
        self._iteration: int | None = None  # the iteration whose bank the renderer holds
        self.image_encodes = 0  # images passed through the CLIP image encoder, for tests and benchmarks
        self._writer = FrameWriter()
        self.identity_renders = 0  # identity frames rendered for ID banks, for tests and benchmarks
        self._photo_bank = self._encode_photos()
        self._rows: list[tuple[str, ...]] = []  # characters of each row of the loaded bank
        self._photos_only = False

    @property
    def embedding_dim(self) -> int:
        return self.renderer.embedding_dim

    def _text_for(self, frame: int):
        # Text conditioning never changes across iterations: encode each frame once per worker.
        if frame not in self._text:
            fp = self.spec.prompts[frame]
            self._text[frame] = self.renderer.encode_text(fp.prompt, fp.negative, self._windows)
        return self._text[frame]

    def _encode_photos(self) -> np.ndarray | None:
        # Once per worker for the whole run, at render.reference_size like every other reference.
        if not self.spec.photos:
            return None
        from .photos import decode

        self.image_encodes += len(self.spec.photos)
        return self.renderer.embed_images([decode(p.data) for p in self.spec.photos])

    @_reproducible
    def begin_iteration(self, iteration: int, bank: np.ndarray | None, scale: float) -> None:
        """Load this iteration's bank: reference K/V once per iteration, shared by all its batches.

        Character photos join `bank` as extra rows; in iteration 0 (no bank) they are the whole bank.
        """
        frames = [fp.characters for fp in self.spec.prompts]
        bank, self._rows, self._photos_only = references.assemble_bank(
            bank, frames, self._photo_bank, [p.character for p in self.spec.photos])
        self.renderer.set_references(bank, scale)
        self._iteration = iteration
        if iteration > 0 and self.renderer.csa is not None:  # the ID banks serve iteration 0 only
            self.renderer.csa.banks.clear()
            self._identity_images.clear()

    @_reproducible
    def render_batch(self, iteration: int, frames: list[int]) -> BatchResult:
        if iteration != self._iteration:
            raise StaleIterationError(f"batch for iteration {iteration}, but the worker holds the bank of {self._iteration}")
        started_at, start = time.time(), time.perf_counter()
        if iteration == 0 and self.spec.consistent is not None:
            images = self._render_consistent(frames)  # character photos weigh uniformly here (README, Methods)
        else:
            seeds = [schedule.frame_seed(self.spec.seed, self.spec.seed_policy, f) for f in frames]
            if self._rows:
                self.renderer.set_reference_weights(*references.batch_weights(
                    [self.spec.prompts[f].characters for f in frames], self._rows,
                    self.spec.reference_weighting, self.spec.character_weight, self._photos_only))
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

    # consistent self-attention (iteration 0 of method=storydiffusion|hybrid) --------------------------
    def _render_consistent(self, frames: list[int]) -> list:
        """Identity frames come from their character's write batch; the others read the banks they need.

        Every actor renders the identity batches it needs itself (once, cached): they are deterministic, so
        the banks, and the pixels, are the same whatever the worker count (README, "Methods").
        """
        plan = self.spec.consistent
        shown = {}
        for f in frames:
            owner = plan.owner_of(f)
            if owner is not None:
                shown[f] = self._identity(owner)[f]
        readers = [f for f in frames if f not in shown]
        for name in sorted({c for f in readers for c in plan.characters[f]}):
            self._identity(next(b for b in plan.identities if b.character == name))
        if readers:
            seeds = [schedule.frame_seed(self.spec.seed, self.spec.seed_policy, f) for f in readers]
            images = self.renderer.render_consistent([self._text_for(f) for f in readers], seeds,
                                                     [plan.characters[f] for f in readers],
                                                     [plan.draw_seeds[f] for f in readers])
            shown.update(zip(readers, images))
        return [shown[f] for f in frames]

    def _identity(self, batch: IdentityBatch) -> dict[int, object]:
        if batch.character not in self._identity_images:
            texts = [self.renderer.encode_text(p, n, self._windows) for p, n in batch.prompts]
            images = self.renderer.render_identity(batch.character, texts, list(batch.seeds), batch.draw_seed)
            self.identity_renders += len(images)
            self._identity_images[batch.character] = {f: im for f, im in zip(batch.frames, images) if f is not None}
        return self._identity_images[batch.character]

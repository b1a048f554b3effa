"""A frame worker: owns one loaded model (a backbone) and renders batches of frames of one story.

Runs in-process (tests, notebooks) or inside a Ray actor (the engine); it knows nothing of Ray.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import torch

from .. import environment
from ..methods import FreeUSettings, freeu_in
from ..rundir import manifest
from ..story import references, schedule
from . import torch_settings
from .frame_writer import FrameWriter
from ..attention.csa import IdBank, PackedBank
from ..story.identity import ConsistentPass, IdentityBatch
from ..models.loading import ModelSource, load_backbone, pick_device, pick_dtype
from ..story.photos import CharacterPhoto
from .renderer import RenderSettings, StoryRenderer
from ..engine.protocol import BankUnavailable, BatchResult, FrameResult, StaleIterationError
from ..rundir.frame_files import make_iteration_dir

log = logging.getLogger(__name__)

BankLoader = Callable[[], PackedBank]  # fetches one character's ID bank (under Ray: ray.get of its object)


@dataclass(frozen=True)
class IdentityResult:
    batch: BatchResult  # the story frames among the identity frames (synthesized ones are never shown)
    bank: PackedBank | None  # with share=True


@dataclass(frozen=True)
class FramePrompt:
    prompt: str  # styled
    negative: str
    characters: tuple[str, ...] = ()  # named in the frame: they pick its references under `characters` weighting
    seed: int | None = None  # the frame's own seed from the story file, else render.seed and seed_policy decide


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
    method: str = "story_adapter"
    freeu: FreeUSettings | None = None  # method.freeu, when enabled (methods.freeu_in: which iterations)
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
        from ..logs import quiet_libraries

        quiet_libraries()
        device = pick_device(spec.device)
        backbone = load_backbone(spec.source, device, pick_dtype(spec.dtype, device))
        if spec.compile:
            backbone.compile()
        self.spec = spec
        consistent = spec.consistent
        self.renderer = StoryRenderer(backbone, spec.settings, consistent.settings if consistent else None)
        if spec.settings.draft.lora:
            backbone.load_draft_lora(spec.settings.draft.lora, spec.settings.draft.lora_scale)
        texts = [p for fp in spec.prompts for p in (fp.prompt, fp.negative)]
        if consistent:  # identity prompts share the story's text windows (one conditioning length for all)
            texts += [p for b in consistent.identities for pair in b.prompts for p in pair]
        self._windows = backbone.text_windows(texts)
        self._identity_images: dict[str, dict[int, object]] = {}  # character -> its shown identity frames
        self._text: dict[int, object] = {}
        self._iteration: int | None = None  # the iteration whose bank the renderer holds
        self.image_encodes = 0  # images passed through the CLIP image encoder, for tests and benchmarks
        self._writer = FrameWriter()
        self.identity_renders = 0  # identity frames rendered for ID banks, for tests and benchmarks
        self.banks_fetched = 0  # ID banks another worker wrote, read from it (the object store under Ray)
        self._photo_bank = self._encode_photos()
        self._rows: list[tuple[str, ...]] = []  # characters of each row of the loaded bank
        self._photos_only = False
        self._device = device
        if backbone.releases_text_encoders:  # every frame's prompt now, then the text encoders leave the GPU
            for frame in range(len(spec.prompts)):
                self._text_for(frame)
            backbone.release_text_encoders()

    def environment(self) -> dict:
        """The library versions and the device this worker renders with (config.yaml records them)."""
        device = str(self._device)
        if self._device.type == "cuda":
            device = f"cuda ({torch.cuda.get_device_name(self._device)})"
        return environment.describe(environment.package_versions(), device)

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
        from ..story.photos import decode

        self.image_encodes += len(self.spec.photos)
        return self.renderer.embed_images([decode(p.data) for p in self.spec.photos])

    @_reproducible
    def begin_iteration(self, iteration: int, bank: np.ndarray | None, scale: float, draft: bool = False) -> None:
        """Load this iteration's bank: reference K/V once per iteration, shared by all its batches; `draft`: render
        it with the draft settings (render.draft.*), else with the last pass's.

        Character photos join `bank` as extra rows; in iteration 0 (no bank) they are the whole bank.
        """
        self.renderer.use(self.spec.settings.for_pass(draft), draft_lora=draft)
        frames = [fp.characters for fp in self.spec.prompts]
        bank, self._rows, self._photos_only = references.assemble_bank(
            bank, frames, self._photo_bank, [p.character for p in self.spec.photos])
        self.renderer.set_references(bank, scale)
        if self.spec.freeu is not None:
            self.renderer.backbone.set_freeu(self.spec.freeu if freeu_in(self.spec.method, iteration) else None)
        self._iteration = iteration
        if iteration > 0:  # the ID banks serve iteration 0 only
            self.forget_banks()

    def _check_iteration(self, iteration: int) -> None:
        if iteration != self._iteration:
            raise StaleIterationError(f"batch for iteration {iteration}, but the worker holds the bank of {self._iteration}")

    @_reproducible
    def write_identity(self, iteration: int, character: str, share: bool = False) -> IdentityResult:
        """A CSA write phase: `character`'s identity frames as one batch. Returns the story frames among them
        (written and embedded like any batch) and, with `share`, the character's ID bank packed for other
        workers. Packing moves the bank out of this worker: under Ray the packed copy, in the node's object
        store, is the only one, and this worker reads it from there like any other.
        """
        self._check_iteration(iteration)
        started_at, start = time.time(), time.perf_counter()
        batch = self.spec.consistent.owned(character)
        shown = self._identity(batch)
        frames = [f for f in batch.frames if f is not None]  # none when every identity frame is synthesized
        result = self._finish(iteration, frames, [shown[f] for f in frames], started_at, start)
        packed = self.renderer.csa.banks.pop(character).pack() if share else None
        return IdentityResult(result, packed)

    def forget_banks(self) -> None:
        """The CSA pass is over: drop the ID banks (under Ray, views that pin the object store's copies)."""
        if self.renderer.csa is not None:
            self.renderer.csa.banks.clear()
        self._identity_images.clear()

    @_reproducible
    def render_batch(self, iteration: int, frames: list[int], id_banks: Mapping[str, BankLoader] | None = None) -> BatchResult:
        """Render `frames`. In a CSA pass, `id_banks` fetches the ID banks other workers wrote (write_identity);
        a character without one, or whose bank cannot be fetched, has its identity frames rendered here."""
        self._check_iteration(iteration)
        started_at, start = time.time(), time.perf_counter()
        if iteration == 0 and self.spec.consistent is not None:
            images = self._render_consistent(frames, id_banks or {})
        else:
            seeds = [self._seed(f) for f in frames]
            self._weigh_references([self.spec.prompts[f].characters for f in frames])
            images = self.renderer.render([self._text_for(f) for f in frames], seeds)
        return self._finish(iteration, frames, images, started_at, start)

    def _seed(self, frame: int) -> int:
        return schedule.frame_seed(self.spec.seed, self.spec.seed_policy, frame, self.spec.prompts[frame].seed)

    def _weigh_references(self, characters: list[tuple[str, ...]]) -> None:
        """Per-frame reference weights for the next render (character photos, `characters` weighting)."""
        if self._rows:
            self.renderer.set_reference_weights(*references.batch_weights(
                characters, self._rows, self.spec.reference_weighting, self.spec.character_weight, self._photos_only))

    def _finish(self, iteration: int, frames: list[int], images: list, started_at: float, start: float) -> BatchResult:
        """Write the frames durably and embed them for the next bank."""
        if not frames:
            return BatchResult([], time.perf_counter() - start, started_at, os.getpid())
        out_dir = Path(self.spec.out_dir)
        rel_dir = make_iteration_dir(out_dir, iteration)
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
    def _render_consistent(self, frames: list[int], id_banks: Mapping[str, BankLoader]) -> list:
        """Identity frames come from their character's write batch; the others read the banks they need."""
        plan = self.spec.consistent
        shown = {}
        for f in frames:
            owner = plan.owner_of(f)
            if owner is not None:
                shown[f] = self._identity(owner)[f]
        readers = [f for f in frames if f not in shown]
        for name in sorted({c for f in readers for c in plan.characters[f]}):
            self._load_bank(name, id_banks.get(name))
        if readers:
            seeds = [self._seed(f) for f in readers]
            self._weigh_references([plan.characters[f] for f in readers])
            images = self.renderer.render_consistent([self._text_for(f) for f in readers], seeds,
                                                     [plan.characters[f] for f in readers],
                                                     [plan.draw_seeds[f] for f in readers])
            shown.update(zip(readers, images))
        return [shown[f] for f in frames]

    def _load_bank(self, character: str, loader: BankLoader | None) -> None:
        """A character's ID bank: from the worker that wrote it, or, failing that, written here (the same bank:
        the write phase is deterministic, so pixels never depend on where it ran)."""
        banks = self.renderer.csa.banks
        if character in banks:
            return
        if loader is not None:
            try:
                banks[character] = IdBank.unpack(loader())
                self.banks_fetched += 1
                return
            except BankUnavailable as exc:  # its node is gone, say: render it here instead
                log.warning("ID bank of %s could not be fetched (%s); rendering its identity frames here", character, exc)
        self._identity(self.spec.consistent.owned(character))

    def _identity(self, batch: IdentityBatch) -> dict[int, object]:
        """Render a character's write batch here (once: its shown frames and its bank stay cached)."""
        if batch.character not in self._identity_images or batch.character not in self.renderer.csa.banks:
            texts = [self.renderer.encode_text(p, n, self._windows) for p, n in batch.prompts]
            self._weigh_references([(batch.character,)] * len(texts))
            images = self.renderer.render_identity(batch.character, texts, list(batch.seeds), batch.draw_seed,
                                                   batch.batch_seed)
            self.identity_renders += len(images)
            self._identity_images[batch.character] = {f: im for f, im in zip(batch.frames, images) if f is not None}
        return self._identity_images[batch.character]

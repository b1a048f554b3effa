"""A simulated renderer (`model=sim`): the real driver, engine, manifest and outputs, without torch or weights.

Each frame takes a configurable time (a sleep) and yields a small PNG and an embedding that depend only on
(seed, frame, iteration, the bank's bytes, scale), as a real render does. So a dry run of a cluster, story
and output setup, and the scale benchmark (bench/sim_cluster.py), exercise everything but the GPU.

Frame time = frame_s x (slowdown on a straggler node) x (1 + jitter x u), u in [-1, 1] from a hash of
(seed, frame, iteration): the same work every run. Stragglers are whole nodes, as on a real cluster (one
slower GPU type, one hot host): the first round(straggler_share x nodes) of the cluster's GPU nodes, in node-id
order, so "one node of 8 is 1.5x slower" is exactly one node.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .. import environment
from ..rundir import manifest
from ..atomic import replacing
from ..rundir.frame_files import make_iteration_dir, write_png_durably
from .protocol import BatchResult, FrameResult, StaleIterationError


@dataclass(frozen=True)
class SimSpec:
    """Picklable, like WorkerSpec: the Ray actor calls `build()` in its own process. Filled from model.sim.* by
    name (spec.fields_for), so a new model.sim key is a field here and in config.SimConfig."""

    out_dir: str
    seed: int = 2024
    frame_s: float = 0.05
    jitter: float = 0.0
    straggler_share: float = 0.0
    slowdown: float = 1.0
    embedding_dim: int = 16
    image_size: int = 32
    trace_dir: str | None = None  # one file per batch started, for the benchmark's count of repeated work
    device: str = "auto"  # the engine reserves a (possibly fake) GPU per actor when the cluster has GPUs

    def build(self) -> "SimWorker":
        return SimWorker(self)


def _digest(*parts: object) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    for p in parts:
        h.update(p if isinstance(p, bytes) else repr(p).encode())
        h.update(b"\0")
    return h.digest()


def node_id() -> str:
    """This process's Ray node, or "local" outside Ray."""
    import ray  # torch-free

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else "local"


def on_straggler_node(share: float) -> bool:
    """Whether this process runs on one of the first round(share x nodes) GPU nodes (all nodes if none has GPUs)."""
    if share <= 0:
        return False
    import ray

    if not ray.is_initialized():
        return round(share) >= 1  # one process is one node
    alive = [n for n in ray.nodes() if n.get("Alive")]
    gpu_nodes = [n for n in alive if n.get("Resources", {}).get("GPU", 0) > 0]
    ids = sorted(n["NodeID"] for n in (gpu_nodes or alive))
    return node_id() in ids[: round(share * len(ids))]


class SimWorker:
    """The Worker protocol (protocol.py) with sleeps for renders; keeps FrameWorker's stale-iteration guard."""

    def __init__(self, spec: SimSpec):
        self.spec = spec
        self.slow = on_straggler_node(spec.straggler_share)
        self.node = node_id() if spec.trace_dir else ""
        self.embedding_dim = spec.embedding_dim
        self._iteration: int | None = None
        self._bank_digest = b""
        self._scale = 0.0
        self.image_encodes = 0  # frames embedded, as FrameWorker counts them

    def environment(self) -> dict:
        return environment.describe(environment.package_versions(), "sim (no model)")

    def begin_iteration(self, iteration: int, bank: np.ndarray | None, scale: float, draft: bool = False) -> None:
        bank_bytes = b"" if bank is None else np.ascontiguousarray(bank, dtype=np.float32).tobytes()
        self._bank_digest = _digest(bank_bytes)
        self._scale = float(scale)
        self._iteration = iteration

    def frame_seconds(self, frame: int, iteration: int) -> float:
        s = self.spec
        u = int.from_bytes(_digest("jitter", s.seed, frame, iteration)[:8], "little") / 2**64 * 2 - 1
        return s.frame_s * (s.slowdown if self.slow else 1.0) * (1 + s.jitter * u)

    def render_batch(self, iteration: int, frames: list[int]) -> BatchResult:
        if iteration != self._iteration:
            raise StaleIterationError(f"batch for iteration {iteration}, but the worker holds the bank of {self._iteration}")
        started_at, start = time.time(), time.perf_counter()
        if self.spec.trace_dir:
            self._trace(iteration, frames, started_at)
        time.sleep(max(0.0, sum(self.frame_seconds(f, iteration) for f in frames)))
        out_dir = Path(self.spec.out_dir)
        rel_dir = make_iteration_dir(out_dir, iteration)
        results = []
        for frame in frames:
            key = _digest(self.spec.seed, frame, iteration, self._bank_digest, self._scale)
            rel = f"{rel_dir}/{manifest.frame_filename(frame)}"
            write_png_durably(self._image(key), out_dir / rel)
            results.append(FrameResult(frame, rel, self._embedding(key)))
        self.image_encodes += len(frames)
        return BatchResult(results, time.perf_counter() - start, started_at, os.getpid())

    def _image(self, key: bytes) -> Image.Image:
        """A flat colour with a square of a second colour: distinct frames tell apart at a glance."""
        n = self.spec.image_size
        pixels = np.empty((n, n, 3), dtype=np.uint8)
        pixels[:] = np.frombuffer(key[:3], dtype=np.uint8)
        x, y, side = key[6] % (n // 2), key[7] % (n // 2), max(1, n // 2)
        pixels[y : y + side, x : x + side] = np.frombuffer(key[3:6], dtype=np.uint8)
        return Image.fromarray(pixels)

    def _embedding(self, key: bytes) -> np.ndarray:
        v = np.random.default_rng(int.from_bytes(key, "little")).standard_normal(self.spec.embedding_dim)
        return (v / np.linalg.norm(v)).astype(np.float32)

    def _trace(self, iteration: int, frames: list[int], started_at: float) -> None:
        trace = Path(self.spec.trace_dir)
        trace.mkdir(parents=True, exist_ok=True)
        name = f"it{iteration:02d}_f{frames[0]:06d}_{os.getpid()}_{time.time_ns()}.json"
        with replacing(trace / name) as tmp:
            tmp.write_text(json.dumps({"iteration": iteration, "frames": frames, "pid": os.getpid(),
                                       "started_at": started_at, "slow": self.slow, "node": self.node}))

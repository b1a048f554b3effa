"""What a worker hands back for a batch, and the interface every worker (real or simulated) offers.

Torch-free on purpose: the driver, the Ray engine and the simulated renderer import it without loading torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class FrameResult:
    frame: int
    image_path: str  # relative to out_dir
    embedding: np.ndarray


@dataclass(frozen=True)
class BatchResult:
    frames: list[FrameResult]
    busy_s: float  # time spent rendering, for the driver's overhead accounting
    started_at: float = 0.0  # time.time() at the start, comparable across processes on one machine
    worker_pid: int = 0


class Worker(Protocol):
    """One loaded renderer. The driver calls `begin_iteration` before any batch of that iteration, saying whether
    the iteration is a draft (render.draft.*) or the last pass, so every worker switches settings alike."""

    embedding_dim: int

    def begin_iteration(self, iteration: int, bank: np.ndarray | None, scale: float, draft: bool = False) -> None: ...

    def render_batch(self, iteration: int, frames: list[int], id_banks=None) -> BatchResult: ...

    # Workers of a consistent-self-attention pass also offer `write_identity(iteration, character, share)`,
    # whose result has `.batch` (a BatchResult) and `.bank` (the packed ID bank, with share), and
    # `forget_banks()`; id_banks maps a character to a callable that fetches its packed bank (worker/frame_worker.py).


class StaleIterationError(RuntimeError):
    """A batch arrived for an iteration the worker was not set up for: rendering it would use the wrong bank."""


class BankUnavailable(RuntimeError):
    """A bank loader could not fetch its ID bank (under Ray: a lost object or a dead owner); the worker then
    renders that write phase itself."""


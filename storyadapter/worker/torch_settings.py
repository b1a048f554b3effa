"""Torch's process-wide knobs, set for a block of work and put back afterwards.

A render needs a fixed CPU thread count (batched arithmetic depends on how work is split across
threads) and cuDNN without autotuning (autotuned algorithms differ run to run). Both are global to
the process, so code that sets them for its own work restores them for everyone else's.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch


@contextmanager
def reproducible(threads: int = 0, deterministic: bool = True) -> Iterator[None]:
    """Within the block: `threads` CPU threads (0: leave as is); cuDNN deterministic without autotuning, or
    (deterministic=False) autotuned for speed."""
    cudnn = torch.backends.cudnn
    before = torch.get_num_threads(), cudnn.benchmark, cudnn.deterministic
    if threads:
        torch.set_num_threads(threads)
    cudnn.benchmark, cudnn.deterministic = not deterministic, deterministic
    try:
        yield
    finally:
        torch.set_num_threads(before[0])
        cudnn.benchmark, cudnn.deterministic = before[1], before[2]

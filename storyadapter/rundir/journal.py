"""Durable progress inside an iteration: one line per finished batch, appended and fsynced as it arrives.

A driver killed mid-iteration loses nothing a worker finished and the driver heard about: a resume reads
the journal and renders only the batches it does not hold. Workers fsync a frame (and its directory)
before reporting it, so a line here never names a file a crash could take back. Once the iteration's
manifest part is written, the journal is removed.

Format: JSON lines `{"frames": [f, ...], "paths": [...], "embeddings": "<base64 float32 (n, D)>"}`. A line
torn by a crash (no newline, bad JSON) is skipped; its batch is rendered again.
"""

from __future__ import annotations

import base64
import json
import logging
import os
from pathlib import Path

import numpy as np

from .manifest import MANIFEST_DIR, iteration_dirname
from ..engine.protocol import FrameResult
from .frame_files import fsync_dir

log = logging.getLogger(__name__)


def journal_path(out_dir: Path, iteration: int) -> Path:
    return Path(out_dir) / MANIFEST_DIR / f"{iteration_dirname(iteration)}.journal"


def read(out_dir: Path, iteration: int) -> dict[int, FrameResult]:
    """Frames finished in an unfinished iteration, by frame index; files missing on disk are dropped."""
    path = journal_path(out_dir, iteration)
    if not path.is_file():
        return {}
    found: dict[int, FrameResult] = {}
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, 1):
            try:
                if not raw.endswith(b"\n"):
                    raise ValueError("torn line")
                entry = json.loads(raw)
                frames, paths = entry["frames"], entry["paths"]
                emb = np.frombuffer(base64.b64decode(entry["embeddings"]), dtype=np.float32).reshape(len(frames), -1)
            except (ValueError, KeyError, TypeError):
                log.warning("%s:%d: unreadable (torn by a crash mid-write); that batch is rendered again", path, number)
                continue
            for f, p, e in zip(frames, paths, emb):
                if (Path(out_dir) / p).is_file():
                    found[int(f)] = FrameResult(int(f), p, e.copy())
    return found


class Journal:
    """Appends batches of one iteration; each `append` is on disk when it returns."""

    def __init__(self, out_dir: Path, iteration: int):
        self.path = journal_path(out_dir, iteration)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        existed = self.path.exists()
        self._fh = open(self.path, "ab")
        if self._fh.tell() and not _ends_with_newline(self.path):
            self._fh.write(b"\n")  # close a torn line so the next record starts clean (the reader skips it)
        if not existed:
            fsync_dir(self.path.parent)

    def append(self, frames: list[FrameResult]) -> None:
        emb = np.stack([np.asarray(r.embedding, dtype=np.float32) for r in frames])
        line = json.dumps({
            "frames": [r.frame for r in frames],
            "paths": [r.image_path for r in frames],
            "embeddings": base64.b64encode(np.ascontiguousarray(emb).tobytes()).decode("ascii"),
        })
        self._fh.write(line.encode() + b"\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()

    def remove(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as fh:
        fh.seek(-1, os.SEEK_END)
        return fh.read(1) == b"\n"

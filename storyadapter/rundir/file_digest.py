"""A LoRA file's identity for resume: the sha256 of its bytes, whatever its name or folder.

Hashed once per (file, size, mtime) in a process; torch-free, so the output folder's guard can fingerprint a run
without the model code.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

from ..errors import UserError


@lru_cache(maxsize=64)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def digest(path: str, key: str = "model.loras") -> str:
    """sha256 of the file's bytes (`model.loras[i].path`, `render.draft.lora`)."""
    file = Path(path).expanduser()
    try:
        stat = file.stat()
    except OSError as exc:
        raise UserError(f"{key}: {path}: {exc.strerror}") from None
    return _digest(str(file.resolve()), stat.st_size, stat.st_mtime_ns)

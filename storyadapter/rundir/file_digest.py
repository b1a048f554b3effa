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


def tree_digest(ref: str, key: str) -> str:
    """A model's identity by content: a file's sha256, or one over a folder's files (names and bytes, in order);
    a hub id as its cached snapshot's files, else (not cached here) the id itself."""
    path = Path(ref).expanduser()
    if not path.exists() and not ref.startswith((".", "/", "~")):
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(ref, "config.json")
        if not isinstance(cached, str):
            return f"hub:{ref}"
        path = Path(cached).parent
    if path.is_file() or not path.exists():
        return digest(str(path), key)
    sha = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        sha.update(f"{file.relative_to(path).as_posix()}\0{digest(str(file), key)}\0".encode())
    return sha.hexdigest()

"""Which references a frame leans on: per-frame additive attention logits over the reference bank.

GRCA (grca.py) lets every frame attend to all reference tokens in one softmax. Here each bank row carries
the characters it shows (row i of a refinement bank is frame i of the previous iteration; character photos
add one row each), and each frame gets a row of additive logits over the bank:

* `characters` weighting: log(W) for rows sharing at least one of the frame's characters, 0 for the rest,
  so inside the same joint softmax those references weigh W times more. A frame with no character gets 0s
  (uniform weights).
* iteration 0 with character photos: a frame attends only to the photos of its own characters (-inf for
  the others); a frame whose characters have no photo gets gate 0 and stays text-only.

Torch-free: the worker computes these per batch and the renderer turns them into tensors.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

UNIFORM, CHARACTERS = "uniform", "characters"
Names = Sequence[str]


def character_bias(frames: Sequence[Names], rows: Sequence[Names], weight: float) -> np.ndarray:
    """(len(frames), len(rows)) float32: log(weight) where a row shares a character with the frame, else 0."""
    bias = np.zeros((len(frames), len(rows)), dtype=np.float32)
    boost = math.log(weight)
    for i, names in enumerate(frames):
        mine = set(names)
        for j, row in enumerate(rows):
            if mine.intersection(row):
                bias[i, j] = boost
    return bias


def own_photos_only(frames: Sequence[Names], rows: Sequence[Names]) -> tuple[np.ndarray, np.ndarray]:
    """Iteration 0 with a photo bank: (bias, gate). A frame sees only its own characters' photos.

    A frame with none of them gets gate 0 (its reference branch is multiplied by 0, leaving it text-only)
    and a zero bias row: an all -inf row would make the softmax NaN, and 0 * NaN is still NaN.
    """
    bias = np.zeros((len(frames), len(rows)), dtype=np.float32)
    gate = np.zeros(len(frames), dtype=np.float32)
    for i, names in enumerate(frames):
        mine = set(names)
        hits = [bool(mine.intersection(row)) for row in rows]
        if any(hits):
            gate[i] = 1.0
            bias[i] = [0.0 if hit else -np.inf for hit in hits]
    return bias, gate


def batch_weights(
    frames: Sequence[Names], rows: Sequence[Names], weighting: str, weight: float, photos_only: bool
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(bias, gate) for one batch; (None, None) means the plain uniform path (bitwise today's GRCA)."""
    bias, gate = None, None
    if photos_only:
        bias, gate = own_photos_only(frames, rows)
    if weighting == CHARACTERS and weight != 1.0:
        boost = character_bias(frames, rows, weight)
        bias = boost if bias is None else bias + boost
    if bias is not None and gate is None and not bias.any():
        bias = None  # no frame of this batch names a character that a reference shows
    return bias, gate


def iteration_scale(has_photos: bool, iteration: int, scale: float, scale_start: float) -> float:
    """Iteration 0 is text-only, unless the story has character photos: then they are references at scale_start."""
    return float(scale_start) if iteration == 0 and has_photos else scale


def frame_scale(photo_names: Names, characters: Names, iteration: int, scale: float) -> float:
    """The scale a frame was rendered at (for the manifest): in iteration 0 only frames with a photo used one."""
    if iteration == 0 and not set(photo_names).intersection(characters):
        return 0.0
    return scale


def assemble_bank(
    bank: np.ndarray | None, frames: Sequence[Names], photo_bank: np.ndarray | None, photo_names: Names
) -> tuple[np.ndarray | None, list[tuple[str, ...]], bool]:
    """The bank a worker loads: the previous iteration's frames (row i = frame i), then one row per photo.

    Returns (bank, characters of each row, photos_only). Without a frame bank (iteration 0) the photos
    alone are the bank and `photos_only` is set: each frame then sees only its own characters' photos.
    """
    rows: list[tuple[str, ...]] = []
    parts = []
    if bank is not None:
        if len(bank) != len(frames):
            if photo_bank is not None and len(photo_bank):
                raise ValueError(f"a bank of {len(bank)} rows for a story of {len(frames)} frames")
            # Not this story's frames (the benchmarks' banks of N references): no row is known to be anyone's,
            # so every frame weighs them uniformly.
            return np.asarray(bank, dtype=np.float32), [], False
        parts.append(np.asarray(bank, dtype=np.float32))
        rows.extend(tuple(names) for names in frames)
    if photo_bank is not None and len(photo_bank):
        parts.append(np.asarray(photo_bank, dtype=np.float32))
        rows.extend((name,) for name in photo_names)
    if not parts:
        return None, [], False
    return np.concatenate(parts) if len(parts) > 1 else parts[0], rows, bank is None

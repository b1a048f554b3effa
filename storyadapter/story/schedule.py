"""What each iteration and frame gets: adapter scale, noise seed, and fixed batches."""

from __future__ import annotations


def adapter_scale(iteration: int, iterations: int, start: float, end: float) -> float:
    """0 for the text-only iteration 0, then linear from `start` (iteration 1) to `end` (iteration L).

    Iterations past L (a finished run extended with resume=true) stay at `end`.
    """
    if iteration == 0:
        return 0.0
    iteration = min(iteration, iterations)
    if iterations <= 1:
        return float(start)
    return float(start + (end - start) * (iteration - 1) / (iterations - 1))


def frame_seed(seed: int, policy: str, frame: int, own: int | None = None) -> int:
    """`shared`: every frame starts from the same noise (upstream); `per_frame`: distinct noise per frame.
    A frame with its own seed in the story file (`own`) uses it under either policy.

    The seed does not change across iterations: refinement comes from the references alone.
    """
    if own is not None:
        return int(own)
    if policy == "shared":
        return int(seed)
    if policy == "per_frame":
        return int(seed) + int(frame)
    raise ValueError(f"unknown seed policy {policy!r}")


def batches(n_frames: int, batch_size: int) -> list[list[int]]:
    """Consecutive fixed-size groups. A frame's batch mates depend only on the frame index, never on how
    many workers there are, so the arithmetic (and the pixels) of every frame is the same for any sharding."""
    return [list(range(i, min(i + batch_size, n_frames))) for i in range(0, n_frames, batch_size)]

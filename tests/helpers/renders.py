"""Render folders for tests: a synthetic one as the driver writes it, and two real ones compared frame by frame."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from storyadapter.rundir import manifest
from storyadapter.rundir.manifest import FrameRecord


def make_render_dir(
    out: Path,
    n_frames: int,
    iterations: int = 2,
    size: tuple[int, int] = (64, 64),
    prompts: list[str] | None = None,
    characters: list[tuple[str, ...]] | None = None,
    captions: dict[int, str] | None = None,
) -> Path:
    """A render output directory as the driver writes it: PNGs per iteration + one manifest part each."""
    rng = np.random.default_rng(n_frames)
    names = ("Ana", "Ben")
    for it in range(iterations):
        folder = out / manifest.iteration_dirname(it)
        folder.mkdir(parents=True, exist_ok=True)
        records = []
        for f in range(n_frames):
            base = rng.integers(0, 256, 3)
            pixels = np.clip(base + rng.integers(-30, 30, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / manifest.frame_filename(f))
            caption = (captions or {}).get(f, f"Frame {f}: the story goes on." if f % 3 else "")
            records.append(
                FrameRecord(
                    iteration=it,
                    frame=f,
                    prompt=prompts[f] if prompts else f"{names[f % 2]} walks through scene number {f}",
                    caption=caption,
                    characters=characters[f] if characters else ((names[f % 2],) if f % 5 else ()),
                    seed=1234,
                    scale=0.0 if it == 0 else 0.3 + 0.2 * (it - 1),
                    image_path=f"{manifest.iteration_dirname(it)}/{manifest.frame_filename(f)}",
                    embedding=rng.standard_normal(16).astype(np.float32),
                )
            )
        manifest.write_part(out, records)
    return out


def assert_same_render(a: Path, b: Path, iterations: int, frames: int) -> None:
    """Iterations 0..`iterations` of render folders a and b: bitwise the same frames and banks, and b finished."""
    for it in range(iterations + 1):
        for f in range(frames):
            rel = f"{manifest.iteration_dirname(it)}/{manifest.frame_filename(f)}"
            pa, pb = (np.asarray(Image.open(d / rel)) for d in (a, b))
            assert np.array_equal(pa, pb), f"{rel} differs"
        np.testing.assert_array_equal(manifest.read_bank(a, it), manifest.read_bank(b, it))
    assert manifest.finished_iterations(b) == list(range(iterations + 1))


def assert_same_bytes(a: Path, b: Path, iterations: int, frames: int) -> None:
    """Iteration folders 0..iterations-1 of render folders a and b hold byte-identical frame files."""
    for it in range(iterations):
        for f in range(frames):
            rel = Path(manifest.iteration_dirname(it)) / manifest.frame_filename(f)
            assert (a / rel).read_bytes() == (b / rel).read_bytes(), f"{rel} differs"

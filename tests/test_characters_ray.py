"""Character photos and character weighting through the Ray engine: the pixels do not depend on the worker count."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from storyadapter.rundir import manifest

from .helpers import EXAMPLES
from .helpers.launcher import render

pytestmark = pytest.mark.slow
N_FRAMES = 4
STORY_NAME = "kite.yaml"
STORY_FILES = {"pics/tom.png": EXAMPLES / "tom.png"}
STORY = [
    "characters:",
    "  Tom: {description: a boy with a red cap, image: pics/tom.png}",
    "  Ana: a girl with a blue scarf",
    "frames:",
    "  - '[Tom] builds a kite'",
    "  - '[Ana] waves from the dunes'",
    "  - '[Tom] and [Ana] fly the kite'",
    "  - 'a kite over the sea'",
]


def overrides(story_file: Path, tiny_cache: Path, workers: int, *extra: str) -> list[str]:
    return [
        f"story.path={story_file}", "model=tiny", f"model.cache_dir={tiny_cache}", "render=tiny",
        "render.iterations=1", "render.batch_size=2", "render.seed_policy=per_frame",
        "render.reference_weighting=characters", "render.character_weight=6", f"cluster.workers={workers}", *extra,
    ]


def test_one_and_two_workers_give_identical_pixels_with_photos_and_weighting(local_ray, story_file, tiny_cache, tmp_path):
    one = render(tmp_path / "one", *overrides(story_file, tiny_cache, 1))
    two = render(tmp_path / "two", *overrides(story_file, tiny_cache, 2, "outputs.enabled=false"))
    for it in (0, 1):
        for f in range(N_FRAMES):
            rel = f"{manifest.iteration_dirname(it)}/{manifest.frame_filename(f)}"
            assert np.array_equal(np.asarray(Image.open(one / rel)), np.asarray(Image.open(two / rel))), rel
        np.testing.assert_array_equal(manifest.read_bank(one, it), manifest.read_bank(two, it))
    # Iteration 0: frames naming Tom used his photo at scale_start; the others stayed text-only.
    scales = [r.scale for r in manifest.read_records(one, 0)]
    assert scales == pytest.approx([0.3, 0.0, 0.3, 0.0])
    photos = json.loads((one / "photos.json").read_text())
    assert [(p["character"], p["image"]) for p in photos] == [("Tom", "pics/tom.png")]
    assert (one / photos[0]["copy"]).read_bytes() == (EXAMPLES / "tom.png").read_bytes()
    index = (one / "index.html").read_text()
    assert "Character photos" in index and photos[0]["copy"] in index

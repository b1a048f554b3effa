"""Character photos and character weighting through the Ray engine: the pixels do not depend on the worker count."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from storyadapter.rundir import manifest

from .conftest import EXAMPLES

pytestmark = pytest.mark.slow
N_FRAMES = 4


@pytest.fixture(scope="module")
def story_file(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("story")
    (d / "pics").mkdir()
    (d / "pics" / "tom.png").write_bytes((EXAMPLES / "tom.png").read_bytes())
    path = d / "kite.yaml"
    path.write_text(
        "characters:\n"
        "  Tom: {description: a boy with a red cap, image: pics/tom.png}\n"
        "  Ana: a girl with a blue scarf\n"
        "frames:\n"
        "  - '[Tom] builds a kite'\n"
        "  - '[Ana] waves from the dunes'\n"
        "  - '[Tom] and [Ana] fly the kite'\n"
        "  - 'a kite over the sea'\n",
        encoding="utf-8")
    return path


def render(story_file, tiny_cache, out_dir, workers, *extra) -> Path:
    from storyadapter.launch import compose_config
    from storyadapter.render_story import render_story

    cfg = compose_config([
        f"story.path={story_file}", "model=tiny", f"model.cache_dir={tiny_cache}", "render=tiny",
        "render.iterations=1", "render.batch_size=2", "render.seed_policy=per_frame",
        "render.reference_weighting=characters", "render.character_weight=6", f"cluster.workers={workers}",
        f"output_dir={out_dir}", *extra])
    return render_story(cfg, out_dir)


def test_one_and_two_workers_give_identical_pixels_with_photos_and_weighting(story_file, tiny_cache, tmp_path):
    import ray

    # address="local": a fresh Ray of our own, even when another test run on this machine has one up.
    ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False)
    try:
        one = render(story_file, tiny_cache, tmp_path / "one", 1)
        two = render(story_file, tiny_cache, tmp_path / "two", 2, "outputs.enabled=false")
    finally:
        ray.shutdown()
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

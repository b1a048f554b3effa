"""model=flux-tiny through the Ray engine: 1 and 2 workers give the same bytes, and so does a driver killed inside
an iteration and resumed; the resume fingerprint names the family."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from storyadapter.rundir import manifest

from .helpers.renders import assert_same_bytes
from .helpers.stories import write_story

FRAMES = 4


def overrides(story: Path, cache: Path, out: Path, workers: int, *extra: str) -> list[str]:
    return [f"story.path={story}", "model=flux-tiny", f"model.cache_dir={cache}", "render=flux-tiny",
            "render.iterations=1", "render.steps=2", f"cluster.workers={workers}", "outputs.enabled=false",
            f"output_dir={out}", *extra]


def render(story, cache, out, workers, *extra) -> Path:
    from storyadapter.launch import compose_config
    from storyadapter.render_story import render_story

    return render_story(compose_config(overrides(story, cache, out, workers, *extra)), out)


@pytest.mark.slow
def test_flux_tiny_renders_the_same_bytes_on_1_or_2_workers_and_after_a_killed_driver(flux_tiny_cache, tmp_path, request):
    from .helpers import engine_hooks

    story = write_story(tmp_path / "s.txt", [f"a woman with a red coat, scene {i}" for i in range(FRAMES)])
    killed = tmp_path / "killed" / "out"
    killed.parent.mkdir()
    engine_hooks.kill_driver_at("journal:1:1", overrides(story, flux_tiny_cache, killed, 1), killed.parent)
    assert 1 not in manifest.finished_iterations(killed)
    request.getfixturevalue("local_ray")  # the in-process Ray starts only after the kill
    one = render(story, flux_tiny_cache, tmp_path / "one", 1)
    assert_same_bytes(one, render(story, flux_tiny_cache, tmp_path / "two", 2), iterations=2, frames=FRAMES)
    render(story, flux_tiny_cache, killed, 2, "resume=true")
    assert_same_bytes(one, killed, iterations=2, frames=FRAMES)
    fingerprint = yaml.safe_load((one / "config.yaml").read_text())["fingerprint"]
    assert fingerprint["model"]["family"] == "flux" and fingerprint["render"]["distilled_guidance"] == 3.5

"""Consistent self-attention on the tiny model in one process: the config and the frame worker the CSA tests
build (test_csa.py, test_fidelity.py)."""

from __future__ import annotations

from pathlib import Path

from storyadapter.story.parse import load_story


def config(story: Path, out: Path, tiny_cache: Path, method: str, *extra: str):
    from storyadapter.launch import compose_config

    return compose_config([
        f"story.path={story}", "model=tiny", f"model.cache_dir={tiny_cache}", "render=tiny", "render.steps=3",
        f"method={method}", "method.id_length=2", "method.early_rate=1.0", "cluster.threads_per_worker=1",
        f"output_dir={out}", *extra,
    ])


def worker_for(story_path: Path, out: Path, tiny_cache: Path, method: str, *extra: str):
    from storyadapter.render_story import resolve_model, worker_spec
    from storyadapter.spec import from_config

    run = from_config(config(story_path, out, tiny_cache, method, *extra))
    story = load_story(story_path)
    return worker_spec(run, story, resolve_model(run.model)[0], out).build()

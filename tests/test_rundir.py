"""The resume guard: which model settings may change between a render and its resume."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from storyadapter.rundir import guard as rundir
from storyadapter.config import Config
from storyadapter.errors import UserError
from storyadapter.render_story import worker_spec
from storyadapter.spec import from_config
from storyadapter.story.parse import load_story

from .helpers.stories import write_story


def _cfg(out: Path, *overrides: str):
    base = OmegaConf.structured(Config)
    return OmegaConf.merge(base, OmegaConf.from_dotlist([f"story.path={out}", f"output_dir={out}", *overrides]))


def test_kernel_choices_may_change_on_resume_but_pixel_settings_may_not(tmp_path):
    story = load_story(write_story(tmp_path / "s.txt", ["a fox in the snow", "a fox by a river"]))
    out = tmp_path / "out"
    first = _cfg(out)
    assert first.model.deterministic is True  # the same-pixels promise is the default
    assert rundir.check(out, first, story, False, first.render.iterations).fresh
    rundir.write_config(out, first, story, first.render.iterations, first.render.iterations)
    (out / "iter_00").mkdir()

    for flipped in ("model.deterministic=false", "model.compile=true"):
        assert not rundir.check(out, _cfg(out, flipped), story, True, 10).fresh
    with pytest.raises(UserError, match=r"model\.dtype"):
        rundir.check(out, _cfg(out, "model.dtype=float16"), story, True, 10)


def test_deterministic_setting_reaches_the_worker(tmp_path):
    story = load_story(write_story(tmp_path / "s.txt", ["a fox in the snow"]))
    for value in (True, False):
        spec = worker_spec(from_config(_cfg(tmp_path, f"model.deterministic={str(value).lower()}")), story, None, tmp_path)
        assert spec.deterministic is value


def test_reference_sdpa_is_a_checked_pixel_setting(tmp_path):
    story = load_story(write_story(tmp_path / "s.txt", ["a fox in the snow"]))
    spec = worker_spec(from_config(_cfg(tmp_path, "render.reference_sdpa=joint")), story, None, tmp_path)
    assert spec.settings.reference_sdpa == "joint"
    with pytest.raises(UserError, match=r"render\.reference_sdpa=fused"):
        from_config(_cfg(tmp_path, "render.reference_sdpa=fused"))
    out = tmp_path / "out"
    rundir.write_config(out, _cfg(out), story, 10, 10)
    (out / "iter_00").mkdir()
    with pytest.raises(UserError, match=r"render\.reference_sdpa"):  # last bits differ: not resumable across it
        rundir.check(out, _cfg(out, "render.reference_sdpa=joint"), story, True, 10)

"""render.negative_prompt: every frame's negative prompt in place of the style's; unset, renders resume as before."""

from __future__ import annotations

from storyadapter.launch import compose_config
from storyadapter.render_story import styled
from storyadapter.rundir.guard import fingerprint
from storyadapter.story.parse import load_story


def test_the_negative_prompt_replaces_the_style_s_only_when_set(tmp_path):
    path = tmp_path / "s.txt"
    path.write_text("a cat on a roof\n")
    story = load_story(path, "Comic book")
    frame = story.frames[0]
    assert styled(story, frame, None) == story.styled(frame)  # the style's own negative
    assert styled(story, frame, "blurry, extra fingers") == (story.styled(frame)[0], "blurry, extra fingers")


def test_an_unset_negative_prompt_leaves_the_resume_fingerprint_as_it_was(tmp_path):
    path = tmp_path / "s.txt"
    path.write_text("a cat on a roof\n")
    story = load_story(path)
    base = [f"story.path={path}", "model=tiny"]
    assert "negative_prompt" not in fingerprint(compose_config(base), story)["render"]
    assert fingerprint(compose_config([*base, "render.negative_prompt=blurry"]), story)["render"]["negative_prompt"] == "blurry"


def test_the_workers_get_it_for_every_frame(tmp_path):
    from storyadapter import spec
    from storyadapter.render_story import worker_spec

    path = tmp_path / "s.txt"
    path.write_text("a cat on a roof\na dog in a park\n")
    story = load_story(path, "Comic book")
    for negative, expected in ((None, [story.styled(f)[1] for f in story.frames]), ("blurry", ["blurry", "blurry"])):
        extra = [f"render.negative_prompt={negative}"] if negative else []
        run = spec.from_config(compose_config([f"story.path={path}", "model=tiny", *extra]))
        assert [p.negative for p in worker_spec(run, story, None, tmp_path).prompts] == expected

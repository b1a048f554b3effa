"""Storyboard editing (issue 23): per-frame seeds, the story a render records, and `edit=true` on a finished render."""

from __future__ import annotations

import pytest

from storyadapter.story import schedule
from storyadapter.story.parse import load_story
from storyadapter.story.raw import StoryError

from .conftest import write_story


# ----------------------------------------------------------------------------- per-frame seeds

def test_a_txt_frame_takes_its_seed_from_a_seed_tag(tmp_path):
    story = load_story(write_story(tmp_path / "s.txt", ["a cat on a wall (seed: 7) #Hello", "a dog"]))
    assert [(f.prompt, f.caption, f.seed) for f in story.frames] == [("a cat on a wall", "Hello", 7), ("a dog", "", None)]


def test_a_yaml_or_json_frame_takes_its_seed_from_a_seed_field(tmp_path):
    yaml_story = tmp_path / "s.yaml"
    yaml_story.write_text("frames:\n  - prompt: a cat\n    seed: 12\n  - a dog\n", encoding="utf-8")
    json_story = tmp_path / "s.json"
    json_story.write_text('{"frames": [{"prompt": "a cat"}, {"prompt": "a dog", "seed": 3}]}', encoding="utf-8")
    assert [f.seed for f in load_story(yaml_story).frames] == [12, None]
    assert [f.seed for f in load_story(json_story).frames] == [None, 3]


@pytest.mark.parametrize("name, text, line", [
    ("s.txt", "a cat\na dog (seed: seven)\n", 2),
    ("s.txt", "a cat (seed: -1)\n", 1),
    ("s.txt", "a cat (seed: 1) (seed: 2)\n", 1),
    ("s.yaml", "frames:\n  - prompt: a cat\n    seed: '7'\n", 3),
    ("s.yaml", "frames:\n  - prompt: a cat\n    seed: 7.5\n", 3),
    ("s.json", '{"frames": [\n{"prompt": "a cat",\n "seed": [7]}]}', 3),
])
def test_a_seed_that_is_not_an_integer_is_refused_naming_its_line(tmp_path, name, text, line):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(StoryError) as err:
        load_story(path)
    assert str(err.value).startswith(f"{path}:{line}: ") and "seed" in str(err.value)
    assert "\n" not in str(err.value)


def test_a_frame_with_its_own_seed_uses_it_under_either_policy():
    assert schedule.frame_seed(100, "shared", 5, 7) == schedule.frame_seed(100, "per_frame", 5, 7) == 7
    assert schedule.frame_seed(100, "per_frame", 5) == 105 and schedule.frame_seed(100, "shared", 5) == 100


def test_the_digest_of_a_story_without_seeds_is_its_file_digest(tmp_path):
    import hashlib

    path = write_story(tmp_path / "s.txt", ["a cat", "a dog"])
    assert load_story(path).digest == hashlib.sha256(path.read_bytes()).hexdigest()

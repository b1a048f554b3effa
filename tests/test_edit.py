"""Storyboard editing (issue 23): per-frame seeds, the story a render records, and `edit=true` on a finished render."""

from __future__ import annotations

import pytest

from storyadapter.story import schedule
from storyadapter.story.parse import load_story
from storyadapter.story.raw import StoryError

from .helpers.stories import write_story


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


# ----------------------------------------------------------------------------- edit=true (tiny model, real Ray)

import shutil

import numpy as np
import yaml

from storyadapter.rundir import manifest

from .helpers.edits import STORY, command, copy_of, edit_copy, files, frames, launch, one_line_error, render
from .helpers.engine_hooks import kill_driver_at


@pytest.mark.slow
def test_the_render_records_the_story_it_was_made_from(finished_render):
    import json

    record = json.loads((finished_render / "story.json").read_text())
    assert [f["caption"] for f in record["frames"]] == ["Morning", "Tom at work", "Goodbye"]
    assert record["characters"]["Lisa"]["description"] == "a girl with a red scarf"
    assert [r.revision for r in manifest.read_records(finished_render, 1)] == [0, 0, 0]


@pytest.mark.slow
def test_an_edited_prompt_renders_exactly_that_frame_again(finished_render, tmp_path, tiny_cache, monkeypatch):
    edited = STORY[:4] + ["[Tom] sleeps in his boat #Tom at work"] + STORY[5:]
    out, before, after, rendered = edit_copy(finished_render, tmp_path, tiny_cache, monkeypatch, edited)
    assert rendered == [1]
    for name in (frames(out)[0], frames(out)[2], "iter_00/frame_0001.png", "manifest/iter_00.parquet"):
        assert after[name] == before[name], name  # same inode, mtime and bytes
    assert after["iter_01/frame_0001.png"][2] != before["iter_01/frame_0001.png"][2]
    assert (out / "edits/rev_01/iter_01/frame_0001.png").read_bytes() == before["iter_01/frame_0001.png"][2]
    records = manifest.read_records(out, 1)
    assert [r.revision for r in records] == [0, 1, 0]
    assert records[1].prompt.startswith("Tom, an old fisherman, sleeps") and records[1].image_path == "iter_01/frame_0001.png"
    assert not np.array_equal(records[1].embedding, manifest.read_records(finished_render, 1)[1].embedding)
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert [r["revision"] for r in saved["revisions"]] == [0, 1]
    assert not (out / "edits/pending.json").exists() and not (out / "edits/rev_01/new").exists()
    gallery = (out / "index.html").read_text()  # the frame shows under "Final frames" and under iteration 1
    assert gallery.count("edited (revision 1)") == 2 and 'href="edits/rev_01/iter_01/frame_0001.png"' in gallery


@pytest.mark.slow
def test_a_caption_edit_renders_nothing_and_redraws_the_comic(finished_render, tmp_path, tiny_cache, monkeypatch):
    edited = STORY[:5] + ["[Lisa] waves from the pier #See you soon"]
    out, before, after, rendered = edit_copy(finished_render, tmp_path, tiny_cache, monkeypatch, edited)
    assert rendered == []
    assert all(after[f] == before[f] for f in before if f.startswith("iter_"))
    pages = [f for f in before if f.startswith("comic/")]
    assert pages and any(after[p][2] != before[p][2] for p in pages)
    assert [r.caption for r in manifest.read_records(out, 1)] == ["Morning", "Tom at work", "See you soon"]


@pytest.mark.slow
def test_a_character_description_edit_renders_exactly_the_frames_naming_that_character(finished_render, tmp_path, tiny_cache, monkeypatch):
    edited = ["[Lisa] a girl with a green scarf"] + STORY[1:]
    out, before, after, rendered = edit_copy(finished_render, tmp_path, tiny_cache, monkeypatch, edited)
    assert sorted(rendered) == [0, 2]
    assert after["iter_01/frame_0001.png"] == before["iter_01/frame_0001.png"]
    assert all(after[f][2] != before[f][2] for f in ("iter_01/frame_0000.png", "iter_01/frame_0002.png"))


@pytest.mark.slow
def test_an_edit_killed_midway_resumes_to_the_same_bytes(finished_render, tmp_path, tiny_cache):
    edited = ["[Lisa] a girl with a green scarf"] + STORY[1:]
    whole = tmp_path / "whole"
    story, _ = copy_of(finished_render, whole, edited)
    render(*command(story, whole / "render", tiny_cache, "edit=true"))

    story, out = copy_of(finished_render, tmp_path / "killed", edited)
    originals = {f: (out / f).read_bytes() for f in ("iter_01/frame_0000.png", "iter_01/frame_0002.png")}
    kill_driver_at("journal:1:1", command(story, out, tiny_cache, "edit=true"), out.parent, timeout=300)
    part = "manifest/iter_01.parquet"
    assert (out / part).read_bytes() == (finished_render / part).read_bytes()  # killed before its commit: nothing applied
    assert all((out / f).read_bytes() == data for f, data in originals.items())
    proc = launch(*command(story, out, tiny_cache, "edit=true"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "1 of 2 frames finished before the restart" in proc.stderr
    for f in frames(out):
        assert (out / f).read_bytes() == (whole / "render" / f).read_bytes(), f
    for f, data in originals.items():
        assert (out / "edits/rev_01" / f).read_bytes() == data


@pytest.mark.slow
def test_refusals_are_one_line_and_write_nothing(finished_render, tmp_path, tiny_cache):
    edited = STORY[:4] + ["[Tom] sleeps in his boat #Tom at work"] + STORY[5:]
    story, out = copy_of(finished_render, tmp_path, edited)
    before = files(out)
    line = one_line_error(launch(*command(story, out, tiny_cache, "resume=true"), cwd=tmp_path), "edit=true", "frame 1: prompt")
    assert "digest" not in line
    one_line_error(launch(*command(story, out, tiny_cache, "edit=true", "render.guidance_scale=5"), cwd=tmp_path),
                   "edit=true refused", "render.guidance_scale", "new output_dir")
    one_line_error(launch(*command(story, out, tiny_cache, "edit=true", "story.style=Comic book"), cwd=tmp_path),
                   "edit=true refused", "story.style")
    bad_seed = write_story(tmp_path / "bad_seed.txt", STORY[:5] + ["[Lisa] waves (seed: one) #Goodbye"])
    one_line_error(launch(*command(bad_seed, out, tiny_cache, "edit=true"), cwd=tmp_path), f"{bad_seed}:6:", "seed")
    no_description = write_story(tmp_path / "no_desc.txt", STORY[:5] + ["[Anna] waves #Goodbye"])
    one_line_error(launch(*command(no_description, out, tiny_cache, "edit=true"), cwd=tmp_path), f"{no_description}:6:", "Anna")
    assert files(out) == before

    unfinished = tmp_path / "unfinished"
    shutil.copytree(finished_render, unfinished)
    (unfinished / "manifest/iter_01.parquet").unlink()
    one_line_error(launch(*command(story, unfinished, tiny_cache, "edit=true"), cwd=tmp_path), "not finished", "resume=true")


@pytest.mark.slow
def test_an_edit_killed_inside_its_commit_keeps_every_row_true_to_its_file_and_finishes(finished_render, tmp_path, tiny_cache):
    """Killed just after the first manifest rewrite (the rows point at the staged frames): every row names a file
    holding that frame, and edit=true again finishes the edit."""
    edited = STORY[:4] + ["[Tom] sleeps in his boat #Tom at work"] + STORY[5:]
    story, out = copy_of(finished_render, tmp_path, edited)
    kill_driver_at("part:1", command(story, out, tiny_cache, "edit=true"), out.parent, timeout=300)
    staged = manifest.read_records(out, 1)
    assert staged[1].image_path == "edits/rev_01/new/iter_01/frame_0001.png" and staged[1].revision == 1
    assert (out / "iter_01/frame_0001.png").read_bytes() == (finished_render / "iter_01/frame_0001.png").read_bytes()
    proc = launch(*command(story, out, tiny_cache, "edit=true"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "render actors started" not in proc.stderr  # every frame was journaled: nothing is rendered again
    records = manifest.read_records(out, 1)
    assert [r.image_path for r in records] == frames(out) and [r.revision for r in records] == [0, 1, 0]
    assert (out / "edits/rev_01/iter_01/frame_0001.png").read_bytes() == (finished_render / "iter_01/frame_0001.png").read_bytes()
    assert (out / "iter_01/frame_0001.png").read_bytes() != (finished_render / "iter_01/frame_0001.png").read_bytes()


@pytest.mark.slow
def test_an_edited_render_resumes_with_the_edited_story_and_extends_over_the_updated_bank(finished_render, tmp_path, tiny_cache):
    """What edit.refine=K would do, by hand: after the edit, resume=true with more iterations refines the whole story
    against the bank that holds the edited frame. The old story file is now the edited one for resume=true."""
    edited = STORY[:4] + ["[Tom] sleeps in his boat #Tom at work"] + STORY[5:]
    story, out = copy_of(finished_render, tmp_path, edited)
    render(*command(story, out, tiny_cache, "edit=true"))
    old_story = write_story(tmp_path / "old.txt", STORY)
    one_line_error(launch(*command(old_story, out, tiny_cache, "resume=true"), cwd=tmp_path), "frame 1: prompt", "edit=true")
    render(*command(story, out, tiny_cache, "resume=true", "render.iterations=2"))
    assert manifest.finished_iterations(out) == [0, 1, 2]
    assert [r.prompt for r in manifest.read_records(out, 2)] == [r.prompt for r in manifest.read_records(out, 1)]

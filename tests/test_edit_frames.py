"""Editing a finished render (issue 23): frames inserted into or removed from the story (tiny model, real Ray)."""

from __future__ import annotations

import os

import pytest
from PIL import Image

from storyadapter.outputs.comic import fit_image, layout_pages
from storyadapter.rundir import manifest
from storyadapter.story.snapshot import compare

from .helpers.edits import STORY, command, copy_of, count_renders, edit_copy, files, launch, one_line_error, render
from .helpers.engine_hooks import kill_driver_at
from .helpers.stories import write_story

INSERTED = "[Tom] rows out to sea #Setting out"


def _snapshot(prompts: list[str]) -> dict:
    return {"style": None, "characters": {},
            "frames": [{"prompt": p, "caption": "", "characters": [], "seed": None} for p in prompts]}


def test_frames_are_matched_by_content_so_an_insertion_changes_no_other_frame():
    old = _snapshot(["a", "b", "c", "d"])
    inserted = compare(old, _snapshot(["a", "b", "x", "c", "d"]))
    assert inserted.matched == (0, 1, None, 2, 3) and not inserted.frames and inserted.to_render(_snapshot(["a"] * 5)) == [2]
    assert inserted.describe() == "frame 2 inserted"
    removed = compare(old, _snapshot(["a", "c", "d"]))
    assert removed.matched == (0, 2, 3) and removed.removed == (1,) and removed.to_render(_snapshot(["a"] * 3)) == []
    both = compare(old, _snapshot(["a", "B", "c", "d", "e"]))  # a changed prompt stays that frame's change
    assert both.matched == (0, 1, 2, 3, None) and both.frames == {1: ("prompt",)}
    story = _snapshot(["walks to the harbour", "mends a net", "waves from the pier"])
    mixed = compare(story, _snapshot(["walks to the harbour", "waves from the pier at dusk"]))  # 1 removed, 2 edited
    assert mixed.matched == (0, 2) and mixed.removed == (1,) and mixed.frames == {1: ("prompt",)}


def _comic_panels(out, paths: list[str]) -> None:
    """The first comic page shows these frame files, in this order, in its panels."""
    records = manifest.read_records(out, 1)
    page = Image.open(out / "comic/page_01.png").convert("RGB")
    (layout, *_) = layout_pages([r.caption for r in records], (64, 64))
    band = page.height - layout.height  # the notice above the panels (the tiny model's), if any
    assert [p.slot for p in layout.panels] == list(range(len(paths)))
    for p in layout.panels:
        box = p.image
        shown = page.crop((box.x0, box.y0 + band, box.x1, box.y1 + band))
        assert shown.tobytes() == fit_image(Image.open(out / paths[p.slot]), box).tobytes(), p.slot


@pytest.mark.slow
def test_an_inserted_frame_is_the_only_render_and_every_other_file_stays_as_it_was(finished_render, tmp_path, tiny_cache, monkeypatch):
    edited = STORY[:4] + [INSERTED] + STORY[4:]
    out, before, after, rendered = edit_copy(finished_render, tmp_path, tiny_cache, monkeypatch, edited)
    assert rendered == [1]
    for name in before:
        if name.startswith("iter_"):
            assert after[name] == before[name], name  # same inode, mtime and bytes: nothing renamed or rewritten
    records = manifest.read_records(out, 1)
    order = ["iter_01/frame_0000.png", "iter_01/frame_0003.png", "iter_01/frame_0001.png", "iter_01/frame_0002.png"]
    assert [r.image_path for r in records] == order and [r.frame for r in records] == [0, 1, 2, 3]
    assert [r.caption for r in records] == ["Morning", "Setting out", "Tom at work", "Goodbye"]
    assert [r.revision for r in records] == [0, 1, 0, 0] and records[1].prompt.startswith("Tom, an old fisherman, rows")
    assert after["manifest/iter_00.parquet"] == before["manifest/iter_00.parquet"]  # earlier iterations: as rendered
    assert sorted(n for n in after if n.startswith("iter_01/")) == sorted(order)
    _comic_panels(out, order)
    gallery = (out / "index.html").read_text()
    assert gallery.count("new in revision 1") == 2 and "edited (revision" not in gallery


@pytest.mark.slow
def test_a_removed_frame_leaves_the_outputs_and_its_file_is_kept_in_the_revision_folder(finished_render, tmp_path, tiny_cache, monkeypatch):
    edited = STORY[:4] + STORY[5:]
    story, out = copy_of(finished_render, tmp_path, edited)
    before = files(out)
    rendered = count_renders(monkeypatch)
    render(*command(story, out, tiny_cache, "edit=true"))
    assert rendered == []
    records = manifest.read_records(out, 1)
    assert [r.image_path for r in records] == ["iter_01/frame_0000.png", "iter_01/frame_0002.png"]
    assert [r.caption for r in records] == ["Morning", "Goodbye"]
    assert not (out / "iter_01/frame_0001.png").exists()
    kept = out / "edits/rev_01/iter_01/frame_0001.png"
    st = kept.stat()
    assert (st.st_ino, st.st_mtime_ns, kept.read_bytes()) == before["iter_01/frame_0001.png"]  # moved, not copied
    _comic_panels(out, [r.image_path for r in records])
    gallery = (out / "index.html").read_text()
    assert "Tom at work" not in gallery.split('id="iterations"')[0]  # gone from the final frames
    assert os.path.getsize(out / "story.gif") and (out / "edits/rev_01/manifest/iter_01.parquet").is_file()


@pytest.mark.slow
def test_an_insert_killed_inside_its_commit_keeps_every_row_true_to_its_file_and_finishes(finished_render, tmp_path, tiny_cache):
    edited = [STORY[0], STORY[1], STORY[2], INSERTED, STORY[3], STORY[5]]  # insert at 0, remove the render's frame 1
    story, out = copy_of(finished_render, tmp_path, edited)
    kill_driver_at("part:1", command(story, out, tiny_cache, "edit=true"), out.parent, timeout=300)
    staged = manifest.read_records(out, 1)
    assert [r.image_path for r in staged] == ["edits/rev_01/new/iter_01/frame_0000.png", "iter_01/frame_0000.png",
                                              "iter_01/frame_0002.png"]
    assert all((out / r.image_path).is_file() for r in staged)
    new_frame = (out / staged[0].image_path).read_bytes()
    proc = launch(*command(story, out, tiny_cache, "edit=true"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "render actors started" not in proc.stderr  # the inserted frame was journaled: nothing is rendered again
    records = manifest.read_records(out, 1)
    assert [r.image_path for r in records] == ["iter_01/frame_0003.png", "iter_01/frame_0000.png", "iter_01/frame_0002.png"]
    assert (out / "iter_01/frame_0003.png").read_bytes() == new_frame
    assert not (out / "iter_01/frame_0001.png").exists() and (out / "edits/rev_01/iter_01/frame_0001.png").is_file()
    assert not (out / "edits/pending.json").exists()


@pytest.mark.slow
def test_an_insert_on_a_warm_started_render_is_one_line_and_writes_nothing(tmp_path, tiny_cache):
    """Warm starts (render.refine_strength) read frame f of the previous iteration by its place in the story, which
    an insert shifts: refused before anything is written."""
    warm = "render.refine_strength=0.5"
    out = tmp_path / "render"
    render(*command(write_story(tmp_path / "story.txt", STORY), out, tiny_cache, warm))
    before = files(out)
    edited = write_story(tmp_path / "edited.txt", STORY[:4] + [INSERTED] + STORY[4:])
    proc = launch(*command(edited, out, tiny_cache, warm, "edit=true"), cwd=tmp_path)
    one_line_error(proc, "render.refine_strength", "inserted or removed")
    assert files(out) == before and not (out / "edits").exists()

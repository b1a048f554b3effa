"""`edit=true edit.refine=K` (issue 23): after the edit, K more iterations over the whole story (tiny model, real Ray)."""

from __future__ import annotations

import json
import logging

import pytest
import yaml

from storyadapter.launch import compose_config
from storyadapter.rundir import manifest
from storyadapter.spec import ConfigError

from .helpers.edits import STORY, command, copy_of, render
from .helpers.engine_hooks import watch_executor


def test_edit_is_a_switch_and_a_node_on_the_command_line():
    base = ["story.path=story.txt", "output_dir=out"]
    assert compose_config([*base, "edit=true"]).edit == {"apply": True, "refine": 0}
    assert compose_config([*base, "edit=true", "edit.refine=2"]).edit == {"apply": True, "refine": 2}
    with pytest.raises(ConfigError, match="edit.refine=2: .*edit=true"):
        compose_config([*base, "edit.refine=2"])


@pytest.mark.slow
def test_edit_refine_renders_one_full_iteration_after_the_edit_the_same_on_one_and_two_workers(
        finished_render, tmp_path, tiny_cache, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="storyadapter")
    edited = STORY[:4] + ["[Tom] rows out to sea #Setting out"] + STORY[4:]  # a frame inserted at 1
    outs = {}
    for workers in (1, 2):
        story, out = copy_of(finished_render, tmp_path / f"workers_{workers}", edited)
        rendered: list[tuple[int, int]] = []
        watch_executor(monkeypatch, on_batches=lambda ex, it, batches, seen=rendered: seen.extend(
            (it, r.frame) for b in batches for r in b.frames))
        caplog.clear()
        lean = ["outputs.enabled=false"] if workers == 2 else []  # its frames are compared, not its comic or metrics
        render(*command(story, out, tiny_cache, "edit=true", "edit.refine=1", f"cluster.workers={workers}", *lean))
        assert sorted(rendered) == [(1, 1), (2, 0), (2, 1), (2, 2), (2, 3)]  # the new frame, then one whole iteration
        said = caplog.messages
        refine = next(i for i, m in enumerate(said) if m.startswith("edit.refine=1"))
        assert "4 frame renders" in said[refine] and "every frame" in said[refine]
        assert refine < next(i for i, m in enumerate(said) if m.startswith("edit (revision 1)"))  # said first
        outs[workers] = out
    one, two = outs[1], outs[2]
    assert manifest.finished_iterations(one) == [0, 1, 2]
    records = manifest.read_records(one, 2)
    assert [r.prompt for r in records] == [r.prompt for r in manifest.read_records(one, 1)]
    assert records[1].prompt.startswith("Tom, an old fisherman, rows")
    assert [r.image_path for r in records] == [f"iter_02/frame_{i:04d}.png" for i in range(4)]  # numbered by place again
    for r in records + manifest.read_records(one, 1):
        assert (one / r.image_path).read_bytes() == (two / r.image_path).read_bytes(), r.image_path
    saved = yaml.safe_load((one / "config.yaml").read_text())
    assert saved["schedule"]["iterations"] == 2 and [r["revision"] for r in saved["revisions"]] == [0, 1]
    assert "final: iteration 2" in (one / "index.html").read_text()
    metrics = json.loads((one / "metrics.json").read_text())  # scored again; no frame-by-frame change across the insert
    assert [m["iteration"] for m in metrics] == [0, 1, 2] and metrics[1]["embedding_change"] is None
    assert metrics[2]["embedding_change"] is not None


@pytest.mark.slow
def test_a_refine_stopped_during_its_iterations_is_finished_by_the_same_command(finished_render, tmp_path):
    """What edits.refining sees once edit.refine=1's iteration has started (config.yaml asks for 2) but not finished."""
    from storyadapter.rundir import edits
    from storyadapter.story.parse import load_story

    story, out = copy_of(finished_render, tmp_path, STORY)
    story = load_story(story)
    assert not edits.refining(out, story, 1, 1)  # nothing started: the command applies the edit first
    config = out / "config.yaml"
    saved = yaml.safe_load(config.read_text())
    saved["schedule"]["iterations"] = 2
    config.write_text(yaml.safe_dump(saved))
    assert edits.refining(out, story, 1, 1)
    assert not edits.refining(out, story, 1, 2) and not edits.refining(out, story, 1, 0)  # another command
    edited = load_story(copy_of(finished_render, tmp_path / "other", STORY[:5])[0])
    assert not edits.refining(out, edited, 1, 1)  # another story: an edit to apply, refused as the render is unfinished

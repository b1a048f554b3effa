"""The web UI's second life of a render, over real HTTP: load it back into the form, resume it, edit one frame
(the cost first, from the backend's plan; then `edit=true` in the render's folder; the old frame kept beside the new)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from storyadapter.webui.jobs import JOB_FILE

from .helpers.webui import call, start, stop, wait

STORY = ("[Lisa] a girl with a yellow raincoat\n\n"
         "[Lisa] walks in the rain. #Rain\n"
         "[NC] an empty street at night. #Night\n"
         "[Lisa] opens a red umbrella. #Umbrella\n")
SETTINGS = {"model": "tiny", "iterations": 1, "steps": 2, "size": 64, "workers": 1, "seed": 7,
            "guidance_scale": 5.0, "comic_layout": "four", "title": "Lisa", "negative_prompt": "blurry, dark"}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def rendered(tmp_path_factory, tiny_cache):
    """One finished 3-frame render, shared: (server, job id, its output folder)."""
    root = tmp_path_factory.mktemp("webui-edit") / "runs"
    server = start(root, tiny_cache)
    status, _, body = call(server, "POST", "/api/renders", {"story": STORY, **SETTINGS})
    assert status == 202, body
    job = json.loads(body)
    st = wait(server, job["id"])
    assert st["state"] == "done", (root / job["id"] / "render.log").read_text()[-2000:]
    yield server, job["id"], root / job["id"] / "out"
    stop(server)


def preview(server, job_id: str, **edit) -> tuple[int, dict]:
    status, _, body = call(server, "POST", f"/api/renders/{job_id}/edit", {**edit, "preview": True})
    return status, json.loads(body)


def frame_files(out: Path) -> dict[str, tuple[bytes, int, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted((out / "iter_01").glob("frame_*.png"))}


def test_a_past_render_gives_back_its_story_settings_and_numbered_frames(rendered):
    server, job_id, _ = rendered
    status, _, body = call(server, "GET", f"/api/renders/{job_id}/story")
    data = json.loads(body)
    assert status == 200 and data["story"] == STORY
    assert {k: data["request"][k] for k in SETTINGS} == SETTINGS
    assert data["frames"][2] == {"index": 2, "prompt": "[Lisa] opens a red umbrella.", "caption": "Umbrella", "seed": None,
                                 "characters": ["Lisa"]}
    assert data["characters"] == {"Lisa": "a girl with a yellow raincoat"}
    st = json.loads(call(server, "GET", f"/api/renders/{job_id}")[2])
    # Live frames carry their number (from 0, as frame_0002.png) and caption.
    assert [(f["index"], f["file"], f["caption"]) for f in st["latest"]] == [
        (0, "iter_01/frame_0000.png", "Rain"), (1, "iter_01/frame_0001.png", "Night"), (2, "iter_01/frame_0002.png", "Umbrella")]
    assert st["can_edit"] and not st["can_resume"] and st["phase"] is None
    config = call(server, "GET", f"/runs/{job_id}/config.yaml")[2].decode()
    assert "guidance_scale: 5.0" in config and "comic_layout: four" in config and "negative_prompt: blurry, dark" in config  # the form's settings reached the render


def test_the_edit_preview_is_the_backend_s_plan_and_writes_nothing(rendered):
    server, job_id, out = rendered
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    story = (out.parent / "story.txt").read_bytes()
    assert preview(server, job_id, frame=1, prompt="[NC] a wet street at dawn.", caption="Night") == \
        (200, {"edit": {"frames": [1], "summary": "frame 1: prompt", "cost": "1 frame", "revision": 1}})
    assert preview(server, job_id, frame=0, prompt="[Lisa] walks in the rain.", caption="Rain at last")[1]["edit"] == \
        {"frames": [], "summary": "frame 0: caption", "cost": "no render: caption only", "revision": 1}
    assert preview(server, job_id, frame=2, prompt="[Lisa] opens a red umbrella.", caption="Umbrella", seed=77)[1]["edit"]["cost"] == "1 frame"
    assert preview(server, job_id, frame=2, prompt="[Lisa] opens a red umbrella.", caption="Umbrella") == (200, {"edit": None})
    assert preview(server, job_id, frame=2, prompt="[Lisa] opens a red umbrella.", caption="Umbrella",
                   characters={"Lisa": "a girl with a green raincoat"})[1]["edit"] == \
        {"frames": [0, 2], "summary": "Lisa: description", "cost": "2 frames naming Lisa", "revision": 1}
    for edit, message in ((dict(frame=3, prompt="x"), "request.frame: the story's frames are 0 to 2, got 3"),
                          (dict(frame=0, prompt="[Tom] runs"), "story.txt:3: undefined character [Tom]"),
                          (dict(frame=0, prompt="a # b"), "request.prompt: '#' starts the caption"),
                          (dict(frame=0, prompt="rain", seed=-1), "request.seed: expected a whole number")):
        status, answer = preview(server, job_id, **edit)
        assert status == 400 and answer["error"].startswith(message) and "\n" not in answer["error"], answer
    assert (out.parent / "story.txt").read_bytes() == story
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before and not list(out.parent.glob("edit-preview*"))


def test_an_edited_frame_is_rendered_again_beside_its_old_version_and_no_other_frame_changes(rendered):
    server, job_id, out = rendered
    before = frame_files(out)
    status, _, body = call(server, "POST", f"/api/renders/{job_id}/edit",
                           {"frame": 1, "prompt": "[NC] a wet street at dawn.", "caption": "Dawn"})
    assert status == 202, body
    assert json.loads(body)["edit"]["cost"] == "1 frame"
    st = wait(server, job_id)
    assert st["state"] == "done" and st["action"] == "edit", (out.parent / "edit.log").read_text()[-2000:]
    after = frame_files(out)
    assert after["frame_0001.png"][0] != before["frame_0001.png"][0]
    assert after["frame_0000.png"] == before["frame_0000.png"] and after["frame_0002.png"] == before["frame_0002.png"]
    shown = {f["index"]: f for f in st["latest"]}
    assert shown[1]["caption"] == "Dawn" and shown[1]["earlier"] == ["edits/rev_01/iter_01/frame_0001.png"]
    assert shown[0]["earlier"] == [] and shown[2]["earlier"] == []
    status, kind, old = call(server, "GET", f"/runs/{job_id}/{shown[1]['earlier'][0]}")
    assert status == 200 and kind == "image/png" and old == before["frame_0001.png"][0]  # the old one, linked
    assert b"before revision 1" in call(server, "GET", f"/runs/{job_id}/index.html")[2]
    story = json.loads(call(server, "GET", f"/api/renders/{job_id}/story")[2])
    assert story["frames"][1] == {"index": 1, "prompt": "[NC] a wet street at dawn.", "caption": "Dawn", "seed": None,
                                  "characters": []}
    assert "edit done: revision 1" in (out.parent / "edit.log").read_text()


def test_an_interrupted_render_resumes_from_the_page(rendered, tiny_cache):
    server, job_id, out = rendered
    root = out.parent.parent
    stop(server)  # as if the web UI stopped mid-render: the restarted one lists it as interrupted
    record = json.loads((root / job_id / JOB_FILE).read_text())
    (root / job_id / JOB_FILE).write_text(json.dumps({**record, "state": "running", "action": "render"}))
    again = start(root, tiny_cache)
    try:
        st = json.loads(call(again, "GET", f"/api/renders/{job_id}")[2])
        assert st["state"] == "interrupted" and st["can_resume"]
        log_before = (root / job_id / "render.log").read_bytes()
        status, _, body = call(again, "POST", f"/api/renders/{job_id}/resume", {})
        assert status == 202, body
        st = wait(again, job_id)
        assert st["state"] == "done" and st["action"] == "resume" and st["progress"]["frames_done"] == 6
        log = (root / job_id / "render.log").read_bytes()
        assert log.startswith(log_before) and log[len(log_before):].count(b"done: out") == 1  # appended, not replaced
        assert call(again, "POST", f"/api/renders/{job_id}/resume", {})[0] == 400  # a finished render: nothing to resume
    finally:
        stop(again)

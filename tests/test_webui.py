"""The web UI end to end: a real server on a free port, renders through `python -m storyadapter.launch`."""

from __future__ import annotations

import http.client
import json
import threading
import time
from pathlib import Path

import pytest

from storyadapter.renders import RenderQueue
from storyadapter.webui import WebUIServer

pytestmark = pytest.mark.slow
STORY = "[Mia] a young explorer with a red scarf\n\n[Mia] reads a map. #The map\n[NC] a frozen river at dawn. #The river\n"


@pytest.fixture()
def ui(tmp_path, tiny_cache):
    server = WebUIServer(("127.0.0.1", 0), RenderQueue(tmp_path / "runs", (f"model.cache_dir={tiny_cache}",)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def call(server, method: str, path: str, body: object | None = None) -> tuple[int, str, bytes]:
    conn = http.client.HTTPConnection(*server.server_address[:2], timeout=30)
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    conn.request(method, path, body=data, headers={"Content-Type": "application/json"} if data else {})
    res = conn.getresponse()
    out = res.status, res.getheader("Content-Type"), res.read()
    conn.close()
    return out


def submit(server, **request) -> dict:
    status, _, body = call(server, "POST", "/api/renders", {"story": STORY, "model": "tiny", "iterations": 1,
                                                           "steps": 2, "size": 64, "workers": 1, **request})
    assert status == 202, body
    return json.loads(body)


def wait(server, job_id: str, timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = json.loads(call(server, "GET", f"/api/renders/{job_id}")[2])
        if st["state"] not in ("queued", "running"):
            return st
        time.sleep(0.5)
    raise AssertionError(f"render {job_id} still {st['state']} after {timeout} s")


def test_page_and_choices(ui):
    status, kind, body = call(ui, "GET", "/")
    assert status == 200 and kind.startswith("text/html") and b"<textarea" in body
    styles = json.loads(call(ui, "GET", "/api/styles")[2])
    assert "Japanese Anime" in styles["styles"] and "tiny" in styles["models"]


def test_the_method_picker_reaches_the_launcher_and_storydiffusion_counts_one_pass(ui):
    from storyadapter.renders import RenderRequest

    assert b'id="method"' in call(ui, "GET", "/")[2]
    sd = RenderRequest.from_json({"story": "a cat", "method": "storydiffusion", "iterations": 3})
    assert "method=storydiffusion" in sd.overrides(Path("s.txt"), Path("out")) and sd.iterations_run == 0
    default = RenderRequest.from_json({"story": "a cat", "iterations": 3})
    assert not any(o.startswith("method=") for o in default.overrides(Path("s.txt"), Path("out")))
    assert default.iterations_run == 3


@pytest.mark.parametrize("request_body, message", [
    ({"story": "[Mia] a girl\n\n[Bob] runs away\n"}, "story.txt:3: undefined character [Bob]"),
    ({"story": "   "}, "request.story: the story text is empty"),
    ({"story": "a cat", "steps": "abc"}, "request.steps: expected a whole number"),
    ({"story": "a cat", "style": "Cubism"}, "request.style: unknown style 'Cubism'"),
    ({"story": "a cat", "model": "sd15"}, "request.model: 'sd15' is not one of"),
    ({"story": "a cat", "method": "dreambooth"}, "request.method: 'dreambooth' is not one of"),
    ({"story": "a cat", "size": 100}, "request.size: must be a multiple of 8"),
    ({"story": "a cat", "colour": 1}, "request.colour: unknown field"),
    (b"{not json", "request: not JSON"),
])
def test_bad_requests_get_one_line_naming_what_is_wrong_and_leave_nothing(ui, tmp_path, request_body, message):
    status, _, body = call(ui, "POST", "/api/renders", request_body)
    assert status == 400
    error = json.loads(body)["error"]
    assert message in error and "\n" not in error and "Traceback" not in error
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())  # nothing for a refused request


def test_a_render_runs_to_the_end_and_its_outputs_are_served(ui):
    job = submit(ui, style="Japanese Anime")
    assert job["state"] in ("queued", "running") and job["frames"] == 2
    st = wait(ui, job["id"])
    assert st["state"] == "done", st
    assert st["progress"] == {"frames_done": 4, "frames_total": 4, "per_iteration": [2, 2]}
    assert st["latest_frames"] == ["iter_01/frame_0000.png", "iter_01/frame_0001.png"]
    assert st["outputs"]["index.html"] and st["outputs"]["story.gif"] and st["comic_pages"]
    status, kind, png = call(ui, "GET", f"/runs/{job['id']}/{st['latest_frames'][0]}")
    assert status == 200 and kind == "image/png" and png.startswith(b"\x89PNG")
    status, kind, page = call(ui, "GET", f"/runs/{job['id']}/index.html")
    assert status == 200 and b"The river" in page
    status, _, config = call(ui, "GET", f"/runs/{job['id']}/config.yaml")
    assert b"Japanese Anime" in config  # the chosen style reached the render
    assert b"done:" in call(ui, "GET", f"/api/renders/{job['id']}/log")[2]
    for path in (f"/runs/{job['id']}/../story.txt", f"/runs/{job['id']}/%2e%2e/story.txt",
                 f"/runs/{job['id']}/..%2fstory.txt", "/runs/../../etc/passwd", "/runs/not-a-job/index.html"):
        assert call(ui, "GET", path)[0] == 404, path


def test_a_failed_render_reports_the_launcher_s_error_line_and_a_queued_one_can_be_cancelled(ui, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    failing = submit(ui, model="realvisxl")
    queued = submit(ui)
    status, _, body = call(ui, "POST", f"/api/renders/{queued['id']}/cancel")
    assert status == 200 and json.loads(body)["state"] == "cancelled"
    st = wait(ui, failing["id"])
    assert st["state"] == "failed" and st["returncode"] != 0
    assert st["error"].startswith("error: model.pretrained=") and "hf download" in st["error"]
    time.sleep(1.0)
    assert wait(ui, queued["id"])["state"] == "cancelled"
    assert wait(ui, queued["id"])["progress"]["frames_done"] == 0


def test_a_port_in_use_or_a_bad_argument_is_one_line_and_writes_nothing(tmp_path, capsys):
    import socket

    from storyadapter.webui import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["--port", str(port), "--runs-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: --port {port}: cannot listen") and "\n" not in err
    assert main(["--runs-dir", str(tmp_path / "runs"), "cluster"]) == 2
    assert capsys.readouterr().err.strip() == "error: cluster: expected KEY=VALUE"
    assert not (tmp_path / "runs").exists()

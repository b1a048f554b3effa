"""The web UI end to end: a real server on a free port, renders through `python -m storyadapter.launch`,
and the requests another site, a rebinding DNS name or a careless client would send."""

from __future__ import annotations

import html
import http.client
import json
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from storyadapter.outputs.notice import RANDOM_WEIGHTS
from storyadapter.webui.jobs import JOB_FILE, RenderJob, RenderQueue, RenderRequest, Limits

from .helpers.webui import call, start, stop, wait

STORY = "[Mia] a young explorer with a red scarf\n\n[Mia] reads a map. #The map\n[NC] a frozen river at dawn. #The river\n"
NASTY = "( [ { = ' # , ${HOME}"  # Hydra's grammar characters and an interpolation


@pytest.fixture()
def ui(tmp_path, tiny_cache):
    server = start(tmp_path / "runs", tiny_cache)
    yield server
    stop(server)


def submit(server, **request) -> dict:
    status, _, body = call(server, "POST", "/api/renders", {"story": STORY, "model": "tiny", "iterations": 1,
                                                           "steps": 2, "size": 64, "workers": 1, **request})
    assert status == 202, body
    return json.loads(body)


def nothing_written(root: Path) -> bool:
    return not root.exists() or not any(root.iterdir())


def test_page_and_choices(ui):
    status, kind, body = call(ui, "GET", "/")
    assert status == 200 and kind.startswith("text/html") and b"<textarea" in body
    assert b'name="storyadapter-token" content=""' in body  # loopback: no token
    styles = json.loads(call(ui, "GET", "/api/styles")[2])
    assert "Japanese Anime" in styles["styles"] and "tiny" in styles["models"]
    assert styles["limits"] == {"frame_renders": 2200, "size": 1024, "steps": 100, "workers": 16}
    status, kind, icon = call(ui, "GET", "/favicon.ico")
    assert status == 200 and kind == "image/svg+xml" and icon.startswith(b"<svg")


def test_the_method_picker_reaches_the_launcher_and_storydiffusion_counts_one_pass(ui):
    from storyadapter.webui.jobs import RenderRequest

    assert b'id="method"' in call(ui, "GET", "/")[2]
    sd = RenderRequest.from_json({"story": "a cat", "method": "storydiffusion", "iterations": 3})
    assert "method=storydiffusion" in sd.overrides(Path("s.txt"), Path("out")) and sd.iterations_run == 0
    default = RenderRequest.from_json({"story": "a cat", "iterations": 3})
    assert not any(o.startswith("method=") for o in default.overrides(Path("s.txt"), Path("out")))
    assert default.iterations_run == 3


def test_the_frame_render_limit_counts_what_the_method_renders(tmp_path):
    """--max-frame-renders charges method=storydiffusion its one pass, not 1 + render.iterations passes."""
    from storyadapter.errors import UserError
    from storyadapter.webui.jobs import RenderRequest

    story = "\n".join(f"cat {i}" for i in range(3))
    # A bad key makes each accepted render stop at once (one line, no Ray): only the limit's answer matters here.
    queue = RenderQueue(tmp_path / "runs", ("render.steps=abc",), Limits(frame_renders=3))
    try:
        job = queue.submit(RenderRequest.from_json({"story": story, "method": "storydiffusion", "iterations": 10}))
        assert job.frames == 3
        with pytest.raises(UserError, match="3 frames x 11 iterations is 33 frame renders; this server allows 3"):
            queue.submit(RenderRequest.from_json({"story": story, "method": "hybrid", "iterations": 10}))
    finally:
        queue.close()


@pytest.mark.parametrize("request_body, message", [
    ({"story": "[Mia] a girl\n\n[Bob] runs away\n"}, "story.txt:3: undefined character [Bob]"),
    ({"story": "   "}, "request.story: the story text is empty"),
    ({"story": "a cat", "steps": "abc"}, "request.steps: expected a whole number"),
    ({"story": "a cat", "style": "Cubism"}, "request.style: unknown style 'Cubism'"),
    ({"story": "a cat", "model": "sd15"}, "request.model: 'sd15' is not one of"),
    ({"story": "a cat", "method": "dreambooth"}, "request.method: 'dreambooth' is not one of"),
    ({"story": "a cat", "size": 100}, "request.size: must be a multiple of 8"),
    ({"story": "a cat", "colour": 1}, "request.colour: unknown field"),
    ({"story": "a cat", "title": "two\nlines"}, "request.title: expected one line"),
    (b"{not json", "request: not JSON"),
    (b'{"story": "a cat", "seed": ' + b"7" * 5000 + b"}", "request: not JSON (a number with more than 20 digits)"),
    (b"[" * 100_000, "request: not JSON (nested too deeply)"),
    (b'{"story": "a cat", "steps": 101}', "request.steps: expected a whole number from 1 to 100, got 101"),
    (b'{"story": "a cat", "size": 2048}', "request.size: expected a whole number from 64 to 1024"),
    (b'{"story": "a cat", "workers": 64}', "request.workers: expected a whole number from 1 to 16"),
    ({"story": "\n".join(f"cat {i}" for i in range(201)), "iterations": 10}, "request: 201 frames x 11 iterations is 2211 frame renders; this server allows 2200"),
])
def test_bad_requests_get_one_line_naming_what_is_wrong_and_leave_nothing(ui, tmp_path, request_body, message):
    status, _, body = call(ui, "POST", "/api/renders", request_body)
    assert status == 400
    error = json.loads(body)["error"]
    assert message in error and "\n" not in error and "Traceback" not in error
    assert nothing_written(tmp_path / "runs")  # nothing for a refused request
    assert json.loads(call(ui, "GET", "/api/renders")[2]) == {"renders": []}


def test_other_sites_and_rebinding_names_cannot_start_list_or_cancel_renders(ui, tmp_path):
    port = ui.server_address[1]
    story = json.dumps({"story": STORY}).encode()
    # A cross-site <form enctype="text/plain"> auto-submitted by another page: no preflight, text/plain body.
    assert call(ui, "POST", "/api/renders", story, {"Origin": "http://evil.example"}, "text/plain")[0] == 403
    assert call(ui, "POST", "/api/renders", story, {}, "text/plain")[0] == 415  # the same without Origin
    assert call(ui, "POST", "/api/renders", story, {}, "application/x-www-form-urlencoded")[0] == 415
    assert call(ui, "POST", "/api/renders", story, {}, None)[0] == 415
    # fetch() from another origin, with the right content type (its preflight would fail; a server must not rely on it).
    for origin in ("http://evil.example", f"http://127.0.0.1:{port + 1}", "null", f"https://127.0.0.1:{port}"):
        assert call(ui, "POST", "/api/renders", story, {"Origin": origin})[0] == 403, origin
    # DNS rebinding: evil.example now resolves to 127.0.0.1, so the browser sends its own name as Host.
    for host in ("evil.example", f"evil.example:{port}", f"127.0.0.1:{port + 1}", "", f"localhost.evil.example:{port}"):
        for method, path in (("GET", "/"), ("GET", "/api/renders"), ("POST", "/api/renders"),
                             ("POST", "/api/renders/20260101-000000-abcdef/cancel")):
            status = call(ui, method, path, story if path == "/api/renders" else None, {"Host": host})[0]
            assert status == 421, (host, method, path, status)
    assert nothing_written(tmp_path / "runs")
    # The page's own requests still work, under every name this machine's loopback has.
    for host in (f"127.0.0.1:{port}", f"localhost:{port}"):
        assert call(ui, "GET", "/api/renders", headers={"Host": host, "Origin": f"http://{host}"})[0] == 200


def test_a_nul_byte_in_the_url_is_a_400_not_a_server_error(ui):
    for path in ("/runs/%00/index.html", "/api/renders/%00", "/%00"):
        status, _, body = call(ui, "GET", path)
        assert status == 400 and b"NUL" in body, path


def test_a_body_slower_than_the_read_timeout_frees_its_thread(tmp_path):
    server = start(tmp_path / "runs", read_timeout=0.5)
    try:
        threads = threading.active_count()
        with socket.create_connection(server.server_address[:2], timeout=10) as sock:
            port = server.server_address[1]
            sock.sendall(b"POST /api/renders HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 100\r\n\r\n{\"story\": " % port)
            started = time.monotonic()
            answer = b""
            while chunk := sock.recv(4096):  # read to the end: the server must close the connection
                answer += chunk
            assert answer.startswith(b"HTTP/1.0 408") and time.monotonic() - started < 5
            assert b"did not arrive within 0.5 s" in answer
        deadline = time.monotonic() + 5
        while threading.active_count() > threads and time.monotonic() < deadline:
            time.sleep(0.05)
        assert threading.active_count() <= threads
        assert nothing_written(tmp_path / "runs")
    finally:
        stop(server)


def test_beyond_loopback_every_request_needs_the_token(tmp_path):
    server = start(tmp_path / "runs", token="s3cret-T0ken")
    try:
        assert call(server, "GET", "/")[0] == 401
        assert call(server, "GET", "/api/renders")[0] == 401
        assert call(server, "POST", "/api/renders", {"story": STORY})[0] == 401
        assert call(server, "GET", "/api/renders", headers={"X-Storyadapter-Token": "wrong"})[0] == 401
        assert call(server, "GET", "/?token=wrong")[0] == 401
        status, _, page = call(server, "GET", "/?token=s3cret-T0ken")
        assert status == 200 and b'name="storyadapter-token" content="s3cret-T0ken"' in page  # kept in the page
        assert call(server, "GET", "/api/renders", headers={"X-Storyadapter-Token": "s3cret-T0ken"})[0] == 200
        assert call(server, "GET", "/api/renders", headers={"Cookie": "storyadapter_token=s3cret-T0ken"})[0] == 200
        assert call(server, "GET", "/api/renders?token=s3cret-T0ken")[0] == 401  # only the page takes it in the URL
        assert nothing_written(tmp_path / "runs")
    finally:
        stop(server)


def test_main_asks_for_a_token_beyond_loopback_and_prints_it(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "storyadapter.webui", "--host", "0.0.0.0", "--port", "0",
                             "--runs-dir", str(tmp_path / "runs")], stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        assert "?token=" in line, line
        url = line.split()[4]
        port, token = int(url.split(":")[2].split("/")[0]), url.split("?token=")[1]
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/api/renders")
        assert conn.getresponse().status == 401
        conn.close()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/api/renders", headers={"X-Storyadapter-Token": token})
        assert conn.getresponse().status == 200
        conn.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


@pytest.mark.slow
def test_a_render_runs_to_the_end_survives_a_restart_and_works_under_any_runs_dir_name(tmp_path, tiny_cache):
    root = tmp_path / f"runs {NASTY}"
    ui = start(root, tiny_cache)
    try:
        job = submit(ui, style="Japanese Anime", title=f"Mia's {NASTY}")
        assert job["state"] in ("queued", "running") and job["frames"] == 2
        st = wait(ui, job["id"])
        assert st["state"] == "done", (st, (root / job["id"] / "render.log").read_text()[-2000:])
        assert st["progress"] == {"frames_done": 4, "frames_total": 4, "per_iteration": [2, 2]}
        assert st["latest_frames"] == ["iter_01/frame_0000.png", "iter_01/frame_0001.png"]
        assert st["outputs"]["index.html"] and st["outputs"]["story.gif"] and st["comic_pages"]
        status, kind, png = call(ui, "GET", f"/runs/{job['id']}/{st['latest_frames'][0]}")
        assert status == 200 and kind == "image/png" and png.startswith(b"\x89PNG")
        status, kind, page = call(ui, "GET", f"/runs/{job['id']}/index.html")
        assert status == 200 and b"The river" in page
        assert f"<title>{html.escape(f'Mia’s {NASTY}'.replace('’', chr(39)))}</title>".encode() in page  # the story's title
        status, _, config = call(ui, "GET", f"/runs/{job['id']}/config.yaml")
        assert b"Japanese Anime" in config  # the chosen style reached the render
        assert st["notice"] == RANDOM_WEIGHTS and html.escape(RANDOM_WEIGHTS).encode() in page  # model=tiny
        log = call(ui, "GET", f"/api/renders/{job['id']}/log")[2]
        assert b"done:" in log
        # render.log is a file: whole log lines, the progress too, none glued to a carriage-return bar.
        assert b"\r" not in log and re.search(rb"^\S+ INFO storyadapter\.engine\.progress: iteration 1/1: \d/2 frames", log, re.M)
        for path in (f"/runs/{job['id']}/../story.txt", f"/runs/{job['id']}/%2e%2e/story.txt",
                     f"/runs/{job['id']}/..%2fstory.txt", "/runs/../../etc/passwd", "/runs/not-a-job/index.html"):
            assert call(ui, "GET", path)[0] == 404, path
    finally:
        stop(ui)
    # A job the old server had queued when it stopped: listed again, as interrupted.
    queued = json.loads((root / job["id"] / JOB_FILE).read_text())
    queued.update(id="20200101-000000-abcdef", state="queued", started=None, finished=None)
    (root / queued["id"]).mkdir()
    (root / queued["id"] / JOB_FILE).write_text(json.dumps(queued))
    ui = start(root, tiny_cache)
    try:
        listed = json.loads(call(ui, "GET", "/api/renders")[2])["renders"]
        assert [(r["id"], r["state"]) for r in listed] == [(job["id"], "done"), (queued["id"], "interrupted")]
        again = json.loads(call(ui, "GET", f"/api/renders/{job['id']}")[2])
        assert {k: again[k] for k in ("progress", "outputs", "comic_pages", "title")} == \
               {k: st[k] for k in ("progress", "outputs", "comic_pages", "title")}
        assert call(ui, "GET", f"/runs/{job['id']}/index.html")[0] == 200  # old gallery links still work
    finally:
        stop(ui)


@pytest.mark.slow
def test_a_failed_render_reports_the_launcher_s_error_line_and_a_queued_one_can_be_cancelled(ui, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    failing = submit(ui, model="realvisxl")
    queued = submit(ui)
    status, _, body = call(ui, "POST", f"/api/renders/{queued['id']}/cancel")
    assert status == 200 and json.loads(body)["state"] == "cancelled"
    st = wait(ui, failing["id"])
    assert st["state"] == "failed" and st["returncode"] != 0
    assert st["error"].startswith("error: model.pretrained=") and "hf download" in st["error"]
    # The queue runs renders in order: once one submitted after the cancelled render has ended, the queue has
    # passed the cancelled one by (an event to wait on, not a sleep that hopes it did).
    after = submit(ui, model="realvisxl")
    assert wait(ui, after["id"])["state"] == "failed"
    assert wait(ui, queued["id"])["state"] == "cancelled"
    assert wait(ui, queued["id"])["progress"]["frames_done"] == 0


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").replace("\x00", " ")
    except OSError:
        return ""


def _process_groups() -> dict[int, int]:
    """pid -> process group of every process on this machine."""
    groups = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        groups[int(stat.parent.name)] = int(fields[2])
    return groups


@pytest.mark.slow
def test_sigterm_stops_the_running_render_its_ray_processes_and_the_server(tmp_path, tiny_cache):
    root = tmp_path / "runs"
    proc = subprocess.Popen([sys.executable, "-m", "storyadapter.webui", "--port", "0", "--runs-dir", str(root),
                             f"model.cache_dir={tiny_cache}"], stderr=subprocess.PIPE, text=True)
    try:
        port = int(proc.stderr.readline().split("http://127.0.0.1:")[1].split("/")[0])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        long_story = "\n".join(f"a cat on roof number {i}" for i in range(40))
        conn.request("POST", "/api/renders", body=json.dumps({"story": long_story, "iterations": 5, "steps": 5}),
                     headers={"Content-Type": "application/json"})
        job = json.loads(conn.getresponse().read())
        conn.close()
        folder = root / job["id"]
        deadline = time.monotonic() + 300
        while not list(folder.glob("out/iter_00/frame_*.png")):  # Ray and its actors are up
            assert time.monotonic() < deadline, (folder / "render.log").read_text()[-2000:]
            time.sleep(0.2)
        launcher = next(pid for pid, pgid in _process_groups().items() if pgid == pid and
                        Path(f"/proc/{pid}/cmdline").read_bytes().find(b"storyadapter.launch") >= 0
                        and (Path(f"/proc/{pid}/cwd").resolve() == folder.resolve()))
        in_group = [pid for pid, pgid in _process_groups().items() if pgid == launcher]
        assert len(in_group) > 2  # the launcher and Ray's raylet, GCS and workers
        ray_dirs = {Path(m) for pid in in_group for m in re.findall(  # this render's Ray session folder
            rf"{re.escape(tempfile.gettempdir())}/storyadapter-ray-[^/\s]+", _cmdline(pid))}
        assert ray_dirs and all(d.is_dir() for d in ray_dirs)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0
        assert [pid for pid, pgid in _process_groups().items() if pgid == launcher] == []
        record = json.loads((folder / JOB_FILE).read_text())
        assert record["state"] == "cancelled" and record["returncode"] == 130, record
        log = (folder / "render.log").read_text(errors="replace")
        assert "error: interrupted" in log and "SIGABRT" not in log and "core dumped" not in log and "*** " not in log
        assert "retries remaining" not in log and "Token authentication is enabled" not in log  # no noise
        assert not any(d.exists() for d in ray_dirs)  # Ray's session folder went too
    finally:
        if proc.poll() is None:
            proc.kill()


def test_the_error_shown_for_a_failed_render_is_the_launcher_s_line_never_hydra_s_advice(tmp_path):
    from storyadapter.webui.jobs import last_error_line

    log = tmp_path / "render.log"
    log.write_text("12:00:00 INFO storyadapter.render_story: story s\nerror: output_dir=/x: No space left on device\n")
    assert last_error_line(log) == "error: output_dir=/x: No space left on device"
    log.write_text("Traceback (most recent call last):\n  File \"x.py\"\nValueError: a bug\n\n"
                   "Set the environment variable HYDRA_FULL_ERROR=1 for a complete stack trace.\n")
    assert last_error_line(log) == "ValueError: a bug"


def test_a_render_s_status_says_what_its_frames_are_from_its_own_config(tmp_path):
    job = RenderJob("20200101-000000-abcdef", tmp_path, RenderRequest(story="a fox", model="tiny"), frames=1)
    assert job.status()["notice"] is None  # no config.yaml yet: nothing to say
    job.out_dir.mkdir()
    for kind, notice in (("tiny", RANDOM_WEIGHTS), ("sdxl-random", RANDOM_WEIGHTS), ("hub", None)):
        (job.out_dir / "config.yaml").write_text(f"model:\n  kind: {kind}\n", encoding="utf-8")
        assert job.status()["notice"] == notice, kind

"""A web UI server on a free port in this process, and plain HTTP calls to it (tests/test_webui*.py)."""

from __future__ import annotations

import http.client
import json
import threading
import time
from pathlib import Path

from storyadapter.webui.jobs import Limits, RenderQueue
from storyadapter.webui.server import WebUIServer


def start(root: Path, cache: Path | None = None, **kwargs) -> WebUIServer:
    extra = (f"model.cache_dir={cache}",) if cache else ()
    queue = RenderQueue(root, extra, kwargs.pop("limits", Limits()))
    server = WebUIServer(("127.0.0.1", 0), queue, **kwargs)
    # shutdown() returns once the loop wakes from its poll: 0.5 s by default, waited out at every test's end.
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True).start()
    return server


def stop(server: WebUIServer) -> None:
    server.shutdown()
    server.server_close()


def call(server, method: str, path: str, body: object | None = None, headers: dict | None = None,
         content_type: str | None = "application/json") -> tuple[int, str, bytes]:
    conn = http.client.HTTPConnection(*server.server_address[:2], timeout=30)
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    sent = {"Content-Type": content_type} if method == "POST" and content_type else {}
    conn.request(method, path, body=data if data is not None else (b"" if method == "POST" else None),
                 headers={**sent, **(headers or {})})
    res = conn.getresponse()
    out = res.status, res.getheader("Content-Type"), res.read()
    conn.close()
    return out


def wait(server, job_id: str, timeout: float = 240, until=("queued", "running")) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = json.loads(call(server, "GET", f"/api/renders/{job_id}")[2])
        if st["state"] not in until:
            return st
        time.sleep(0.3)
    raise AssertionError(f"render {job_id} still {st['state']} after {timeout} s")

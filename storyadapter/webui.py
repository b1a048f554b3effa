"""A small web UI: paste a story, pick a style and model, watch the frames arrive, open the comic and gallery.

    python -m storyadapter.webui [--host 127.0.0.1] [--port 7860] [--runs-dir outputs/webui] [KEY=VALUE ...]

Standard library only. Listens on 127.0.0.1 unless told otherwise: anyone who can reach it can start
renders on this machine. Trailing KEY=VALUE arguments are added to every render (for example
`model.cache_dir=...` or `cluster=ray`), the same overrides `python -m storyadapter.launch` takes.

Routes: GET / (the page), GET /api/styles, POST /api/renders (JSON RenderRequest), GET /api/renders,
GET /api/renders/<id>, GET /api/renders/<id>/log, POST /api/renders/<id>/cancel, GET /runs/<id>/<path> (files of a render's output).
"""

from __future__ import annotations

import json
import logging
import mimetypes
import sys
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from urllib.parse import unquote, urlsplit

from .errors import ArgumentParser, UserError, report
from .renders import MAX_REQUEST_BYTES, MODELS, RenderQueue, RenderRequest
from .styles import style_names

log = logging.getLogger(__name__)
SERVED_SUFFIXES = {".png", ".gif", ".html", ".json", ".yaml", ".parquet", ".log", ".txt"}
TEXT_SUFFIXES = {".yaml": "text/plain", ".log": "text/plain", ".txt": "text/plain"}


def _page() -> bytes:
    return resources.files("storyadapter").joinpath("webui.html").read_bytes()


class Handler(BaseHTTPRequestHandler):
    server: "WebUIServer"
    server_version = "storyadapter"

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        if self.server.verbose:
            super().log_message(format, *args)

    # --- responses ----------------------------------------------------------------------------------
    def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: HTTPStatus, payload: object) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json")

    def _error(self, status: HTTPStatus, message: str) -> None:
        self._json(status, {"error": message})

    # --- routes -------------------------------------------------------------------------------------
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._guarded(self._get)

    def do_POST(self) -> None:  # noqa: N802
        self._guarded(self._post)

    def _guarded(self, route) -> None:
        try:
            route()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the browser went away
        except Exception:  # noqa: BLE001 - a bug in one request must not end the server; the log keeps the trace
            log.exception("request %s %s failed", self.command, self.path)
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error (see the server log)")

    def _get(self) -> None:
        path = unquote(urlsplit(self.path).path)
        parts = [p for p in path.split("/") if p]
        if not parts:
            self._send(HTTPStatus.OK, _page(), "text/html; charset=utf-8")
        elif parts == ["api", "styles"]:
            self._json(HTTPStatus.OK, {"styles": style_names(), "models": list(MODELS)})
        elif parts == ["api", "renders"]:
            jobs = sorted(self.server.renders.jobs.values(), key=lambda j: j.id, reverse=True)
            self._json(HTTPStatus.OK, {"renders": [j.status() for j in jobs]})
        elif len(parts) in (3, 4) and parts[:2] == ["api", "renders"] and parts[3:] in ([], ["log"]):
            job = self.server.renders.get(parts[2])
            if job is None:
                self._error(HTTPStatus.NOT_FOUND, f"no render {parts[2]!r}")
            elif parts[3:] == ["log"]:
                log = job.log_path.read_bytes() if job.log_path.is_file() else b""
                self._send(HTTPStatus.OK, log, "text/plain; charset=utf-8")
            else:
                self._json(HTTPStatus.OK, job.status())
        elif len(parts) >= 3 and parts[0] == "runs":
            self._serve_output(parts[1], parts[2:])
        else:
            self._error(HTTPStatus.NOT_FOUND, f"no page {path!r}")

    def _post(self) -> None:
        parts = [p for p in unquote(urlsplit(self.path).path).split("/") if p]
        if parts == ["api", "renders"]:
            self._submit()
        elif len(parts) == 4 and parts[:2] == ["api", "renders"] and parts[3] == "cancel":
            job = self.server.renders.cancel(parts[2])
            if job is None:
                self._error(HTTPStatus.NOT_FOUND, f"no render {parts[2]!r}")
            else:
                self._json(HTTPStatus.OK, job.status())
        else:
            self._error(HTTPStatus.NOT_FOUND, "no such endpoint")

    def _submit(self) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 < length <= MAX_REQUEST_BYTES:
            self._error(HTTPStatus.BAD_REQUEST, "request: missing or oversized body")
            return
        try:
            data = json.loads(self.rfile.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            self._error(HTTPStatus.BAD_REQUEST, f"request: not JSON ({exc})")
            return
        try:
            job = self.server.renders.submit(RenderRequest.from_json(data))
        except UserError as exc:
            self._error(HTTPStatus.BAD_REQUEST, str(exc))
            return
        self._json(HTTPStatus.ACCEPTED, job.status())

    def _serve_output(self, job_id: str, rel: list[str]) -> None:
        job = self.server.renders.get(job_id)
        if job is None:
            self._error(HTTPStatus.NOT_FOUND, f"no render {job_id!r}")
            return
        root = job.out_dir.resolve()
        target = root.joinpath(*rel).resolve()
        # Only plain files inside this render's output folder, of the kinds a render writes.
        if any(p in ("..", ".") for p in rel) or not target.is_relative_to(root) or not target.is_file() \
                or target.suffix not in SERVED_SUFFIXES:
            self._error(HTTPStatus.NOT_FOUND, "no such file")
            return
        kind = TEXT_SUFFIXES.get(target.suffix) or mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        if kind.startswith("text/"):
            kind += "; charset=utf-8"
        self._send(HTTPStatus.OK, target.read_bytes(), kind)


class WebUIServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], renders: RenderQueue, verbose: bool = False):
        self.renders = renders  # before binding: a failed bind calls server_close
        self.verbose = verbose
        super().__init__(address, Handler)

    def server_close(self) -> None:
        super().server_close()
        self.renders.close()


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m storyadapter.webui", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--runs-dir", default="outputs/webui", help="one folder per render under here")
    parser.add_argument("--verbose", action="store_true", help="log every request")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="added to every render's command")
    args = parser.parse_args(argv)
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        report(f"{bad[0]}: expected KEY=VALUE")
        return 2
    try:
        server = WebUIServer((args.host, args.port), RenderQueue(Path(args.runs_dir), tuple(args.overrides)), args.verbose)
    except OSError as exc:
        report(f"--port {args.port}: cannot listen on {args.host} ({exc.strerror or exc})")
        return 2
    host, port = server.server_address[:2]
    print(f"storyadapter web UI on http://{host}:{port}/ (renders in {Path(args.runs_dir).resolve()}); Ctrl-C stops it",
          file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A small web UI: paste a story, pick a style and model, watch the frames arrive, open the comic and gallery.

    python -m storyadapter.webui [--host 127.0.0.1] [--port 7860] [--runs-dir outputs/webui] [--max-* N] [KEY=VALUE ...]

Standard library only. Listens on 127.0.0.1 unless told otherwise; with any other --host, every request
needs the token printed at start. Trailing KEY=VALUE arguments are added to every render (for example
`model.cache_dir=...` or `cluster=ray`), the same overrides `python -m storyadapter.launch` takes.

Routes: GET / (the page), GET /api/styles, POST /api/renders (JSON RenderRequest), GET /api/renders,
GET /api/renders/<id>, GET /api/renders/<id>/log, GET /api/renders/<id>/story (its story and settings),
POST /api/renders/<id>/cancel, POST /api/renders/<id>/resume, POST /api/renders/<id>/edit (JSON: frame, prompt,
caption, seed, preview), GET /runs/<id>/<path> (files of a render's output).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import mimetypes
import secrets
import signal
import socket
import sys
from dataclasses import asdict
from http import HTTPStatus
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from ..errors import ArgumentParser, UserError, report
from ..story.styles import style_names
from . import story_text
from .jobs import COMIC_LAYOUTS, MAX_REQUEST_BYTES, MODELS, Limits, RenderQueue, RenderRequest

log = logging.getLogger(__name__)
SERVED_SUFFIXES = {".png", ".gif", ".html", ".json", ".yaml", ".parquet", ".log", ".txt"}
TEXT_SUFFIXES = {".yaml": "text/plain", ".log": "text/plain", ".txt": "text/plain"}
TOKEN_HEADER = "X-Storyadapter-Token"
TOKEN_COOKIE = "storyadapter_token"
MAX_JSON_DIGITS = 20  # a number in a request is a count or a seed; longer ones are refused before int() parses them
FAVICON = (b'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16"><rect width="16" height="16" rx="3" '
           b'fill="#2d3142"/><path d="M4 4h8v2H6v1h6v5H4v-2h6V9H4z" fill="#fff"/></svg>')


def _page(token: str | None) -> bytes:
    page = resources.files(__package__).joinpath("webui.html").read_bytes()
    return page.replace(b'content="@TOKEN@"', f'content="{token or ""}"'.encode())  # token_urlsafe: no quotes


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_names(host: str, extra: tuple[str, ...] = ()) -> set[str]:
    """The names a browser may use for this server in `Host`: the address it listens on (a wildcard
    address: this machine's name and addresses), localhost for loopback, and any --allowed-host."""
    names = {host, *extra}
    wildcard = host in ("", "0.0.0.0", "::")
    if is_loopback(host) or wildcard:
        names |= {"localhost", "127.0.0.1", "::1"}
    if wildcard:
        me = socket.gethostname()
        names |= {me, socket.getfqdn()}
        try:
            names |= {info[4][0] for info in socket.getaddrinfo(me, None)}
        except OSError:
            pass
    return {(f"[{n}]" if ":" in n else n).lower() for n in names if n}


def _small_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_JSON_DIGITS:
        raise ValueError(f"a number with more than {MAX_JSON_DIGITS} digits")
    return int(text)


class RequestRefused(Exception):
    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status = status


class Handler(BaseHTTPRequestHandler):
    server: "WebUIServer"
    server_version = "storyadapter"

    def setup(self) -> None:
        self.timeout = self.server.read_timeout  # a body slower than this frees its thread (408)
        super().setup()

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        if self.server.verbose:
            super().log_message(format, *args)

    # --- responses ----------------------------------------------------------------------------------
    def _send(self, status: HTTPStatus, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("Referrer-Policy", "no-referrer")  # the page's URL may carry the token
        for name, value in (headers or {}).items():
            self.send_header(name, value)
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
            self._check_request()
            route()
        except RequestRefused as exc:
            self.close_connection = True
            self._error(exc.status, str(exc))
        except (BrokenPipeError, ConnectionResetError):
            pass  # the browser went away
        except TimeoutError:
            self.close_connection = True
            self._error(HTTPStatus.REQUEST_TIMEOUT, f"request: the body did not arrive within {self.server.read_timeout:g} s")
        except Exception:  # noqa: BLE001 - a bug in one request must not end the server; the log keeps the trace
            log.exception("request %s %s failed", self.command, self.path)
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error (see the server log)")

    def _check_request(self) -> None:
        """Only this server's own pages may drive it: DNS rebinding fails on `Host`, another site's page
        on `Origin` and on the JSON content type (a cross-site form cannot send it without a preflight)."""
        host = (self.headers.get("Host") or "").strip().lower()
        if host not in self.server.allowed_hosts:
            raise RequestRefused(HTTPStatus.MISDIRECTED_REQUEST, f"Host {host[:100]!r} is not this server's address")
        origin = self.headers.get("Origin")
        if origin is not None and origin.strip().lower() != f"http://{host}":
            raise RequestRefused(HTTPStatus.FORBIDDEN, f"Origin {origin[:100]!r} is not this server")
        if "\x00" in unquote(self.path):
            raise RequestRefused(HTTPStatus.BAD_REQUEST, "request: NUL byte in the path")
        if self.command == "POST":
            kind = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
            if kind != "application/json":
                raise RequestRefused(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "request: Content-Type must be application/json")
        if self.server.token and not self._token_ok():
            raise RequestRefused(HTTPStatus.UNAUTHORIZED, "a token is needed: open the address the server printed at start")

    def _token_ok(self) -> bool:
        given = [self.headers.get(TOKEN_HEADER) or ""]
        try:
            morsel = SimpleCookie(self.headers.get("Cookie") or "").get(TOKEN_COOKIE)
        except CookieError:
            morsel = None
        given.append(morsel.value if morsel else "")
        if urlsplit(self.path).path == "/":
            given += parse_qs(urlsplit(self.path).query).get("token", [])
        return any(hmac.compare_digest(g.encode(), self.server.token.encode()) for g in given if g)

    def _get(self) -> None:
        path = unquote(urlsplit(self.path).path)
        parts = [p for p in path.split("/") if p]
        if not parts:
            cookie = {}
            if self.server.token:  # images and gallery links carry the cookie; API calls send the header too
                cookie = {"Set-Cookie": f"{TOKEN_COOKIE}={self.server.token}; Path=/; HttpOnly; SameSite=Strict"}
            self._send(HTTPStatus.OK, _page(self.server.token), "text/html; charset=utf-8", cookie)
        elif parts == ["favicon.ico"]:
            self._send(HTTPStatus.OK, FAVICON, "image/svg+xml")
        elif parts == ["api", "styles"]:
            limits = self.server.renders.limits
            self._json(HTTPStatus.OK, {"styles": style_names(), "models": list(MODELS), "comic_layouts": list(COMIC_LAYOUTS),
                                       "limits": {"frame_renders": limits.frame_renders, "size": limits.size,
                                                  "steps": limits.steps, "workers": limits.workers}})
        elif parts == ["api", "renders"]:
            self._json(HTTPStatus.OK, {"renders": [j.status() for j in self.server.renders.list()]})
        elif len(parts) in (3, 4) and parts[:2] == ["api", "renders"] and parts[3:] in ([], ["log"], ["story"]):
            job = self.server.renders.get(parts[2])
            if job is None:
                self._error(HTTPStatus.NOT_FOUND, f"no render {parts[2]!r}")
            elif parts[3:] == ["story"]:
                self._json(HTTPStatus.OK, story_and_settings(job))
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
        elif len(parts) == 4 and parts[:2] == ["api", "renders"] and parts[3] in ("cancel", "resume", "edit"):
            if self.server.renders.get(parts[2]) is None:
                self._error(HTTPStatus.NOT_FOUND, f"no render {parts[2]!r}")
            elif parts[3] == "cancel":
                self._json(HTTPStatus.OK, self.server.renders.cancel(parts[2]).status())
            elif parts[3] == "resume":
                self._answer(lambda: (HTTPStatus.ACCEPTED, self.server.renders.resume(parts[2]).status()))
            else:
                self._answer(lambda: self._edit(parts[2]))
        else:
            self._error(HTTPStatus.NOT_FOUND, "no such endpoint")

    def _answer(self, act) -> None:
        """`act()` -> (status, payload); its UserError is a 400 with the one line."""
        try:
            status, payload = act()
        except UserError as exc:
            self._error(HTTPStatus.BAD_REQUEST, str(exc))
            return
        self._json(status, payload)

    def _read_json(self) -> object:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 < length <= MAX_REQUEST_BYTES:
            raise UserError("request: missing or oversized body")
        try:
            return json.loads(self.rfile.read(length), parse_int=_small_int)
        except RecursionError:
            raise UserError("request: not JSON (nested too deeply)") from None
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, or a number too long
            raise UserError(f"request: not JSON ({' '.join(str(exc).split())[:200]})") from None

    def _submit(self) -> None:
        self._answer(lambda: (HTTPStatus.ACCEPTED, self.server.renders.submit(
            RenderRequest.from_json(self._read_json(), self.server.renders.limits)).status()))

    def _edit(self, job_id: str) -> tuple[HTTPStatus, dict]:
        """{frame, prompt, caption, seed, preview}: with preview, only what the edit would cost; else it is queued."""
        data = self._read_json()
        if not isinstance(data, dict) or set(data) - {"frame", "prompt", "caption", "seed", "characters", "preview"}:
            raise UserError("request: expected an object with frame, prompt, caption, seed, characters and preview")
        characters = data.get("characters") or {}
        if not isinstance(characters, dict) or not all(isinstance(v, str) for v in characters.values()):
            raise UserError("request.characters: expected an object of name: description")
        frame, seed = data.get("frame"), data.get("seed")
        prompt, caption = data.get("prompt"), data.get("caption") or ""
        if isinstance(frame, bool) or not isinstance(frame, int):
            raise UserError(f"request.frame: expected a frame number (from 0), got {frame!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= 2**63 - 1):
            raise UserError(f"request.seed: expected a whole number from 0, or null for the render's seed, got {seed!r}")
        if not isinstance(prompt, str) or not isinstance(caption, str):
            raise UserError("request.prompt: expected the frame's prompt and caption as text")
        renders = self.server.renders
        if data.get("preview"):
            job, text = renders.edit_text(job_id, frame, prompt, caption, seed, characters)
            cost = renders.plan_edit(job, text)
            return HTTPStatus.OK, {"edit": cost.as_json() if cost else None}
        job, cost = renders.edit(job_id, frame, prompt, caption, seed, characters)
        return HTTPStatus.ACCEPTED, {**job.status(), "edit": cost.as_json()}

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


def story_and_settings(job) -> dict:
    """What the form needs to show a past render again: its settings, its story as it is now (after any edits),
    and its frames as written, numbered from 0."""
    request = {k: v for k, v in asdict(job.request).items() if k not in ("photos", "story")}
    try:
        story = job.story_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        story = job.request.story
    raw = job.story_as_written()
    frames = [{"index": i, "prompt": f.text.strip(), "caption": f.caption.strip(), "seed": f.seed,
               "characters": story_text.tagged(f.text)} for i, f in enumerate(raw.frames if raw else [])]
    characters = {c.name.strip(): c.description.strip() for c in (raw.characters if raw else [])}
    return {"id": job.id, "request": request, "story": story, "frames": frames, "characters": characters}


class WebUIServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], renders: RenderQueue, verbose: bool = False,
                 token: str | None = None, allowed_hosts: tuple[str, ...] = (), read_timeout: float = 10.0):
        self.renders = renders  # before binding: a failed bind calls server_close
        self.verbose = verbose
        self.token = token
        self.read_timeout = read_timeout
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, Handler)
        port = self.server_address[1]
        self.allowed_hosts = {f"{name}:{port}" for name in host_names(address[0], allowed_hosts)}

    def server_close(self) -> None:
        super().server_close()
        self.renders.close()


def _stop_on_sigterm(signum, frame) -> None:
    raise KeyboardInterrupt  # systemd and docker stop with SIGTERM: clean up as for Ctrl-C


def main(argv: list[str] | None = None) -> int:
    d = Limits()
    parser = ArgumentParser(prog="python -m storyadapter.webui", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only; any other needs the printed token)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                        help="another name browsers use for this server (a DNS name or proxy), accepted in Host")
    parser.add_argument("--runs-dir", default="outputs/webui", help="one folder per render under here")
    parser.add_argument("--max-frame-renders", type=int, default=d.frame_renders, help="frames x iterations per render")
    parser.add_argument("--max-size", type=int, default=d.size, help="pixels per side")
    parser.add_argument("--max-steps", type=int, default=d.steps, help="denoising steps")
    parser.add_argument("--max-workers", type=int, default=d.workers, help="cluster.workers per render")
    parser.add_argument("--read-timeout", type=float, default=10.0, help="seconds a request may take to arrive")
    parser.add_argument("--verbose", action="store_true", help="log every request")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="added to every render's command")
    args = parser.parse_args(argv)
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        report(f"{bad[0]}: expected KEY=VALUE")
        return 2
    limits = Limits(args.max_frame_renders, args.max_size, args.max_steps, args.max_workers)
    token = None if is_loopback(args.host) else secrets.token_urlsafe(24)
    try:
        server = WebUIServer((args.host, args.port), RenderQueue(Path(args.runs_dir), tuple(args.overrides), limits),
                             args.verbose, token, tuple(args.allowed_host), args.read_timeout)
    except OSError as exc:
        report(f"--port {args.port}: cannot listen on {args.host} ({exc.strerror or exc})")
        return 2
    host, port = server.server_address[:2]
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}/" + (f"?token={token}" if token else "")
    print(f"storyadapter web UI on {url} (renders in {Path(args.runs_dir).resolve()}); Ctrl-C stops it",
          file=sys.stderr, flush=True)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

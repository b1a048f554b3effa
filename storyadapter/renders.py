"""Render jobs for the web UI: one folder per request, renders run one at a time through the usual command.

A job is `python -m storyadapter.launch ...` in a child process, so the UI server never holds a model or
a Ray runtime, a crash in a render cannot take the server down, and every render leaves the same
output folder, log and `config.yaml` as one started from a shell. The story is checked before the job
is queued, so a bad story is answered at once with the one-line `file:line` error.
"""

from __future__ import annotations

import base64
import binascii
import os
import queue
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import manifest
from .errors import UserError
from .story import StoryError, load_story
from .styles import style_names

MAX_STORY_BYTES = 256 * 1024
MAX_PHOTOS = 8  # one per character, attached to the request by file name
MAX_PHOTO_UPLOAD_BYTES = 4 * 1024 * 1024
MAX_REQUEST_BYTES = 2 * MAX_STORY_BYTES + MAX_PHOTOS * (MAX_PHOTO_UPLOAD_BYTES * 4 // 3 + 256)  # base64 is 4/3
_PHOTO_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\.(png|jpe?g|webp)$", re.IGNORECASE)
MODELS = ("tiny", "sdxl-random", "realvisxl", "sdxl")
STORY_FORMATS = {"txt": ".txt", "yaml": ".yaml", "json": ".json"}
_JOB_ID = re.compile(r"^[0-9]{8}-[0-9]{6}-[0-9a-f]{6}$")


@dataclass(frozen=True)
class RenderRequest:
    story: str
    story_format: str = "txt"
    style: str | None = None
    model: str = "tiny"
    iterations: int = 2
    steps: int = 2
    size: int = 64
    workers: int = 1
    seed: int = 2024
    photos: tuple[tuple[str, bytes], ...] = ()  # (file name the story uses, bytes): saved beside the story

    @classmethod
    def from_json(cls, data: object) -> "RenderRequest":
        """Checks every field; a UserError names the field at fault."""
        if not isinstance(data, dict):
            raise UserError("request: expected a JSON object")
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise UserError(f"request.{unknown[0]}: unknown field")
        story = data.get("story")
        if not isinstance(story, str) or not story.strip():
            raise UserError("request.story: the story text is empty")
        if len(story.encode("utf-8")) > MAX_STORY_BYTES:
            raise UserError(f"request.story: longer than {MAX_STORY_BYTES // 1024} KiB")
        fmt = data.get("story_format", "txt")
        if fmt not in STORY_FORMATS:
            raise UserError(f"request.story_format: {fmt!r} is not one of {', '.join(STORY_FORMATS)}")
        style = data.get("style") or None
        if style is not None and style not in style_names():
            raise UserError(f"request.style: unknown style {style!r}")
        model = data.get("model", "tiny")
        if model not in MODELS:
            raise UserError(f"request.model: {model!r} is not one of {', '.join(MODELS)}")
        numbers = {}
        for name, low, high in (("iterations", 0, 50), ("steps", 1, 200), ("size", 64, 2048), ("workers", 1, 64),
                                ("seed", 0, 2**31 - 1)):
            value = data.get(name, getattr(cls, name))
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise UserError(f"request.{name}: expected a whole number from {low} to {high}, got {value!r}")
            numbers[name] = value
        if numbers["size"] % 8:
            raise UserError(f"request.size: must be a multiple of 8, got {numbers['size']}")
        return cls(story=story, story_format=fmt, style=style, model=model, photos=_photos(data.get("photos")), **numbers)

    def overrides(self, story_path: Path, out_dir: Path) -> list[str]:
        out = [f"story.path={story_path}", f"model={self.model}", f"render.iterations={self.iterations}",
               f"render.steps={self.steps}", f"render.height={self.size}", f"render.width={self.size}",
               f"render.seed={self.seed}", f"cluster.workers={self.workers}", f"output_dir={out_dir}"]
        if self.style:
            out.append(f"story.style='{self.style}'")  # style names hold spaces and slashes, never quotes
        return out


def _photos(value: object) -> tuple[tuple[str, bytes], ...]:
    """`{"tom.png": "<base64>"}`: plain file names (the story names them), a size limit per photo.
    Whether each is a usable image is checked when the story is loaded, with the story's line."""
    if value is None:
        return ()
    if not isinstance(value, dict) or len(value) > MAX_PHOTOS:
        raise UserError(f"request.photos: expected an object of at most {MAX_PHOTOS} file name: base64 entries")
    out = []
    for name, encoded in value.items():
        if not _PHOTO_NAME.match(name) or name.lower().startswith("story."):
            raise UserError(f"request.photos: {name!r} is not a plain .png/.jpg/.webp file name")
        if not isinstance(encoded, str) or len(encoded) > MAX_PHOTO_UPLOAD_BYTES * 4 // 3 + 4:
            raise UserError(f"request.photos.{name}: over {MAX_PHOTO_UPLOAD_BYTES // (1024 * 1024)} MiB (or not a base64 string)")
        try:
            data = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise UserError(f"request.photos.{name}: not valid base64") from None
        out.append((name, data))
    return tuple(out)


@dataclass
class RenderJob:
    id: str
    folder: Path
    request: RenderRequest
    frames: int  # per iteration, from the story
    state: str = "queued"  # queued | running | done | failed | cancelled
    error: str | None = None
    returncode: int | None = None
    started: float | None = None
    finished: float | None = None
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def out_dir(self) -> Path:
        return self.folder / "out"

    @property
    def log_path(self) -> Path:
        return self.folder / "render.log"

    @property
    def story_path(self) -> Path:
        return self.folder / f"story{STORY_FORMATS[self.request.story_format]}"

    def _frames_on_disk(self) -> list[list[str]]:
        """Per iteration, the frames written so far (relative to the output folder). PNGs are written
        atomically, so a listed frame is complete."""
        found = []
        for it in range(self.request.iterations + 1):
            d = self.out_dir / manifest.iteration_dirname(it)
            found.append([f"{d.name}/{f.name}" for f in sorted(d.glob("frame_*.png"))] if d.is_dir() else [])
        return found

    def status(self) -> dict:
        outputs = {name: (self.out_dir / name).is_file() for name in ("index.html", "story.gif", "iterations.png", "metrics.json")}
        comic = sorted(p.name for p in (self.out_dir / "comic").glob("page_*.png")) if (self.out_dir / "comic").is_dir() else []
        frames = self._frames_on_disk()
        per_iteration = [len(f) for f in frames]
        progress = {"frames_done": sum(per_iteration), "frames_total": self.frames * (self.request.iterations + 1),
                    "per_iteration": per_iteration}
        latest = next((f for f in reversed(frames) if f), [])  # the newest iteration that has frames
        return {"id": self.id, "state": self.state, "error": self.error, "returncode": self.returncode,
                "model": self.request.model, "frames": self.frames, "iterations": self.request.iterations,
                "progress": progress, "latest_frames": latest, "outputs": outputs,
                "comic_pages": [f"comic/{name}" for name in comic],
                "elapsed_s": round((self.finished or time.time()) - self.started, 1) if self.started else None}


def _last_error_line(log: Path) -> str:
    """The launcher's one-line `error: ...` if it wrote one, else the last line of the log."""
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "the render stopped without a log"
    errors = [line for line in lines if line.startswith("error:")]
    return (errors or lines or ["the render stopped without output"])[-1][:500]


class RenderQueue:
    """Jobs under `root`, rendered one at a time by a background thread (local Ray takes the whole machine)."""

    def __init__(self, root: Path, extra_overrides: tuple[str, ...] = ()):
        self.root = Path(root)  # created with the first render
        self.extra_overrides = tuple(extra_overrides)
        self.jobs: dict[str, RenderJob] = {}
        self._lock = threading.Lock()
        self._pending: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="render-queue", daemon=True)
        self._thread.start()

    def submit(self, request: RenderRequest) -> RenderJob:
        job_id = time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)
        job = RenderJob(job_id, self.root / job_id, request, frames=0)
        job.folder.mkdir(parents=True)
        job.story_path.write_text(request.story, encoding="utf-8")
        for name, data in request.photos:  # beside the story, which names them; the run copies them to out/photos/
            (job.folder / name).write_bytes(data)
        try:
            job.frames = len(load_story(job.story_path, request.style).frames)
        except (StoryError, UserError) as exc:
            shutil.rmtree(job.folder)  # nothing of a refused request stays behind
            raise UserError(str(exc).replace(str(job.story_path), job.story_path.name)) from None
        with self._lock:
            self.jobs[job_id] = job
        self._pending.put(job_id)
        return job

    def get(self, job_id: str) -> RenderJob | None:
        if not _JOB_ID.match(job_id):
            return None
        with self._lock:
            return self.jobs.get(job_id)

    def cancel(self, job_id: str) -> RenderJob | None:
        job = self.get(job_id)
        if job is None:
            return None
        with self._lock:
            if job.state == "queued":
                job.state, job.finished = "cancelled", time.time()
            elif job.state == "running" and job.process is not None:
                job.state = "cancelled"
                try:
                    os.killpg(job.process.pid, signal.SIGTERM)  # the launcher and the Ray processes it started
                except ProcessLookupError:
                    pass  # it had just finished
        return job

    def close(self) -> None:
        with self._lock:
            running = [j for j in self.jobs.values() if j.state == "running" and j.process is not None]
        for job in running:
            self.cancel(job.id)
        self._pending.put(None)
        self._thread.join(timeout=30)

    def _work(self) -> None:
        while True:
            job_id = self._pending.get()
            if job_id is None:
                return
            job = self.jobs[job_id]
            with self._lock:
                if job.state != "queued":
                    continue
                job.state, job.started = "running", time.time()
                try:
                    job.process = self._start(job)
                except OSError as exc:
                    job.state, job.finished, job.error = "failed", time.time(), f"error: cannot start the render ({exc})"
                    continue
            returncode = job.process.wait()
            with self._lock:
                job.returncode, job.finished = returncode, time.time()
                if job.state == "cancelled":
                    continue
                job.state = "done" if returncode == 0 else "failed"
                if returncode != 0:
                    job.error = _last_error_line(job.log_path)

    def _start(self, job: RenderJob) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "storyadapter.launch", *job.request.overrides(job.story_path, job.out_dir),
               *self.extra_overrides]
        with open(job.log_path, "wb") as log:  # the child keeps its own descriptor
            # A session of its own, so a cancel reaches the launcher and the Ray processes it started.
            return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=job.folder, start_new_session=True)

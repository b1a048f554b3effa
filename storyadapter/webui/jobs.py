"""The web UI's job queue: one folder per request, renders run one at a time through the usual command.

A job is `python -m storyadapter.launch ...` in a child process, so the UI server never holds a model or
a Ray runtime, a crash in a render cannot take the server down, and every render leaves the same
output folder, log and `config.yaml` as one started from a shell. The story is checked before the job
is queued, so a bad story is answered at once with the one-line `file:line` error.

Each job's state lives in its folder (`job.json`), so a restarted server lists the renders it had. A job's
later runs are the same command in the same folder: `resume=true` continues a cancelled or interrupted render,
`edit=true` applies an edited story to a finished one (its cost asked of the backend first: edit_plan.py).
"""

from __future__ import annotations

import base64
import binascii
import json
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
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..rundir import eta_file, manifest
from ..atomic import replacing
from ..errors import UserError
from ..methods import METHODS, refinements
from ..outputs.notice import frames_notice
from ..story.parse import StoryError, load_story
from ..story.styles import style_names
from . import edit_plan, story_text

MAX_STORY_BYTES = 256 * 1024
MAX_TITLE_CHARS = 120
MAX_PHOTOS = 8  # one per character, attached to the request by file name
MAX_PHOTO_UPLOAD_BYTES = 4 * 1024 * 1024
MAX_REQUEST_BYTES = 2 * MAX_STORY_BYTES + MAX_PHOTOS * (MAX_PHOTO_UPLOAD_BYTES * 4 // 3 + 256)  # base64 is 4/3
_PHOTO_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\.(png|jpe?g|webp)$", re.IGNORECASE)
MODELS = ("tiny", "sdxl-random", "realvisxl", "sdxl", "flux-tiny", "flux-random", "flux")
# FLUX models render with their own preset (flow-matching Euler, distilled guidance); the request's numbers go on top.
FLUX_RENDER = {"flux-tiny": "flux-tiny", "flux-random": "flux", "flux": "flux"}
STORY_FORMATS = {"txt": ".txt", "yaml": ".yaml", "json": ".json"}
JOB_FILE = "job.json"
CANCEL_GRACE_S = 30.0  # after SIGINT, how long the launcher gets to stop Ray before its process group is killed
_JOB_ID = re.compile(r"^[0-9]{8}-[0-9]{6}-[0-9a-f]{6}$")
_HYDRA_HINT = "Set the environment variable HYDRA_FULL_ERROR=1"
ACTIONS = {"render": [], "resume": ["resume=true"], "edit": ["edit=true"]}  # what a run of a job adds to its command
COMIC_LAYOUTS = ("classic", "four", "single")
MAX_NEGATIVE_CHARS = 1000


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; the server's --max-* options. The defaults admit the paper's
    settings (1024 px, 50 steps, 10 iterations) for a story of 200 frames."""

    frame_renders: int = 2200  # frames x (iterations + 1)
    size: int = 1024
    steps: int = 100
    workers: int = 16


def hydra_quote(value: object) -> str:
    """`value` as a single-quoted Hydra override value that reads back verbatim: no grammar
    characters ( [ { = , # ' take effect, and `${...}` is not interpolated."""
    value = str(value)
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'").replace("${", "\\${") + "'"


@dataclass(frozen=True)
class RenderRequest:
    story: str
    story_format: str = "txt"
    title: str | None = None  # the gallery's title; else the story file's (a .txt story has none)
    style: str | None = None
    model: str = "tiny"
    iterations: int = 2
    steps: int = 2
    size: int = 64
    workers: int = 1
    seed: int = 2024
    method: str = "story_adapter"
    photos: tuple[tuple[str, bytes], ...] = ()  # (file name the story uses, bytes): saved beside the story
    negative_prompt: str | None = None  # None: the style's
    guidance_scale: float = 7.5
    comic_layout: str = "classic"

    @property
    def iterations_run(self) -> int:
        """Refinements the render writes (methods.refinements): storydiffusion is one pass whatever `iterations` says."""
        return refinements(self.method, self.iterations)

    @classmethod
    def from_json(cls, data: object, limits: Limits = Limits()) -> "RenderRequest":
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
        title = data.get("title") or None
        if title is not None and (not isinstance(title, str) or len(title) > MAX_TITLE_CHARS
                                  or not title.isprintable() or not title.strip()):
            raise UserError(f"request.title: expected one line of at most {MAX_TITLE_CHARS} characters")
        style = data.get("style") or None
        if style is not None and style not in style_names():
            raise UserError(f"request.style: unknown style {style!r}")
        model = data.get("model", "tiny")
        if model not in MODELS:
            raise UserError(f"request.model: {model!r} is not one of {', '.join(MODELS)}")
        method = data.get("method", "story_adapter")
        if method not in METHODS:
            raise UserError(f"request.method: {method!r} is not one of {', '.join(METHODS)}")
        layout = data.get("comic_layout", "classic")
        if layout not in COMIC_LAYOUTS:
            raise UserError(f"request.comic_layout: {layout!r} is not one of {', '.join(COMIC_LAYOUTS)}")
        negative = data.get("negative_prompt") or None
        if negative is not None and (not isinstance(negative, str) or len(negative) > MAX_NEGATIVE_CHARS
                                     or not negative.isprintable()):
            raise UserError(f"request.negative_prompt: expected one line of at most {MAX_NEGATIVE_CHARS} characters")
        guidance = data.get("guidance_scale", 7.5)
        if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not 1 <= guidance <= 30:
            raise UserError(f"request.guidance_scale: expected a number from 1 to 30, got {guidance!r}")
        numbers = {}
        for name, low, high in (("iterations", 0, 50), ("steps", 1, limits.steps), ("size", 64, limits.size),
                                ("workers", 1, limits.workers), ("seed", 0, 2**31 - 1)):
            value = data.get(name, getattr(cls, name))
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise UserError(f"request.{name}: expected a whole number from {low} to {high}, got {value!r}")
            numbers[name] = value
        _check_as_config(method, numbers, model)
        return cls(story=story, story_format=fmt, title=title and title.strip(), style=style, model=model, method=method,
                   photos=_photos(data.get("photos")), negative_prompt=negative and negative.strip(),
                   guidance_scale=float(guidance), comic_layout=layout, **numbers)

    def overrides(self, story_file: str, out_dir: str) -> list[str]:
        preset = [f"render={FLUX_RENDER[self.model]}"] if self.model in FLUX_RENDER else []
        out = [f"story.path={hydra_quote(story_file)}", f"model={self.model}", *preset, f"render.iterations={self.iterations}",
               f"render.steps={self.steps}", f"render.height={self.size}", f"render.width={self.size}",
               f"render.seed={self.seed}", f"cluster.workers={self.workers}", f"output_dir={hydra_quote(out_dir)}"]
        if self.method != "story_adapter":
            out.append(f"method={self.method}")
        if self.style:
            out.append(f"story.style={hydra_quote(self.style)}")
        if self.title:
            out.append(f"story.title={hydra_quote(self.title)}")
        # Only when set: a render from before these fields runs (and resumes, and edits) with the same command.
        if self.negative_prompt:
            out.append(f"render.negative_prompt={hydra_quote(self.negative_prompt)}")
        if self.guidance_scale != 7.5:
            out.append(f"render.guidance_scale={self.guidance_scale!r}")
        if self.comic_layout != "classic":
            out.append(f"outputs.comic_layout={self.comic_layout}")
        return out


# The config key each request field sets (RenderRequest.overrides), so the launcher's checks name the field.
_FIELD_OF_KEY = {"render.iterations": "iterations", "render.steps": "steps", "render.height": "size",
                 "render.width": "size", "render.seed": "seed", "cluster.workers": "workers", "method.name": "method"}


def _check_as_config(method: str, numbers: dict, model: str = "tiny") -> None:
    """The request's settings through the launcher's own checks (spec.check): a rule such as "a multiple of 8"
    is written once, and a request the render would refuse is refused before it is queued."""
    from .. import spec

    flux = dict(scheduler="flow_euler", guidance_scale=1.0) if model in FLUX_RENDER else {}
    run = spec.RunSpec(
        model=spec.ModelSpec(family="flux" if flux else "sdxl"),
        render=spec.RenderSpec(iterations=numbers["iterations"], steps=numbers["steps"], height=numbers["size"],
                               width=numbers["size"], seed=numbers["seed"], **flux),
        method=spec.MethodSpec(name=method), cluster=spec.ClusterSpec(workers=numbers["workers"]))
    try:
        spec.check(run)
    except spec.ConfigError as exc:
        raise UserError(f"request.{_FIELD_OF_KEY.get(exc.key, exc.key)}: {exc.problem}, got {exc.value!r}") from None


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
    state: str = "queued"  # queued | running | done | failed | cancelled | interrupted (the server stopped)
    action: str = "render"  # what the current or last run does: render | resume | edit (ACTIONS)
    last_edit: dict | None = None  # the cost preview of the last edit queued (edit_plan.EditCost.as_json)
    error: str | None = None
    returncode: int | None = None
    started: float | None = None
    finished: float | None = None
    process: subprocess.Popen | None = field(default=None, repr=False)
    done_at_start: int = field(default=0, repr=False)  # frames on disk when the current run started

    @property
    def out_dir(self) -> Path:
        return self.folder / "out"

    @property
    def log_path(self) -> Path:
        """render.log for the render and its resumes, edit.log for its edits (each run appends after the first)."""
        return self.folder / ("edit.log" if self.action == "edit" else "render.log")

    @property
    def story_path(self) -> Path:
        return self.folder / f"story{STORY_FORMATS[self.request.story_format]}"

    def save(self) -> None:
        """The job's state into its folder, so a restarted server lists it again."""
        # Photo bytes stay out of the record: the files already sit beside the story in this folder.
        record = {"id": self.id, "request": {**asdict(self.request), "photos": ()}, "frames": self.frames, "state": self.state,
                  "error": self.error, "returncode": self.returncode, "started": self.started, "finished": self.finished,
                  "action": self.action, "last_edit": self.last_edit}
        with replacing(self.folder / JOB_FILE) as tmp:
            tmp.write_text(json.dumps(record, indent=1), encoding="utf-8")

    @classmethod
    def load(cls, folder: Path) -> "RenderJob":
        record = json.loads((folder / JOB_FILE).read_text(encoding="utf-8"))
        job = cls(folder.name, folder, RenderRequest(**record["request"]), int(record["frames"]))
        job.state, job.error, job.returncode = record["state"], record["error"], record["returncode"]
        job.started, job.finished = record["started"], record["finished"]
        job.action, job.last_edit = record.get("action", "render"), record.get("last_edit")
        return job

    def _frames_on_disk(self) -> list[list[str]]:
        """Per iteration, the frames written so far (relative to the output folder). PNGs are written
        atomically, so a listed frame is complete."""
        found = []
        for it in range(self.request.iterations_run + 1):
            d = self.out_dir / manifest.iteration_dirname(it)
            found.append([f"{d.name}/{f.name}" for f in sorted(d.glob("frame_*.png"))] if d.is_dir() else [])
        return found

    def story_as_written(self) -> story_text.RawStory | None:
        """The story file as written (story_text.raw_story), read again only when it changed; None if unreadable."""
        try:
            stat = self.story_path.stat()
            key = (stat.st_mtime_ns, stat.st_size)
            if getattr(self, "_raw_key", None) != key:
                text = self.story_path.read_text(encoding="utf-8")
                self._raw, self._raw_key = story_text.raw_story(text, self.request.story_format), key
            return self._raw
        except (OSError, UnicodeDecodeError, StoryError):
            return None

    def story_frames(self) -> list:
        raw = self.story_as_written()
        return raw.frames if raw else []

    def _edited(self, latest: list[str]) -> dict[str, list[str]]:
        """Frame file -> the earlier versions an edit kept of it (edits/rev_NN/iter_XX/frame_NNNN.png), oldest first."""
        edits_dir = self.out_dir / "edits"
        if not edits_dir.is_dir():
            return {}
        kept = {}
        for rel in latest:
            versions = sorted(edits_dir.glob(f"rev_*/{rel}"))
            if versions:
                kept[rel] = [p.relative_to(self.out_dir).as_posix() for p in versions]
        return kept

    def phase(self, frames_done: int) -> str | None:
        """What a running job is doing while no frame has arrived: the first seconds start Ray and load the model."""
        if self.state == "cancelled" and self.process is not None:
            return "stopping: the workers shut down, finished frames are kept"
        if self.state != "running":
            return None
        if self.action == "edit":
            n = len((self.last_edit or {}).get("frames", []))
            return f"editing: {n} frame{'' if n == 1 else 's'} to render again (starting workers, loading the model)" \
                if n else "editing: redrawing the comic, GIF and gallery"
        return "starting workers, loading the model" if frames_done <= self.done_at_start else None

    def status(self) -> dict:
        outputs = {name: (self.out_dir / name).is_file() for name in ("index.html", "story.gif", "iterations.png", "metrics.json")}
        comic = sorted(p.name for p in (self.out_dir / "comic").glob("page_*.png")) if (self.out_dir / "comic").is_dir() else []
        frames = self._frames_on_disk()
        per_iteration = [len(f) for f in frames]
        progress = {"frames_done": sum(per_iteration), "frames_total": self.frames * (self.request.iterations_run + 1),
                    "per_iteration": per_iteration}
        latest = next((f for f in reversed(frames) if f), [])  # the newest iteration that has frames
        raw = self.story_frames()
        edited = self._edited(latest)
        shown = []
        for rel in latest:  # frame_0003.png is frame 3: numbered from 0 everywhere
            index = int(rel.rsplit("_", 1)[1].split(".")[0])
            path = self.out_dir / rel
            shown.append({"index": index, "file": rel, "caption": raw[index].caption.strip() if index < len(raw) else "",
                          "version": path.stat().st_mtime_ns if path.is_file() else 0, "earlier": edited.get(rel, [])})
        finished = self.state == "done" or self.action == "edit"  # a failed or stopped edit is a finished render
        return {"id": self.id, "state": self.state, "action": self.action, "error": self.error, "returncode": self.returncode,
                "title": self.request.title, "model": self.request.model, "frames": self.frames,
                "iterations": self.request.iterations, "progress": progress, "latest_frames": latest,
                "latest": shown, "phase": self.phase(progress["frames_done"]), "last_edit": self.last_edit,
                "can_resume": self.state in ("cancelled", "interrupted", "failed") and self.process is None
                              and (self.out_dir / "config.yaml").is_file(),
                "can_edit": finished and self.state not in ("queued", "running") and self.request.method != "storydiffusion",
                "outputs": outputs, "comic_pages": [f"comic/{name}" for name in comic],
                "notice": frames_notice(self.out_dir),  # from the render's config.yaml, once it is written
                "elapsed_s": round((self.finished or time.time()) - self.started, 1) if self.started else None,
                "eta_s": self._eta_s()}

    def _eta_s(self) -> float | None:
        """The driver's whole-render ETA (engine/eta.py), counted down since it was written; None when unknown."""
        if self.state != "running" or self.action == "edit":
            return None
        try:  # a file left by an earlier run (cancelled, then resumed) says nothing about this one
            if (self.out_dir / eta_file.ETA_FILE).stat().st_mtime < (self.started or 0):
                return None
        except OSError:
            return None
        return eta_file.seconds_left(self.out_dir)


def last_error_line(log: Path) -> str:
    """The launcher's one-line `error: ...` if it wrote one, else the last line of the log that is not
    Hydra's advice to set HYDRA_FULL_ERROR."""
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "the render stopped without a log"
    errors = [line for line in lines if line.startswith("error:")]
    others = [line for line in lines if _HYDRA_HINT not in line]
    return (errors or others or ["the render stopped without output"])[-1][:500]


class RenderQueue:
    """Jobs under `root`, rendered one at a time by a background thread (local Ray takes the whole machine)."""

    def __init__(self, root: Path, extra_overrides: tuple[str, ...] = (), limits: Limits = Limits()):
        self.root = Path(root)  # created with the first render
        self.extra_overrides = tuple(extra_overrides)
        self.limits = limits
        self._lock = threading.Lock()
        self._jobs: dict[str, RenderJob] = self._load_jobs()
        self._pending: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="render-queue", daemon=True)
        self._thread.start()

    def _load_jobs(self) -> dict[str, RenderJob]:
        """The renders a previous server left in `root`. One that was queued or running when it stopped is
        `interrupted`: its frames stay, nothing restarts it behind the user's back."""
        jobs = {}
        folders = sorted(self.root.iterdir()) if self.root.is_dir() else []
        for folder in folders:
            if not _JOB_ID.match(folder.name) or not (folder / JOB_FILE).is_file():
                continue
            try:
                job = RenderJob.load(folder)
            except (OSError, ValueError, KeyError, TypeError):
                continue  # not a job folder this server can read; leave it alone
            if job.state in ("queued", "running"):
                job.state, job.error = "interrupted", "the web UI stopped before this render finished"
                job.finished = job.finished or time.time()
                job.save()
            jobs[job.id] = job
        return jobs

    def submit(self, request: RenderRequest) -> RenderJob:
        job_id = time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)
        job = RenderJob(job_id, self.root / job_id, request, frames=0)
        job.folder.mkdir(parents=True)
        try:
            with replacing(job.story_path) as tmp:
                tmp.write_text(request.story, encoding="utf-8")
            for name, data in request.photos:  # beside the story, which names them; the run copies them to out/photos/
                with replacing(job.folder / name) as tmp:
                    tmp.write_bytes(data)
            job.frames = len(load_story(job.story_path, request.style).frames)
            renders = job.frames * (request.iterations_run + 1)
            if renders > self.limits.frame_renders:
                raise UserError(f"request: {job.frames} frames x {request.iterations_run + 1} iterations is {renders} "
                                f"frame renders; this server allows {self.limits.frame_renders}")
            job.save()
        except (StoryError, UserError) as exc:
            shutil.rmtree(job.folder)  # nothing of a refused request stays behind
            raise UserError(str(exc).replace(str(job.story_path), job.story_path.name)) from None
        except BaseException:
            shutil.rmtree(job.folder, ignore_errors=True)
            raise
        with self._lock:
            self._jobs[job_id] = job
        self._pending.put(job_id)
        return job

    def resume(self, job_id: str) -> RenderJob:
        """Run a cancelled, interrupted or failed job again with resume=true (edit=true if it was an edit)."""
        job = self._job(job_id)
        with self._lock:
            if job.state in ("queued", "running", "done"):
                raise UserError(f"render {job_id}: already {job.state}; nothing to resume")
            if job.process is not None:
                raise UserError(f"render {job_id}: still stopping; resume it once it has stopped")
            if not (job.out_dir / "config.yaml").is_file():
                raise UserError(f"render {job_id}: stopped before it wrote anything; start it again as a new render")
            job.action = "edit" if job.action == "edit" else "resume"
            self._queue(job)
        return job

    def edit_text(self, job_id: str, frame: int, prompt: str, caption: str, seed: int | None,
                  characters: dict[str, str] | None = None) -> tuple[RenderJob, str]:
        """The job's story with one frame and any character descriptions rewritten (story_text)."""
        job = self._job(job_id)
        fmt = job.request.story_format
        text = story_text.with_frame(job.story_path.read_text(encoding="utf-8"), fmt, frame, prompt, caption, seed)
        for name, description in (characters or {}).items():
            text = story_text.with_character(text, fmt, name, description)
        return job, text

    def plan_edit(self, job: RenderJob, text: str) -> edit_plan.EditCost | None:
        """What the edited story `text` will cost, from the backend's plan; writes nothing the render reads."""
        if job.state in ("queued", "running"):
            raise UserError(f"render {job.id}: still {job.state}; edit it once it has finished")
        candidate = job.folder / f"edit-preview{job.story_path.suffix}"  # beside the story: its photo names resolve
        try:
            with replacing(candidate) as tmp:
                tmp.write_text(text, encoding="utf-8")
            return edit_plan.plan(job.out_dir.resolve(), candidate, self._command(job, "edit")[3:])
        except UserError as exc:
            raise UserError(edit_plan.refusal(exc, candidate).replace(candidate.name, job.story_path.name)) from None
        finally:
            candidate.unlink(missing_ok=True)

    def edit(self, job_id: str, frame: int, prompt: str, caption: str, seed: int | None,
             characters: dict[str, str] | None = None) -> tuple[RenderJob, edit_plan.EditCost]:
        """Queue `edit=true` on a finished render with one frame (and the descriptions of characters) changed. The
        story file takes the edit only once the backend has accepted it, so a refused edit leaves the render as it was."""
        job, text = self.edit_text(job_id, frame, prompt, caption, seed, characters)
        cost = self.plan_edit(job, text)
        if cost is None:
            raise UserError("request: the frame is as it was; nothing to edit")
        with self._lock:
            if job.state in ("queued", "running") or job.process is not None:
                raise UserError(f"render {job_id}: still {job.state}; edit it once it has stopped")
            with replacing(job.story_path) as tmp:
                tmp.write_text(text, encoding="utf-8")
            job.action, job.last_edit = "edit", cost.as_json()
            self._queue(job)
        return job, cost

    def _job(self, job_id: str) -> RenderJob:
        job = self.get(job_id)
        if job is None:
            raise LookupError(job_id)
        return job

    def _queue(self, job: RenderJob) -> None:
        """Queue another run of a job (under the lock)."""
        job.state, job.error, job.returncode, job.started, job.finished = "queued", None, None, None, None
        job.save()
        self._pending.put(job.id)

    def get(self, job_id: str) -> RenderJob | None:
        if not _JOB_ID.match(job_id):
            return None
        with self._lock:
            return self._jobs.get(job_id)

    def list(self) -> list[RenderJob]:
        """All jobs, newest first."""
        with self._lock:
            return sorted(self._jobs.values(), key=lambda j: j.id, reverse=True)

    def cancel(self, job_id: str) -> RenderJob | None:
        job = self.get(job_id)
        if job is None:
            return None
        with self._lock:
            if job.state == "queued":
                job.state, job.finished = "cancelled", time.time()
                job.save()
            elif job.state == "running" and job.process is not None:
                job.state = "cancelled"
                job.save()
                try:
                    # The launcher alone gets SIGINT (Ray's own processes ignore it): it stops Ray the way
                    # Ctrl-C does. `_work` kills whatever is left of its process group afterwards.
                    os.kill(job.process.pid, signal.SIGINT)
                except ProcessLookupError:
                    pass  # it had just finished
        return job

    def close(self) -> None:
        """Cancel the running render and wait until it and its Ray processes are gone."""
        for job in self.list():
            if job.state == "running":
                self.cancel(job.id)
        self._pending.put(None)
        self._thread.join(timeout=CANCEL_GRACE_S + 10)

    def _work(self) -> None:
        while True:
            job_id = self._pending.get()
            if job_id is None:
                return
            with self._lock:
                job = self._jobs[job_id]
                if job.state != "queued":
                    continue
                job.state, job.started = "running", time.time()
                job.done_at_start = sum(len(f) for f in job._frames_on_disk())
                try:
                    job.process = self._start(job)
                except OSError as exc:
                    job.state, job.finished, job.error = "failed", time.time(), f"error: cannot start the render ({exc})"
                job.save()
                if job.process is None:
                    continue
            returncode = self._wait(job)
            with self._lock:
                job.returncode, job.finished, job.process = returncode, time.time(), None
                if job.state != "cancelled":
                    job.state = "done" if returncode == 0 else "failed"
                    if returncode != 0:
                        job.error = last_error_line(job.log_path)
                job.save()

    def _wait(self, job: RenderJob) -> int:
        """The launcher's exit code; once it has exited (or ignored a cancel for CANCEL_GRACE_S), nothing
        of its process group (Ray's raylet, GCS, workers) is left running."""
        proc = job.process
        while True:
            try:
                returncode = proc.wait(timeout=1.0)
                break
            except subprocess.TimeoutExpired:
                if job.state == "cancelled" and job.finished is None:
                    job.finished = time.time()  # when the cancel was seen; the grace period counts from here
                if job.state == "cancelled" and time.time() - job.finished > CANCEL_GRACE_S:
                    _kill_group(proc.pid)
        _kill_group(proc.pid)
        return returncode

    def _command(self, job: RenderJob, action: str) -> list[str]:
        # Paths relative to the job folder (the child's cwd): the runs folder's name never reaches Hydra's parser.
        return [sys.executable, "-m", "storyadapter.launch", *job.request.overrides(job.story_path.name, job.out_dir.name),
                *self.extra_overrides, *ACTIONS[action]]

    def _start(self, job: RenderJob) -> subprocess.Popen:
        cmd = self._command(job, job.action)
        mode = "wb" if job.action == "render" else "ab"  # a resume or edit adds to the log of the runs before it
        with open(job.log_path, mode) as log:  # the child keeps its own descriptor
            # A session of its own, so the Ray processes it starts can be found (and stopped) by process group.
            return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=job.folder, start_new_session=True)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # nothing left

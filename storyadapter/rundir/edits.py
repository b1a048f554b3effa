"""An edit of a finished render on disk: what it may change, where its frames are staged, and its commit.

Layout of revision N (edit_story.py runs it):

    DIR/edits/pending.json                 the edit in progress: {revision, digest, iteration, frames}
    DIR/edits/rev_NN/new/iter_XX/...       the edited frames as rendered, journaled like an iteration
    DIR/edits/rev_NN/iter_XX/frame_*.png   each edited frame's previous file, kept
    DIR/config.yaml `revisions`            the story digest of every revision (0: the render itself)

The commit never lets a manifest row name a file with other bytes: (1) the previous files are copied into the
revision folder; (2) the last iteration's manifest part is rewritten with the new rows pointing at the staged
files; (3) each staged file is copied over its frame's file atomically; (4) the part is rewritten pointing at
the frame files again; (5) story.json and config.yaml take the new story; (6) pending.json goes. Every step can be
run again, so `edit=true` after a crash anywhere finishes the same edit to the same bytes.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import yaml
from omegaconf import DictConfig

from . import manifest, story_record
from ..atomic import replacing
from ..errors import UserError
from ..story.model import Story
from ..story.snapshot import compare, snapshot
from .frame_files import fsync_dir
from .guard import CONFIG_FILE, _differences, _IGNORED_RENDER_KEYS, fingerprint

EDITS_DIR = "edits"
PENDING_FILE = "pending.json"


@dataclass(frozen=True)
class EditPlan:
    revision: int
    iteration: int  # the render's last iteration: the one an edit renders again
    ramp_iterations: int
    frames: tuple[int, ...]  # to render again; none for a caption-only edit
    summary: str  # what changed, e.g. "frame 3: prompt"

    def folder(self, out_dir: Path) -> Path:
        return Path(out_dir) / EDITS_DIR / f"rev_{self.revision:02d}"

    def staging(self, out_dir: Path) -> Path:
        return self.folder(out_dir) / "new"


def check(out_dir: Path, cfg: DictConfig, story: Story, iterations: int) -> EditPlan | None:
    """The edit `story` makes to the finished render in `out_dir`, or None when nothing changed. Refuses, in one
    line, whatever is not an edit. Writes nothing."""
    saved = _saved_config(out_dir)
    old_fp = saved.get("fingerprint", {})
    old_fp["render"] = {k: v for k, v in old_fp.get("render", {}).items() if k not in _IGNORED_RENDER_KEYS}
    new_fp = fingerprint(cfg, story)
    diffs = [d for d in _differences(old_fp, new_fp) if not d.startswith(("story.digest", "story.photos"))]
    if diffs:
        raise UserError(f"edit=true refused: {'; '.join(diffs[:4])} is not an edit of {out_dir} but a new render; "
                        "render it into a new output_dir")
    had = int(saved.get("schedule", {}).get("iterations", iterations))
    if manifest.finished_iterations(out_dir)[: had + 1] != list(range(had + 1)):
        raise UserError(f"edit=true: the render in {out_dir} is not finished; finish it first with resume=true, then edit it")
    if iterations != had:
        raise UserError(f"render.iterations={iterations}: edit=true keeps the render's {had} iterations; "
                        f"pass render.iterations={had}")
    if (saved.get("method") or {}).get("name", "story_adapter") == "storydiffusion":
        raise UserError("method=storydiffusion: edit=true re-renders frames at the last GRCA iteration, which this "
                        "method does not have; render the edited story into a new output_dir")
    ramp = int(saved.get("schedule", {}).get("ramp_iterations", had))
    pending = _read_pending(out_dir)
    if pending is not None:
        if pending["digest"] != story.digest:
            raise UserError(f"edit=true: {out_dir / EDITS_DIR / PENDING_FILE} holds an unfinished edit made with another "
                            "version of the story file; rerun edit=true with that version to finish it first")
        return EditPlan(pending["revision"], had, ramp, tuple(pending["frames"]), pending["summary"])
    recorded = story_record.read(out_dir)
    if recorded is None:
        raise UserError(f"edit=true: {out_dir} has no {story_record.STORY_FILE} (it was rendered before edits existed), "
                        "so the story it was made from is unknown; render the edited story into a new output_dir")
    new = snapshot(story)
    changes = compare(recorded, new)
    if changes.frame_count:
        raise UserError(f"edit=true: the story has {changes.frame_count[1]} frames, the render {changes.frame_count[0]}; "
                        "inserting or removing frames is not supported by edit=true yet; render it into a new output_dir")
    if not changes:
        return None
    revision = len(saved.get("revisions") or [0])
    return EditPlan(revision, had, ramp, tuple(changes.to_render(new)), changes.describe())


def begin(out_dir: Path, plan: EditPlan, story: Story) -> None:
    """Record the edit as in progress before anything of it is written."""
    path = Path(out_dir) / EDITS_DIR / PENDING_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {"revision": plan.revision, "digest": story.digest, "iteration": plan.iteration,
                "frames": list(plan.frames), "summary": plan.summary}
    with replacing(path) as tmp:
        tmp.write_text(json.dumps(document) + "\n", encoding="utf-8")
        _fsync(tmp)


def commit(out_dir: Path, plan: EditPlan, story: Story, cfg: DictConfig, rendered: dict, scales: dict[int, float],
           seeds: dict[int, int]) -> None:
    """Apply the edit (the module docstring's steps 1-6). `rendered`: frame -> FrameResult (paths relative to the
    staging folder); `scales`, `seeds`: frame -> its adapter scale and noise seed as the manifest records them."""
    out_dir = Path(out_dir)
    it, folder, staging = plan.iteration, plan.folder(out_dir), plan.staging(out_dir)
    # The part as it is now: the render's, or, after a crash inside a commit, already this edit's (whose rows may
    # name staged files). A frame's own file is always at its place in iter_XX/.
    old = {r.frame: r for r in manifest.read_records(out_dir, it)}
    place = {f: f"{manifest.iteration_dirname(it)}/{manifest.frame_filename(f)}" for f in old}
    for f in plan.frames:  # 1: the previous files, kept once (a rerun finds them there and leaves them)
        kept = folder / place[f]
        if not kept.is_file():
            kept.parent.mkdir(parents=True, exist_ok=True)
            _copy_durably(out_dir / place[f], kept)

    def rows(staged: bool) -> list[manifest.FrameRecord]:
        out = []
        for frame in story.frames:
            r = replace(old[frame.index], caption=frame.caption)
            if frame.index in rendered:
                new = rendered[frame.index]
                path = os.path.relpath(staging / new.image_path, out_dir) if staged else place[frame.index]
                r = replace(r, prompt=frame.prompt, characters=tuple(frame.characters), seed=seeds[frame.index],
                            scale=scales[frame.index], image_path=path, revision=plan.revision,
                            embedding=np.asarray(new.embedding, dtype=np.float32))
            out.append(r)
        return out

    manifest.write_part(out_dir, rows(staged=True))  # 2
    for f in plan.frames:  # 3
        _copy_durably(staging / rendered[f].image_path, out_dir / place[f])
    manifest.write_part(out_dir, rows(staged=False))  # 4
    story_record.write(out_dir, story)  # 5
    _record_revision(out_dir, plan.revision, story, cfg)
    (out_dir / EDITS_DIR / PENDING_FILE).unlink(missing_ok=True)  # 6
    shutil.rmtree(staging, ignore_errors=True)


def _record_revision(out_dir: Path, revision: int, story: Story, cfg: DictConfig) -> None:
    path = out_dir / CONFIG_FILE
    document = _saved_config(out_dir)
    revisions = document.get("revisions") or [{"revision": 0, "story_digest": document["fingerprint"]["story"]["digest"]}]
    revisions = [r for r in revisions if r["revision"] < revision] + [{"revision": revision, "story_digest": story.digest}]
    # The new story is the render's from now on: resume=true and later edits compare with it.
    document["fingerprint"]["story"] = fingerprint(cfg, story)["story"]
    document["revisions"] = revisions
    with replacing(path) as tmp:
        tmp.write_text(yaml.safe_dump(document, sort_keys=False, allow_unicode=True), encoding="utf-8")


def _saved_config(out_dir: Path) -> dict:
    path = Path(out_dir) / CONFIG_FILE
    if not path.is_file():
        raise UserError(f"output_dir={out_dir}: edit=true but there is no finished render there ({CONFIG_FILE} is missing)")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: unreadable ({type(exc).__name__})") from None


def _read_pending(out_dir: Path) -> dict | None:
    try:
        return json.loads((Path(out_dir) / EDITS_DIR / PENDING_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return None  # torn before its rename could not happen (atomic); unreadable otherwise: start the edit anew


def _copy_durably(source: Path, target: Path) -> None:
    with replacing(target) as tmp:
        shutil.copyfile(source, tmp)
        _fsync(tmp)
    fsync_dir(target.parent)


def _fsync(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())

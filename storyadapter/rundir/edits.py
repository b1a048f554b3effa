"""An edit of a finished render on disk: what it may change, where its frames are staged, and its commit.

Layout of revision N (edit_story.py runs it):

    DIR/edits/pending.json                   the edit in progress: the EditPlan and the story's digest
    DIR/edits/rev_NN/manifest/iter_XX.parquet  the last iteration's part as it was before the edit
    DIR/edits/rev_NN/new/iter_XX/...         the frames to render, as rendered, journaled like an iteration
    DIR/edits/rev_NN/iter_XX/frame_*.png     the previous file of each frame rendered again or removed, kept
    DIR/config.yaml `revisions`              the story digest of every revision (0: the render itself)

Frame files keep their names: a frame's file is the one its manifest row names, and rows follow the story's order
(the `frame` column is the frame's place in the edited story). An inserted frame's file takes the next number never
used in that iteration folder, so no existing file is renamed or rewritten and no name ever means two frames;
a removed frame's file moves to the revision folder. Earlier iterations stay as rendered, of the story as it was.

The commit never lets a manifest row name a file with other bytes: (1) the previous files of frames rendered
again are copied into the revision folder; (2) the last iteration's manifest part is rewritten with the new rows,
the rendered frames pointing at their staged files; (3) each staged file is copied to its frame's file atomically;
(4) the part is rewritten pointing at the frame files; (5) removed frames' files, named by no row now, move to the
revision folder; (6) story.json and config.yaml take the new story; (7) pending.json goes. The old rows are read
from the part kept in the revision folder, so every step can be run again: `edit=true` after a crash anywhere
finishes the same edit to the same bytes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import asdict, dataclass, replace
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
    frames: tuple[int, ...]  # frames of the edited story to render; none for a caption-only edit
    summary: str  # what changed, e.g. "frame 3: prompt"
    matched: tuple[int | None, ...] = ()  # per frame of the edited story: the render's frame it continues, or None
    removed: tuple[int, ...] = ()  # the render's frames the edited story no longer has
    new_files: tuple[tuple[int, str], ...] = ()  # inserted frame -> its file name in the last iteration's folder

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
        return _plan_from(pending, had, ramp)
    recorded = story_record.read(out_dir)
    if recorded is None:
        raise UserError(f"edit=true: {out_dir} has no {story_record.STORY_FILE} (it was rendered before edits existed), "
                        "so the story it was made from is unknown; render the edited story into a new output_dir")
    new = snapshot(story)
    changes = compare(recorded, new)
    if not changes:
        return None
    revision = len(saved.get("revisions") or [0])
    numbers = _unused_numbers(out_dir, had, len(changes.inserted))
    return EditPlan(revision, had, ramp, tuple(changes.to_render(new)), changes.describe(), changes.matched,
                    changes.removed, tuple((i, manifest.frame_filename(n)) for i, n in zip(changes.inserted, numbers)))


def refining(out_dir: Path, story: Story, iterations: int, refine: int) -> bool:
    """Whether an `edit.refine` was stopped during its iterations: the render asks for `iterations` + `refine`
    (its config says so once they start), has the first `iterations` and not all the others, the story is the
    one it records and no edit is pending. Rerunning the same command then finishes them."""
    if not refine or not (Path(out_dir) / CONFIG_FILE).is_file():
        return False
    target = int(_saved_config(out_dir).get("schedule", {}).get("iterations", -1))
    done = manifest.finished_iterations(out_dir)
    recorded = story_record.read(out_dir)
    return (target == iterations + refine and done[: iterations + 1] == list(range(iterations + 1))
            and done[: target + 1] != list(range(target + 1)) and _read_pending(out_dir) is None
            and recorded is not None and not compare(recorded, snapshot(story)))


def _unused_numbers(out_dir: Path, iteration: int, count: int) -> list[int]:
    """`count` file numbers never used in the iteration's folder: not by a frame there, nor by one kept under edits/
    (a removed frame's file, which the gallery links by name)."""
    folder = manifest.iteration_dirname(iteration)
    names = [r.image_path for r in manifest.read_records(out_dir, iteration)]
    names += [p.name for p in (Path(out_dir) / folder).glob("frame_*.png")]
    names += [p.name for p in (Path(out_dir) / EDITS_DIR).glob(f"rev_*/{folder}/frame_*.png")]
    used = [int(m.group(1)) for n in names if (m := re.search(r"frame_(\d+)\.png$", n))]
    start = max(used, default=-1) + 1
    return list(range(start, start + count))


def _plan_from(pending: dict, iteration: int, ramp: int) -> EditPlan:
    frames = tuple(pending["frames"])
    # A pending edit from before frames could be inserted or removed keeps every frame in its place.
    matched = tuple(pending.get("matched") or ())
    return EditPlan(pending["revision"], iteration, ramp, frames, pending["summary"], matched,
                    tuple(pending.get("removed") or ()), tuple((int(i), n) for i, n in pending.get("new_files") or ()))


def begin(out_dir: Path, plan: EditPlan, story: Story) -> None:
    """Keep the last part as it is, then record the edit as in progress, before anything of it is written. A
    resumed edit (pending.json there) keeps both as they are: its commit may have rewritten the part already."""
    path = Path(out_dir) / EDITS_DIR / PENDING_FILE
    kept = manifest.part_path(plan.folder(out_dir), plan.iteration)
    if path.is_file() and kept.is_file():
        return
    kept.parent.mkdir(parents=True, exist_ok=True)
    _copy_durably(manifest.part_path(out_dir, plan.iteration), kept)
    document = {**asdict(plan), "digest": story.digest}
    with replacing(path) as tmp:
        tmp.write_text(json.dumps(document) + "\n", encoding="utf-8")
        _fsync(tmp)


def commit(out_dir: Path, plan: EditPlan, story: Story, cfg: DictConfig, rendered: dict, scales: dict[int, float],
           seeds: dict[int, int]) -> None:
    """Apply the edit (the module docstring's steps 1-7). `rendered`: frame -> FrameResult (paths relative to the
    staging folder); `scales`, `seeds`: frame -> its adapter scale and noise seed as the manifest records them."""
    out_dir = Path(out_dir)
    it, folder, staging = plan.iteration, plan.folder(out_dir), plan.staging(out_dir)
    old = {r.frame: r for r in manifest.read_records(folder, it)}  # the part before the edit, kept by begin()
    matched = plan.matched or tuple(range(len(story.frames)))
    new_files = dict(plan.new_files)
    place = {i: old[j].image_path if j is not None else f"{manifest.iteration_dirname(it)}/{new_files[i]}"
             for i, j in enumerate(matched)}
    replaced = [old[matched[i]].image_path for i in plan.frames if matched[i] is not None]
    for rel in replaced:  # 1: the previous files, kept once (a rerun finds them there and leaves them)
        if not (folder / rel).is_file():
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            _copy_durably(out_dir / rel, folder / rel)

    def rows(staged: bool) -> list[manifest.FrameRecord]:
        out = []
        for frame in story.frames:
            i = frame.index
            if i in rendered:
                new = rendered[i]
                out.append(manifest.FrameRecord(
                    iteration=it, frame=i, prompt=frame.prompt, caption=frame.caption,
                    characters=tuple(frame.characters), seed=seeds[i], scale=scales[i],
                    image_path=os.path.relpath(staging / new.image_path, out_dir) if staged else place[i],
                    embedding=np.asarray(new.embedding, dtype=np.float32), revision=plan.revision))
            else:
                out.append(replace(old[matched[i]], frame=i, caption=frame.caption))
        return out

    manifest.write_part(out_dir, rows(staged=True))  # 2
    for f in plan.frames:  # 3
        _copy_durably(staging / rendered[f].image_path, out_dir / place[f])
    manifest.write_part(out_dir, rows(staged=False))  # 4
    for j in plan.removed:  # 5: a rename keeps the file as it was (inode, mtime)
        rel = old[j].image_path
        if (out_dir / rel).is_file():
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(out_dir / rel, folder / rel)
            fsync_dir((folder / rel).parent)
            fsync_dir((out_dir / rel).parent)
    story_record.write(out_dir, story)  # 6
    _record_revision(out_dir, plan.revision, story, cfg)
    (out_dir / EDITS_DIR / PENDING_FILE).unlink(missing_ok=True)  # 7
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

"""What an edit of a finished render will cost, asked of the backend before the edit is queued.

The answer is `rundir.edits.check`'s plan for the very overrides the edit will run with (`edit=true` in the
render's folder), so the page's "1 frame" is what the launcher will render, and a change the launcher would
refuse is refused here in its words, before anything is written.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError

_HYDRA = threading.Lock()  # Hydra's compose API keeps global state: one composition at a time


@dataclass(frozen=True)
class EditCost:
    frames: tuple[int, ...]  # rendered again, numbered from 0
    summary: str  # the backend's: "frame 1: prompt; Lisa: description"
    cost: str  # "1 frame", "3 frames naming Lisa", "no render: caption only"
    revision: int

    def as_json(self) -> dict:
        return {"frames": list(self.frames), "summary": self.summary, "cost": self.cost, "revision": self.revision}


def plan(out_dir: Path, story_path: Path, overrides: list[str]) -> EditCost | None:
    """The edit that the story file at `story_path` makes to the finished render in `out_dir`, run with
    `overrides` (the render's own, plus edit=true); None when it changes nothing. UserError: the backend's refusal."""
    from .. import spec
    from ..launch import compose_config
    from ..rundir import edits, story_record
    from ..story.parse import load_story
    from ..story.snapshot import compare, snapshot

    with _HYDRA:
        cfg = compose_config(overrides)
    run = spec.from_config(cfg)
    story = load_story(story_path, run.story.style, run.story.title)
    found = edits.check(out_dir, cfg, story, run.iterations_to_render)
    if found is None:
        return None
    recorded = story_record.read(out_dir)
    changed = compare(recorded, snapshot(story)) if recorded is not None else None
    return EditCost(tuple(found.frames), found.summary, _cost(found.frames, found.summary, changed), found.revision)


def _cost(frames: tuple[int, ...], summary: str, changed) -> str:
    if not frames:
        return "no render: caption only" if "caption" in summary else "no render"
    count = f"{len(frames)} frame{'' if len(frames) == 1 else 's'}"
    named = [name for name, fields in (changed.characters.items() if changed else ())
             if {"description", "photo"} & set(fields)]
    return f"{count} naming {', '.join(named)}" if named else count


def refusal(exc: UserError, story_path: Path) -> str:
    """The backend's line, with the job folder's absolute paths left out (the page knows which render it is)."""
    return str(exc).replace(str(story_path.parent) + "/", "")

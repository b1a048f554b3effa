"""DIR/story.json: the story a render was made from (story/snapshot.py), so that a later run can say what an
edited story file changed. Renders made before it existed have none; their refusals name the digests only."""

from __future__ import annotations

import json
from pathlib import Path

from ..atomic import replacing
from ..story.model import Story
from ..story.snapshot import snapshot

STORY_FILE = "story.json"


def write(out_dir: Path, story: Story) -> None:
    write_snapshot(out_dir, snapshot(story))


def write_snapshot(out_dir: Path, record: dict) -> None:
    with replacing(Path(out_dir) / STORY_FILE) as tmp:
        tmp.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def read(out_dir: Path) -> dict | None:
    """The recorded story, or None when the render has none (older renders) or it cannot be read."""
    try:
        record = json.loads((Path(out_dir) / STORY_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("version") == 1 else None

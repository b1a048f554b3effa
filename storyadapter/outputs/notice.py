"""What a render's frames are, said where people look at them: a model with random weights draws noise, and
model=sim draws placeholders. Neither is a picture of the story, and the gallery, the comic's first page and the
web UI say so.

Read from the render folder's own config.yaml (`model.kind`), never from the running process: a gallery
regenerated later, or one render among many in the web UI, carries the notice exactly when its frames need it.
A folder without a readable config.yaml gets none (frames from elsewhere are not ours to judge).
"""

from __future__ import annotations

from pathlib import Path

import yaml

from ..rundir.guard import CONFIG_FILE

RANDOM_WEIGHTS = "random weights: these frames are noise; see README 'Real weights'"
# model=sim has no weights at all, so "random weights" would be wrong; what its frames are matters just as much.
SIMULATED = "simulated frames (model=sim): placeholders, not pictures; see README 'Real weights'"
_BY_KIND = {"tiny": RANDOM_WEIGHTS, "sdxl-random": RANDOM_WEIGHTS, "flux-random": RANDOM_WEIGHTS, "sim": SIMULATED}


def recorded(out_dir: Path, *keys: str):
    """A value the run recorded in its config.yaml (None when absent or unreadable)."""
    try:
        value = yaml.safe_load((Path(out_dir) / CONFIG_FILE).read_text(encoding="utf-8"))
        for key in keys:
            value = value.get(key)
    except (OSError, yaml.YAMLError, UnicodeDecodeError, AttributeError):
        return None
    return value


def frames_notice(out_dir: Path) -> str | None:
    """The line to show with this render's frames, or None for a real model's."""
    return _BY_KIND.get(recorded(out_dir, "model", "kind"))

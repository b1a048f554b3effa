"""DIR/eta.json: the running render's whole-render ETA (engine/eta.py writes it, the web UI reads it)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..atomic import replacing

ETA_FILE = "eta.json"


def write(out_dir: Path, eta_s: float, iterations_left: int) -> None:
    with replacing(Path(out_dir) / ETA_FILE) as tmp:
        tmp.write_text(json.dumps({"eta_s": round(eta_s, 1), "iterations_left": iterations_left, "at": time.time()}),
                       encoding="utf-8")


def remove(out_dir: Path) -> None:
    (Path(out_dir) / ETA_FILE).unlink(missing_ok=True)


def seconds_left(out_dir: Path) -> float | None:
    """The ETA counted down since it was written; None when there is none."""
    try:
        eta = json.loads((Path(out_dir) / ETA_FILE).read_text(encoding="utf-8"))
        return round(max(0.0, eta["eta_s"] - (time.time() - eta["at"])), 1)
    except (OSError, ValueError, KeyError):
        return None

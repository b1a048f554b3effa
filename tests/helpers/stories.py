"""Story files for tests: one written from its lines, and the stories that several test files render."""

from __future__ import annotations

from pathlib import Path

# Two characters, frames naming one, both or neither: what consistent self-attention's identity plan works on.
TOM_LISA = [
    "[Tom] A boy with a red cap and a blue backpack.",
    "[Lisa] A girl with long black hair and a yellow raincoat.",
    "",
    "[Tom] walks to school #0",
    "[Lisa] reads under a tree #1",
    "[Tom] and [Lisa] meet at the school gate #2",
    "[NC] An empty classroom at dusk #3",
    "[Tom] runs home in the rain #4",
    "[Tom] eats dinner with his dog #5",
]


def write_story(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path

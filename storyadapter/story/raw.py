"""What every format parser returns: the story as written, with its lines, before the checks and tag expansion.

Also the limits the parsers share and their error, whose message is always ``{path}:{line}: {what}``.
"""

from __future__ import annotations

from typing import NamedTuple

from storyadapter.errors import UserError

MAX_LINE_CHARS = 4000  # per .txt line, and per string value in YAML/JSON
MAX_FRAMES = 10_000
MAX_SEED = 2**63 - 1  # the manifest's seed column is int64
MAX_NESTING = 32  # the schema needs 3 levels; anything deeper is a mistake or an attack


class StoryError(UserError):
    """A malformed story file; the message is always ``{path}:{line}: {what}``."""

    def __init__(self, path: str, line: int, what: str):
        super().__init__(f"{path}:{line}: {what}")


class RawCharacter(NamedTuple):
    name: str
    description: str
    line: int
    image: str | None = None  # photo path as written


class RawFrame(NamedTuple):
    text: str  # prompt with tags still in it
    caption: str
    line: int
    seed: int | None = None  # checked by the format's parser: an integer in [0, MAX_SEED]


class RawStory(NamedTuple):
    title: str | None
    title_line: int
    style: str | None
    style_line: int
    characters: list[RawCharacter]
    frames: list[RawFrame]


def parse_seed(text: str, src: str, line: int) -> int:
    """A frame's `seed` as written: a non-negative integer, else one line naming the file and line."""
    stripped = text.strip()
    if not stripped.isascii() or not stripped.isdigit() or int(stripped) > MAX_SEED:
        raise StoryError(src, line, f"seed {text.strip()!r} is not an integer from 0 to {MAX_SEED}")
    return int(stripped)

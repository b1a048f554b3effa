"""What every format parser returns: the story as written, with its lines, before the checks and tag expansion.

Also the limits the parsers share and their error, whose message is always ``{path}:{line}: {what}``.
"""

from __future__ import annotations

from typing import NamedTuple

from storyadapter.errors import UserError

MAX_LINE_CHARS = 4000  # per .txt line, and per string value in YAML/JSON
MAX_FRAMES = 10_000
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


class RawStory(NamedTuple):
    title: str | None
    title_line: int
    style: str | None
    style_line: int
    characters: list[RawCharacter]
    frames: list[RawFrame]

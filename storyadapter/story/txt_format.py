"""``.txt`` stories: one frame per non-blank line, optionally after a StoryDiffusion character block.

A file whose first non-blank line looks like ``[Name] description`` opens with a character block that a blank
line ends; a character line may end with ``(photo: tom.png)``. Every later non-blank line is a frame,
``prompt #caption``; a ``(seed: 7)`` tag in the prompt gives that frame its own noise seed.
"""

from __future__ import annotations

import re

from storyadapter.story.raw import MAX_FRAMES, MAX_LINE_CHARS, RawCharacter, RawFrame, RawStory, StoryError, parse_seed

_CHAR_START = re.compile(r"\[(?!NC\])[^\[\]]+\]\s")  # "[Name] " opens a StoryDiffusion file
_CHAR_LINE = re.compile(r"\[([^\[\]]*)\](.*)")
_SEED_TAG = re.compile(r"\(\s*seed\s*:([^()]*)\)", re.IGNORECASE)  # "(seed: 7)" in a frame's prompt
_PHOTO_SUFFIX = re.compile(r"\s*\(photo:\s*([^()]*?)\s*\)\s*$")  # "... (photo: tom.png)" ends a character line


def parse_txt(text: str, src: str) -> RawStory:
    lines = [ln.rstrip("\r") for ln in text.split("\n")]
    for no, ln in enumerate(lines, 1):
        if len(ln) > MAX_LINE_CHARS:
            raise StoryError(src, no, f"line too long ({len(ln)} characters; limit {MAX_LINE_CHARS})")

    first = next(i for i, ln in enumerate(lines) if ln.strip())
    blank = next((i for i in range(first, len(lines)) if not lines[i].strip()), None)
    chars: list[RawCharacter] = []
    body = first
    if blank is not None and _CHAR_START.match(lines[first].strip()):
        for i in range(first, blank):
            m = _CHAR_LINE.fullmatch(lines[i].strip())
            if m is None:
                raise StoryError(
                    src, i + 1, "expected '[Name] description' in the character block (a blank line ends it)"
                )
            description, image = m.group(2), None
            photo = _PHOTO_SUFFIX.search(description)
            if photo is not None:
                description, image = description[: photo.start()], photo.group(1)
                if not image:
                    raise StoryError(src, i + 1, "empty photo path in '(photo: ...)'")
            chars.append(RawCharacter(m.group(1), description, i + 1, image))
        body = blank

    frames: list[RawFrame] = []
    for i in range(body, len(lines)):
        ln = lines[i].strip()
        if ln:
            prompt, _, caption = ln.partition("#")
            prompt, seed = _seed(prompt, src, i + 1)
            frames.append(RawFrame(prompt, caption, i + 1, seed))
            if len(frames) > MAX_FRAMES:
                raise StoryError(src, i + 1, f"too many frames (limit {MAX_FRAMES})")
    if not frames:
        raise StoryError(
            src, body + 1, "no frames after the character block (a blank line separates '[Name] description' lines from frames)"
        )
    return RawStory(None, 1, None, 1, chars, frames)


def _seed(prompt: str, src: str, line: int) -> tuple[str, int | None]:
    """The prompt without its `(seed: N)` tag, and N (None without a tag)."""
    tags = list(_SEED_TAG.finditer(prompt))
    if not tags:
        return prompt, None
    if len(tags) > 1:
        raise StoryError(src, line, "more than one '(seed: N)' tag in one frame")
    tag = tags[0]
    return prompt[: tag.start()] + prompt[tag.end() :], parse_seed(tag.group(1), src, line)

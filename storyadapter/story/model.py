"""What a story is once read: its frames (tags expanded, lines kept), characters, style and source digest."""

from __future__ import annotations

from dataclasses import dataclass, field

from storyadapter.story.photos import CharacterPhoto
from storyadapter.story.styles import get_style


@dataclass(frozen=True)
class Frame:
    index: int
    prompt: str  # character tags expanded, no style applied
    caption: str  # "" if none
    characters: tuple[str, ...]  # in order of first appearance
    line: int  # 1-based line in the source file
    seed: int | None = None  # the frame's own noise seed (story file), used whatever render.seed_policy says


@dataclass(frozen=True)
class Story:
    title: str
    style: str  # canonical style name
    characters: dict[str, str] = field(hash=False)  # name -> description, in definition order
    frames: tuple[Frame, ...]
    source: str
    digest: str  # sha256 hex of the file bytes
    photos: dict[str, CharacterPhoto] = field(default_factory=dict, hash=False)  # name -> reference photo

    def photo_names(self) -> tuple[str, ...]:
        return tuple(self.photos)

    def styled(self, frame: Frame) -> tuple[str, str]:
        """(prompt, negative_prompt) for a frame after this story's style template."""
        return get_style(self.style).apply(frame.prompt)


def describe(story: Story) -> str:
    """One-line summary, e.g. 'The Night Garden: 5 frames, 2 characters, style Comic book'."""

    def count(n: int, word: str) -> str:
        return f"{n} {word}" + ("" if n == 1 else "s")

    frames, chars = count(len(story.frames), "frame"), count(len(story.characters), "character")
    return f"{story.title}: {frames}, {chars}, style {story.style}"

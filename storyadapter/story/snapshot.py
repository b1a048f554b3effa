"""What a render was made from, as plain data (the run folder keeps it as story.json), and what an edit changed.

A snapshot holds what decides a frame's pixels or lettering: each frame's prompt (tags expanded), caption,
characters and own seed; each character's description and photo digest; the style. Comparing the snapshot of
a render with that of an edited story file says which frames an edit must render again:

* a frame whose prompt, characters or seed changed;
* every frame naming a character whose description or photo changed;
* a caption is lettering only: no frame is rendered for it.

Frames are numbered from 0, as in the file names (`frame_0003.png` is frame 3).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .model import Story

VERSION = 1
_FRAME_PIXEL_FIELDS = ("prompt", "characters", "seed")


def snapshot(story: Story) -> dict:
    return {
        "version": VERSION,
        "digest": story.digest,
        "title": story.title,
        "style": story.style,
        "characters": {
            name: {"description": description,
                   "photo": story.photos[name].sha256 if name in story.photos else None}
            for name, description in story.characters.items()
        },
        "frames": [
            {"prompt": f.prompt, "caption": f.caption, "characters": list(f.characters), "seed": f.seed}
            for f in story.frames
        ],
    }


@dataclass(frozen=True)
class StoryChanges:
    frames: dict[int, tuple[str, ...]] = field(default_factory=dict)  # frame -> its changed fields
    characters: dict[str, tuple[str, ...]] = field(default_factory=dict)  # name -> description, photo, added, removed
    style: tuple[str, str] | None = None  # (old, new)
    frame_count: tuple[int, int] | None = None  # (old, new) when frames were inserted or removed

    def __bool__(self) -> bool:
        return bool(self.frames or self.characters or self.style or self.frame_count)

    def to_render(self, new: dict) -> list[int]:
        """Frames whose pixels the change touches: their own prompt, characters or seed, or a changed character."""
        touched = {name for name, fields in self.characters.items() if {"description", "photo"} & set(fields)}
        out = {i for i, fields in self.frames.items() if set(fields) & set(_FRAME_PIXEL_FIELDS)}
        out |= {i for i, f in enumerate(new["frames"]) if touched & set(f["characters"])}
        return sorted(out)

    def describe(self) -> str:
        """e.g. 'frames 3 and 7: prompt; frame 5: caption; Lisa: description'."""
        parts = []
        if self.style:
            parts.append(f"style: {self.style[0]!r} -> {self.style[1]!r}")
        if self.frame_count:
            parts.append(f"{self.frame_count[0]} -> {self.frame_count[1]} frames")
        by_fields: dict[tuple[str, ...], list[int]] = {}
        for i, fields in sorted(self.frames.items()):
            by_fields.setdefault(fields, []).append(i)
        for fields, frames in by_fields.items():
            parts.append(f"{_frames(frames)}: {', '.join(fields)}")
        parts += [f"{name}: {', '.join(fields)}" for name, fields in self.characters.items()]
        return "; ".join(parts)


def compare(old: dict, new: dict) -> StoryChanges:
    """What changed from snapshot `old` to snapshot `new`. A prompt that differs only by a changed character's
    description, which tag expansion spliced in, is not listed as a prompt change: the character's is."""
    characters: dict[str, tuple[str, ...]] = {}
    for name in {**old["characters"], **new["characters"]}:
        a, b = old["characters"].get(name), new["characters"].get(name)
        if a is None or b is None:
            characters[name] = ("added",) if a is None else ("removed",)
        else:
            fields = tuple(k for k in ("description", "photo") if a[k] != b[k])
            if fields:
                characters[name] = fields
    frames: dict[int, tuple[str, ...]] = {}
    for i, (a, b) in enumerate(zip(old["frames"], new["frames"])):
        fields = tuple(k for k in ("prompt", "caption", "characters", "seed") if a[k] != b[k])
        if "prompt" in fields and _only_descriptions(a, b, old, new):
            fields = tuple(k for k in fields if k != "prompt")
        if fields:
            frames[i] = fields
    count = (len(old["frames"]), len(new["frames"]))
    return StoryChanges(
        frames=frames,
        characters=characters,
        style=(old["style"], new["style"]) if old["style"] != new["style"] else None,
        frame_count=count if count[0] != count[1] else None,
    )


def _only_descriptions(a: dict, b: dict, old: dict, new: dict) -> bool:
    if a["characters"] != b["characters"]:
        return False
    prompt = a["prompt"]
    for name in a["characters"]:
        was, now = old["characters"].get(name), new["characters"].get(name)
        if was and now and was["description"] != now["description"]:
            prompt = prompt.replace(_spliced(name, was["description"]), _spliced(name, now["description"]), 1)
    return prompt == b["prompt"]


def _spliced(name: str, description: str) -> str:
    return f"{name}, {description.rstrip(' .;,')}"  # as parse.py expands the first [Name] of a frame


def _frames(frames: list[int]) -> str:
    if len(frames) == 1:
        return f"frame {frames[0]}"
    shown = [str(i) for i in frames[:6]] + ([f"{len(frames) - 6} more"] if len(frames) > 6 else [])
    return f"frames {', '.join(shown[:-1])} and {shown[-1]}"

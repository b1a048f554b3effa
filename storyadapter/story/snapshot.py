"""What a render was made from, as plain data (the run folder keeps it as story.json), and what an edit changed.

A snapshot holds what decides a frame's pixels or lettering: each frame's prompt (tags expanded), caption,
characters and own seed; each character's description and photo digest; the style. Comparing the snapshot of
a render with that of an edited story file says which frames an edit must render again:

* a frame whose prompt, characters or seed changed;
* every frame naming a character whose description or photo changed;
* a caption is lettering only: no frame is rendered for it;
* an inserted frame (frames are matched by content, so the frames after it are not changed by its arrival).

Frames are numbered from 0, by their place in the story.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

from .model import Story

VERSION = 1
_FRAME_PIXEL_FIELDS = ("prompt", "characters", "seed")
_MOST_ALIKE_CELLS = 10_000  # prompt comparisons one changed run may cost (about a second)


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
    """Frames are matched by content, not place: `matched[i]` is the recorded frame that frame i of the new story
    continues (None: inserted), so a frame inserted at 5 is one new frame, not a prompt change of every later one."""

    frames: dict[int, tuple[str, ...]] = field(default_factory=dict)  # new frame -> its changed fields
    characters: dict[str, tuple[str, ...]] = field(default_factory=dict)  # name -> description, photo, added, removed
    style: tuple[str, str] | None = None  # (old, new)
    matched: tuple[int | None, ...] = ()  # per new frame: the recorded frame it continues, None when inserted
    removed: tuple[int, ...] = ()  # recorded frames the new story no longer has

    @property
    def inserted(self) -> list[int]:
        return [i for i, old in enumerate(self.matched) if old is None]

    def __bool__(self) -> bool:
        return bool(self.frames or self.characters or self.style or self.removed or self.inserted)

    def to_render(self, new: dict) -> list[int]:
        """New frames whose pixels the change touches: inserted ones, their own prompt, characters or seed, or a
        changed character."""
        touched = {name for name, fields in self.characters.items() if {"description", "photo"} & set(fields)}
        out = {i for i, fields in self.frames.items() if set(fields) & set(_FRAME_PIXEL_FIELDS)}
        out |= {i for i, f in enumerate(new["frames"]) if touched & set(f["characters"])}
        return sorted(out | set(self.inserted))

    def describe(self) -> str:
        """e.g. 'frames 3 and 7: prompt; frame 5: caption; frame 9 inserted; frame 2 removed; Lisa: description'.
        Frames are numbered as in the new story, removed ones as in the recorded one."""
        parts = []
        if self.style:
            parts.append(f"style: {self.style[0]!r} -> {self.style[1]!r}")
        by_fields: dict[tuple[str, ...], list[int]] = {}
        for i, fields in sorted(self.frames.items()):
            by_fields.setdefault(fields, []).append(i)
        for fields, frames in by_fields.items():
            parts.append(f"{_frames(frames)}: {', '.join(fields)}")
        if self.inserted:
            parts.append(f"{_frames(self.inserted)} inserted")
        if self.removed:
            parts.append(f"{_frames(list(self.removed))} of the render removed")
        parts += [f"{name}: {', '.join(fields)}" for name, fields in self.characters.items()]
        return "; ".join(parts)


def compare(old: dict, new: dict) -> StoryChanges:
    """What changed from snapshot `old` to snapshot `new`. Frames are aligned as difflib aligns lines, on what
    decides their pixels (prompt, characters, seed); inside a run of changed frames, frames pair up in order (the
    most alike prompts when the run also gained or lost frames) and the others are inserted or removed. A prompt that differs only by a changed character's
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
    matched = _align(old, new)
    frames: dict[int, tuple[str, ...]] = {}
    for i, j in enumerate(matched):
        if j is None:
            continue
        a, b = old["frames"][j], new["frames"][i]
        fields = tuple(k for k in ("prompt", "caption", "characters", "seed") if a[k] != b[k])
        if "prompt" in fields and _only_descriptions(a, b, old, new):
            fields = tuple(k for k in fields if k != "prompt")
        if fields:
            frames[i] = fields
    kept = set(matched)
    return StoryChanges(
        frames=frames,
        characters=characters,
        style=(old["style"], new["style"]) if old["style"] != new["style"] else None,
        matched=tuple(matched),
        removed=tuple(j for j in range(len(old["frames"])) if j not in kept),
    )


def _align(old: dict, new: dict) -> list[int | None]:
    """Per new frame, the old frame it continues or None. A changed description does not unmatch the frames that
    name the character: old prompts are compared with the new description spliced in."""
    def key(frame: dict, prompt: str) -> tuple:
        return prompt, tuple(frame["characters"]), frame["seed"]

    a = [key(f, _respliced(f, old, new)) for f in old["frames"]]
    b = [key(f, f["prompt"]) for f in new["frames"]]
    matched: list[int | None] = [None] * len(b)
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag == "equal" or (tag == "replace" and i2 - i1 == j2 - j1):  # a replaced run of the same length: edits
            pairs = [(k, k) for k in range(i2 - i1)]
        elif tag == "replace" and (i2 - i1) * (j2 - j1) <= _MOST_ALIKE_CELLS:  # edited, inserted and removed at once
            pairs = _most_alike([p for p, _, _ in a[i1:i2]], [p for p, _, _ in b[j1:j2]])
        elif tag == "replace":  # a story rewritten at length: in order, rather than seconds of comparing
            pairs = [(k, k) for k in range(min(i2 - i1, j2 - j1))]
        else:
            pairs = []
        for i, j in pairs:
            matched[j1 + j] = i1 + i
    return matched


def _most_alike(old: list[str], new: list[str]) -> list[tuple[int, int]]:
    """Pairs (old, new) in order that maximise the summed similarity of the prompts (difflib's ratio)."""
    def ratio(i: int, j: int) -> float:
        return difflib.SequenceMatcher(None, old[i], new[j]).ratio()

    n, m = len(old), len(new)
    best = [[0.0] * (m + 1) for _ in range(n + 1)]
    for i in range(n - 1, -1, -1):
        for j in range(m - 1, -1, -1):
            best[i][j] = max(best[i + 1][j], best[i][j + 1], best[i + 1][j + 1] + ratio(i, j))
    pairs, i, j = [], 0, 0
    while i < n and j < m:
        if best[i][j] == best[i + 1][j + 1] + ratio(i, j):
            pairs.append((i, j))
            i, j = i + 1, j + 1
        elif best[i][j] == best[i + 1][j]:
            i += 1
        else:
            j += 1
    return pairs


def _only_descriptions(a: dict, b: dict, old: dict, new: dict) -> bool:
    return a["characters"] == b["characters"] and _respliced(a, old, new) == b["prompt"]


def _respliced(frame: dict, old: dict, new: dict) -> str:
    """An old frame's prompt with each of its characters' changed description replaced by the new one."""
    prompt = frame["prompt"]
    for name in frame["characters"]:
        was, now = old["characters"].get(name), new["characters"].get(name)
        if was and now and was["description"] != now["description"]:
            prompt = prompt.replace(_spliced(name, was["description"]), _spliced(name, now["description"]), 1)
    return prompt


def _spliced(name: str, description: str) -> str:
    return f"{name}, {description.rstrip(' .;,')}"  # as parse.py expands the first [Name] of a frame


def _frames(frames: list[int]) -> str:
    if len(frames) == 1:
        return f"frame {frames[0]}"
    shown = [str(i) for i in frames[:6]] + ([f"{len(frames) - 6} more"] if len(frames) > 6 else [])
    return f"frames {', '.join(shown[:-1])} and {shown[-1]}"

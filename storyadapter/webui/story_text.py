"""A story file's frames and characters as the user wrote them, and the same file with one frame or one
character's description rewritten (the web UI's edits).

Frames are numbered from 0, as in `frame_0003.png`, the gallery and `edit=true`'s messages. A .txt frame is one
line, `prompt (seed: N) #caption`, and a character one line, `[Name] description (photo: x.png)`; each is rewritten
in place and every other line stays byte for byte. A YAML or JSON story is read as data and written back with that
frame as a `{prompt, caption, seed}` mapping or that character's description replaced (comments are lost).
"""

from __future__ import annotations

import json
import re

import yaml

from ..errors import UserError
from ..story.json_nodes import json_tree
from ..story.raw import RawStory
from ..story.tree_format import read_tree, yaml_tree
from ..story.txt_format import parse_txt


_TAG = re.compile(r"\[([^\[\]]+)\]")


def raw_story(text: str, story_format: str, src: str = "story") -> RawStory:
    """The story as written: prompts with their [Name] tags, captions, own seeds, characters. StoryError if malformed."""
    if story_format == "txt":
        return parse_txt(text, src)
    tree = json_tree(text, src) if story_format == "json" else yaml_tree(text, src)
    return read_tree(tree, src)


def tagged(prompt: str) -> list[str]:
    """The characters a prompt as written names, in order, once each."""
    return list(dict.fromkeys(name.strip() for name in _TAG.findall(prompt) if name.strip() != "NC"))


def with_frame(text: str, story_format: str, index: int, prompt: str, caption: str, seed: int | None) -> str:
    """`text` with frame `index` replaced. Checks only what this rewrite needs; load_story checks the rest."""
    if not prompt.strip():
        raise UserError("request.prompt: empty prompt")
    for name, value in (("prompt", prompt), ("caption", caption)):
        if not value.isprintable():
            raise UserError(f"request.{name}: expected one line of printable text")
    frames = raw_story(text, story_format).frames
    if not 0 <= index < len(frames):
        raise UserError(f"request.frame: the story's frames are 0 to {len(frames) - 1}, got {index}")
    if story_format == "txt":
        if "#" in prompt:
            raise UserError("request.prompt: '#' starts the caption in a .txt story; put the caption in its own field")
        line = prompt.strip() + (f" (seed: {seed})" if seed is not None else "") + (f" #{caption.strip()}" if caption.strip() else "")
        lines = text.split("\n")
        old = lines[frames[index].line - 1]
        lines[frames[index].line - 1] = line + ("\r" if old.endswith("\r") else "")
        return "\n".join(lines)
    data = json.loads(text) if story_format == "json" else yaml.safe_load(text)
    entry = {"prompt": prompt.strip()}
    if caption.strip():
        entry["caption"] = caption.strip()
    if seed is not None:
        entry["seed"] = seed
    data["frames"][index] = entry
    if story_format == "json":
        return json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=10_000)


def with_character(text: str, story_format: str, name: str, description: str) -> str:
    """`text` with character `name`'s description replaced (its photo stays)."""
    if not description.strip() or not description.isprintable() or "[" in description or "]" in description:
        raise UserError(f"request.characters.{name}: expected one line of text without '[' or ']'")
    found = next((c for c in raw_story(text, story_format).characters if c.name.strip() == name), None)
    if found is None:
        raise UserError(f"request.characters.{name}: the story has no character {name!r}")
    if story_format == "txt":
        lines = text.split("\n")
        old = lines[found.line - 1]
        photo = f" (photo: {found.image})" if found.image else ""
        lines[found.line - 1] = f"[{found.name}] {description.strip()}{photo}" + ("\r" if old.endswith("\r") else "")
        return "\n".join(lines)
    data = json.loads(text) if story_format == "json" else yaml.safe_load(text)
    key = next(k for k in data["characters"] if str(k).strip() == name)
    if isinstance(data["characters"][key], dict):
        data["characters"][key]["description"] = description.strip()
    else:
        data["characters"][key] = description.strip()
    if story_format == "json":
        return json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=10_000)

"""Story input: read a story file into a `Story` of frames, or fail with one `path:line: what` line.

Formats (chosen by extension; each has its own module):

* ``.txt`` plain: one frame per non-blank line, ``prompt #caption`` (the caption is optional).
* ``.txt`` StoryDiffusion form: the first non-blank line looks like ``[Name] description`` and a
  blank line ends that character block; every later non-blank line is a frame. A character line may end
  with ``(photo: tom.png)``: that character's reference photo, relative to the story file. ``[Name]`` tags in
  frames refer to characters, a leading ``[NC]`` marks a frame with no character, and ``#caption``
  works as in the plain form (txt_format.py).
* ``.yaml``/``.yml``/``.json``: a mapping with keys ``title``, ``style``, ``characters``
  (name: description, or name: ``{description: ..., image: tom.png}`` with a reference photo relative
  to the story file) and ``frames`` (a list of ``{prompt, caption, seed}`` mappings or plain strings).
* A frame's own ``seed`` (``(seed: 7)`` in a ``.txt`` frame) fixes its noise whatever ``render.seed`` and
  ``render.seed_policy`` say: "reroll frame 77" is a one-line change to the story.
  ``[Name]`` tags are expanded the same way; ``#`` is an ordinary character there (tree_format.py, json_nodes.py).

This module reads the bytes, hands the text to the format's parser, then checks what all formats share
(names, control characters, photos) and expands the tags.

Tag expansion: StoryDiffusion replaces ``[Name]`` by the character's description. We keep the
name too, so the text encoder and a reader both see who is who: the first ``[Ana]`` of a frame
becomes ``Ana, <description without its final full stop>`` (followed by a comma when the sentence
goes on), and later ``[Ana]`` tags in the same frame become just ``Ana`` so that repeated mentions
do not spend the 77-token CLIP budget twice. Example::

    [Ana] chops vegetables   ->   Ana, A tall chef with curly red hair, wearing a white apron, chops vegetables

Case is kept as written: the CLIP tokenizers lowercase anyway.
"""

from __future__ import annotations

import codecs
import hashlib
import os
import re
import stat
import unicodedata
from pathlib import Path

from storyadapter.errors import UserError
from storyadapter.story.json_nodes import json_tree
from storyadapter.story.model import Frame, Story
from storyadapter.story.photos import CharacterPhoto, load_photo
from storyadapter.story.raw import RawCharacter, RawFrame, StoryError
from storyadapter.story.styles import get_style
from storyadapter.story.tree_format import read_tree, yaml_tree
from storyadapter.story.txt_format import parse_txt

MAX_FILE_BYTES = 8 * 1024 * 1024
NO_CHARACTER = "NC"


def load_story(path: str | os.PathLike[str], style: str | None = None, title_override: str | None = None) -> Story:
    """Read a story file. `style` overrides the file's style (default "(No style)"), `title_override` its title
    (default: the file's `title`, else the file name without extension).

    Raises StoryError for anything wrong with the file, UserError for an unknown `style` argument.
    """
    src = str(path)
    data = _read(Path(path), src)
    ext = Path(path).suffix.lower()
    # Checked before decoding so that e.g. a .png passed by mistake is named as a wrong format.
    if ext not in (".txt", ".yaml", ".yml", ".json"):
        raise StoryError(src, 1, f"unknown story format {ext or '(no extension)'!r}; use .txt, .yaml, .yml or .json")
    text = _decode(data, src)
    if ext == ".txt":
        parsed = parse_txt(text, src)
    elif ext == ".json":
        parsed = read_tree(json_tree(text, src), src)
    else:
        parsed = read_tree(yaml_tree(text, src), src)

    if style is not None:
        style_name = get_style(style).name  # not the file's fault, so a plain UserError
    else:
        try:
            style_name = get_style(parsed.style).name
        except UserError as e:
            raise StoryError(src, parsed.style_line, str(e)) from None

    characters = _characters(parsed.characters, src)
    photos = _photos(parsed.characters, src)
    if not parsed.frames:
        raise StoryError(src, 1, "no frames")
    frames = tuple(_frame(i, spec, characters, src) for i, spec in enumerate(parsed.frames))
    title = _one_line(parsed.title or "", "the title", src, parsed.title_line) or Path(path).stem
    if title_override is not None:
        title = " ".join(title_override.split())
        if not title or any(unicodedata.category(c) == "Cc" for c in title):
            raise UserError(f"story.title={title_override!r}: expected one line of printable text")
    return Story(
        title=title,
        style=style_name,
        characters=characters,
        frames=frames,
        source=src,
        digest=hashlib.sha256(data).hexdigest(),
        photos=photos,
    )


def _read(p: Path, src: str) -> bytes:
    try:
        st = p.stat()
        if stat.S_ISDIR(st.st_mode):
            raise StoryError(src, 1, "is a directory, not a story file")
        if not stat.S_ISREG(st.st_mode):
            raise StoryError(src, 1, "not a regular file")
        if st.st_size > MAX_FILE_BYTES:
            raise StoryError(src, 1, f"file too large ({st.st_size} bytes; limit {MAX_FILE_BYTES} = 8 MiB)")
        with open(p, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)  # bounded: the file may grow after stat
    except FileNotFoundError:
        raise StoryError(src, 1, "no such file") from None
    except OSError as e:
        raise StoryError(src, 1, f"cannot read file: {e.strerror or e}") from None
    if len(data) > MAX_FILE_BYTES:
        raise StoryError(src, 1, f"file too large (over {MAX_FILE_BYTES} bytes = 8 MiB)")
    return data


def _decode(data: bytes, src: str) -> str:
    nul = data.find(b"\0")
    if nul >= 0:  # also catches UTF-16, whose ASCII half is NUL bytes
        line = data.count(b"\n", 0, nul) + 1
        raise StoryError(src, line, "binary content (NUL byte); a story must be UTF-8 text")
    if data.startswith(codecs.BOM_UTF8):  # editors on Windows add it; it is not part of the text
        data = data[len(codecs.BOM_UTF8) :]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise StoryError(src, line, f"not valid UTF-8 (byte 0x{data[e.start]:02x}); save the story as UTF-8") from None
    if not text.strip():
        raise StoryError(src, 1, "empty story file")
    return text


# ----------------------------------------------------------------------------- shared checks

_TAG = re.compile(r"\[([^\[\]]*)\]")
_NC = re.compile(r"\[\s*NC\s*\]")


def _one_line(text: str, what: str, src: str, line: int) -> str:
    """Collapse whitespace (YAML block scalars, tabs) and refuse control characters.

    Prompts, captions and titles end up in filenames, HTML and the parquet manifest as one line;
    an escape sequence or bell smuggled in through a quoted YAML/JSON string has no business there.
    """
    flat = " ".join(text.split())
    bad = next((c for c in flat if unicodedata.category(c) == "Cc"), None)
    if bad is not None:
        raise StoryError(src, line, f"control character U+{ord(bad):04X} in {what}")
    return flat


def _characters(chars: list[RawCharacter], src: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for raw, desc, line, _ in chars:
        name = _one_line(raw, "a character name", src, line)
        if not name:
            raise StoryError(src, line, "empty character name")
        if any(c in name for c in "[]#"):
            raise StoryError(src, line, f"invalid character name {name!r}; write names without '[', ']' or '#'")
        if name == NO_CHARACTER:
            raise StoryError(src, line, "'NC' is reserved for frames without characters")
        if name in out:
            raise StoryError(src, line, f"character {name!r} is defined twice")
        description = _one_line(desc, f"the description of {name!r}", src, line)
        if not description:
            raise StoryError(src, line, f"character {name!r} has no description")
        if "[" in description or "]" in description:
            raise StoryError(src, line, f"the description of {name!r} cannot contain '[' or ']'")
        out[name] = description
    return out


def _photos(chars: list[RawCharacter], src: str) -> dict[str, CharacterPhoto]:
    """Read and check every character photo now: a bad one fails the story before any worker starts."""
    out: dict[str, CharacterPhoto] = {}
    for raw, _, line, image in chars:
        if image is not None:
            name = " ".join(raw.split())  # as _characters normalised it
            out[name] = load_photo(image, src, line, name)
    return out


def _frame(index: int, spec: RawFrame, chars: dict[str, str], src: str) -> Frame:
    line = spec.line
    text = _one_line(spec.text, "the prompt", src, line)  # control characters first: '\x1b[' is no tag
    nc = _NC.match(text)
    no_character = nc is not None
    if nc:
        text = text[nc.end() :]

    def check_stray(segment: str) -> None:
        if "[" in segment:
            raise StoryError(src, line, "unclosed '[' (character tags look like [Name])")
        if "]" in segment:
            raise StoryError(src, line, "unmatched ']' (character tags look like [Name])")

    parts: list[str] = []
    names: list[str] = []
    pos = 0
    for m in _TAG.finditer(text):
        check_stray(text[pos : m.start()])
        parts.append(text[pos : m.start()])
        name = " ".join(m.group(1).split())  # same normalisation as the definitions
        if not name:
            raise StoryError(src, line, "empty character tag []")
        if name == NO_CHARACTER:
            raise StoryError(src, line, "[NC] must come first on its line")
        if name not in chars:
            known = ", ".join(chars) if chars else "none defined; define them as '[Name] description' lines"
            raise StoryError(src, line, f"undefined character [{name}] (characters: {known})")
        if name in names:
            parts.append(name)
        else:
            names.append(name)
            rest = text[m.end() :].lstrip()
            # Splice the description in as an appositive; a comma only if the sentence goes on.
            comma = "," if rest and rest[0] not in ",.;:!?)" else ""
            parts.append(f"{name}, {chars[name].rstrip(' .;,')}{comma}")
        pos = m.end()
    check_stray(text[pos:])
    parts.append(text[pos:])

    if no_character and names:
        raise StoryError(src, line, "an [NC] frame cannot tag characters")
    prompt = _one_line("".join(parts), "the prompt", src, line)
    if not prompt:
        raise StoryError(src, line, "empty prompt")
    caption = _one_line(spec.caption, "the caption", src, line)
    return Frame(index=index, prompt=prompt, caption=caption, characters=tuple(names), line=line, seed=spec.seed)

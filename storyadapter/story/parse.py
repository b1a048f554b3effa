"""Story input: read a story file into a `Story` of frames, or fail with one `path:line: what` line.

Formats (chosen by extension):

* ``.txt`` plain: one frame per non-blank line, ``prompt #caption`` (the caption is optional).
* ``.txt`` StoryDiffusion form: the first non-blank line looks like ``[Name] description`` and a
  blank line ends that character block; every later non-blank line is a frame. A character line may end
  with ``(photo: tom.png)``: that character's reference photo, relative to the story file. ``[Name]`` tags in
  frames refer to characters, a leading ``[NC]`` marks a frame with no character, and ``#caption``
  works as in the plain form.
* ``.yaml``/``.yml``/``.json``: a mapping with keys ``title``, ``style``, ``characters``
  (name: description, or name: ``{description: ..., image: tom.png}`` with a reference photo relative
  to the story file) and ``frames`` (a list of ``{prompt, caption}`` mappings or plain strings).
  ``[Name]`` tags are expanded the same way; ``#`` is an ordinary character there.

Tag expansion: StoryDiffusion replaces ``[Name]`` by the character's description. We keep the
name too, so the text encoder and a reader both see who is who: the first ``[Ana]`` of a frame
becomes ``Ana, <description without its final full stop>`` (followed by a comma when the sentence
goes on), and later ``[Ana]`` tags in the same frame become just ``Ana`` so that repeated mentions
do not spend the 77-token CLIP budget twice. Example::

    [Ana] chops vegetables   ->   Ana, A tall chef with curly red hair, wearing a white apron, chops vegetables

Case is kept as written: the CLIP tokenizers lowercase anyway.
"""

from __future__ import annotations

import bisect
import codecs
import hashlib
import json
import json.decoder
import json.scanner
import os
import re
import stat
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import NamedTuple

import yaml

from storyadapter.errors import UserError
from storyadapter.story.photos import CharacterPhoto, load_photo
from storyadapter.story.styles import get_style

MAX_FILE_BYTES = 8 * 1024 * 1024
MAX_LINE_CHARS = 4000  # per .txt line, and per string value in YAML/JSON
MAX_FRAMES = 10_000
MAX_NESTING = 32  # the schema needs 3 levels; anything deeper is a mistake or an attack
NO_CHARACTER = "NC"
_KEYS = ("title", "style", "characters", "frames")
_FRAME_KEYS = ("prompt", "caption")
_CHARACTER_KEYS = ("description", "image")


class StoryError(UserError):
    """A malformed story file; the message is always ``{path}:{line}: {what}``."""

    def __init__(self, path: str, line: int, what: str):
        super().__init__(f"{path}:{line}: {what}")


@dataclass(frozen=True)
class Frame:
    index: int
    prompt: str  # character tags expanded, no style applied
    caption: str  # "" if none
    characters: tuple[str, ...]  # in order of first appearance
    line: int  # 1-based line in the source file


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

    @property
    def slug(self) -> str:
        """The title as a safe file/directory name: [A-Za-z0-9_-], 1 to 64 characters."""
        # NFKD + ascii drops accents ("Café" -> "Cafe") instead of losing the whole letter.
        plain = unicodedata.normalize("NFKD", self.title).encode("ascii", "ignore").decode()
        slug = re.sub(r"[^A-Za-z0-9_-]+", "_", plain).strip("_-")[:64].strip("_-")
        # A leading '-' would read as an option to command-line tools, hence the strip above.
        return slug or (f"story-{self.digest[:12]}" if self.digest else "story")

    def styled(self, frame: Frame) -> tuple[str, str]:
        """(prompt, negative_prompt) for a frame after this story's style template."""
        return get_style(self.style).apply(frame.prompt)


def describe(story: Story) -> str:
    """One-line summary, e.g. 'The Night Garden: 5 frames, 2 characters, style Comic book'."""

    def count(n: int, word: str) -> str:
        return f"{n} {word}" + ("" if n == 1 else "s")

    frames, chars = count(len(story.frames), "frame"), count(len(story.characters), "character")
    return f"{story.title}: {frames}, {chars}, style {story.style}"


# ----------------------------------------------------------------------------- loading


class _Char(NamedTuple):
    name: str
    description: str
    line: int
    image: str | None = None  # photo path as written


class _FrameSpec(NamedTuple):
    text: str  # prompt with tags still in it
    caption: str
    line: int


class _Parsed(NamedTuple):
    title: str | None
    title_line: int
    style: str | None
    style_line: int
    characters: list[_Char]
    frames: list[_FrameSpec]


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
        parsed = _parse_txt(text, src)
    elif ext == ".json":
        parsed = _parse_tree(_json_tree(text, src), src)
    else:
        parsed = _parse_tree(_yaml_tree(text, src), src)

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


# ----------------------------------------------------------------------------- .txt

_CHAR_START = re.compile(r"\[(?!NC\])[^\[\]]+\]\s")  # "[Name] " opens a StoryDiffusion file
_CHAR_LINE = re.compile(r"\[([^\[\]]*)\](.*)")
_PHOTO_SUFFIX = re.compile(r"\s*\(photo:\s*([^()]*?)\s*\)\s*$")  # "... (photo: tom.png)" ends a character line


def _parse_txt(text: str, src: str) -> _Parsed:
    lines = [ln.rstrip("\r") for ln in text.split("\n")]
    for no, ln in enumerate(lines, 1):
        if len(ln) > MAX_LINE_CHARS:
            raise StoryError(src, no, f"line too long ({len(ln)} characters; limit {MAX_LINE_CHARS})")

    first = next(i for i, ln in enumerate(lines) if ln.strip())
    blank = next((i for i in range(first, len(lines)) if not lines[i].strip()), None)
    chars: list[_Char] = []
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
            chars.append(_Char(m.group(1), description, i + 1, image))
        body = blank

    frames: list[_FrameSpec] = []
    for i in range(body, len(lines)):
        ln = lines[i].strip()
        if ln:
            prompt, _, caption = ln.partition("#")
            frames.append(_FrameSpec(prompt, caption, i + 1))
            if len(frames) > MAX_FRAMES:
                raise StoryError(src, i + 1, f"too many frames (limit {MAX_FRAMES})")
    if not frames:
        raise StoryError(
            src, body + 1, "no frames after the character block (a blank line separates '[Name] description' lines from frames)"
        )
    return _Parsed(None, 1, None, 1, chars, frames)


# ----------------------------------------------------------------------------- YAML / JSON
# Both are turned into yaml node trees (which carry line marks) and read by one schema walker.

_Y = "tag:yaml.org,2002:"
_STR, _SEQ, _MAP = _Y + "str", _Y + "seq", _Y + "map"
# Explicit tags we accept; anything else (!!python/object..., !!binary, custom !tags) is refused.
_SAFE_TAGS = {None, "!"} | {_Y + t for t in ("str", "int", "float", "bool", "null", "seq", "map")}
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _yaml_tree(text: str, src: str) -> yaml.Node | None:
    try:
        # First pass over events, before any node exists: refuse aliases (billion laughs),
        # object-constructing tags and absurd nesting while it is still cheap to do so.
        depth = docs = 0
        for ev in yaml.parse(text, Loader=_LOADER):
            line = ev.start_mark.line + 1
            if isinstance(ev, yaml.AliasEvent) or getattr(ev, "anchor", None):
                raise StoryError(src, line, "YAML anchors and aliases (&name / *name) are not supported")
            tag = getattr(ev, "tag", None)
            if tag not in _SAFE_TAGS:
                shown = "!!" + tag[len(_Y) :] if tag.startswith(_Y) else tag
                raise StoryError(src, line, f"YAML tag {shown} is not allowed; use plain strings, lists and mappings")
            if isinstance(ev, yaml.DocumentStartEvent):
                docs += 1
                if docs > 1:
                    raise StoryError(src, line, "more than one YAML document; a story is a single document")
            elif isinstance(ev, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_NESTING:
                    raise StoryError(src, line, f"YAML nested too deeply (limit {MAX_NESTING})")
            elif isinstance(ev, yaml.CollectionEndEvent):
                depth -= 1
        # compose() builds nodes only (with line marks); no Python objects are constructed.
        return yaml.compose(text, Loader=_LOADER)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        what = e.problem or e.context or "syntax error"
        if e.context and e.problem:
            what = f"{e.problem} ({e.context})"
        raise StoryError(src, mark.line + 1 if mark else 1, f"invalid YAML: {what}") from None
    except yaml.reader.ReaderError as e:
        line = text.count("\n", 0, max(e.position, 0)) + 1
        char = e.character if isinstance(e.character, int) else ord(str(e.character)[:1] or "\0")
        raise StoryError(src, line, f"invalid YAML: character U+{char:04X} is not allowed") from None
    except yaml.YAMLError as e:
        raise StoryError(src, 1, f"invalid YAML: {e}") from None


def _json_tree(text: str, src: str) -> yaml.Node:
    """Parse JSON strictly (json module rules) into yaml nodes that remember their line.

    We plug position-recording callbacks into the stdlib's pure-Python scanner: strings, objects
    and arrays get their own line; numbers, booleans and null take their container's.
    """
    starts = [0] + [m.end() for m in re.finditer("\n", text)]

    def mark(index: int) -> yaml.Mark:
        return yaml.Mark(src, index, bisect.bisect_right(starts, index) - 1, 0, None, None)

    def node(value: object, at: yaml.Mark) -> yaml.Node:
        if isinstance(value, yaml.Node):
            return value
        kind = {bool: "bool", int: "int", float: "float", type(None): "null"}[type(value)]
        return yaml.ScalarNode(_Y + kind, json.dumps(value), at, at)

    def parse_string(s: str, end: int, strict: bool) -> tuple[yaml.Node, int]:
        value, end2 = json.decoder.scanstring(s, end, strict)
        return yaml.ScalarNode(_STR, value, mark(end - 1), mark(end - 1)), end2

    def parse_object(s_and_end, strict, scan_once, _hook, _pairs_hook, memo):  # noqa: ANN001
        at = mark(s_and_end[1] - 1)
        pairs, end = json.decoder.JSONObject(s_and_end, strict, scan_once, None, list, memo)
        items = []
        for key, value in pairs:
            v = node(value, at)
            items.append((yaml.ScalarNode(_STR, key, v.start_mark, v.start_mark), v))
        return yaml.MappingNode(_MAP, items, at, at), end

    def parse_array(s_and_end, scan_once):  # noqa: ANN001
        at = mark(s_and_end[1] - 1)
        values, end = json.decoder.JSONArray(s_and_end, scan_once)
        return yaml.SequenceNode(_SEQ, [node(v, at) for v in values], at, at), end

    ctx = SimpleNamespace(
        parse_object=parse_object, parse_array=parse_array, parse_string=parse_string,
        strict=True, parse_float=float, parse_int=int, parse_constant=float,
        object_hook=None, object_pairs_hook=list, memo={},
    )
    scan = json.scanner.py_make_scanner(ctx)
    ws = json.decoder.WHITESPACE
    try:
        start = ws.match(text, 0).end()
        try:
            value, end = scan(text, start)
        except StopIteration as e:
            raise json.JSONDecodeError("Expecting value", text, e.value) from None
        end = ws.match(text, end).end()
        if end != len(text):
            raise json.JSONDecodeError("Extra data", text, end)
    except json.JSONDecodeError as e:
        raise StoryError(src, e.lineno, f"invalid JSON: {e.msg} (column {e.colno})") from None
    except RecursionError:
        raise StoryError(src, 1, "JSON nested too deeply") from None
    return node(value, mark(start))


def _line(n: yaml.Node) -> int:
    return n.start_mark.line + 1


def _kind(n: yaml.Node) -> str:
    if isinstance(n, yaml.MappingNode):
        return "a mapping"
    if isinstance(n, yaml.SequenceNode):
        return "a list"
    return n.tag[len(_Y) :] if n.tag.startswith(_Y) else n.tag


def _string(n: yaml.Node, what: str, src: str) -> str | None:
    """A string value, None for null; anything else is an error naming `what`."""
    if isinstance(n, yaml.ScalarNode) and n.tag == _Y + "null":
        return None
    if not (isinstance(n, yaml.ScalarNode) and n.tag == _STR):
        raise StoryError(src, _line(n), f"{what} must be a string, got {_kind(n)}")
    if len(n.value) > MAX_LINE_CHARS:
        raise StoryError(src, _line(n), f"{what} too long ({len(n.value)} characters; limit {MAX_LINE_CHARS})")
    return n.value


def _mapping(n: yaml.Node, what: str, allowed: tuple[str, ...], src: str) -> dict[str, yaml.Node]:
    """Mapping keys -> value nodes; refuses non-string, unknown and duplicate keys (YAML lets the last win)."""
    if not isinstance(n, yaml.MappingNode):
        raise StoryError(src, _line(n), f"{what} must be a mapping with keys {', '.join(allowed)}, got {_kind(n)}")
    out: dict[str, yaml.Node] = {}
    for k, v in n.value:
        key = _string(k, f"a key in {what}", src)
        if key is None or key not in allowed:
            raise StoryError(src, _line(k), f"unknown key {key!r} in {what}; allowed: {', '.join(allowed)}")
        if key in out:
            raise StoryError(src, _line(k), f"duplicate key {key!r} in {what}")
        out[key] = v
    return out


def _parse_tree(root: yaml.Node | None, src: str) -> _Parsed:
    if root is None:
        raise StoryError(src, 1, "empty story file")
    top = _mapping(root, "the story", _KEYS, src)
    title = _string(top["title"], "title", src) if "title" in top else None
    style = _string(top["style"], "style", src) if "style" in top else None
    style_line = _line(top["style"]) if "style" in top else 1

    chars: list[_Char] = []
    cnode = top.get("characters")
    if cnode is not None and not (isinstance(cnode, yaml.ScalarNode) and cnode.tag == _Y + "null"):
        if not isinstance(cnode, yaml.MappingNode):
            raise StoryError(src, _line(cnode), f"characters must be a mapping of name: description, got {_kind(cnode)}")
        for k, v in cnode.value:
            name = _string(k, "a character name", src)
            image = None
            if isinstance(v, yaml.MappingNode):
                fields = _mapping(v, f"character {name!r}", _CHARACTER_KEYS, src)
                if "description" not in fields:
                    raise StoryError(src, _line(v), f"character {name!r} has no 'description'")
                v = fields["description"]
                if "image" in fields:
                    image = _string(fields["image"], f"the image of {name!r}", src)
                    if not image:
                        raise StoryError(src, _line(fields["image"]), f"the image of {name!r} is empty")
            chars.append(_Char(name or "", _string(v, f"the description of {name!r}", src) or "", _line(k), image))

    fnode = top.get("frames")
    if fnode is None:
        raise StoryError(src, 1, "no frames (add a 'frames' list)")
    if not isinstance(fnode, yaml.SequenceNode):
        raise StoryError(src, _line(fnode), f"frames must be a list, got {_kind(fnode)}")
    if not fnode.value:
        raise StoryError(src, _line(fnode), "no frames (the 'frames' list is empty)")
    frames: list[_FrameSpec] = []
    for i, item in enumerate(fnode.value):
        if i == MAX_FRAMES:
            raise StoryError(src, _line(item), f"too many frames (limit {MAX_FRAMES})")
        if isinstance(item, yaml.MappingNode):
            f = _mapping(item, f"frame {i}", _FRAME_KEYS, src)
            if "prompt" not in f:
                raise StoryError(src, _line(item), f"frame {i} has no 'prompt'")
            prompt = _string(f["prompt"], f"the prompt of frame {i}", src)
            if prompt is None:
                raise StoryError(src, _line(f["prompt"]), f"the prompt of frame {i} must be a string, got null")
            caption = _string(f["caption"], f"the caption of frame {i}", src) if "caption" in f else None
            frames.append(_FrameSpec(prompt, caption or "", _line(item)))
        elif isinstance(item, yaml.ScalarNode) and item.tag == _STR:
            frames.append(_FrameSpec(_string(item, f"frame {i}", src) or "", "", _line(item)))
        else:
            raise StoryError(src, _line(item), f"frame {i} must be a string or a mapping with a 'prompt', got {_kind(item)}")
    title_line = _line(top["title"]) if "title" in top else 1
    return _Parsed(title, title_line, style, style_line, chars, frames)


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


def _characters(chars: list[_Char], src: str) -> dict[str, str]:
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


def _photos(chars: list[_Char], src: str) -> dict[str, CharacterPhoto]:
    """Read and check every character photo now: a bad one fails the story before any worker starts."""
    out: dict[str, CharacterPhoto] = {}
    for raw, _, line, image in chars:
        if image is not None:
            name = " ".join(raw.split())  # as _characters normalised it
            out[name] = load_photo(image, src, line, name)
    return out


def _frame(index: int, spec: _FrameSpec, chars: dict[str, str], src: str) -> Frame:
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
    return Frame(index=index, prompt=prompt, caption=caption, characters=tuple(names), line=line)

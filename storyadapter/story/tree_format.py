"""``.yaml``/``.yml``/``.json`` stories: a mapping read from a yaml node tree, whose marks give every error its line.

YAML is composed (never constructed) after a first pass over its events refuses aliases, object tags, several
documents and deep nesting; JSON arrives as the same kind of tree from json_nodes.py. One schema walker reads
both: keys ``title``, ``style``, ``characters`` (name: description, or name: ``{description, image}``) and
``frames`` (``{prompt, caption, seed}`` mappings or plain strings); unknown, duplicate and mistyped keys are refused.
"""

from __future__ import annotations

import yaml

from storyadapter.story.raw import (
    MAX_FRAMES,
    MAX_LINE_CHARS,
    MAX_NESTING,
    RawCharacter,
    RawFrame,
    RawStory,
    StoryError,
    parse_seed,
)

_KEYS = ("title", "style", "characters", "frames")
_FRAME_KEYS = ("prompt", "caption", "seed")
_CHARACTER_KEYS = ("description", "image")
_Y = "tag:yaml.org,2002:"
_STR = _Y + "str"
# Explicit tags we accept; anything else (!!python/object..., !!binary, custom !tags) is refused.
_SAFE_TAGS = {None, "!"} | {_Y + t for t in ("str", "int", "float", "bool", "null", "seq", "map")}
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def yaml_tree(text: str, src: str) -> yaml.Node | None:
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


def _seed(n: yaml.Node, i: int, src: str) -> int:
    """A frame's own seed: an integer scalar (YAML int, JSON number), not a string, float or list."""
    if not (isinstance(n, yaml.ScalarNode) and n.tag == _Y + "int"):
        shown = n.value if isinstance(n, yaml.ScalarNode) else _kind(n)
        raise StoryError(src, _line(n), f"the seed of frame {i} must be an integer, got {shown!r}")
    return parse_seed(n.value, src, _line(n))


def read_tree(root: yaml.Node | None, src: str) -> RawStory:
    if root is None:
        raise StoryError(src, 1, "empty story file")
    top = _mapping(root, "the story", _KEYS, src)
    title = _string(top["title"], "title", src) if "title" in top else None
    style = _string(top["style"], "style", src) if "style" in top else None
    style_line = _line(top["style"]) if "style" in top else 1

    chars: list[RawCharacter] = []
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
            chars.append(RawCharacter(name or "", _string(v, f"the description of {name!r}", src) or "", _line(k), image))

    fnode = top.get("frames")
    if fnode is None:
        raise StoryError(src, 1, "no frames (add a 'frames' list)")
    if not isinstance(fnode, yaml.SequenceNode):
        raise StoryError(src, _line(fnode), f"frames must be a list, got {_kind(fnode)}")
    if not fnode.value:
        raise StoryError(src, _line(fnode), "no frames (the 'frames' list is empty)")
    frames: list[RawFrame] = []
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
            seed = _seed(f["seed"], i, src) if "seed" in f else None
            frames.append(RawFrame(prompt, caption or "", _line(item), seed))
        elif isinstance(item, yaml.ScalarNode) and item.tag == _STR:
            frames.append(RawFrame(_string(item, f"frame {i}", src) or "", "", _line(item)))
        else:
            raise StoryError(src, _line(item), f"frame {i} must be a string or a mapping with a 'prompt', got {_kind(item)}")
    title_line = _line(top["title"]) if "title" in top else 1
    return RawStory(title, title_line, style, style_line, chars, frames)

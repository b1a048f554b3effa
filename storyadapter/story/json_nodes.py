"""JSON stories as yaml node trees, so that one schema walker (tree_format.py) reads YAML and JSON with line numbers.

`json.loads` does the parsing and names the line of a syntax error; it reports no positions for values. The
rule that adds them: once `json.loads` has accepted the text, the n-th value token in the text (a string, a
``{`` or ``[``, or a bare number/true/false/null), keys included, is the n-th value met by a depth-first walk
of the parsed result that visits each object key just before its value. Brackets inside strings cannot
mislead the count because a string is matched whole, and the text is already known to be valid JSON.
"""

from __future__ import annotations

import json
import re
from typing import Iterator, NamedTuple

import yaml

from storyadapter.story.raw import MAX_NESTING, StoryError

_Y = "tag:yaml.org,2002:"
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[{\[]|[^\s,:\[\]{}"]+')


class _Pairs(list):
    """An object's (key, value) pairs in file order: duplicates kept, so the schema can name them."""


class _Bare(NamedTuple):
    """A number as written: only its kind matters to the schema, never its value."""

    kind: str  # "int" or "float"
    text: str


def json_tree(text: str, src: str) -> yaml.Node:
    try:
        value = json.loads(
            text,
            object_pairs_hook=_Pairs,
            parse_int=lambda s: _Bare("int", s),  # also spares the 4300-digit limit of int()
            parse_float=lambda s: _Bare("float", s),
            parse_constant=lambda s: _Bare("float", s),  # NaN, Infinity
        )
    except json.JSONDecodeError as e:
        raise StoryError(src, e.lineno, f"invalid JSON: {e.msg} (column {e.colno})") from None
    except RecursionError:
        raise StoryError(src, 1, "JSON nested too deeply") from None
    return _node(value, _lines(text), src, 0)


def _lines(text: str) -> Iterator[int]:
    """The 1-based line of each value token, in file order."""
    line, last = 1, 0
    for m in _TOKEN.finditer(text):
        line += text.count("\n", last, m.start())
        last = m.start()
        yield line


def _node(value: object, lines: Iterator[int], src: str, depth: int) -> yaml.Node:
    line = next(lines)
    mark = yaml.Mark(src, 0, line - 1, 0, None, None)
    if isinstance(value, str):
        return yaml.ScalarNode(_Y + "str", value, mark, mark)
    if isinstance(value, _Bare):
        return yaml.ScalarNode(_Y + value.kind, value.text, mark, mark)
    if isinstance(value, bool) or value is None:
        return yaml.ScalarNode(_Y + ("null" if value is None else "bool"), json.dumps(value), mark, mark)
    if depth == MAX_NESTING:
        raise StoryError(src, line, f"JSON nested too deeply (limit {MAX_NESTING})")
    if isinstance(value, _Pairs):
        items = []
        for key, item in value:
            items.append((_node(key, lines, src, depth + 1), _node(item, lines, src, depth + 1)))
        return yaml.MappingNode(_Y + "map", items, mark, mark)
    return yaml.SequenceNode(_Y + "seq", [_node(item, lines, src, depth + 1) for item in value], mark, mark)

"""Story loading and style templates: the sample stories, format equivalence, and every bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from storyadapter.errors import UserError
from storyadapter.story.model import describe
from storyadapter.story.parse import StoryError, load_story
from storyadapter.story.styles import DEFAULT_STYLE, Style, get_style, style_names

EXAMPLES = Path(__file__).resolve().parents[1] / "storyadapter" / "examples"

ANA = "A tall chef with curly red hair, wearing a white apron."
BEN = "A short delivery rider with a blue helmet and a green jacket."


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    p = tmp_path / name
    if isinstance(content, bytes):
        p.write_bytes(content)
    else:
        p.write_text(content, encoding="utf-8")
    return p


def expect_error(path: Path, line: int, *fragments: str, style: str | None = None) -> str:
    """Load `path`, assert a StoryError at `path:line` on one line containing each fragment."""
    with pytest.raises(StoryError) as info:
        load_story(path, style=style)
    msg = str(info.value)
    assert msg.startswith(f"{path}:{line}: "), msg
    assert "\n" not in msg and "\r" not in msg
    assert "Traceback" not in msg
    for frag in fragments:
        assert frag.lower() in msg.lower(), (frag, msg)
    return msg


# ----------------------------------------------------------------------------- samples


def test_explorer_plain_txt():
    s = load_story(EXAMPLES / "explorer_24.txt")
    assert len(s.frames) == 24
    assert s.title == "explorer_24"
    assert s.style == DEFAULT_STYLE
    assert s.characters == {}
    assert [f.index for f in s.frames] == list(range(24))
    assert [f.line for f in s.frames] == list(range(1, 25))
    assert all(f.caption == "" and f.characters == () for f in s.frames)
    assert s.frames[0].prompt == (
        "A young explorer with a green scarf and a brown satchel reads a map in a snowy forest."
    )
    assert s.frames[23].prompt.endswith("plays a violin on a city rooftop.")
    assert re.fullmatch(r"[0-9a-f]{64}", s.digest)
    assert s.source == str(EXAMPLES / "explorer_24.txt")


def test_office_comic_storydiffusion_form():
    s = load_story(EXAMPLES / "office_comic.txt")
    assert len(s.frames) == 5
    assert s.characters == {"Ana": ANA, "Ben": BEN}
    assert [f.line for f in s.frames] == [4, 5, 6, 7, 8]
    f0 = s.frames[0]
    assert f0.prompt == (
        "Ana, A tall chef with curly red hair, wearing a white apron, "
        "chops vegetables in a busy restaurant kitchen"
    )
    assert f0.caption == "Ana prepares for the dinner rush."
    assert f0.characters == ("Ana",)
    both = s.frames[3]
    assert both.characters == ("Ana", "Ben")
    assert both.prompt.startswith("Ana, A tall chef")
    assert ", and Ben, A short delivery rider with a blue helmet and a green jacket, laugh" in both.prompt
    assert "[" not in both.prompt and "#" not in both.prompt
    nc = s.frames[4]
    assert nc.characters == ()
    assert nc.prompt == "An empty restaurant with chairs stacked on tables at midnight"
    assert nc.caption == "The lights go out."


def test_garden_yaml():
    s = load_story(EXAMPLES / "garden.yaml")
    assert s.title == "The Night Garden"
    assert s.style == "Comic book"
    assert list(s.characters) == ["Mila", "Oak"]
    assert s.characters["Oak"] == "a friendly giant owl with round golden eyes"
    assert len(s.frames) == 5
    assert [f.caption for f in s.frames] == [
        "Mila finds a seed that glows.",
        "",
        "An owl comes to watch.",
        "",
        "By morning, the tree is taller than the house.",
    ]
    assert [f.line for f in s.frames] == [7, 9, 10, 12, 13]
    f2 = s.frames[2]
    assert f2.characters == ("Oak", "Mila")
    assert f2.prompt == (
        "Oak, a friendly giant owl with round golden eyes, lands on the garden fence and watches "
        "Mila, a little girl with black braids and a yellow raincoat"
    )
    assert s.frames[4].characters == ()
    assert describe(s) == "The Night Garden: 5 frames, 2 characters, style Comic book"


def test_style_argument_overrides_file():
    s = load_story(EXAMPLES / "garden.yaml", style="line ART")
    assert s.style == "Line art"
    assert load_story(EXAMPLES / "office_comic.txt", style="film").style == "film"
    with pytest.raises(UserError, match="unknown style 'bogus'"):
        load_story(EXAMPLES / "garden.yaml", style="bogus")


def test_repeated_tag_expands_once_and_nc_is_stripped(tmp_path):
    p = write(tmp_path, "s.txt", f"[Ana] {ANA}\n\n[Ana] waves; [Ana] smiles.\n[NC] a quiet street #end\n")
    s = load_story(p)
    assert s.frames[0].prompt == "Ana, A tall chef with curly red hair, wearing a white apron, waves; Ana smiles."
    assert s.frames[0].characters == ("Ana",)
    assert s.frames[1].prompt == "a quiet street" and s.frames[1].caption == "end"
    spaced = load_story(write(tmp_path, "nc.txt", f"[Ana] {ANA}\n\n[ NC ] rain on a window\n[ Ana ] sleeps\n"))
    assert spaced.frames[0].prompt == "rain on a window" and spaced.frames[0].characters == ()
    assert spaced.frames[1].characters == ("Ana",)


def test_plain_txt_captions_blank_lines_crlf_and_bom(tmp_path):
    p = write(tmp_path, "p.txt", "\ufeffa cat on a roof #Night falls.\r\n\r\n  a dog in a park  \r\n")
    s = load_story(p)
    assert [(f.prompt, f.caption, f.line) for f in s.frames] == [
        ("a cat on a roof", "Night falls.", 1),
        ("a dog in a park", "", 3),
    ]


# ----------------------------------------------------------------------------- YAML vs JSON

GARDEN = {
    "title": "The Night Garden",
    "style": "comic",
    "characters": {"Mila": "a little girl with black braids", "Oak": "a giant owl"},
    "frames": [
        {"prompt": "[Mila] finds a seed", "caption": "A seed."},
        "[Oak] watches [Mila]",
        {"prompt": "[NC] a tree grows at dawn"},
    ],
}


def test_yaml_and_json_give_the_same_story(tmp_path):
    y = load_story(write(tmp_path, "g.yaml", yaml.safe_dump(GARDEN, sort_keys=False)))
    j = load_story(write(tmp_path, "g.json", json.dumps(GARDEN, indent=2)))
    yml = load_story(write(tmp_path, "g.yml", yaml.safe_dump(GARDEN, sort_keys=False)))
    strip = lambda s: [(f.index, f.prompt, f.caption, f.characters) for f in s.frames]  # noqa: E731
    assert strip(y) == strip(j) == strip(yml)
    assert y.characters == j.characters
    assert (y.title, y.style) == (j.title, j.style) == ("The Night Garden", "comic")
    assert j.frames[1].prompt == "Oak, a giant owl, watches Mila, a little girl with black braids"
    assert j.frames[2].characters == ()
    # JSON frames carry their own lines too.
    assert [f.line for f in j.frames] == [9, 13, 14]


def test_json_compact_single_line_is_fine(tmp_path):
    s = load_story(write(tmp_path, "c.json", json.dumps(GARDEN)))
    assert len(s.frames) == 3 and all(f.line == 1 for f in s.frames)


# ----------------------------------------------------------------------------- bad input


def test_missing_file(tmp_path):
    expect_error(tmp_path / "nope.txt", 1, "no such file")


def test_directory(tmp_path):
    d = tmp_path / "dir.yaml"
    d.mkdir()
    expect_error(d, 1, "directory")


@pytest.mark.parametrize("name,content", [("e.txt", ""), ("w.txt", "  \n\n \t\n"), ("e.yaml", "# only a comment\n"), ("e.json", "\n")])
def test_empty_file(tmp_path, name, content):
    expect_error(write(tmp_path, name, content), 1, "empty")


def test_unknown_extension(tmp_path):
    expect_error(write(tmp_path, "story.md", "a cat\n"), 1, "unknown story format", ".md")
    expect_error(write(tmp_path, "story", "a cat\n"), 1, "unknown story format")
    expect_error(write(tmp_path, "photo.PNG", b"\x89PNG\r\n\x1a\n\x00\x00"), 1, "unknown story format", ".png")
    assert len(load_story(write(tmp_path, "upper.TXT", "a cat\n")).frames) == 1


def test_not_utf8_names_the_line(tmp_path):
    p = write(tmp_path, "l.txt", b"a cat\na dog\ncaf\xe9 au lait\n")
    expect_error(p, 3, "UTF-8")


def test_binary_content(tmp_path):
    expect_error(write(tmp_path, "b.txt", b"a cat\n\x89PNG\x00\x00\x01"), 2, "binary")
    expect_error(write(tmp_path, "u16.txt", "a cat\n".encode("utf-16")), 1, "binary")


def test_huge_line(tmp_path):
    p = write(tmp_path, "h.txt", "a cat\n" + "x" * 4001 + "\n")
    expect_error(p, 2, "too long")
    # exactly at the limit is fine
    assert len(load_story(write(tmp_path, "ok.txt", "y" * 4000)).frames[0].prompt) == 4000


def test_huge_string_in_yaml(tmp_path):
    p = write(tmp_path, "h.yaml", "frames:\n  - ok\n  - " + "x" * 4001 + "\n")
    expect_error(p, 3, "too long")


def test_huge_file(tmp_path):
    p = tmp_path / "big.txt"
    with open(p, "wb") as f:
        f.write(b"a cat\n" * (8 * 1024 * 1024 // 6 + 1))
    expect_error(p, 1, "too large")


def test_too_many_frames(tmp_path):
    expect_error(write(tmp_path, "m.txt", "a cat\n" * 10_001), 10_001, "too many frames")
    assert len(load_story(write(tmp_path, "ok.txt", "a cat\n" * 10_000)).frames) == 10_000
    y = write(tmp_path, "m.yaml", "frames:\n" + "  - a cat\n" * 10_001)
    expect_error(y, 10_002, "too many frames")


def test_undefined_character(tmp_path):
    p = write(tmp_path, "u.txt", f"[Ana] {ANA}\n\n[Ana] cooks\n[Zed] arrives\n")
    expect_error(p, 4, "undefined character [Zed]", "Ana")
    # a tag in a plain file has nothing to refer to
    expect_error(write(tmp_path, "plain.txt", "a cat\n[Zed] walks\n"), 2, "undefined character [Zed]")
    y = write(tmp_path, "u.yaml", "characters:\n  Ana: a chef\nframes:\n  - '[Ana] cooks'\n  - prompt: '[ana] sings'\n")
    expect_error(y, 5, "undefined character [ana]")


def test_duplicate_character(tmp_path):
    p = write(tmp_path, "d.txt", f"[Ana] {ANA}\n[Ben] {BEN}\n[Ana] someone else\n\n[Ana] cooks\n")
    expect_error(p, 3, "'Ana'", "twice")
    y = write(tmp_path, "d.yaml", "characters:\n  Ana: a chef\n  Ana: a cook\nframes: [x]\n")
    expect_error(y, 3, "'Ana'", "twice")
    j = write(tmp_path, "d.json", '{"characters": {\n "Ana": "a chef",\n "Ana": "a cook"},\n "frames": ["x"]}')
    expect_error(j, 3, "'Ana'", "twice")


def test_unclosed_and_unmatched_brackets(tmp_path):
    p = write(tmp_path, "b.txt", f"[Ana] {ANA}\n\n[Ana] cooks\n[Ana walks home\n")
    expect_error(p, 4, "unclosed '['")
    expect_error(write(tmp_path, "b2.txt", "a cat [ on a mat\n"), 1, "unclosed '['")
    expect_error(write(tmp_path, "b3.txt", "a cat\na cat ] on a mat\n"), 2, "unmatched ']'")


def test_empty_tag(tmp_path):
    p = write(tmp_path, "e.txt", f"[Ana] {ANA}\n\n[Ana] cooks\n[] walks\n")
    expect_error(p, 4, "empty character tag []")
    expect_error(write(tmp_path, "e2.txt", f"[Ana] {ANA}\n[] nobody\n\n[Ana] cooks\n"), 2, "empty character name")


def test_bad_character_block_and_nc_misuse(tmp_path):
    p = write(tmp_path, "c.txt", f"[Ana] {ANA}\nBen is a rider\n\n[Ana] cooks\n")
    expect_error(p, 2, "character block")
    expect_error(write(tmp_path, "c2.txt", f"[Ana] {ANA}\n\n[NC] [Ana] cooks\n"), 3, "[NC]")
    expect_error(write(tmp_path, "c3.txt", f"[Ana] {ANA}\n\n[Ana] cooks [NC]\n"), 3, "[NC] must come first")
    expect_error(write(tmp_path, "c4.txt", f"[Ana] {ANA}\n[NC] nobody\n\n[Ana] cooks\n"), 2, "reserved")
    expect_error(write(tmp_path, "c5.txt", f"[Ana] {ANA}\n[Ben]\n\n[Ana] cooks\n"), 2, "no description")


def test_empty_prompt(tmp_path):
    expect_error(write(tmp_path, "p.txt", "a cat\n#only a caption\n"), 2, "empty prompt")
    expect_error(write(tmp_path, "p2.txt", "a cat\n[NC]\n"), 2, "empty prompt")


def test_no_frames(tmp_path):
    expect_error(write(tmp_path, "n.txt", f"[Ana] {ANA}\n[Ben] {BEN}\n\n\n"), 3, "no frames")
    expect_error(write(tmp_path, "n.yaml", "title: T\nframes: []\n"), 2, "no frames")
    expect_error(write(tmp_path, "n2.yaml", "title: T\n"), 1, "no frames")
    expect_error(write(tmp_path, "n.json", '{"title": "T",\n "frames": []}'), 2, "no frames")


@pytest.mark.parametrize(
    "content,line,fragments",
    [
        ("- a\n- b\n", 1, ["mapping", "got a list"]),
        ("title: T\nframes: a cat\n", 2, ["frames must be a list", "str"]),
        ("frames:\n  - prompt: 42\n", 2, ["prompt of frame 0 must be a string", "int"]),
        ("frames:\n  - ok\n  - [a, b]\n", 3, ["frame 1", "got a list"]),
        ("frames:\n  - caption: hi\n", 2, ["frame 0 has no 'prompt'"]),
        ("frames:\n  - prompt: x\n    captoin: typo\n", 3, ["unknown key 'captoin'"]),
        ("frames:\n  - prompt: x\n    caption: [1]\n", 3, ["caption of frame 0 must be a string"]),
        ("characters: [Ana]\nframes: [x]\n", 1, ["characters must be a mapping"]),
        ("characters:\n  Ana: 3\nframes: [x]\n", 2, ["description of 'Ana' must be a string"]),
        ("characters:\n  Ana:\nframes: [x]\n", 2, ["'Ana' has no description"]),
        ("characters:\n  '[Ana]': a chef\nframes: [x]\n", 2, ["invalid character name"]),
        ("title: 42\nframes: [x]\n", 1, ["title must be a string", "int"]),
        ("title: [a, b]\nframes: [x]\n", 1, ["title must be a string", "list"]),
        ("frames: [x]\nauthor: me\n", 2, ["unknown key 'author'", "title, style, characters, frames"]),
        ("frames: [x]\nframes: [y]\n", 2, ["duplicate key 'frames'"]),
        ("style: Watercolour\nframes: [x]\n", 1, ["unknown style 'Watercolour'", "Comic book"]),
        ("frames: [x\n", 2, ["invalid YAML"]),
        ("a: b: c\n", 1, ["invalid YAML"]),
        ("frames: [x]\n---\nframes: [y]\n", 2, ["one YAML document"]),
    ],
)
def test_bad_yaml(tmp_path, content, line, fragments):
    expect_error(write(tmp_path, "bad.yaml", content), line, *fragments)


@pytest.mark.parametrize(
    "content,line,fragments",
    [
        ('{"frames": ["a",\n  "b",,\n]}', 2, ["invalid JSON", "column"]),
        ('{"frames": ["a"]}\n{"x": 1}', 2, ["invalid JSON", "Extra data"]),
        ('{"title": "T",\n "frames": {"a": 1}}', 2, ["frames must be a list", "mapping"]),
        ('{"title": 7,\n "frames": ["a"]}', 1, ["title must be a string", "int"]),
        ('{"frames": [\n  "a",\n  {"prompt": null}\n]}', 3, ["prompt of frame 1", "null"]),
        ('{"frames": [\n  "a",\n  {"prompt": "b", "cap": "c"}\n]}', 3, ["unknown key 'cap'"]),
        ('{"characters": ["Ana"],\n "frames": ["a"]}', 1, ["characters must be a mapping"]),
        ('["a", "b"]', 1, ["mapping", "got a list"]),
        ('{"frames": ["a"], "title": true}', 1, ["title must be a string", "bool"]),
        ('{"frames": ["a"]}' + "[" * 5000, 1, ["invalid JSON"]),
        ('{"frames": ' + "[" * 5000 + "]" * 5000 + "}", 1, ["nested too deeply"]),
    ],
)
def test_bad_json(tmp_path, content, line, fragments):
    expect_error(write(tmp_path, "bad.json", content), line, *fragments)


def test_json_lines_count_past_brackets_and_quotes_inside_strings(tmp_path):
    content = '{"frames": [\n  "a \\"[\\" {[",\n  "ok",\n  {"prompt": "p",\n   "caption": 1%s}\n]}' % ("0" * 5000)
    # the 5001-digit number is a type error on its own line, not Python's int() digit limit
    expect_error(write(tmp_path, "q.json", content), 5, "caption of frame 2 must be a string", "int")
    expect_error(write(tmp_path, "n.json", '{"frames": [NaN]}'), 1, "frame 0", "float")
    expect_error(write(tmp_path, "d.json", '{"frames": ' + "[" * 40 + "]" * 40 + "}"), 1, "nested too deeply")


def test_yaml_python_tags_are_refused_not_constructed(tmp_path):
    marker = tmp_path / "pwned"
    p = write(
        tmp_path,
        "evil.yaml",
        f"title: T\nframes:\n  - !!python/object/apply:os.system ['touch {marker}']\n",
    )
    expect_error(p, 3, "YAML tag !!python/object/apply:os.system is not allowed")
    assert not marker.exists()
    expect_error(write(tmp_path, "t2.yaml", "frames:\n  - !custom x\n"), 2, "YAML tag !custom")
    expect_error(write(tmp_path, "t3.yaml", "frames: !!set {a, b}\n"), 1, "YAML tag !!set")
    # explicit standard tags are fine
    assert load_story(write(tmp_path, "ok.yaml", "title: !!str 2024\nframes: [!!str 12]\n")).title == "2024"


def test_yaml_alias_bomb_is_refused(tmp_path):
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 9):
        prev, cur = chr(ord("a") + i - 1), chr(ord("a") + i)
        lines.append(f"{cur}: &{cur} [" + ",".join([f"*{prev}"] * 9) + "]")
    lines.append("frames: *i")
    expect_error(write(tmp_path, "bomb.yaml", "\n".join(lines) + "\n"), 1, "anchors and aliases")
    # a plain alias is refused at the alias's line too
    p = write(tmp_path, "alias.yaml", "characters:\n  Ana: &d a chef\n  Ben: *d\nframes: [x]\n")
    expect_error(p, 2, "anchors and aliases")


def test_yaml_deep_nesting(tmp_path):
    expect_error(write(tmp_path, "deep.yaml", "frames: " + "[" * 100 + "]" * 100 + "\n"), 1, "nested too deeply")


def test_nonstring_yaml_scalars_are_type_errors(tmp_path):
    # YAML 1.1 turns these into non-strings; we say so instead of rendering "True" or a date.
    expect_error(write(tmp_path, "y.yaml", "frames:\n  - yes\n"), 2, "frame 0", "bool")
    expect_error(write(tmp_path, "d.yaml", "frames:\n  - x\n  - prompt: 2024-01-01\n"), 3, "timestamp")


def test_control_characters_are_refused(tmp_path):
    expect_error(write(tmp_path, "c.yaml", 'frames:\n  - ok\n  - "bell \\a"\n'), 3, "control character U+0007")
    expect_error(write(tmp_path, "c.json", '{"frames": ["ok",\n "esc \\u001b[31m"]}'), 2, "control character U+001B")
    expect_error(write(tmp_path, "c.txt", "a cat\na \x1b[31mred\x1b[0m cat\n"), 2, "control character U+001B")
    expect_error(write(tmp_path, "raw.yaml", "frames:\n  - ok\n  - bell\x07 here\n"), 3, "invalid YAML", "U+0007")
    # tabs and YAML block scalars are whitespace, folded into one line
    s = load_story(write(tmp_path, "fold.yaml", "frames:\n  - prompt: |\n      a cat\n      \ton a mat\n    caption: >\n      it\n      sleeps\n"))
    assert (s.frames[0].prompt, s.frames[0].caption) == ("a cat on a mat", "it sleeps")


def test_error_is_a_user_error_with_one_line(tmp_path):
    with pytest.raises(UserError) as info:
        load_story(write(tmp_path, "x.yaml", "frames: [x\n\n\n"))
    assert len(str(info.value).splitlines()) == 1


# ----------------------------------------------------------------------------- styles


def test_style_names_and_lookup():
    names = style_names()
    assert names[:9] == [
        "(No style)",
        "Japanese Anime",
        "Digital/Oil Painting",
        "Pixar/Disney Character",
        "Photographic",
        "Comic book",
        "Line art",
        "Black and White Film Noir",
        "Isometric Rooms",
    ]
    assert names[9:] == ["comic", "film", "realistic"]
    for n in names:
        s = get_style(n)
        assert isinstance(s, Style) and s.name == n
        assert s.prompt_template.count("{prompt}") == 1
        assert get_style(n.upper()) is s
    for alias in (None, "none", "No style", "NO STYLE", "(no style)"):
        assert get_style(alias).name == "(No style)"
    assert get_style("comic").name == "comic" and get_style("Comic Book").name == "Comic book"


def test_unknown_style_lists_valid_names():
    with pytest.raises(UserError) as info:
        get_style("Watercolour")
    msg = str(info.value)
    assert "Watercolour" in msg and "\n" not in msg
    for n in style_names():
        assert n in msg


def test_storydiffusion_templates_are_the_real_ones():
    assert get_style("Comic book").prompt_template == (
        "comic {prompt} . graphic illustration, comic art, graphic novel art, vibrant, highly detailed"
    )
    assert get_style("Japanese Anime").prompt_template.startswith("anime artwork illustrating {prompt}. ")
    assert get_style("Isometric Rooms").prompt_template.startswith("Tiny cute isometric {prompt} . in a cutaway box")
    assert get_style("Photographic").negative_prompt.startswith("drawing, painting, crayon, sketch")
    assert get_style("(No style)").prompt_template == "{prompt}"
    assert get_style("(No style)").negative_prompt == ""


def test_story_adapter_templates_are_upstreams_exactly():
    """Upstream's StoryAdapterXL.generate: the prompt p is spliced in as below, with one negative for all three."""
    p = "a fox {reads} a map"
    negative = "monochrome, lowres, bad anatomy, worst quality, low quality"
    expected = {
        "comic": "best quality, high quality, comic " + p
        + " . graphic illustration, comic art, graphic novel art, vibrant, highly detailed",
        "film": f"best quality, high quality, cinematic film still, {p} . shallow depth of field, vignette, "
        "highly detailed, high budget, bokeh, cinemascope, moody, epic, gorgeous, film grain, grainy",
        "realistic": f"best quality, high quality, {p}",
    }
    for name, positive in expected.items():
        assert get_style(name).apply(p) == (positive, negative), name


def test_styled_output(tmp_path):
    s = load_story(EXAMPLES / "garden.yaml")
    pos, neg = s.styled(s.frames[4])
    assert pos == (
        "comic a giant glowing tree grows in the garden at dawn . graphic illustration, comic art, "
        "graphic novel art, vibrant, highly detailed"
    )
    assert neg == get_style("Comic book").negative_prompt
    plain = load_story(EXAMPLES / "explorer_24.txt")
    assert plain.styled(plain.frames[0]) == (plain.frames[0].prompt, "")
    comic = load_story(EXAMPLES / "explorer_24.txt", style="comic")
    pos, neg = comic.styled(comic.frames[0])
    assert pos == ("best quality, high quality, comic " + comic.frames[0].prompt
                   + " . graphic illustration, comic art, graphic novel art, vibrant, highly detailed")
    assert neg == "monochrome, lowres, bad anatomy, worst quality, low quality"
    # braces in a prompt are text, not format fields
    braces = load_story(write(tmp_path, "b.txt", "a sign reading {hello}\n"), style="Line art")
    assert "{hello}" in braces.styled(braces.frames[0])[0]


# ----------------------------------------------------------------------------- titles


def test_yaml_title_is_kept_and_default_title_is_stem(tmp_path):
    s = load_story(write(tmp_path, "t.yaml", "title: '../../etc/passwd'\nframes: [x]\n"))
    assert s.title == "../../etc/passwd"
    assert load_story(write(tmp_path, "my story.json", '{"frames": ["x"]}')).title == "my story"

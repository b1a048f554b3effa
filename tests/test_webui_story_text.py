"""The web UI's rewrite of one frame or one character in a story file: the result reads back with exactly that
change, in each of the three formats, and a .txt story keeps every other line byte for byte."""

from __future__ import annotations

import pytest

from storyadapter.errors import UserError
from storyadapter.webui.story_text import raw_story, with_character, with_frame

TXT = "[Lisa] a girl (photo: lisa.png)\n\n[Lisa] walks. #Rain\r\n[NC] a street (seed: 3) #Night\n"
YAML = "title: T\ncharacters:\n  Lisa: {description: a girl, image: lisa.png}\nframes:\n- '[Lisa] walks.'\n- {prompt: '[NC] a street', caption: Night, seed: 3}\n"
JSON = '{"characters": {"Lisa": "a girl"}, "frames": ["[Lisa] walks.", {"prompt": "[NC] a street", "seed": 3}]}'


@pytest.mark.parametrize("fmt, text", [("txt", TXT), ("yaml", YAML), ("json", JSON)])
def test_one_frame_and_one_description_change_and_nothing_else(fmt, text):
    before = raw_story(text, fmt)
    edited = with_character(with_frame(text, fmt, 1, "[NC] a wet street", "Dawn", 9), fmt, "Lisa", "a tall girl")
    after = raw_story(edited, fmt)
    assert [(f.text.strip(), f.caption.strip(), f.seed) for f in after.frames] == \
        [(before.frames[0].text.strip(), before.frames[0].caption.strip(), None), ("[NC] a wet street", "Dawn", 9)]
    assert [(c.name, c.description.strip(), c.image) for c in after.characters] == \
        [("Lisa", "a tall girl", before.characters[0].image)]
    if fmt == "txt":
        assert edited.split("\n")[2:3] == TXT.split("\n")[2:3]  # the untouched frame's line, \r and all


def test_what_a_rewrite_cannot_say_is_refused_in_one_line():
    for call, message in ((lambda: with_frame(TXT, "txt", 2, "x", "", None), "request.frame: the story's frames are 0 to 1"),
                          (lambda: with_frame(TXT, "txt", 0, "a # b", "", None), "request.prompt: '#' starts the caption"),
                          (lambda: with_frame(TXT, "txt", 0, "   ", "", None), "request.prompt: empty prompt"),
                          (lambda: with_character(TXT, "txt", "Tom", "a boy"), "request.characters.Tom: the story has no"),
                          (lambda: with_character(TXT, "txt", "Lisa", "a [girl]"), "request.characters.Lisa: expected one line")):
        with pytest.raises(UserError, match=message.replace("[", r"\[")):
            call()

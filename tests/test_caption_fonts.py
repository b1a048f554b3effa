"""Captions in any script on comic pages: every character is drawn by a font that has its glyph (no tofu)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from fontTools.ttLib import TTFont
from PIL import Image

from storyadapter.outputs import comic, fonts

from .helpers.renders import make_render_dir

JAPANESE = "猫のミケは朝ごはんを食べて、ゆっくり昼寝をした。"
EMOJI = "Mike the cat 🐱 dreams of fish 🐟🌊 and stars ✨"
MIXED = "東京タワー 🗼 at night, 夜景がきれい 😍👍"


def cmap(face: fonts.Face) -> set[int]:
    """Read independently of fonts.codepoints: what the font file itself maps."""
    with TTFont(face.path, fontNumber=face.index) as font:
        return set(font.getBestCmap())


def visible(text: str) -> list[str]:
    return [c for c in text if not c.isspace() and not fonts._invisible(c)]


def assert_no_tofu(font: fonts.CaptionFont, text: str) -> set[str]:
    """Every visible character lands in a run whose font has its glyph; returns the fonts used."""
    runs = font.runs(text)
    assert "".join(run for run, _ in runs) == text  # nothing dropped: every character has a font
    used = set()
    for run, face in runs:
        has = cmap(face)
        for char in visible(run):
            assert ord(char) in has, f"{char!r} (U+{ord(char):04X}) drawn with {Path(face.path).name}, which lacks it"
        used.add(Path(face.path).name)
    return used


def test_japanese_and_emoji_captions_are_covered_glyph_by_glyph():
    font = comic.caption_font(20)
    dejavu = cmap(fonts.faces()[0])
    for text in (JAPANESE, EMOJI, MIXED):
        assert_no_tofu(font, text)
        # DejaVu alone would draw boxes: the fallback is what makes these readable.
        assert any(ord(c) not in dejavu for c in visible(text))
    assert any("CJK" in name for name in assert_no_tofu(font, JAPANESE))
    assert any("Emoji" in name for name in assert_no_tofu(font, EMOJI))
    assert {"DejaVuSans.ttf", "NotoSansCJK-VF.otf.ttc", "NotoEmoji[wght].ttf"} <= assert_no_tofu(font, MIXED)


def test_scripts_that_already_worked_stay_with_dejavu():
    font = comic.caption_font(20)
    for text in ("مرحبا بالعالم", "שלום עולם", "Café déjà vu, naïve Ångström"):
        assert [Path(face.path).name for _, face in font.runs(text)] == ["DejaVuSans.ttf"]


def test_comic_page_with_japanese_and_emoji_captions(tmp_path):
    captions = {0: JAPANESE, 1: EMOJI, 2: MIXED, 3: "Plain English caption."}
    out = make_render_dir(tmp_path / "run", 4, iterations=1, captions=captions)
    pages = comic.write_comic(out, layout="four")
    layout = comic.layout_pages([captions[i] for i in range(4)], (64, 64), "four")[0]
    for panel in layout.panels:
        # Wrapped without losing a character, every line inside its caption box, every glyph covered.
        assert "".join("".join(panel.lines).split()) == "".join(captions[panel.slot].split())
        font = comic.caption_font(panel.font_size)
        for line, box in zip(panel.lines, panel.line_boxes):
            assert panel.caption.contains(box), (line, box, panel.caption)
            assert_no_tofu(font, line)
    with Image.open(pages[0]) as page:
        assert page.size == (layout.width, layout.height)
        cjk_panel = layout.panels[0]
        c = cjk_panel.caption
        ink = np.asarray(page.convert("L").crop((c.x0, c.y0, c.x1, c.y1)))
    assert (ink < 100).mean() > 0.02  # the Japanese caption was drawn

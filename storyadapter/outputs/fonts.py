"""Caption text in any script: a font stack that picks, per character, the first font that has its glyph.

DejaVu Sans (shipped with matplotlib) draws Latin, Greek, Cyrillic, Arabic and Hebrew; the Noto fonts of the
`manimgx-fonts` and `manimgx-fonts-cjk` packages (SIL OFL) add Chinese, Japanese, Korean, emoji (Noto Emoji,
monochrome outlines) and the scripts of India and South-East Asia. A line is cut into runs of characters that
share a font; each run is shaped by its own font (so Arabic joins as before) and all runs sit on one baseline.
"""

from __future__ import annotations

import importlib.util
import logging
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from PIL import ImageDraw, ImageFont

log = logging.getLogger(__name__)

# Fallback order after DejaVu Sans: CJK before symbols, so Han and kana get their proper design.
_PACKAGE_FONTS = (
    ("manimgx_fonts", "NotoSans[wght].ttf", 0),
    ("manimgx_fonts_cjk", "NotoSansCJK-VF.otf.ttc", 0),  # face 0: Japanese; Chinese and Korean glyphs too
    ("manimgx_fonts", "NotoEmoji[wght].ttf", 0),
    ("manimgx_fonts", "NotoSansSymbols[wght].ttf", 0),
)
_REGULAR = 400  # wght of the variable fonts: their default instance may be Thin


@dataclass(frozen=True)
class Face:
    path: str
    index: int = 0


def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)  # the font packages are data only; no need to import them
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


@lru_cache(maxsize=1)
def faces() -> tuple[Face, ...]:
    """Every caption font present, in fallback order."""
    import matplotlib

    found = [Face(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"))]
    for package, name, index in _PACKAGE_FONTS:
        folder = _package_dir(package)
        if folder is not None and (folder / name).is_file():
            found.append(Face(str(folder / name), index))
    scripts = _package_dir("manimgx_fonts")
    if scripts is not None:  # every other script the package ships (Devanagari, Thai, Bengali, ...)
        listed = {f.path for f in found}
        found += [Face(str(p)) for p in sorted(scripts.glob("NotoSans*[[]wght[]].ttf"))
                  if str(p) not in listed and "Italic" not in p.name]
    if len(found) == 1:
        log.warning("manimgx-fonts / manimgx-fonts-cjk not installed: CJK and emoji captions will show boxes")
    return tuple(found)


@lru_cache(maxsize=None)
def codepoints(face: Face) -> frozenset[int]:
    """The characters a font has glyphs for (its best Unicode cmap)."""
    from fontTools.ttLib import TTFont

    with TTFont(face.path, fontNumber=face.index, lazy=True) as font:
        return frozenset(font.getBestCmap() or {})


def _invisible(char: str) -> bool:
    # Variation selectors, joiners and combining marks draw nothing on their own: they go with their neighbour.
    return unicodedata.category(char) in ("Mn", "Me", "Cf")


def face_for(char: str) -> Face | None:
    """The first face with a glyph for `char`, or None when no font has one."""
    code = ord(char)
    return next((face for face in faces() if code in codepoints(face)), None)


@lru_cache(maxsize=256)
def _sized(face: Face, size: int) -> ImageFont.FreeTypeFont:
    font = ImageFont.truetype(face.path, size, index=face.index)
    try:
        axes = font.get_variation_axes()
    except OSError:  # not a variable font
        return font
    font.set_variation_by_axes([min(max(_REGULAR, a["minimum"]), a["maximum"]) if a["name"] in (b"Weight", "Weight")
                                else a["default"] for a in axes])
    return font


class CaptionFont:
    """A FreeTypeFont look-alike (getlength, getbbox, getmetrics, size) over the fallback stack, plus `draw`."""

    def __init__(self, size: int):
        self.size = size
        self.primary = _sized(faces()[0], size)
        self._primary_codes = codepoints(faces()[0])

    def _primary_covers(self, text: str) -> bool:
        return all(ord(char) in self._primary_codes for char in text)

    def runs(self, text: str) -> list[tuple[str, Face]]:
        """`text` cut into runs of one face each; characters no font has are dropped rather than drawn as boxes."""
        if self._primary_covers(text):  # the common case, and wrapping measures a lot
            return [(text, faces()[0])] if text else []
        out: list[tuple[str, Face]] = []
        for char in text:
            face = out[-1][1] if out and _invisible(char) and ord(char) in codepoints(out[-1][1]) else face_for(char)
            if face is None:
                continue
            if out and out[-1][1] == face:
                out[-1] = (out[-1][0] + char, face)
            else:
                out.append((char, face))
        return out

    def getmetrics(self) -> tuple[int, int]:
        return self.primary.getmetrics()

    def getlength(self, text: str) -> float:
        if self._primary_covers(text):
            return self.primary.getlength(text)
        return sum(_sized(face, self.size).getlength(run) for run, face in self.runs(text))

    def getbbox(self, text: str) -> tuple[int, int, int, int]:
        """Ink box of `text` drawn at (0, 0) by `draw` (the primary font's ascender line at y = 0)."""
        ascent = self.primary.getmetrics()[0]
        x, box = 0.0, None
        for run, face in self.runs(text):
            font = _sized(face, self.size)
            left, top, right, bottom = font.getbbox(run, anchor="ls")
            run_box = (round(x) + left, ascent + top, round(x) + right, ascent + bottom)
            box = run_box if box is None else (min(box[0], run_box[0]), min(box[1], run_box[1]),
                                               max(box[2], run_box[2]), max(box[3], run_box[3]))
            x += font.getlength(run)
        return box or (0, 0, 0, 0)

    def draw(self, draw: ImageDraw.ImageDraw, origin: tuple[int, int], text: str, fill) -> None:
        """Draw `text` with its top (the primary font's ascender line) at `origin`; every run on one baseline."""
        x, baseline = float(origin[0]), origin[1] + self.primary.getmetrics()[0]
        for run, face in self.runs(text):
            font = _sized(face, self.size)
            draw.text((round(x), baseline), run, font=font, fill=fill, anchor="ls")
            x += font.getlength(run)

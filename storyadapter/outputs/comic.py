"""Comic pages with captions, laid out like StoryDiffusion's typesetting, from the manifest and PNGs alone.

Layouts:
  classic  six frames a page: a big panel beside two stacked small ones, plus a row of three
           (mirrored on every other page); a short last page uses rows of two / a splash panel.
  four     four-panel pages, 2 x 2.
  single   no typesetting: one frame a page, caption under (or above) it.

Layout (geometry, wrapped caption lines and their exact text boxes) is computed separately from
drawing, so tests can check that every caption line sits inside its panel and page.

`python -m storyadapter.outputs DIR --layout four` regenerates them (outputs/__main__.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

from ..atomic import replacing
from ..rundir import manifest
from .fonts import CaptionFont
from ..errors import UserError
from .notice import frames_notice

log = logging.getLogger(__name__)

LAYOUTS = ("classic", "four", "single")
CAPTION_POSITIONS = ("below", "above")
COMIC_DIR = "comic"
FRAMES_PER_PAGE = {"classic": 6, "four": 4, "single": 1}

# Panel unit width per layout: at least MIN so 64 px frames get readable captions, at most MAX so
# 1024 px frames do not make 3000 px pages.
_UNIT = {"classic": (256, 512), "four": (320, 640), "single": (512, 1024)}
_MIN_FONT = 12  # smallest size still readable on a printed page
_MAX_CAPTION_RATIO = 1.0  # beyond this caption/image height, shrink the font before growing the panel
_INK = (20, 20, 20)
_PAPER = (255, 255, 255)
_PAGE = (246, 243, 236)
_NOTICE_INK = (92, 60, 0)
_NOTICE_BAND = (255, 243, 205)


@dataclass(frozen=True)
class Box:
    x0: int
    y0: int
    x1: int
    y1: int

    def contains(self, other: "Box") -> bool:
        return self.x0 <= other.x0 and self.y0 <= other.y0 and other.x1 <= self.x1 and other.y1 <= self.y1

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0


@dataclass(frozen=True)
class PanelLayout:
    slot: int  # position of the frame in the page's input sequence
    panel: Box  # bordered panel: image + caption
    image: Box
    caption: Box | None
    font_size: int
    lines: tuple[str, ...]
    line_boxes: tuple[Box, ...]  # exact ink box of each drawn line, page coordinates
    line_origins: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class PageLayout:
    width: int
    height: int
    panels: tuple[PanelLayout, ...]

    @property
    def box(self) -> Box:
        return Box(0, 0, self.width, self.height)


# ---------------------------------------------------------------- text


def font_path() -> Path:
    """DejaVu Sans ships with matplotlib, so no system font is assumed."""
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"


@lru_cache(maxsize=64)
def load_font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(font_path()), size)


@lru_cache(maxsize=64)
def caption_font(size: int) -> CaptionFont:
    """Captions may be in any script: DejaVu Sans, then per character the Noto font that has the glyph."""
    return CaptionFont(size)


def _line_height(font: CaptionFont) -> int:
    ascent, descent = font.getmetrics()
    return ascent + descent + max(2, font.size // 5)


def wrap_text(text: str, font: CaptionFont, width: int) -> list[str]:
    """Greedy word wrap to `width` pixels; words longer than a line are split by characters."""
    lines: list[str] = []
    for paragraph in text.splitlines() or [""]:
        current = ""
        for word in paragraph.split():
            candidate = f"{current} {word}" if current else word
            if font.getlength(candidate) <= width:
                current = candidate
                continue
            if current:
                lines.append(current)
                current = ""
            while font.getlength(word) > width:  # e.g. a URL: break it where it overflows
                cut = max(1, max(k for k in range(1, len(word) + 1) if k == 1 or font.getlength(word[:k]) <= width))
                lines.append(word[:cut])
                word = word[cut:]
            current = word
        if current:
            lines.append(current)
    return lines


@dataclass(frozen=True)
class _Caption:
    font_size: int
    lines: tuple[str, ...]
    height: int  # including padding


def _fit_caption(text: str, width: int, image_height: int, base_size: int) -> _Caption:
    """Wrap at the base size; shrink the font while the caption dwarfs the image. Never truncates:
    whatever remains too long makes the panel taller instead."""
    text = " ".join(text.split())  # captions are one paragraph; folds stray newlines from files
    if not text:
        return _Caption(base_size, (), 0)
    size = base_size
    while True:
        font = caption_font(size)
        pad = max(4, size // 2)
        lines = tuple(wrap_text(text, font, width - 2 * pad))
        height = len(lines) * _line_height(font) + 2 * pad
        if height <= _MAX_CAPTION_RATIO * image_height or size <= _MIN_FONT:
            return _Caption(size, lines, height)
        size -= 1


# ---------------------------------------------------------------- geometry


@dataclass(frozen=True)
class _Column:
    units: float  # width in panel units
    stack: int  # panels stacked vertically


# Rows are columns side by side; a column of width u units is u*U + (u-1)*gutter px wide, so a big
# two-unit panel lines up with two small panels below it.
_ROWS = {
    "three": (_Column(1, 1), _Column(1, 1), _Column(1, 1)),
    "big_left": (_Column(2, 1), _Column(1, 2)),
    "big_right": (_Column(1, 2), _Column(2, 1)),
    "two": (_Column(1.5, 1), _Column(1.5, 1)),
    "one": (_Column(3, 1),),
    "pair": (_Column(1, 1), _Column(1, 1)),
    "half": (_Column(1, 1),),
    "solo": (_Column(1, 1),),
}


def _page_rows(layout: str, page: int, count: int) -> list[str]:
    """Row templates of one page holding `count` frames."""
    if layout == "single":
        return ["solo"]
    if layout == "four":
        return ["pair"] * (count // 2) + ["half"] * (count % 2)
    full = ["big_left", "three"] if page % 2 == 0 else ["three", "big_right"]
    big = "big_left" if page % 2 == 0 else "big_right"
    return {6: full, 5: [big, "two"], 4: ["two", "two"], 3: [big], 2: ["two"], 1: ["one"]}[count]


def page_count(n_frames: int, layout: str) -> int:
    per = FRAMES_PER_PAGE[layout]
    return (n_frames + per - 1) // per


def unit_width(layout: str, frame_width: int) -> int:
    lo, hi = _UNIT[layout]
    return max(lo, min(hi, frame_width))


def layout_pages(
    captions: Sequence[str],
    frame_size: tuple[int, int],
    layout: str = "classic",
    caption_position: str = "below",
) -> list[PageLayout]:
    """Geometry of every page for frames with these captions, all of pixel size (width, height)."""
    if layout not in LAYOUTS:
        raise UserError(f"comic.layout={layout}: expected one of {', '.join(LAYOUTS)}")
    if caption_position not in CAPTION_POSITIONS:
        raise UserError(f"comic.caption_position={caption_position}: expected one of {', '.join(CAPTION_POSITIONS)}")
    fw, fh = frame_size
    unit = unit_width(layout, fw)
    gutter = max(8, unit // 16)
    border = max(2, unit // 128)
    base_font = max(_MIN_FONT + 2, round(unit * 0.055))
    columns_wide = 1 if layout == "single" else (2 if layout == "four" else 3)
    inner_width = columns_wide * unit + (columns_wide - 1) * gutter
    per = FRAMES_PER_PAGE[layout]

    def col_width(units: float) -> int:
        return round(units * unit + (units - 1) * gutter)

    pages = []
    for p in range(page_count(len(captions), layout)):
        first = p * per
        count = min(per, len(captions) - first)
        slot = first
        y = gutter
        panels: list[PanelLayout] = []
        for row in _page_rows(layout, p, count):
            # Natural heights first, then stretch the shorter columns' panels so the row is flush.
            planned = []
            for col in _ROWS[row]:
                w = col_width(col.units)
                inner = w - 2 * border
                img_h = round(inner * fh / fw)
                cells = []
                for _ in range(col.stack):
                    cap = _fit_caption(captions[slot], inner, img_h, base_font)
                    cells.append((slot, img_h, cap, img_h + cap.height + 2 * border))
                    slot += 1
                planned.append((w, cells))
            row_h = max(sum(c[3] for c in cells) + gutter * (len(cells) - 1) for _, cells in planned)
            x = gutter
            for w, cells in planned:
                natural = sum(c[3] for c in cells) + gutter * (len(cells) - 1)
                extra, cy = row_h - natural, y
                for k, (s, img_h, cap, h) in enumerate(cells):
                    share = extra // len(cells) + (1 if k < extra % len(cells) else 0)
                    panels.append(_panel(s, x, cy, w, h + share, img_h, cap, border, caption_position))
                    cy += h + share + gutter
                x += w + gutter
            y += row_h + gutter
        pages.append(PageLayout(width=inner_width + 2 * gutter, height=y, panels=tuple(panels)))
    return pages


def _panel(slot: int, x: int, y: int, w: int, h: int, img_h: int, cap: _Caption, border: int, position: str) -> PanelLayout:
    panel = Box(x, y, x + w, y + h)
    inner = Box(x + border, y + border, x + w - border, y + h - border)
    if position == "below":
        image = Box(inner.x0, inner.y0, inner.x1, inner.y0 + img_h)
        caption = Box(inner.x0, image.y1, inner.x1, inner.y1)
    else:
        image = Box(inner.x0, inner.y1 - img_h, inner.x1, inner.y1)
        caption = Box(inner.x0, inner.y0, inner.x1, image.y0)
    if not cap.lines:
        return PanelLayout(slot, panel, image, None, cap.font_size, (), (), ())
    font = caption_font(cap.font_size)
    lh = _line_height(font)
    # The caption box may have been stretched to make the row flush: keep the text against the image.
    block = len(cap.lines) * lh
    pad = (cap.height - block) // 2
    top = caption.y0 + pad if position == "below" else caption.y1 - pad - block
    ty = top + max(1, (lh - sum(font.getmetrics())) // 2)
    boxes, origins = [], []
    for line in cap.lines:
        tx = caption.x0 + (caption.width - round(font.getlength(line))) // 2
        l, t, r, b = font.getbbox(line)
        origins.append((tx, ty))
        boxes.append(Box(tx + l, ty + t, tx + r, ty + b))
        ty += lh
    return PanelLayout(slot, panel, image, caption, cap.font_size, cap.lines, tuple(boxes), tuple(origins))


# ---------------------------------------------------------------- drawing


def fit_image(image: Image.Image, box: Box) -> Image.Image:
    """Resize a frame into its panel: nearest for big upscales of tiny frames (crisp, honest pixels),
    Lanczos otherwise."""
    image = image.convert("RGB")
    if image.size == (box.width, box.height):
        return image
    big_upscale = box.width >= 3 * image.width
    return image.resize((box.width, box.height), Image.NEAREST if big_upscale else Image.LANCZOS)


def render_page(page: PageLayout, images: Sequence[Image.Image]) -> Image.Image:
    """Draw a page; `images[p.slot]` is the frame of each panel."""
    canvas = Image.new("RGB", (page.width, page.height), _PAGE)
    draw = ImageDraw.Draw(canvas)
    for p in page.panels:
        border = p.image.x0 - p.panel.x0
        draw.rectangle([p.panel.x0, p.panel.y0, p.panel.x1 - 1, p.panel.y1 - 1], fill=_PAPER, outline=_INK, width=border)
        canvas.paste(fit_image(images[p.slot], p.image), (p.image.x0, p.image.y0))
        if p.lines:
            font = caption_font(p.font_size)
            for line, origin in zip(p.lines, p.line_origins):
                font.draw(draw, origin, line, _INK)
    return canvas


def with_notice(page: Image.Image, text: str) -> Image.Image:
    """The page below a band that carries `text` (notice.py): the first page says what its frames are.
    A band above the page, not over it, so no panel is covered."""
    font = caption_font(max(_MIN_FONT, round(page.width * 0.022)))
    pad = max(8, page.width // 48)  # about the panels' gutter
    lines = wrap_text(text, font, page.width - 2 * pad)
    band = len(lines) * _line_height(font) + 2 * pad
    canvas = Image.new("RGB", (page.width, page.height + band), _NOTICE_BAND)
    canvas.paste(page, (0, band))
    draw = ImageDraw.Draw(canvas)
    for n, line in enumerate(lines):
        font.draw(draw, (pad, pad + n * _line_height(font)), line, _NOTICE_INK)
    return canvas


def page_filename(page: int, n_pages: int) -> str:
    """page_01.png ...; more digits once there are more than 99 pages, so names still sort."""
    return f"page_{page:0{max(2, len(str(n_pages)))}d}.png"


def _save_atomic(image: Image.Image, path: Path) -> None:
    with replacing(path) as tmp:
        image.save(tmp, optimize=False)


def resolve_iteration(out_dir: Path, iteration: int | None) -> int:
    done = manifest.finished_iterations_or_fail(out_dir)
    if iteration is None:
        return done[-1]
    if iteration not in done:
        raise UserError(f"{out_dir}: iteration {iteration} is not finished (have {', '.join(map(str, done))})")
    return iteration


def write_comic(
    out_dir: Path, iteration: int | None = None, layout: str = "classic", caption_position: str = "below"
) -> list[Path]:
    """Write DIR/comic/page_NN.png for one iteration (default: the last finished one). The first page carries
    the render's notice, if it has one (notice.py)."""
    from .metrics import load_image

    out_dir = Path(out_dir)
    it = resolve_iteration(out_dir, iteration)
    records = manifest.read_records(out_dir, it)
    first = load_image(out_dir / records[0].image_path)
    pages = layout_pages([r.caption or "" for r in records], first.size, layout, caption_position)
    notice = frames_notice(out_dir)
    comic_dir = out_dir / COMIC_DIR
    comic_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for n, page in enumerate(pages, start=1):
        # Load only this page's frames: a 100-frame story at 1024 px does not fit comfortably in memory.
        frames = {p.slot: load_image(out_dir / records[p.slot].image_path) for p in page.panels}
        path = comic_dir / page_filename(n, len(pages))
        image = render_page(page, frames)
        _save_atomic(with_notice(image, notice) if notice and n == 1 else image, path)
        written.append(path)
    # Pages from an earlier run with another layout or story length would otherwise linger and be linked.
    keep = {p.name for p in written}
    for stale in comic_dir.glob("page_*.png"):
        if stale.name not in keep:
            stale.unlink()
    return written

"""Things people look at besides the comic: an animated strip, an iteration contact sheet, and a
self-contained static index.html. All built from the manifest and PNGs alone; all links relative.

The strip and the index show thumbnails (thumbs.py) so they stay light at thousands of frames; the index links
each thumbnail to its full-size frame, and the comic pages stay full size."""

from __future__ import annotations

import html
import json
from pathlib import Path
from urllib.parse import quote

import numpy as np
from PIL import Image, ImageDraw

from ..atomic import replacing
from ..rundir import manifest
from .gif import write_gif_streaming
from .thumbs import THUMB_MAX, thumbnail
from .comic import COMIC_DIR, Box, fit_image, load_font, resolve_iteration
from ..rundir.manifest import FrameRecord
from .metrics import METRICS_JSON, METRICS_PNG, load_image
from .notice import frames_notice, recorded

GIF_NAME = "story.gif"
SHEET_NAME = "iterations.png"
INDEX_NAME = "index.html"

GIF_SECONDS = 1.0
GIF_WIDTH = THUMB_MAX  # tiny frames are upscaled to be visible, big ones shown as their thumbnails

# Contact sheet geometry (public so tests can predict the size).
THUMB = 128  # thumbnail width; height follows the frame aspect
GAP = 6
LABEL_W = 96  # left column: iteration number and reference scale
HEADER_H = 24  # top row: frame numbers


def _gif_size(frame_size: tuple[int, int]) -> tuple[int, int]:
    w, h = frame_size
    return GIF_WIDTH, max(1, round(h * GIF_WIDTH / w))


def write_gif(out_dir: Path, iteration: int | None = None) -> Path:
    """DIR/story.gif: the final iteration's frames, about a second each, looping; one frame in memory at a time."""
    out_dir = Path(out_dir)
    records = manifest.read_records(out_dir, resolve_iteration(out_dir, iteration))
    thumbs = [thumbnail(out_dir, r.image_path) for r in records]
    box = Box(0, 0, *_gif_size(thumbs[0][1]))
    path = out_dir / GIF_NAME
    write_gif_streaming(path, (fit_image(load_image(out_dir / rel), box) for rel, _ in thumbs),
                        duration_ms=int(GIF_SECONDS * 1000))
    return path


def sample_columns(n_frames: int, max_columns: int) -> list[int]:
    """Evenly spaced frame indices, always including the first and last frame."""
    if n_frames <= max_columns:
        return list(range(n_frames))
    return sorted({int(round(x)) for x in np.linspace(0, n_frames - 1, max_columns)})


def contact_sheet_size(n_rows: int, n_columns: int, frame_size: tuple[int, int]) -> tuple[int, int]:
    th = max(1, round(frame_size[1] * THUMB / frame_size[0]))
    return LABEL_W + n_columns * (THUMB + GAP) + GAP, HEADER_H + n_rows * (th + GAP) + GAP


def write_contact_sheet(out_dir: Path, max_columns: int = 8) -> Path:
    """DIR/iterations.png: one row per iteration (labelled), columns an even sample of frames,
    so refinement across iterations can be seen at a glance."""
    out_dir = Path(out_dir)
    iterations = manifest.finished_iterations_or_fail(out_dir)
    first = manifest.read_records(out_dir, iterations[0])
    # The last iteration's frames: an edit that inserted or removed frames changed only the last iteration's story.
    columns = sample_columns(len(manifest.read_records(out_dir, iterations[-1])), max(1, max_columns))
    frame_size = load_image(out_dir / first[0].image_path).size
    width, height = contact_sheet_size(len(iterations), len(columns), frame_size)
    th = max(1, round(frame_size[1] * THUMB / frame_size[0]))
    sheet = Image.new("RGB", (width, height), (250, 250, 250))
    draw = ImageDraw.Draw(sheet)
    font = load_font(13)
    small = load_font(11)
    for c, frame in enumerate(columns):
        draw.text((LABEL_W + GAP + c * (THUMB + GAP), 5), f"frame {frame}", font=small, fill=(60, 60, 60))
    for r, it in enumerate(iterations):
        records = {rec.frame: rec for rec in manifest.read_records(out_dir, it)}
        y = HEADER_H + r * (th + GAP)
        scale = next(iter(records.values())).scale
        draw.text((GAP, y + 4), f"iter {it:02d}", font=font, fill=(20, 20, 20))
        draw.text((GAP, y + 22), "text only" if it == 0 else f"scale {scale:.2f}", font=small, fill=(90, 90, 90))
        for c, frame in enumerate(columns):
            if frame not in records:
                continue
            thumb_rel, _ = thumbnail(out_dir, records[frame].image_path)
            thumb = fit_image(load_image(out_dir / thumb_rel), Box(0, 0, THUMB, th))
            sheet.paste(thumb, (LABEL_W + GAP + c * (THUMB + GAP), y))
    path = out_dir / SHEET_NAME
    with replacing(path) as tmp:
        sheet.save(tmp)
    return path


# ---------------------------------------------------------------- index.html


def _href(rel: str | Path) -> str:
    """A relative URL, percent-encoded and safe inside a double-quoted attribute."""
    return html.escape(quote(Path(rel).as_posix()), quote=True)


def _esc(text: str) -> str:
    return html.escape(text, quote=True)


_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:0 auto;max-width:1200px;padding:16px;background:#f6f3ec;color:#222}
h1{margin:.2em 0}h2{margin-top:1.6em;border-bottom:1px solid #ccc}
nav a{margin-right:1em}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(180px,1fr));gap:12px}
figure{margin:0;background:#fff;border:1px solid #ddd;padding:6px}
figure img{width:100%;height:auto;image-rendering:auto;display:block}
figcaption{font-size:.9em;margin-top:4px}
figcaption .prompt{display:block;color:#777;font-size:.8em;margin-top:2px}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}
.tabs input{position:absolute;opacity:0}
.tabs label{display:inline-block;padding:4px 10px;border:1px solid #ccc;margin:0 4px 4px 0;cursor:pointer;background:#fff}
.tabs .panel{display:none;margin-top:8px}
.pages a img{height:220px;width:auto;border:1px solid #ccc;margin:4px}
.notice{background:#fff3cd;border:1px solid #d9a400;color:#5c3c00;padding:8px 12px;font-weight:600}
"""


def _figure(out_dir: Path, rec: FrameRecord) -> str:
    """A thumbnail linking to the full-size frame. Its size is given so lazy loading fetches only what is in view."""
    caption = _esc(rec.caption) if rec.caption else ""
    who = f" · {_esc(', '.join(rec.characters))}" if rec.characters else ""
    thumb, (w, h) = thumbnail(out_dir, rec.image_path)
    return (
        f'<figure><a href="{_href(rec.image_path)}"><img src="{_href(thumb)}" width="{w}" height="{h}" '
        f'alt="frame {rec.frame}" loading="lazy"></a>'
        f"<figcaption><b>{rec.frame}</b> {caption}<span class=\"prompt\">{_esc(rec.prompt)}{who}</span>"
        f"{_earlier_versions(out_dir, rec)}</figcaption></figure>"
    )


def _earlier_versions(out_dir: Path, rec: FrameRecord) -> str:
    """An edited frame (edit=true) says so and links the files it replaced, kept under edits/rev_NN/; a frame an
    edit inserted has none (its file's name was never used before: edits.py)."""
    if not rec.revision:
        return ""
    rel = Path(rec.image_path)
    kept = sorted(p for p in (Path(out_dir) / "edits").glob(f"rev_*/{rel.as_posix()}") if p.is_file())
    if not kept:
        return f'<span class="edited">new in revision {rec.revision}</span>'
    links = ", ".join(f'<a href="{_href(p.relative_to(out_dir))}">before revision {int(p.parts[-3][4:])}</a>' for p in kept)
    return f'<span class="edited">edited (revision {rec.revision}); earlier versions: {links}</span>'


def _metrics_table(out_dir: Path) -> str:
    path = out_dir / METRICS_JSON
    if not path.is_file():
        return ""
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""  # a broken metrics file should not take the gallery down with it
    if not isinstance(rows, list):
        return ""
    cols = ["iteration", "n_frames", "clip_t", "consistency", "consistency_all", "embedding_change"]

    def cell(v: object) -> str:
        return "-" if v is None else (f"{v:.4f}" if isinstance(v, float) else _esc(str(v)))

    body = "".join("<tr>" + "".join(f"<td>{cell(r.get(c))}</td>" for c in cols) + "</tr>" for r in rows if isinstance(r, dict))
    head = "".join(f"<th>{c}</th>" for c in cols)
    plot = f'<p><img src="{_href(METRICS_PNG)}" alt="metrics per iteration" loading="lazy"></p>' if (out_dir / METRICS_PNG).is_file() else ""
    return f'<h2 id="metrics">Metrics</h2><table><tr>{head}</tr>{body}</table>{plot}'


def _photos_section(out_dir: Path) -> str:
    from ..story.photos import read_sidecar

    figures = "".join(
        f'<figure><a href="{_href(e["copy"])}"><img src="{_href(e["copy"])}" alt="photo of {_esc(str(e.get("character")))}"></a>'
        f'<figcaption><b>{_esc(str(e.get("character")))}</b><span class="prompt">{_esc(str(e.get("image")))}</span></figcaption></figure>'
        for e in read_sidecar(out_dir) if isinstance(e.get("copy"), str)
    )
    return f'<h2 id="photos">Character photos</h2><div class="grid">{figures}</div>' if figures else ""


def _story_title(out_dir: Path) -> str:
    """The story's title as the run recorded it in config.yaml; the folder's name for runs that did not."""
    title = recorded(out_dir, "title")
    return title if isinstance(title, str) and title.strip() else out_dir.resolve().name


def _notice(out_dir: Path) -> str:
    """The line that says what the frames are when they are not pictures (notice.py); empty for real weights."""
    text = frames_notice(out_dir)
    return f'<p class="notice" id="notice">{_esc(text)}</p>' if text else ""


def _summary(frames: int, iterations: int, last: int, method) -> str:
    """'12 frames, 3 iterations (final: iteration 2), method hybrid.'"""
    text = f"{frames} frame{'' if frames == 1 else 's'}, {iterations} iteration{'' if iterations == 1 else 's'} (final: iteration {last})"
    return text + (f", method {_esc(method)}." if isinstance(method, str) else ".")


def write_index(out_dir: Path) -> Path:
    """DIR/index.html: final frames with captions, per-iteration tabs (CSS only), metrics, and links
    to the comic pages, GIF and contact sheet. No scripts, no external URLs."""
    out_dir = Path(out_dir)
    iterations = manifest.finished_iterations_or_fail(out_dir)
    last = iterations[-1]
    by_iter = {it: manifest.read_records(out_dir, it) for it in iterations}
    title = _story_title(out_dir)

    nav = []
    pages = sorted((out_dir / COMIC_DIR).glob("page_*.png")) if (out_dir / COMIC_DIR).is_dir() else []
    if pages:
        nav.append('<a href="#comic">comic</a>')
    for name, label in ((GIF_NAME, "animated strip"), (SHEET_NAME, "iterations"), (METRICS_JSON, "metrics.json")):
        if (out_dir / name).is_file():
            nav.append(f'<a href="{_href(name)}">{label}</a>')

    parts = [
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">",
        '<meta name="viewport" content="width=device-width,initial-scale=1">',
        f"<title>{_esc(title)}</title><style>{_CSS}",
        # One rule per iteration shows its panel when its radio is checked: tabs without JavaScript.
        "".join(f"#tab{it}:checked~#panel{it}{{display:block}}#tab{it}:checked+label{{background:#222;color:#fff}}" for it in iterations),
        "</style></head><body>",
        f"<h1>{_esc(title)}</h1>",
        _notice(out_dir),
        f"<p>{_summary(len(by_iter[last]), len(iterations), last, recorded(out_dir, 'method', 'name'))}</p>",
        f"<nav>{''.join(nav)}</nav>",
        _photos_section(out_dir),
        f'<h2 id="final">Final frames</h2><div class="grid">{"".join(_figure(out_dir, r) for r in by_iter[last])}</div>',
    ]
    if (out_dir / GIF_NAME).is_file():
        parts.append(f'<h2 id="strip">Animated strip</h2><p><img src="{_href(GIF_NAME)}" alt="animated strip" loading="lazy"></p>')
    if pages:
        links = "".join(
            f'<a href="{_href(Path(COMIC_DIR) / p.name)}"><img src="{_href(Path(COMIC_DIR) / p.name)}" alt="{_esc(p.stem)}" loading="lazy"></a>'
            for p in pages
        )
        parts.append(f'<h2 id="comic">Comic</h2><div class="pages">{links}</div>')
    parts.append(_metrics_table(out_dir))
    if (out_dir / SHEET_NAME).is_file():
        parts.append(f'<h2 id="sheet">Iterations at a glance</h2><p><a href="{_href(SHEET_NAME)}"><img src="{_href(SHEET_NAME)}" alt="contact sheet" style="max-width:100%" loading="lazy"></a></p>')
    tabs = ['<h2 id="iterations">Every iteration</h2><div class="tabs">']
    for it in iterations:
        checked = " checked" if it == last else ""
        tabs.append(f'<input type="radio" name="iter" id="tab{it}"{checked}><label for="tab{it}">iter {it:02d}</label>')
    for it in iterations:
        figures = "".join(_figure(out_dir, r) for r in by_iter[it])
        tabs.append(f'<div class="panel" id="panel{it}"><div class="grid">{figures}</div></div>')
    tabs.append("</div>")
    parts.extend(tabs)
    parts.append("</body></html>\n")

    path = out_dir / INDEX_NAME
    with replacing(path) as tmp:
        tmp.write_text("\n".join(parts), encoding="utf-8")
    return path


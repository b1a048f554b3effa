"""Bounded-size copies of frames for the gallery and the GIF: at 1,000+ frames of 1024 px, a page or a GIF built
from the originals would weigh gigabytes. Each thumbnail is written once, beside the run's other outputs."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from ..atomic import replacing
from ..errors import UserError

THUMBS_DIR = "thumbs"  # DIR/thumbs/iter_XX/frame_XXXX.png mirrors DIR/iter_XX/frame_XXXX.png
THUMB_MAX = 256  # longest side, px


def thumbnail(out_dir: Path, rel: str) -> tuple[str, tuple[int, int]]:
    """The path (relative to out_dir) of a version of `rel` at most THUMB_MAX px, and its size.

    A frame already that small is its own thumbnail. A thumbnail older than its frame (the frame was rendered
    again) is rewritten; otherwise it is reused.
    """
    src = Path(out_dir) / rel
    try:
        return _thumbnail(Path(out_dir), rel, src)
    except (OSError, ValueError) as exc:
        raise UserError(f"{src}: cannot read image ({exc})") from exc


def _thumbnail(out_dir: Path, rel: str, src: Path) -> tuple[str, tuple[int, int]]:
    with Image.open(src) as im:  # reads the header only
        size = im.size
        if max(size) <= THUMB_MAX:
            return rel, size
        dst_rel = (Path(THUMBS_DIR) / rel).as_posix()
        dst = out_dir / dst_rel
        if dst.is_file() and dst.stat().st_mtime_ns >= src.stat().st_mtime_ns:
            with Image.open(dst) as done:
                return dst_rel, done.size
        im = im.convert("RGB")
        im.thumbnail((THUMB_MAX, THUMB_MAX), Image.Resampling.LANCZOS, reducing_gap=3.0)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with replacing(dst) as tmp:
        im.save(tmp, format="PNG")
    return dst_rel, im.size

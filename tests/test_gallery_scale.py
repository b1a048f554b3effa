"""Outputs for long stories of big frames: bounded thumbnails in the index and the GIF, lazy images, bounded memory."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from storyadapter.outputs import gallery
from storyadapter.rundir import manifest
from storyadapter.rundir.manifest import FrameRecord
from storyadapter.outputs.thumbs import THUMB_MAX, THUMBS_DIR, thumbnail

ROOT = Path(__file__).resolve().parents[1]


def big_render_dir(out: Path, n_frames: int, size: tuple[int, int], iterations: int = 2) -> Path:
    """A render dir whose frames are smooth gradients (cheap to write, and resampling keeps them recognisable)."""
    w, h = size
    for it in range(iterations):
        folder = out / manifest.iteration_dirname(it)
        folder.mkdir(parents=True, exist_ok=True)
        records = []
        for f in range(n_frames):
            x = np.linspace(0, 255, w, dtype=np.float32)[None, :, None]
            y = np.linspace(0, 255, h, dtype=np.float32)[:, None, None]
            pixels = np.broadcast_to((x * (f % 3) + y * (it + 1) + 40 * f) % 256, (h, w, 3)).astype(np.uint8)
            Image.fromarray(np.ascontiguousarray(pixels)).save(folder / manifest.frame_filename(f), compress_level=1)
            records.append(FrameRecord(iteration=it, frame=f, prompt=f"scene {f}", caption=f"caption {f}", characters=(),
                                       seed=1, scale=0.3 * it, image_path=f"{manifest.iteration_dirname(it)}/{manifest.frame_filename(f)}",
                                       embedding=np.ones(4, dtype=np.float32)))
        manifest.write_part(out, records)
    return out


class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images: list[dict] = []
        self._href = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "a":
            self._href = a.get("href")
        if tag == "img":
            self.images.append({**a, "parent_href": self._href})

    def handle_endtag(self, tag):
        if tag == "a":
            self._href = None


def test_index_and_gif_use_bounded_thumbnails_linking_to_full_frames(tmp_path):
    out = big_render_dir(tmp_path / "run", 6, (600, 400))
    gallery.write_gif(out)
    gallery.write_index(out)

    for it in range(2):
        for f in range(6):
            with Image.open(out / THUMBS_DIR / manifest.iteration_dirname(it) / manifest.frame_filename(f)) as t:
                assert max(t.size) == THUMB_MAX and t.size == (256, 171)  # aspect kept

    parser = _Images()
    parser.feed((out / "index.html").read_text(encoding="utf-8"))
    assert parser.images and all(img.get("loading") == "lazy" for img in parser.images)
    frames = [img for img in parser.images if img["alt"].startswith("frame ")]
    assert len(frames) == 6 + 2 * 6  # final grid + one tab per iteration
    for img in frames:
        assert img["src"].startswith(f"{THUMBS_DIR}/iter_") and (out / img["src"]).is_file()
        assert (img["width"], img["height"]) == ("256", "171")
        # the thumbnail opens the full-size frame
        assert img["parent_href"] == img["src"][len(THUMBS_DIR) + 1:]
        with Image.open(out / img["parent_href"]) as full:
            assert full.size == (600, 400)

    with Image.open(out / "story.gif") as gif:
        assert gif.n_frames == 6 and gif.size == (256, 171) and gif.info["loop"] == 0
        for f in range(6):
            gif.seek(f)
            assert gif.info["duration"] == 1000
            shown = np.asarray(gif.convert("RGB"), dtype=np.float32)
            with Image.open(out / THUMBS_DIR / "iter_01" / manifest.frame_filename(f)) as t:
                expected = np.asarray(t.convert("RGB"), dtype=np.float32)
            assert np.abs(shown - expected).mean() < 6, f  # frame f, in order, up to the 256-colour palette


def test_small_frames_are_their_own_thumbnails(tmp_path):
    out = big_render_dir(tmp_path / "run", 3, (64, 64), iterations=1)
    assert thumbnail(out, "iter_00/frame_0000.png") == ("iter_00/frame_0000.png", (64, 64))
    gallery.write_index(out)
    assert not (out / THUMBS_DIR).exists()
    with Image.open(out / gallery.write_gif(out)) as gif:
        assert gif.size == (256, 256) and gif.n_frames == 3  # tiny frames are upscaled to be visible


def test_thumbnail_written_once_and_again_when_its_frame_is_rewritten(tmp_path):
    out = big_render_dir(tmp_path / "run", 1, (512, 512), iterations=1)
    rel, _ = thumbnail(out, "iter_00/frame_0000.png")
    first = (out / rel).stat()
    assert thumbnail(out, "iter_00/frame_0000.png")[0] == rel
    assert (out / rel).stat().st_ino == first.st_ino  # reused, not rewritten
    frame = out / "iter_00/frame_0000.png"
    Image.new("RGB", (512, 512), (255, 0, 0)).save(frame)
    os.utime(frame, ns=(first.st_mtime_ns + 10**9, first.st_mtime_ns + 10**9))
    thumbnail(out, "iter_00/frame_0000.png")
    with Image.open(out / rel) as t:
        assert t.getpixel((5, 5)) == (255, 0, 0)


@pytest.mark.slow
def test_gif_of_many_big_frames_holds_one_frame_at_a_time(tmp_path):
    """40 frames of 1024²: all held at once would be 125 MB; the streamed GIF's peak stays far below."""
    out = big_render_dir(tmp_path / "run", 40, (1024, 1024), iterations=1)
    script = textwrap.dedent(f"""
        import re
        from pathlib import Path
        from storyadapter.outputs import gallery

        def hwm():
            return int(re.search(r"VmHWM:\\s+(\\d+)", Path("/proc/self/status").read_text()).group(1)) // 1024

        before = hwm()
        gallery.write_gif(Path({str(out)!r}))  # writes the thumbnails too, reading one full frame at a time
        print(before, hwm())
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    before, after = map(int, proc.stdout.split())
    full_frames_mb = 40 * 1024 * 1024 * 3 / 2**20
    assert after - before < full_frames_mb / 3, (before, after)  # measured here: +26 MB; the old save_all: +207 MB

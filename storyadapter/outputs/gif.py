"""An animated GIF written one frame at a time, so a 1,000-frame story never holds more than one frame.

PIL's `save_all` keeps every frame until the end (it merges repeats); its frame encoder (`getdata`) and
header writer (`getheader`) are public, so this only lays them out: header, one local-palette frame each, trailer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from PIL import GifImagePlugin, Image

from ..atomic import replacing


def write_gif_streaming(path: Path, frames: Iterable[Image.Image], duration_ms: int, loop: int = 0) -> int:
    """Write `frames` (all the same size) as a looping GIF at `path`, atomically. Returns the frame count."""
    count = 0
    with replacing(path) as tmp, open(tmp, "wb") as fp:
        for frame in frames:
            # Fast octree: ~10x quicker than the median-cut ADAPTIVE palette, which took minutes at 5,000 frames.
            indexed = frame.convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE)
            if count == 0:
                header, _ = GifImagePlugin.getheader(indexed, info={"loop": loop, "duration": duration_ms})
                fp.writelines(header)
            # Each frame brings its own palette: frames of a story share few colours.
            fp.writelines(GifImagePlugin.getdata(indexed, duration=duration_ms, include_color_table=True, disposal=1))
            count += 1
        if count == 0:
            raise ValueError(f"{path}: no frames to write")
        fp.write(b";")
    return count

"""Character photos: read and check each one while the story is loaded, so a bad photo is one
`story-file:line` error before any worker starts; decode the same bytes again where the model is.

The photo travels as its file bytes inside the WorkerSpec (pickled by Ray to actors on any node), and each
worker encodes it with its own CLIP image encoder once, when it starts. Bytes instead of a path: other
nodes need not see the story's folder. Bytes instead of an embedding: the driver has no model.
"""

from __future__ import annotations

import hashlib
import io
import stat
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from ..errors import UserError

MAX_PHOTO_BYTES = 20 * 1024 * 1024
MAX_PHOTO_PIXELS = 40_000_000  # 40 MP: any camera photo; a decompression bomb claims far more


@dataclass(frozen=True)
class CharacterPhoto:
    character: str
    path: str  # as written in the story file
    data: bytes = field(repr=False)  # the file's bytes
    sha256: str
    size: tuple[int, int]  # width, height
    line: int  # where the story names it


class PhotoError(UserError):
    pass


def load_photo(written: str, story_path: str, line: int, character: str) -> CharacterPhoto:
    """Read and check the photo `written` (relative to the story file) of `character`, or raise a one-line
    `story_path:line: photo '...' of NAME: what` error."""
    def fail(what: str) -> PhotoError:
        return PhotoError(f"{story_path}:{line}: photo {written!r} of {character}: {what}")

    path = Path(written).expanduser()
    if not path.is_absolute():
        path = Path(story_path).parent / path
    try:
        st = path.stat()
        if stat.S_ISDIR(st.st_mode):
            raise fail("is a directory, not an image")
        if not stat.S_ISREG(st.st_mode):
            raise fail("not a regular file")
        if st.st_size > MAX_PHOTO_BYTES:
            raise fail(f"file too large ({st.st_size} bytes; limit {MAX_PHOTO_BYTES // (1024 * 1024)} MiB)")
        with open(path, "rb") as fh:
            data = fh.read(MAX_PHOTO_BYTES + 1)
    except FileNotFoundError:
        raise fail(f"no such file ({path})") from None
    except OSError as exc:
        raise fail(f"cannot read file: {exc.strerror or exc}") from None
    if len(data) > MAX_PHOTO_BYTES:
        raise fail(f"file too large (over {MAX_PHOTO_BYTES // (1024 * 1024)} MiB)")
    try:
        image = decode(data)
    except ValueError as exc:
        raise fail(str(exc)) from None
    return CharacterPhoto(character, written, data, hashlib.sha256(data).hexdigest(), image.size, line)


def decode(data: bytes) -> Image.Image:
    """The photo as a fully loaded RGB image; ValueError saying what is wrong with it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own, lower limit is checked below
        try:
            im = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError:  # PIL's own, higher limit
            raise ValueError(f"too many pixels (limit {MAX_PHOTO_PIXELS}; a decompression bomb?)") from None
        except UnidentifiedImageError:
            raise ValueError("not an image (PIL cannot identify it; use PNG or JPEG)") from None
        with im:
            width, height = im.size
            if width * height > MAX_PHOTO_PIXELS:  # before decoding a single pixel
                raise ValueError(f"too many pixels ({width}x{height}; limit {MAX_PHOTO_PIXELS}; a decompression bomb?)")
            if getattr(im, "n_frames", 1) > 1:
                raise ValueError(f"animated image ({im.n_frames} frames); use a still photo")
            try:
                im.load()
            except (OSError, SyntaxError, ValueError) as exc:  # truncated or corrupt data
                raise ValueError(f"cannot decode it ({exc})") from None
            try:
                return im.convert("RGB")
            except (OSError, ValueError) as exc:
                raise ValueError(f"cannot convert its {im.mode} pixels to RGB ({exc})") from None


PHOTOS_JSON = "photos.json"
PHOTOS_DIR = "photos"


def write_sidecar(out_dir: Path, photos: dict[str, CharacterPhoto]) -> Path | None:
    """DIR/photos.json and a copy of each photo under DIR/photos/: which photo each character used.

    The manifest's columns stay as DESIGN.md fixes them; this file sits beside it. Rewritten (atomically)
    at every start: on resume the fingerprint already guarantees the same photos.
    """
    if not photos:
        return None
    import json

    from ..atomic import replacing

    (out_dir / PHOTOS_DIR).mkdir(parents=True, exist_ok=True)
    entries = []
    for i, (name, photo) in enumerate(photos.items()):
        # Numbered, not named after the character: a name may hold characters no file system likes.
        rel = f"{PHOTOS_DIR}/character_{i:02d}{Path(photo.path).suffix.lower() or '.img'}"
        with replacing(out_dir / rel) as tmp:
            tmp.write_bytes(photo.data)
        entries.append({"character": name, "image": photo.path, "copy": rel, "sha256": photo.sha256,
                        "width": photo.size[0], "height": photo.size[1]})
    path = out_dir / PHOTOS_JSON
    with replacing(path) as tmp:
        tmp.write_text(json.dumps(entries, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def read_sidecar(out_dir: Path) -> list[dict]:
    """The entries of DIR/photos.json; [] when there is none or it is unreadable (the gallery must not fail)."""
    import json

    try:
        entries = json.loads((Path(out_dir) / PHOTOS_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []

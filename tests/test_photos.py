"""Character photos: parsing, the one-line error for every bad photo, and their effect on iteration 0."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from storyadapter.errors import UserError
from storyadapter.story.photos import MAX_PHOTO_PIXELS, decode
from storyadapter.story.parse import load_story

from .helpers import EXAMPLES, REPO


def png_bytes(size=(24, 24), color=(200, 30, 30), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format="PNG")
    return buf.getvalue()


def yaml_story(tmp_path: Path, image: str) -> Path:
    path = tmp_path / "story.yaml"
    path.write_text(
        "title: t\n"
        "characters:\n"
        "  Ana: a girl with a blue scarf\n"
        "  Tom:\n"
        "    description: a boy with a red cap\n"
        f"    image: {image}\n"
        "frames:\n"
        "  - '[Tom] walks home'\n"
        "  - '[Ana] reads'\n",
        encoding="utf-8")
    return path


def test_yaml_json_and_txt_forms_read_the_photo_relative_to_the_story(tmp_path):
    (tmp_path / "pics").mkdir()
    data = png_bytes()
    (tmp_path / "pics" / "tom.png").write_bytes(data)
    s = load_story(yaml_story(tmp_path, "pics/tom.png"))
    assert list(s.photos) == ["Tom"] and s.photos["Tom"].data == data and s.photos["Tom"].line == 4
    assert s.characters["Tom"] == "a boy with a red cap" and s.frames[0].characters == ("Tom",)

    j = tmp_path / "story.json"
    j.write_text('{"characters": {"Tom": {"description": "a boy", "image": "pics/tom.png"}}, "frames": ["[Tom] runs"]}')
    assert load_story(j).photos["Tom"].sha256 == s.photos["Tom"].sha256

    t = tmp_path / "story.txt"
    t.write_text("[Tom] a boy with a red cap (photo: pics/tom.png)\n[Ana] a girl\n\n[Tom] waves\n[Ana] reads\n")
    st = load_story(t)
    assert st.characters["Tom"] == "a boy with a red cap" and st.photos["Tom"].path == "pics/tom.png"
    assert "photo" not in st.frames[0].prompt and "Ana" not in st.photos

    shipped = load_story(EXAMPLES / "kite_photo.yaml")
    assert shipped.photos["Tom"].size == (160, 160)


def _bomb_png(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose header claims width x height pixels (PIL reads the header only)."""
    data = bytearray(png_bytes((1, 1)))
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr : ihdr + 17])) & 0xFFFFFFFF
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", crc)
    return bytes(data)


def _animated_gif() -> bytes:
    buf = io.BytesIO()
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=100)
    return buf.getvalue()


BAD = {
    "missing": (None, "no such file"),
    "directory": ("dir", "is a directory"),
    "not an image": (b"this is a text file, not a picture\n", "not an image"),
    "truncated": (None, "cannot decode"),
    "bomb": (_bomb_png(50_000, 50_000), "too many pixels (limit"),  # past PIL's own limit
    "too many pixels": (_bomb_png(8_000, 6_000), "too many pixels (8000x6000"),  # past ours only
    "animated": (_animated_gif(), "animated"),
}


def _truncated_png() -> bytes:
    rng = np.random.default_rng(0)  # noise does not compress: cutting the file cuts pixel data
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()[: len(buf.getvalue()) // 2]


@pytest.mark.parametrize("case", list(BAD))
def test_every_bad_photo_is_one_line_naming_story_line_and_photo(tmp_path, case):
    content, expected = BAD[case]
    name = "tom.png"
    if case == "directory":
        (tmp_path / name).mkdir()
    elif case == "truncated":
        (tmp_path / name).write_bytes(_truncated_png())
    elif content is not None:
        (tmp_path / name).write_bytes(content)
    story = yaml_story(tmp_path, name)
    with pytest.raises(UserError) as err:
        load_story(story)
    msg = str(err.value)
    assert msg.startswith(f"{story}:4: photo 'tom.png' of Tom: "), msg
    assert expected in msg and "\n" not in msg


def test_cmyk_is_converted_and_an_unconvertible_mode_is_refused(tmp_path, monkeypatch):
    buf = io.BytesIO()
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(buf, format="JPEG")
    rgb = decode(buf.getvalue())
    assert rgb.mode == "RGB" and rgb.getpixel((4, 4))[0] > 200  # cyan-free, magenta+yellow: red
    (tmp_path / "tom.jpg").write_bytes(buf.getvalue())

    def refuse(self, mode=None, *a, **k):
        raise ValueError(f"conversion from {self.mode} to {mode} not supported")

    monkeypatch.setattr(Image.Image, "convert", refuse)
    with pytest.raises(UserError, match=r"story.yaml:4: photo 'tom.jpg' of Tom: cannot convert its CMYK pixels to RGB"):
        load_story(yaml_story(tmp_path, "tom.jpg"))


def test_pixel_limit_is_well_above_camera_photos():
    assert MAX_PHOTO_PIXELS >= 24_000_000


def test_cli_reports_a_bad_photo_in_one_line_before_anything_starts(tmp_path, tiny_cache):
    (tmp_path / "tom.png").write_bytes(b"GIF89a but not really")
    story = yaml_story(tmp_path, "tom.png")
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "storyadapter.launch", f"story.path={story}", "model=tiny", f"model.cache_dir={tiny_cache}",
         "render=tiny", f"output_dir={out}"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines == [f"error: {story}:4: photo 'tom.png' of Tom: not an image (PIL cannot identify it; use PNG or JPEG)"], proc.stderr
    assert not out.exists()


# ----------------------------------------------------------------- on the tiny pipeline


def test_photo_changes_iteration_0_frames_naming_its_character_and_no_others(tmp_path, tiny_source):
    from storyadapter.worker.renderer import RenderSettings
    from storyadapter.worker.frame_worker import FramePrompt, FrameWorker, WorkerSpec

    (tmp_path / "tom.png").write_bytes((EXAMPLES / "tom.png").read_bytes())
    story_path = tmp_path / "s.txt"
    story_path.write_text("[Tom] a boy with a red cap (photo: tom.png)\n[Ana] a girl with a blue scarf\n\n"
                          "[Tom] walks to school\n[Ana] reads a book\n[NC] an empty street\n[Ana] and [Tom] play chess\n")
    story = load_story(story_path)

    def spec(photos, weighting="uniform"):
        return WorkerSpec(source=tiny_source, settings=RenderSettings(steps=2, height=64, width=64),
                          prompts=tuple(FramePrompt(*story.styled(f), characters=f.characters) for f in story.frames),
                          out_dir=str(tmp_path / f"out-{len(photos)}-{weighting}"), seed=5, seed_policy="shared",
                          threads=1, photos=photos, reference_weighting=weighting, character_weight=4.0)

    def iteration_0(worker, scale):
        worker.begin_iteration(0, None, scale)
        batch = worker.render_batch(0, [0, 1, 2, 3])  # one batch: photo and photo-less frames together
        return [np.asarray(Image.open(Path(worker.spec.out_dir) / r.image_path)) for r in batch.frames]

    text_only = iteration_0(FrameWorker(spec(())), 0.0)  # today's iteration 0
    with_photo = FrameWorker(spec(tuple(story.photos.values()), "characters"))
    assert with_photo.image_encodes == 1  # the photo, encoded once when the worker starts
    got = iteration_0(with_photo, 0.3)
    assert not np.array_equal(got[0], text_only[0]) and not np.array_equal(got[3], text_only[3])
    assert np.array_equal(got[1], text_only[1]) and np.array_equal(got[2], text_only[2])  # bitwise
    assert with_photo.image_encodes == 1 + 4


def test_web_ui_request_carries_photos_into_the_job_folder(tmp_path):
    import base64

    from storyadapter.webui.jobs import MAX_PHOTO_UPLOAD_BYTES, RenderQueue, RenderRequest

    story = "[Tom] a boy with a red cap (photo: tom.png)\n\n[Tom] waves\n[NC] a beach\n"
    photo = (EXAMPLES / "tom.png").read_bytes()
    request = RenderRequest.from_json({"story": story, "photos": {"tom.png": base64.b64encode(photo).decode()}})
    assert request.photos == (("tom.png", photo),)
    for bad, what in (({"../tom.png": "AAAA"}, "not a plain"), ({"tom.png": "no base64!"}, "not valid base64"),
                      ({"tom.png": "A" * (MAX_PHOTO_UPLOAD_BYTES * 2)}, "over 4 MiB")):
        with pytest.raises(UserError, match=f"request.photos.*{what}"):
            RenderRequest.from_json({"story": story, "photos": bad})

    renders = RenderQueue(tmp_path / "runs")
    renders._pending.put(None)  # stop its render thread first: this test checks the job folder, not a render
    renders._thread.join(timeout=30)
    try:
        with pytest.raises(UserError, match=r"^story.txt:1: photo 'tom.png' of Tom: not an image"):
            renders.submit(RenderRequest.from_json({"story": story, "photos": {"tom.png": base64.b64encode(b"nope").decode()}}))
        assert not any((tmp_path / "runs").iterdir())  # nothing of a refused request stays behind
        job = renders.submit(request)
        assert (job.folder / "tom.png").read_bytes() == photo and job.frames == 2 and job.state == "queued"
    finally:
        renders.close()

"""Frames are written in the background, but a batch is reported only after its files are durable,
and a failed write fails the batch."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest
from PIL import Image

from storyadapter.worker import frame_writer
from storyadapter.worker.frame_writer import FrameWriter
from storyadapter.worker.renderer import RenderSettings
from storyadapter.worker.frame_worker import FramePrompt, FrameWorker, WorkerSpec


@pytest.fixture(scope="module")
def worker(tiny_source, tmp_path_factory):
    prompts = tuple(FramePrompt(f"a paper boat on a pond, view {i}", "") for i in range(3))
    spec = WorkerSpec(tiny_source, RenderSettings(steps=2, height=64, width=64), prompts,
                      str(tmp_path_factory.mktemp("frames")), seed=3, seed_policy="per_frame", device="cpu",
                      dtype="float32", threads=1)
    w = FrameWorker(spec)
    w.begin_iteration(0, None, 0.0)
    return w


def test_batch_returns_after_its_files_are_durable_and_writes_overlap_the_clip_pass(worker, monkeypatch):
    events = []
    real_write = frame_writer.write_png_durably

    def slow_write(image, path):
        events.append(("write start", path.name, time.perf_counter()))
        time.sleep(0.3)
        real_write(image, path)
        events.append(("write done", path.name, time.perf_counter()))

    real_embed = worker.renderer.embed_images

    def embed(images):
        events.append(("embed start", None, time.perf_counter()))
        return real_embed(images)

    monkeypatch.setattr(frame_writer, "write_png_durably", slow_write)
    monkeypatch.setattr(worker.renderer, "embed_images", embed)
    result = worker.render_batch(0, [0, 1])
    returned = time.perf_counter()

    done = [t for kind, _, t in events if kind == "write done"]
    assert len(done) == 2 and max(done) <= returned  # nothing reported before its file is written and fsynced
    embed_start = next(t for kind, _, t in events if kind == "embed start")
    assert embed_start < min(done)  # the CLIP pass did not wait for the PNGs
    out = worker.spec.out_dir
    for fr in result.frames:
        with Image.open(f"{out}/{fr.image_path}") as im:
            assert im.size == (64, 64)
    assert result.frames[0].embedding.shape == (worker.embedding_dim,)


def test_failed_write_fails_the_batch(worker):
    out = worker.spec.out_dir
    blocker = f"{out}/iter_00/frame_0002.png"
    os.makedirs(f"{blocker}/in-the-way", exist_ok=True)  # a directory where the frame's file should go
    with pytest.raises(OSError):
        worker.render_batch(0, [1, 2])
    assert os.path.isdir(blocker)


def test_submit_blocks_when_the_queue_is_full(monkeypatch, tmp_path):
    release = threading.Event()
    written = []

    def blocked_write(image, path):
        release.wait(5)
        written.append(path.name)

    monkeypatch.setattr(frame_writer, "write_png_durably", blocked_write)
    writer = FrameWriter(threads=1, max_pending=1)
    image = Image.fromarray(np.zeros((4, 4, 3), np.uint8))
    first = writer.submit(image, tmp_path / "a.png")
    second_submitted = threading.Event()
    threading.Thread(target=lambda: (writer.submit(image, tmp_path / "b.png"), second_submitted.set()), daemon=True).start()
    assert not second_submitted.wait(0.3)  # the bound holds: one frame pending at most
    release.set()
    assert second_submitted.wait(5)
    FrameWriter.wait([first])
    writer.close()
    assert written == ["a.png", "b.png"]

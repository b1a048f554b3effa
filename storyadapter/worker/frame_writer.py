"""Frames written to disk by a few background threads while the caller goes on with the batch.

A worker hands each decoded frame to `FrameWriter.submit` and, while the PNGs are encoded and fsynced,
resizes the frames and runs the CLIP pass for the next iteration's bank. Before it reports the batch it
calls `wait`, which returns only when every frame of the batch is durable (`write_png_durably`: file fsynced,
renamed, directory fsynced) and raises the first write error, so a failed write still fails the batch.

Why not let the writes of batch k run on while batch k+1 renders: a batch's result names its files, and a
result must not leave the worker before those files are durable. Overlapping across batches would need a
pipelined protocol (`render_batch(k+1)` returning batch k) that the driver and the engine do not speak.
Within a batch, the PNG encoding (~90 ms per 1024² frame on one core) and the fsyncs overlap the resize and the
CLIP pass, which spend their time in torch and PIL with the GIL released. One thread by default: PIL's PNG
encoder holds the GIL while it compresses each chunk, so more writer threads mostly take turns.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from ..rundir.frame_files import write_png_durably


class FrameWriter:
    def __init__(self, threads: int = 1, max_pending: int = 16):
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="frame-writer")
        # Bounded: at most `max_pending` decoded frames wait in memory; `submit` blocks beyond that.
        self._slots = threading.BoundedSemaphore(max_pending)

    def submit(self, image, path: Path) -> Future:
        self._slots.acquire()
        try:
            future = self._pool.submit(write_png_durably, image, path)
        except BaseException:
            self._slots.release()
            raise
        future.add_done_callback(lambda _: self._slots.release())
        return future

    @staticmethod
    def wait(futures: list[Future]) -> None:
        """Block until every write has finished; then raise the first failure, if any."""
        errors = [exc for exc in (f.exception() for f in futures) if exc is not None]
        if errors:
            raise errors[0]

    def close(self) -> None:
        self._pool.shutdown(wait=True)

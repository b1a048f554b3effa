"""Hooks into a render that runs in the test's process, so a test acts at a precise point of it: at the start of
an iteration, or when batches have finished (journaled). The test then waits on that point, not on a poll of
the output folder, and it finds an actor by asking it (its pid over Ray), not by its process title.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

OnIteration = Callable[[object, int], None]  # (executor, iteration)
OnBatches = Callable[[object, int, list], None]  # (executor, iteration, the BatchResults just journaled)


def watch_executor(monkeypatch, on_iteration: OnIteration | None = None, on_batches: OnBatches | None = None) -> None:
    """Make every RayExecutor that render_story starts call `on_iteration` before an iteration's work is handed
    out and `on_batches` after each round of finished batches has been journaled (in the driver's thread)."""
    from storyadapter.engine import executor as engine

    class Watched(engine.RayExecutor):
        def render_iteration(self, iteration, batches, bank, scale, on_done, identities=(), draft=False):
            if on_iteration:
                on_iteration(self, iteration)

            def done(finished):
                on_done(finished)
                if on_batches:
                    on_batches(self, iteration, finished)

            return super().render_iteration(iteration, batches, bank, scale, done, identities, draft)

    monkeypatch.setattr(engine, "RayExecutor", Watched)


def actor_pid(executor, index: int = 0) -> int:
    """The process id of the executor's `index`-th live render actor, as the actor itself reports it."""
    import ray

    return ray.get(executor.live_handles()[index].ready.remote())



def start_driver_at(point: str, action: str, overrides: list[str], **popen) -> subprocess.Popen:
    """Start the launcher through tests/helpers/driver_at.py: it prints `at POINT` once its driver reaches `point`.
    `action` "pause" keeps the driver there for the caller to kill; "go" lets it carry on."""
    cmd = [sys.executable, str(Path(__file__).with_name("driver_at.py")), point, action, *overrides]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, bufsize=0, **popen)


def wait_until_at(proc: subprocess.Popen, point: str, timeout: float) -> None:
    """Block on the driver's stdout until it says it reached `point` (no polling); fail if it exits first."""
    deadline = time.monotonic() + timeout
    while True:
        readable, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
        if not readable:
            raise AssertionError(f"the driver did not reach {point} within {timeout:g} s")
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"the driver exited with {proc.wait()} before reaching {point}")
        if line.decode().strip() == f"at {point}":
            return


def kill_driver_at(point: str, overrides: list[str], cwd: Path, timeout: float = 240) -> None:
    """Run the launcher in its own session, its driver paused at `point`, and SIGKILL it there with the Ray it
    started, as if its node died. Its stderr is `cwd/driver.log`, shown if the point is never reached."""
    import psutil

    log = cwd / "driver.log"
    with open(log, "wb") as stderr:
        proc = start_driver_at(point, "pause", overrides, cwd=cwd, start_new_session=True, stderr=stderr,
                               env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        wait_until_at(proc, point, timeout)
    except AssertionError as exc:
        raise AssertionError(f"{exc}:\n{log.read_text()[-2000:]}") from None
    finally:
        family = [proc.pid] + [c.pid for c in psutil.Process(proc.pid).children(recursive=True)] if proc.poll() is None else []
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray it started
        for pid in family:  # a Ray process that left the session
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()

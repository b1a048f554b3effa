"""The Ray engine on a real local Ray with CPU actors and the tiny model.

Every run here renders the same story with the same pixel settings (batch_size included: batched
arithmetic differs in the last bit); only the cluster layout and
the failures differ, so every output must be bitwise identical to the uninterrupted 1-worker run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from pathlib import Path

import numpy as np
import psutil
import pytest

from storyadapter.rundir import manifest
from storyadapter.errors import UserError

from .helpers import engine_hooks
from .helpers.engine_hooks import actor_pid, watch_executor
from .helpers.launcher import in_background, render
from .helpers.renders import assert_same_render

pytestmark = pytest.mark.slow
N_FRAMES = 12
ITERATIONS = 2
STORY_NAME = "lighthouse.txt"
STORY = [f"a lighthouse keeper with a yellow coat, scene {i}" for i in range(N_FRAMES)]


def overrides(story_file: Path, tiny_cache: Path, workers: int, *extra: str) -> list[str]:
    return [
        f"story.path={story_file}", "model=tiny", f"model.cache_dir={tiny_cache}",
        f"render.iterations={ITERATIONS}", "render.steps=3", "render.height=64", "render.width=64",
        "render.seed_policy=per_frame", "render.batch_size=2", f"cluster.workers={workers}", "outputs.enabled=false",
        *extra,
    ]


@pytest.fixture(scope="module")
def reference(local_ray, story_file, tiny_cache, tmp_path_factory) -> Path:
    return render(tmp_path_factory.mktemp("ref") / "out", *overrides(story_file, tiny_cache, 1))


def kill_driver_at(story_file, tiny_cache, out: Path, point: str) -> None:
    """The launcher (1 worker) SIGKILLed with its Ray at `point` (tests/helpers/driver_at.py)."""
    engine_hooks.kill_driver_at(point, [*overrides(story_file, tiny_cache, 1), f"output_dir={out}"], out.parent)


def test_driver_killed_after_iteration_1_resumes_to_identical_output(story_file, tiny_cache, tmp_path, request):
    out = tmp_path / "out"
    kill_driver_at(story_file, tiny_cache, out, "part:1")
    assert manifest.finished_iterations(out) == [0, 1], "the driver must be killed before iteration 2 finished"

    reference = request.getfixturevalue("reference")  # starts the in-process Ray only after the kill
    with pytest.raises(UserError, match="resume=true"):
        render(out, *overrides(story_file, tiny_cache, 1))  # without resume=true, nothing is touched
    with pytest.raises(UserError, match="render.seed"):
        render(out, *overrides(story_file, tiny_cache, 1, "resume=true", "render.seed=7"))
    render(out, *overrides(story_file, tiny_cache, 2, "resume=true"))  # a different worker count is fine
    assert_same_render(reference, out, ITERATIONS, N_FRAMES)


def test_one_and_two_workers_give_identical_pixels_and_bank_is_put_once(reference, story_file, tiny_cache, tmp_path, monkeypatch):
    import ray

    puts = []
    real_put = ray.put
    monkeypatch.setattr(ray, "put", lambda value, *a, **k: puts.append(type(value)) or real_put(value, *a, **k))
    out = render(tmp_path / "out", *overrides(story_file, tiny_cache, 2))
    assert puts == [np.ndarray] * ITERATIONS  # iterations 1..L each broadcast one bank
    assert_same_render(reference, out, ITERATIONS, N_FRAMES)


def test_actor_killed_mid_iteration_is_restarted_with_identical_output(reference, story_file, tiny_cache, tmp_path,
                                                                      monkeypatch):
    out = tmp_path / "out"
    killed = []

    def kill_the_first_to_finish(executor, iteration, finished):
        if iteration == 1 and not killed:  # its second batch is still in flight
            killed.append(finished[0].worker_pid)
            os.kill(killed[0], signal.SIGKILL)
            assert not manifest.part_path(out, 1).exists()

    watch_executor(monkeypatch, on_batches=kill_the_first_to_finish)
    render(out, *overrides(story_file, tiny_cache, 2))
    assert killed, "no render actor was killed in iteration 1"
    assert not psutil.pid_exists(killed[0]) or psutil.Process(killed[0]).status() == psutil.STATUS_ZOMBIE
    assert_same_render(reference, out, ITERATIONS, N_FRAMES)


def test_a_stalled_actor_s_batches_go_to_the_free_one_with_identical_output(reference, story_file, tiny_cache, tmp_path,
                                                                           caplog, monkeypatch):
    """SIGSTOP one actor as iteration 0 starts (a straggler: a busy node, a throttled GPU): the other actor
    renders every batch the stalled one had not been sent, and the pixels do not change."""
    out = tmp_path / "out"
    caplog.set_level(logging.DEBUG, logger="storyadapter.engine.executor")
    stalled: list[int] = []
    done: set[int] = set()
    free_actor_done = threading.Event()
    # The stalled actor keeps only what it is sent at once: one batch and one queued behind it (2 x 2 frames).
    held_back_at_most = 2 * 2

    def stall_actor_0(executor, iteration):
        if iteration == 0:
            stalled.append(actor_pid(executor, 0))
            os.kill(stalled[0], signal.SIGSTOP)

    def count(executor, iteration, finished):
        if iteration == 0:
            done.update(r.frame for batch in finished for r in batch.frames)
            if len(done) >= N_FRAMES - held_back_at_most:
                free_actor_done.set()

    watch_executor(monkeypatch, on_iteration=stall_actor_0, on_batches=count)
    thread, errors = in_background(render, out, *overrides(story_file, tiny_cache, 2))
    try:
        assert free_actor_done.wait(timeout=240), f"only {len(done)} frames finished beside the stalled actor {errors}"
    finally:
        if stalled:
            os.kill(stalled[0], signal.SIGCONT)  # it finishes what it held
        thread.join(timeout=300)
    assert not errors, errors
    assert any("rendered by an actor other than their owner" in r.getMessage() and r.getMessage().startswith("iteration 0:")
               for r in caplog.records), [r.getMessage() for r in caplog.records]
    assert_same_render(reference, out, ITERATIONS, N_FRAMES)


def test_more_workers_than_fit_is_one_warning_and_none_that_fits_a_clear_error(local_ray, caplog):
    from storyadapter.engine.placement import ActorResources, actor_slots

    assert actor_slots(ActorResources(2, 1.0, 1.0, 0, 10.0), use_gpu=False, fixed_cluster=True) == 2  # the 2-CPU cluster
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    assert actor_slots(ActorResources(3, 1.0, 1.0, 0, 10.0), use_gpu=False, fixed_cluster=True) == 2
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and "cluster.workers=3" in warned[0] and "rendering with 2" in warned[0], warned
    assert actor_slots(ActorResources(3, 1.0, 1.0, 0, 10.0), use_gpu=False, fixed_cluster=False) == 3  # may grow
    with pytest.raises(UserError, match=r"cluster.workers=2: not one render actor fits on this machine \(0 GPUs"):
        actor_slots(ActorResources(2, 0.5, 1.0, 0, 10.0), use_gpu=True, fixed_cluster=True)


def test_driver_killed_mid_iteration_resumes_without_rendering_finished_frames_again(story_file, tiny_cache, tmp_path, request):
    from storyadapter.rundir import journal

    out = tmp_path / "out"
    # two batches of iteration 1 are durable
    kill_driver_at(story_file, tiny_cache, out, "journal:1:4")
    assert 1 not in manifest.finished_iterations(out), "the driver must be killed inside iteration 1"
    kept = journal.read(out, 1)
    stamps = {f: (out / r.image_path).stat() for f, r in kept.items()}

    reference = request.getfixturevalue("reference")
    render(out, *overrides(story_file, tiny_cache, 2, "resume=true"))
    for f, before in stamps.items():
        after = (out / kept[f].image_path).stat()
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns), f"frame {f} was rendered again"
    assert not journal.journal_path(out, 1).exists()
    assert_same_render(reference, out, ITERATIONS, N_FRAMES)


def test_a_finished_run_is_extended_and_a_finished_resume_starts_no_actor(reference, story_file, tiny_cache, tmp_path, monkeypatch):
    import shutil

    from storyadapter.engine import executor as engine

    out = tmp_path / "out"
    shutil.copytree(reference, out)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("frame_*.png")}
    with pytest.raises(UserError, match="render.iterations=1: resume=true cannot drop"):
        render(out, *overrides(story_file, tiny_cache, 1, "resume=true", "render.iterations=1"))
    render(out, *overrides(story_file, tiny_cache, 2, "resume=true", f"render.iterations={ITERATIONS + 1}"))
    assert manifest.finished_iterations(out) == list(range(ITERATIONS + 2))
    assert all(p.stat().st_mtime_ns == t for p, t in before.items()), "finished iterations were rendered again"
    scales = [r.scale for r in manifest.read_records(out, ITERATIONS + 1)]
    assert scales == pytest.approx([0.5] * N_FRAMES), "iterations past the ramp run at scale_end"

    def no_actors(*args, **kwargs):
        raise AssertionError("a finished render started actors")

    monkeypatch.setattr(engine, "RayExecutor", no_actors)
    render(out, *overrides(story_file, tiny_cache, 2, "resume=true", f"render.iterations={ITERATIONS + 1}"))

    unfinished = tmp_path / "unfinished"
    shutil.copytree(reference, unfinished)
    manifest.part_path(unfinished, ITERATIONS).unlink()
    with pytest.raises(UserError, match="is not finished"):
        render(unfinished, *overrides(story_file, tiny_cache, 2, "resume=true", f"render.iterations={ITERATIONS + 1}"))


def test_an_actor_that_stops_answering_loses_its_batches_at_the_deadline(reference, story_file, tiny_cache, tmp_path,
                                                                          caplog, monkeypatch):
    """SIGSTOP one actor for good as iteration 1 starts (a hung GPU, an unreachable node): after the batch
    deadline its batches go to the other actor and the run finishes with the same pixels."""
    out = tmp_path / "out"
    caplog.set_level(logging.INFO, logger="storyadapter.engine.executor")
    stopped: list[int] = []

    def stop_actor_0(executor, iteration):
        if iteration == 1:
            stopped.append(actor_pid(executor, 0))
            os.kill(stopped[0], signal.SIGSTOP)

    watch_executor(monkeypatch, on_iteration=stop_actor_0)
    try:
        render(out, *overrides(story_file, tiny_cache, 2, "cluster.batch_timeout_s=3"))
    finally:
        with contextlib.suppress(ProcessLookupError):  # the engine killed it at the deadline
            stopped and os.kill(stopped[0], signal.SIGCONT)
    assert stopped, "iteration 1 never started"
    assert any("within its deadline" in r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]
    assert_same_render(reference, out, ITERATIONS, N_FRAMES)

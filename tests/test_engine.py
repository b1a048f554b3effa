"""The Ray engine on a real local Ray with CPU actors and the tiny model.

Every run here renders the same story with the same pixel settings (batch_size included: batched
arithmetic differs in the last bit); only the cluster layout and
the failures differ, so every output must be bitwise identical to the uninterrupted 1-worker run.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from storyadapter.rundir import manifest
from storyadapter.errors import UserError

from .conftest import write_story

pytestmark = pytest.mark.slow
N_FRAMES = 12
ITERATIONS = 2


@pytest.fixture(scope="module")
def story_file(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("story")
    return write_story(d / "lighthouse.txt", [f"a lighthouse keeper with a yellow coat, scene {i}" for i in range(N_FRAMES)])


def overrides(story_file: Path, tiny_cache: Path, out_dir: Path, workers: int, *extra: str) -> list[str]:
    return [
        f"story.path={story_file}", "model=tiny", f"model.cache_dir={tiny_cache}",
        f"render.iterations={ITERATIONS}", "render.steps=3", "render.height=64", "render.width=64",
        "render.seed_policy=per_frame", "render.batch_size=2", f"cluster.workers={workers}", "outputs.enabled=false",
        f"output_dir={out_dir}", *extra,
    ]


@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False)
    yield ray
    ray.shutdown()


def render(story_file, tiny_cache, out_dir, workers, *extra) -> Path:
    from storyadapter.launch import compose_config
    from storyadapter.render_story import render_story

    return render_story(compose_config(overrides(story_file, tiny_cache, out_dir, workers, *extra)), out_dir)


@pytest.fixture(scope="module")
def reference(local_ray, story_file, tiny_cache, tmp_path_factory) -> Path:
    return render(story_file, tiny_cache, tmp_path_factory.mktemp("ref") / "out", 1)


def assert_same_render(a: Path, b: Path, iterations: int = ITERATIONS, frames: int = N_FRAMES) -> None:
    for it in range(iterations + 1):
        for f in range(frames):
            rel = f"{manifest.iteration_dirname(it)}/{manifest.frame_filename(f)}"
            pa, pb = (np.asarray(__import__("PIL.Image").Image.open(d / rel)) for d in (a, b))
            assert np.array_equal(pa, pb), f"{rel} differs"
        np.testing.assert_array_equal(manifest.read_bank(a, it), manifest.read_bank(b, it))
    assert manifest.finished_iterations(b) == list(range(iterations + 1))


def kill_driver_when(story_file, tiny_cache, out: Path, ready, what: str) -> None:
    """Run the launcher (1 worker) in its own session and SIGKILL it with the Ray it started once `ready()`."""
    cmd = [sys.executable, "-m", "storyadapter.launch", *overrides(story_file, tiny_cache, out, 1)]
    proc = subprocess.Popen(cmd, cwd=out.parent, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    deadline = time.monotonic() + 240
    try:
        while not ready():
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, what
            time.sleep(0.005)
    finally:
        family = [proc.pid] + [c.pid for c in psutil.Process(proc.pid).children(recursive=True)] if proc.poll() is None else []
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray it started, as if the node died
        for pid in family:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()


def test_driver_killed_after_iteration_1_resumes_to_identical_output(story_file, tiny_cache, tmp_path, request):
    out = tmp_path / "out"
    kill_driver_when(story_file, tiny_cache, out, lambda: manifest.part_path(out, 1).exists(), "iteration 1 never finished")
    assert manifest.finished_iterations(out) == [0, 1], "the driver must be killed before iteration 2 finished"

    reference = request.getfixturevalue("reference")  # starts the in-process Ray only after the kill
    with pytest.raises(UserError, match="resume=true"):
        render(story_file, tiny_cache, out, 1)  # without resume=true, nothing is touched
    with pytest.raises(UserError, match="render.seed"):
        render(story_file, tiny_cache, out, 1, "resume=true", "render.seed=7")
    render(story_file, tiny_cache, out, 2, "resume=true")  # a different worker count is fine
    assert_same_render(reference, out)


def test_one_and_two_workers_give_identical_pixels_and_bank_is_put_once(reference, story_file, tiny_cache, tmp_path, monkeypatch):
    import ray

    puts = []
    real_put = ray.put
    monkeypatch.setattr(ray, "put", lambda value, *a, **k: puts.append(type(value)) or real_put(value, *a, **k))
    out = render(story_file, tiny_cache, tmp_path / "out", 2)
    assert puts == [np.ndarray] * ITERATIONS  # iterations 1..L each broadcast one bank
    assert_same_render(reference, out)


def _render_actors() -> list[psutil.Process]:
    found = []
    for p in psutil.Process(os.getpid()).children(recursive=True):
        try:
            if p.cmdline() and p.cmdline()[0].startswith("ray::RenderActor"):
                found.append(p)
        except psutil.NoSuchProcess:
            pass
    return found


def _actors_rendering() -> list[psutil.Process]:
    return [p for p in _render_actors() if "render_batch" in " ".join(p.cmdline())]


def render_in_background(story_file, tiny_cache, out, workers) -> tuple[threading.Thread, list[BaseException]]:
    """Start a render in a thread; what it raised ends up in the returned list."""
    errors: list[BaseException] = []

    def run():
        try:
            render(story_file, tiny_cache, out, workers)
        except BaseException as exc:  # noqa: BLE001 - surfaced by the caller's assertion
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, errors


def test_actor_killed_mid_iteration_is_restarted_with_identical_output(reference, story_file, tiny_cache, tmp_path):
    out = tmp_path / "out"
    thread, errors = render_in_background(story_file, tiny_cache, out, 2)
    killed = None
    deadline = time.monotonic() + 240
    while killed is None and thread.is_alive() and time.monotonic() < deadline:
        started = any((out / "iter_01").glob("frame_*.png")) if (out / "iter_01").is_dir() else False
        if started and not manifest.part_path(out, 1).exists():
            busy = _actors_rendering()
            if busy:
                killed = busy[0].pid
                os.kill(killed, signal.SIGKILL)
                assert not manifest.part_path(out, 1).exists()
        time.sleep(0.005)
    thread.join(timeout=300)
    assert killed is not None, "no render actor was caught mid-iteration"
    assert not errors, errors
    assert not psutil.pid_exists(killed) or psutil.Process(killed).status() == psutil.STATUS_ZOMBIE
    assert_same_render(reference, out)


def _frames_on_disk(out: Path, iteration: int) -> int:
    d = out / manifest.iteration_dirname(iteration)
    return len(list(d.glob("frame_*.png"))) if d.is_dir() else 0


def test_a_stalled_actor_s_batches_go_to_the_free_one_with_identical_output(reference, story_file, tiny_cache, tmp_path, caplog):
    """SIGSTOP one actor early in iteration 0 (a straggler: a busy node, a throttled GPU): the other actor
    renders the batches the stalled one had not started, and the pixels do not change."""
    out = tmp_path / "out"
    caplog.set_level(logging.DEBUG, logger="storyadapter.engine.executor")
    thread, errors = render_in_background(story_file, tiny_cache, out, 2)
    stalled = None
    deadline = time.monotonic() + 240
    try:
        while stalled is None and thread.is_alive() and time.monotonic() < deadline:
            busy = _actors_rendering()
            if busy and _frames_on_disk(out, 0) == 0:
                stalled = busy[0]
                stalled.suspend()
            time.sleep(0.002)
        assert stalled is not None, "no render actor was caught in iteration 0"
        # Hold it until the free actor has nothing left to take: the frame count stops growing.
        seen, steady_since = -1, time.monotonic()
        while time.monotonic() - steady_since < 2.0 and time.monotonic() < deadline:
            now = _frames_on_disk(out, 0)
            if now != seen:
                seen, steady_since = now, time.monotonic()
            time.sleep(0.05)
        held_back = N_FRAMES - seen
    finally:
        if stalled is not None:
            stalled.resume()
    thread.join(timeout=300)
    assert not errors, errors
    # The stalled actor kept only what it had already been sent: the batch it was in and one queued behind it.
    assert held_back <= 2 * 2, f"{held_back} frames waited for the stalled actor"
    assert any("rendered by an actor other than their owner" in r.getMessage() and r.getMessage().startswith("iteration 0:")
               for r in caplog.records), [r.getMessage() for r in caplog.records]
    assert_same_render(reference, out)


def test_too_few_cpus_or_gpus_is_a_clear_error(local_ray):
    from storyadapter.engine.placement import ActorResources, check_capacity

    check_capacity(ActorResources(2, 1.0, 1.0, 0, 10.0), use_gpu=False)  # fits the 2-CPU test cluster
    with pytest.raises(UserError, match=r"cluster.workers=3 .* needs 3 CPUs; the Ray cluster has 2"):
        check_capacity(ActorResources(3, 1.0, 1.0, 0, 10.0), use_gpu=False)
    with pytest.raises(UserError, match=r"needs 1 GPUs; the Ray cluster has 0"):
        check_capacity(ActorResources(2, 0.5, 1.0, 0, 10.0), use_gpu=True)


def test_driver_killed_mid_iteration_resumes_without_rendering_finished_frames_again(story_file, tiny_cache, tmp_path, request):
    from storyadapter.rundir import journal

    out = tmp_path / "out"
    # two batches of iteration 1 are durable
    kill_driver_when(story_file, tiny_cache, out, lambda: len(journal.read(out, 1)) >= 4, "iteration 1 never progressed")
    assert 1 not in manifest.finished_iterations(out), "the driver must be killed inside iteration 1"
    kept = journal.read(out, 1)
    stamps = {f: (out / r.image_path).stat() for f, r in kept.items()}

    reference = request.getfixturevalue("reference")
    render(story_file, tiny_cache, out, 2, "resume=true")
    for f, before in stamps.items():
        after = (out / kept[f].image_path).stat()
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns), f"frame {f} was rendered again"
    assert not journal.journal_path(out, 1).exists()
    assert_same_render(reference, out)


def test_a_finished_run_is_extended_and_a_finished_resume_starts_no_actor(reference, story_file, tiny_cache, tmp_path, monkeypatch):
    import shutil

    from storyadapter.engine import executor as engine

    out = tmp_path / "out"
    shutil.copytree(reference, out)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("frame_*.png")}
    with pytest.raises(UserError, match="render.iterations=1: resume=true cannot drop"):
        render(story_file, tiny_cache, out, 1, "resume=true", "render.iterations=1")
    render(story_file, tiny_cache, out, 2, "resume=true", f"render.iterations={ITERATIONS + 1}")
    assert manifest.finished_iterations(out) == list(range(ITERATIONS + 2))
    assert all(p.stat().st_mtime_ns == t for p, t in before.items()), "finished iterations were rendered again"
    scales = [r.scale for r in manifest.read_records(out, ITERATIONS + 1)]
    assert scales == pytest.approx([0.5] * N_FRAMES), "iterations past the ramp run at scale_end"

    def no_actors(*args, **kwargs):
        raise AssertionError("a finished render started actors")

    monkeypatch.setattr(engine, "RayExecutor", no_actors)
    render(story_file, tiny_cache, out, 2, "resume=true", f"render.iterations={ITERATIONS + 1}")

    unfinished = tmp_path / "unfinished"
    shutil.copytree(reference, unfinished)
    manifest.part_path(unfinished, ITERATIONS).unlink()
    with pytest.raises(UserError, match="is not finished"):
        render(story_file, tiny_cache, unfinished, 2, "resume=true", f"render.iterations={ITERATIONS + 1}")


def test_an_actor_that_stops_answering_loses_its_batches_at_the_deadline(reference, story_file, tiny_cache, tmp_path, caplog):
    """SIGSTOP one actor for good mid-iteration (a hung GPU, an unreachable node): after the batch deadline its
    batches go to the other actor and the run finishes with the same pixels."""
    out = tmp_path / "out"
    caplog.set_level(logging.INFO, logger="storyadapter.engine.executor")
    errors: list[BaseException] = []

    def run():
        try:
            render(story_file, tiny_cache, out, 2, "cluster.batch_timeout_s=3")
        except BaseException as exc:  # noqa: BLE001 - surfaced by the assertion below
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    from storyadapter.rundir import journal

    stopped = None
    deadline = time.monotonic() + 600
    try:
        while stopped is None and thread.is_alive() and time.monotonic() < deadline:
            actors = _render_actors()
            if len(actors) == 2 and journal.journal_path(out, 1).exists():  # iteration 1 has begun
                stopped = actors[0]
                stopped.suspend()
            time.sleep(0.002)
        assert stopped is not None, "no render actor was caught in iteration 1"
        thread.join(timeout=600)
    finally:
        try:
            stopped and stopped.resume()
        except psutil.NoSuchProcess:
            pass
    assert not thread.is_alive() and not errors, errors
    assert any("within its deadline" in r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]
    assert_same_render(reference, out)

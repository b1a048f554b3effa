"""model=sim: the simulated renderer alone, and through `python -m storyadapter.launch` with real Ray actors."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from storyadapter.engine.protocol import StaleIterationError
from storyadapter.engine.sim import SimSpec, SimWorker

from .helpers import EXAMPLES
from .helpers.launcher import ENV, launch_command


def sim_command(out: Path, workers: int, *extra: str) -> list[str]:
    return launch_command(f"story.path={EXAMPLES / 'explorer_24.txt'}", "model=sim", "render.iterations=2",
                          f"cluster.workers={workers}", f"output_dir={out}", *extra)


def uses_torch(pid: int) -> bool | None:
    """Whether a live process has torch's shared library mapped; None once it has exited."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return "libtorch" in maps or "/torch/" in maps


def run_watching_torch(cmd: list[str], trace: Path, timeout: float = 240) -> tuple[subprocess.CompletedProcess, dict]:
    """Run the launcher; until it exits, look at the memory maps of it and of every actor that started a batch."""
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen: dict[int, bool] = {proc.pid: False}
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        for f in trace.glob("[!.]*.json") if trace.is_dir() else ():  # not the atomic writes in progress
            seen.setdefault(json.loads(f.read_text())["pid"], False)
        for pid in seen:
            seen[pid] = seen[pid] or bool(uses_torch(pid))
        time.sleep(0.05)
    out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err), seen


@pytest.mark.slow
def test_launch_model_sim_writes_the_design_layout_identically_on_1_and_2_workers_without_torch(tmp_path):
    runs, watched = {}, {}
    for workers in (1, 2):
        out, trace = tmp_path / f"w{workers}", tmp_path / f"trace{workers}"
        # frame_s long enough that each actor is seen alive by the watcher (24 frames x 3 iterations)
        proc, watched[workers] = run_watching_torch(
            sim_command(out, workers, "model.sim.frame_s=0.05", f"model.sim.trace_dir={trace}"), trace)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "Traceback" not in proc.stderr
        runs[workers] = out

    # The driver and every actor process that rendered were watched, and none loaded torch.
    actor_pids = {pid for pid in watched[2] if pid != next(iter(watched[2]))}
    assert len(actor_pids) == 2, watched[2]
    assert not any(watched[1].values()) and not any(watched[2].values()), watched

    out = runs[2]
    assert (out / "config.yaml").is_file()
    for it in range(3):
        frames = sorted((out / f"iter_{it:02d}").glob("frame_*.png"))
        assert [f.name for f in frames] == [f"frame_{i:04d}.png" for i in range(24)]
        table = pq.read_table(out / "manifest" / f"iter_{it:02d}.parquet")
        assert [f.name for f in table.schema] == ["iteration", "frame", "prompt", "caption", "characters", "seed",
                                                  "scale", "image_path", "embedding"]
        assert table.schema.field("embedding").type.list_size == 16
        rows = table.to_pydict()
        assert rows["frame"] == list(range(24)) and set(rows["iteration"]) == {it}
        assert rows == pq.read_table(runs[1] / "manifest" / f"iter_{it:02d}.parquet").to_pydict()
        for f in frames:
            assert f.read_bytes() == (runs[1] / f"iter_{it:02d}" / f.name).read_bytes(), f
    assert sorted((out / "comic").glob("page_*.png"))
    for name in ("story.gif", "index.html", "iterations.png", "metrics.json"):
        assert (out / name).is_file(), name
    # Iterations differ: each one's pixels follow the bank it was given, as a real render's do.
    assert (out / "iter_01/frame_0000.png").read_bytes() != (out / "iter_02/frame_0000.png").read_bytes()


@pytest.mark.parametrize("override, key", [("model.sim.jitter=1.5", "model.sim.jitter"),
                                           ("model.sim.frame_s=-1", "model.sim.frame_s"),
                                           ("model.sim.embedding_dim=0", "model.sim.embedding_dim")])
def test_bad_sim_setting_is_one_line(tmp_path, override, key):
    proc = subprocess.run(sim_command(tmp_path / "out", 1, override), env=ENV, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and key in errors[0], proc.stderr
    assert not (tmp_path / "out").exists()


def render(worker: SimWorker, iteration: int, bank, frames=(0, 1, 2)):
    worker.begin_iteration(iteration, bank, 0.3)
    batch = worker.render_batch(iteration, list(frames))
    out = Path(worker.spec.out_dir)
    return [(out / r.image_path).read_bytes() for r in batch.frames], [r.embedding for r in batch.frames], batch


def test_sim_worker_is_deterministic_follows_the_bank_and_refuses_stale_batches(tmp_path):
    a = SimWorker(SimSpec(out_dir=str(tmp_path / "a"), frame_s=0.0, embedding_dim=8))
    b = SimWorker(SimSpec(out_dir=str(tmp_path / "b"), frame_s=0.0, embedding_dim=8))
    bank = np.arange(24, dtype=np.float32).reshape(3, 8)
    png_a, emb_a, batch = render(a, 1, bank)
    png_b, emb_b, _ = render(b, 1, bank.copy(), frames=(2, 1, 0))
    assert png_a == png_b[::-1] and all(np.array_equal(x, y) for x, y in zip(emb_a, emb_b[::-1]))
    assert len(set(png_a)) == 3  # frames differ from each other
    assert batch.frames[0].embedding.dtype == np.float32 and batch.frames[0].embedding.shape == (8,)
    assert np.allclose([np.linalg.norm(e) for e in emb_a], 1.0, atol=1e-6)
    assert Image.open(tmp_path / "a" / batch.frames[0].image_path).size == (32, 32)

    other, _, _ = render(b, 1, bank + 1)
    assert other[0] != png_a[0]  # a different bank, different pixels: a stale bank cannot go unnoticed
    with pytest.raises(StaleIterationError):
        b.render_batch(2, [0])


def test_sim_frame_times_jitter_within_bounds_and_sleep(tmp_path):
    spec = SimSpec(out_dir=str(tmp_path), frame_s=0.02, jitter=0.1)
    w = SimWorker(spec)
    times = [w.frame_seconds(f, 1) for f in range(200)]
    assert all(0.018 <= t <= 0.022 for t in times) and len(set(times)) > 100
    assert times == [SimWorker(spec).frame_seconds(f, 1) for f in range(200)]
    w.begin_iteration(0, None, 0.0)
    batch = w.render_batch(0, list(range(10)))
    assert batch.busy_s >= sum(w.frame_seconds(f, 0) for f in range(10))


def test_straggler_outside_ray_is_the_single_node_when_the_share_rounds_to_it(tmp_path):
    fast = SimWorker(SimSpec(out_dir=str(tmp_path), frame_s=0.01, straggler_share=0.2, slowdown=2.0))
    slow = SimWorker(SimSpec(out_dir=str(tmp_path), frame_s=0.01, straggler_share=1.0, slowdown=2.0))
    assert not fast.slow and slow.slow
    assert slow.frame_seconds(3, 1) == pytest.approx(2 * fast.frame_seconds(3, 1))


def test_resume_may_change_sim_timings_but_not_what_it_writes(tmp_path):
    from storyadapter.rundir import guard as rundir
    from storyadapter.errors import UserError
    from storyadapter.launch import compose_config
    from storyadapter.story.parse import load_story

    story_path = EXAMPLES / "explorer_24.txt"
    story = load_story(story_path)
    base = [f"story.path={story_path}", "model=sim", f"output_dir={tmp_path}", "resume=true"]
    rundir.write_config(tmp_path, compose_config(base), story, 10, 10)
    (tmp_path / "iter_00").mkdir()
    assert not rundir.check(tmp_path, compose_config(base + ["model.sim.frame_s=3", "model.sim.jitter=0"]), story, True, 10).fresh
    with pytest.raises(UserError, match="model.sim.image_size"):
        rundir.check(tmp_path, compose_config(base + ["model.sim.image_size=64"]), story, True, 10)

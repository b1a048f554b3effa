"""What issue 10 asks the simulated cluster to show: scaling, node loss, no capacity, driver memory.

Every scenario runs the real launcher with model=sim against the cluster, under a hard timeout, and returns a
plain dict for the report. A run that does not finish in time is killed and reported as hung.
"""

from __future__ import annotations

import re
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from storyadapter.engine.sim import SimSpec, SimWorker

from .harness import DriverRun, SimCluster, frames_on_disk, iteration_stats, read_trace, write_story
from .ideal import barrier_ceiling


@dataclass(frozen=True)
class Setup:
    nodes: int = 8
    gpus_per_node: int = 8
    frames: int = 1000
    iterations: int = 2  # refinements after iteration 0
    # Ideal seconds per iteration at every scale: frame time = this x GPUs / frames. 12 s puts 83 frames/s through
    # the driver, twice what 64 H100s at ~1.7 s per frame would send it.
    iteration_s: float = 12.0
    jitter: float = 0.1
    straggler_share: float = 1 / 8  # one node of 8
    slowdown: float = 1.5
    rss_frames: int = 5000
    rss_frame_s: float = 0.02
    loss_at: float = 0.3  # remove a node when this share of iteration 1's frames is on disk
    grace_s: float = 90.0  # added to every hard timeout

    def frame_s(self, gpus: int) -> float:
        return self.iteration_s * gpus / self.frames


def sim_args(setup: Setup, cluster: SimCluster, story: Path, out: Path, trace: Path, gpus: int, frame_s: float,
             outputs: bool = False, *extra: str) -> list[str]:
    return [f"story.path={story}", "model=sim", "cluster=ray", f"cluster.address={cluster.address}",
            f"cluster.workers={gpus}", f"render.iterations={setup.iterations}", f"output_dir={out}",
            f"model.sim.frame_s={frame_s}", f"model.sim.jitter={setup.jitter}",
            f"model.sim.straggler_share={setup.straggler_share}", f"model.sim.slowdown={setup.slowdown}",
            f"model.sim.trace_dir={trace}", f"outputs.enabled={str(outputs).lower()}", *extra]


def _fresh(*dirs: Path) -> None:
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)


def scaling(setup: Setup, cluster: SimCluster, work: Path, gpus: int) -> dict:
    story = write_story(work / f"story_{setup.frames}.txt", setup.frames)
    out, trace = work / f"scale_{gpus}", work / f"scale_{gpus}.trace"
    _fresh(out, trace)
    frame_s = setup.frame_s(gpus)
    run = DriverRun(sim_args(setup, cluster, story, out, trace, gpus, frame_s), work / f"scale_{gpus}.log")
    finished = run.wait(3 * setup.iteration_s * setup.slowdown * 2 + setup.grace_s, working=_rendering(out))
    stats = iteration_stats(run.log)
    result = {"gpus": gpus, "frames": setup.frames, "frame_s": frame_s, "out_dir": str(out), "exit": run.returncode,
              "hung": not finished, "wall_s": run.wall_s, "driver_peak_rss_mb": run.peak_rss_mb,
              "render_wall_s": sum(s["wall_s"] for s in stats.values())}
    refinements = [stats[i] for i in range(1, setup.iterations + 1) if i in stats]
    if not finished or run.returncode != 0 or len(refinements) != setup.iterations:
        result["error"] = last_error(run)
        return result
    busy, wall = sum(s["busy_s"] for s in refinements), sum(s["wall_s"] for s in refinements)
    slow_pids = {b["pid"] for b in read_trace(trace) if b["slow"]}
    speeds = [setup.slowdown] * len(slow_pids) + [1.0] * (gpus - len(slow_pids))
    timer = SimWorker(SimSpec(out_dir=str(out), frame_s=frame_s, jitter=setup.jitter))
    ceilings = [barrier_ceiling([timer.frame_seconds(f, it) for f in range(setup.frames)], speeds)
                for it in range(1, setup.iterations + 1)]
    result.update(refinement_wall_s=wall, refinement_busy_s=busy, efficiency=busy / (gpus * wall),
                  barrier_ceiling=min(ceilings), slow_gpus=len(slow_pids), iterations=stats)
    return result


_EXCEPTION = re.compile(r"^[\w.]*(Error|Exception|Interrupt)\b")


def last_error(run: DriverRun) -> str:
    """The driver's one-line error if it gave one, else the exception a traceback ended in, else its last line."""
    lines = run.log.strip().splitlines() or [""]
    picked = (run.error_lines() or [ln for ln in lines if _EXCEPTION.match(ln)] or lines)[-1]
    return ("killed at the hard timeout; last line: " if run.killed else "") + picked[:300]


def manifests_equal(a: Path, b: Path, iterations: int) -> bool:
    for it in range(iterations + 1):
        pa, pb = a / "manifest" / f"iter_{it:02d}.parquet", b / "manifest" / f"iter_{it:02d}.parquet"
        if not (pa.is_file() and pb.is_file()) or pq.read_table(pa).to_pydict() != pq.read_table(pb).to_pydict():
            return False
    return True


def node_loss(setup: Setup, cluster: SimCluster, work: Path, reference: dict) -> dict:
    """Remove one node mid-iteration 1 of the largest scaling run's setup; compare with that (uninterrupted) run."""
    gpus = reference["gpus"]
    story = work / f"story_{setup.frames}.txt"
    out, trace = work / "node_loss", work / "node_loss.trace"
    _fresh(out, trace)
    frame_s = reference["frame_s"]
    run = DriverRun(sim_args(setup, cluster, story, out, trace, gpus, frame_s), work / "node_loss.log")
    victim = cluster.worker_nodes[-1]
    removed_at: list[float] = []

    def maybe_remove():
        if not removed_at and frames_on_disk(out, 1) >= setup.loss_at * setup.frames:
            cluster.remove(victim)
            removed_at.append(time.monotonic() - run.started)

    finished = run.wait(2 * (reference.get("render_wall_s") or 60) + setup.grace_s, every=maybe_remove, working=_rendering(out))
    traced = read_trace(trace)
    starts = Counter((b["iteration"], tuple(b["frames"])) for b in traced)
    on_victim = [b for b in traced if b["node"] == victim.node_id and b["iteration"] >= 1]
    result = {"gpus": gpus, "frame_s": frame_s, "exit": run.returncode, "hung": not finished, "wall_s": run.wall_s,
              "removed_at_s": removed_at[0] if removed_at else None, "reference_render_wall_s": reference.get("render_wall_s"),
              "batches_rendered_twice": sum(1 for n in starts.values() if n > 1),
              "batches_started_on_lost_node_from_iteration_1": len(on_victim)}
    if finished and run.returncode == 0:
        result["render_wall_s"] = sum(s["wall_s"] for s in iteration_stats(run.log).values())
        result["manifest_equal"] = manifests_equal(out, Path(reference["out_dir"]), setup.iterations)
        result["time_lost_s"] = result["render_wall_s"] - reference["render_wall_s"]
    else:
        result["error"] = last_error(run)
        result["frames_done_when_stopped"] = {it: frames_on_disk(out, it) for it in range(setup.iterations + 1)}
    return result


def no_capacity(setup: Setup, cluster: SimCluster, work: Path, gpus: int = 8, capacity_timeout_s: float = 20.0) -> dict:
    """Remove every worker node during iteration 0; the driver should exit with one line, within its deadline
    (cluster.capacity_timeout_s, plus the time Ray takes to report the actors lost)."""
    timeout_after_loss_s = capacity_timeout_s + 60.0
    story = work / f"story_{setup.frames}.txt"
    out, trace = work / "no_capacity", work / "no_capacity.trace"
    _fresh(out, trace)
    frame_s = setup.frame_s(gpus)
    run = DriverRun(sim_args(setup, cluster, story, out, trace, gpus, frame_s, False,
                             f"cluster.capacity_timeout_s={capacity_timeout_s:g}"), work / "no_capacity.log")
    removed_at: list[float] = []

    def maybe_remove():
        if not removed_at and frames_on_disk(out, 0) >= setup.loss_at * setup.frames:
            for node in cluster.worker_nodes:
                cluster.remove(node)
            removed_at.append(time.monotonic() - run.started)

    run.wait(setup.iteration_s * 3 + setup.grace_s, every=lambda: (maybe_remove(), _extend(run, removed_at, timeout_after_loss_s)),
             working=_rendering(out))
    errors = run.error_lines()
    finished = not run.killed
    return {"gpus_before": gpus, "exit": run.returncode, "hung": run.killed, "capacity_timeout_s": capacity_timeout_s,
            "hard_timeout_after_removal_s": timeout_after_loss_s,
            "removed_at_s": removed_at[0] if removed_at else None,
            "exit_after_removal_s": (run.wall_s - removed_at[0]) if (finished and removed_at) else None,
            "error_lines": len(errors), "error": last_error(run) if run.returncode else None,
            "traceback": "Traceback" in run.log,
            "frames_kept": frames_on_disk(out, 0)}


def _rendering(out: Path):
    return lambda: (out / "iter_00").is_dir()


def _extend(run: DriverRun, removed_at: list[float], after_s: float) -> None:
    # The hard timeout counts from the removal: kill a driver that outlives it (hung), never sooner.
    if removed_at and time.monotonic() - run.started > removed_at[0] + after_s:
        run.kill()


def driver_memory(setup: Setup, cluster: SimCluster, work: Path, gpus: int = 8) -> dict:
    """Peak RSS of the driver at rss_frames, outputs included. The driver holds per-frame state, not per-actor
    state, so 8 actors (quick to start) stand in for 64."""
    story = write_story(work / f"story_{setup.rss_frames}.txt", setup.rss_frames)
    out, trace = work / "rss", work / "rss.trace"
    _fresh(out, trace)
    args = sim_args(setup, cluster, story, out, trace, gpus, setup.rss_frame_s, outputs=True)
    args = [a for a in args if not a.startswith("model.sim.trace_dir")]  # 15,000 trace files are not the driver's
    run = DriverRun(args, work / "rss.log")
    finished = run.wait(480, working=_rendering(out))
    return {"frames": setup.rss_frames, "gpus": gpus, "frame_s": setup.rss_frame_s, "outputs": True,
            "exit": run.returncode, "hung": not finished, "wall_s": run.wall_s,
            "driver_peak_rss_mb": run.peak_rss_mb, "error": (run.error_lines() or [None])[-1]}

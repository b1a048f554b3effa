"""What issue 24 asks the simulated cluster to show: a cluster that shrinks and grows back, and one that grows.

- shrink_grow: `setup.nodes` nodes; 2 removed (a crash) once `loss_at` of iteration 1 is on disk, 2 added back
  once `regrow_at` of it is. Their actors' reservations are re-placed on the new nodes and the actors restart there.
- grow_from_2: the render starts on 2 nodes of the cluster (cluster.workers asks for all of them); the others are
  added once iteration 1 has begun. Their actors come up there and join.

After the growth: efficiency = worker busy time / (GPUs x wall) from the moment the cluster is whole again to the
end of rendering, from the batch trace (sim.py: each batch's start, node and frames; its length is the simulated
frame times). The ceiling is what greedy scheduling of the batches not yet started then would get on all GPUs with
zero overhead (ideal.ceiling_after). A new node's first batch: from the moment it was added to its first batch.
"""

from __future__ import annotations

import time
from pathlib import Path

from storyadapter.engine.sim import SimSpec, SimWorker

from .harness import DriverRun, SimCluster, add_node, frames_on_disk, iteration_stats, read_trace, write_story
from .ideal import ceiling_after
from .scenarios import Setup, _fresh, _rendering, last_error, sim_args


def shrink_grow(setup: Setup, cluster: SimCluster, work: Path, lose: int = 2, regrow_at: float = 0.6) -> dict:
    gpus = setup.nodes * setup.gpus_per_node
    run, out, trace, frame_s = _start(setup, cluster, work, "shrink_grow", gpus)
    events: dict = {}

    def act():
        done = frames_on_disk(out, 1)
        if "removed_at" not in events and done >= setup.loss_at * setup.frames:
            for node in cluster.worker_nodes[-lose:]:
                cluster.remove(node)
            events["removed_at"] = time.time()
        elif "removed_at" in events and "grown_at" not in events and done >= regrow_at * setup.frames:
            events["added"] = [_add(cluster) for _ in range(lose)]
            events["grown_at"] = time.time()

    finished = run.wait(6 * setup.iteration_s * setup.slowdown + 2 * setup.grace_s, every=act, working=_rendering(out))
    return _result(setup, run, finished, out, trace, frame_s, gpus, events,
                   {"nodes": setup.nodes, "lost": lose, "loss_at": setup.loss_at, "regrow_at": regrow_at})


def grow_from_2(setup: Setup, cluster: SimCluster, work: Path, start_nodes: int = 2) -> dict:
    gpus = setup.nodes * setup.gpus_per_node
    for node in cluster.worker_nodes[start_nodes:]:
        cluster.remove(node)
    run, out, trace, frame_s = _start(setup, cluster, work, "grow_from_2", gpus)
    events: dict = {}

    def act():
        if "grown_at" not in events and frames_on_disk(out, 1) >= 1:  # iteration 1 has begun
            events["added"] = [_add(cluster) for _ in range(setup.nodes - start_nodes)]
            events["grown_at"] = time.time()

    try:
        finished = run.wait(6 * setup.iteration_s * setup.nodes / start_nodes + 2 * setup.grace_s, every=act,
                            working=_rendering(out))
    finally:
        while len(cluster.worker_nodes) < setup.nodes:  # whole again for the next scenario
            add_node(cluster)
    return _result(setup, run, finished, out, trace, frame_s, gpus, events,
                   {"nodes_at_start": start_nodes, "nodes": setup.nodes})


def _start(setup: Setup, cluster: SimCluster, work: Path, name: str, gpus: int):
    story = write_story(work / f"story_{setup.frames}.txt", setup.frames)
    out, trace = work / name, work / f"{name}.trace"
    _fresh(out, trace)
    frame_s = setup.frame_s(gpus)
    return DriverRun(sim_args(setup, cluster, story, out, trace, gpus, frame_s), work / f"{name}.log"), out, trace, frame_s


def _add(cluster: SimCluster) -> tuple[str, float]:
    at = time.time()
    return add_node(cluster).node_id, at


def _result(setup: Setup, run: DriverRun, finished: bool, out: Path, trace: Path, frame_s: float, gpus: int,
            events: dict, shape: dict) -> dict:
    result = {**shape, "gpus": gpus, "frames": setup.frames, "frame_s": frame_s, "exit": run.returncode,
              "hung": not finished, "wall_s": run.wall_s}
    if not finished or run.returncode != 0 or "grown_at" not in events:
        result["error"] = last_error(run) if run.returncode else "the cluster never grew (the render ended first)"
        return result
    result["render_wall_s"] = sum(s["wall_s"] for s in iteration_stats(run.log).values())
    result.update(after_growth(setup, read_trace(trace), events, frame_s, gpus, str(out)))
    return result


def after_growth(setup: Setup, batches: list[dict], events: dict, frame_s: float, gpus: int, out_dir: str) -> dict:
    """Efficiency and its ceiling from the growth to the end of rendering, and each new node's wait for a batch."""
    timer = SimWorker(SimSpec(out_dir=out_dir, frame_s=frame_s, jitter=setup.jitter))

    def length(b: dict) -> float:
        return sum(timer.frame_seconds(f, b["iteration"]) for f in b["frames"]) * (setup.slowdown if b["slow"] else 1.0)

    grown = events["grown_at"]
    end = max(b["started_at"] + length(b) for b in batches)
    busy = sum(max(0.0, min(end, b["started_at"] + length(b)) - max(grown, b["started_at"])) for b in batches)
    first_start: dict = {}
    for b in batches:  # a batch rendered twice counts from its first start
        key = (b["iteration"], tuple(b["frames"]))
        first_start[key] = min(first_start.get(key, b["started_at"]), b["started_at"])
    now_iteration = min((it for (it, _), t in first_start.items() if t >= grown), default=setup.iterations)
    todo = [[sum(timer.frame_seconds(f, it) for f in frames) for (i, frames), t in sorted(first_start.items())
             if i == it and t >= grown] for it in range(now_iteration, setup.iterations + 1)]
    slow = len({b["pid"] for b in batches if b["slow"] and b["started_at"] >= grown})
    speeds = [setup.slowdown] * min(slow, gpus) + [1.0] * (gpus - min(slow, gpus))
    firsts = {}
    for node, added_at in events["added"]:
        starts = [b["started_at"] for b in batches if b["node"] == node]
        firsts[node[:8]] = round(min(starts) - added_at, 2) if starts else None
    return {"after_growth_wall_s": end - grown, "after_growth_busy_s": busy,
            "efficiency_after_growth": busy / (gpus * (end - grown)), "ceiling_after_growth": ceiling_after(todo, speeds),
            "new_node_first_batch_s": firsts,
            "removed_to_grown_s": (grown - events["removed_at"]) if "removed_at" in events else None}

"""Cluster failures on a real multi-node Ray (ray.cluster_utils.Cluster: one process tree per node).

A node removed mid-iteration must not hang the run nor change a pixel; losing every node must end the run
with one line within the configured deadline, keeping every finished frame. The renderer is model=sim: the
real driver, engine, actors and manifest, with frames that take a fixed time and are deterministic bytes.
"""

from __future__ import annotations

import os
import threading
import time

import pytest

from storyadapter.rundir import journal, manifest

from .helpers.engine_hooks import start_driver_at, wait_until_at, watch_executor
from .helpers.launcher import in_background, launch, render
from .helpers.renders import assert_same_render

pytestmark = pytest.mark.slow
N_FRAMES = 12
ITERATIONS = 2
STORY_NAME = "harbour.txt"
STORY = [f"a harbour pilot in a red jacket, scene {i}" for i in range(N_FRAMES)]


def overrides(story_file, address, workers, *extra) -> list[str]:
    return [
        f"story.path={story_file}", "model=sim", "model.sim.frame_s=0.25", f"render.iterations={ITERATIONS}",
        "render.seed_policy=per_frame", "render.batch_size=1",
        "cluster=ray", f"cluster.address={address}", f"cluster.workers={workers}", "cluster.max_restarts=1",
        "cluster.capacity_timeout_s=8", "cluster.ready_timeout_s=120", "outputs.enabled=false", *extra,
    ]


def test_a_node_lost_mid_iteration_neither_hangs_nor_changes_a_pixel(ray_cluster, story_file, tmp_path, monkeypatch):
    c, nodes = ray_cluster
    reference = render(tmp_path / "ref", *overrides(story_file, c.address, 2))

    out = tmp_path / "out"
    removed = []

    def remove_a_node(executor, iteration, finished):
        if iteration == 1 and not removed:  # both actors have batches in flight
            c.remove_node(nodes[1])  # a lost node: its actor dies and, with no spare capacity, cannot come back
            removed.append(nodes[1])

    watch_executor(monkeypatch, on_batches=remove_a_node)
    thread, errors = in_background(render, out, *overrides(story_file, c.address, 2))
    thread.join(timeout=360)
    assert not thread.is_alive(), "the run hung after losing a node"
    assert not errors, errors
    assert removed, "iteration 1 never started"
    assert_same_render(reference, out, ITERATIONS, N_FRAMES)
    nodes[1] = c.add_node(num_cpus=1)  # leave the cluster as the next test expects it
    c.wait_for_nodes()


def test_losing_every_node_ends_the_run_with_one_line_and_keeps_finished_frames(ray_cluster, story_file, tmp_path):
    c, nodes = ray_cluster
    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_ADDRESS": c.address}
    log = tmp_path / "driver.log"
    with open(log, "wb") as stderr:
        proc = start_driver_at("journal:1:2", "go", [*overrides(story_file, c.address, 2), f"output_dir={out}"],
                               stderr=stderr, env=env)
    try:
        wait_until_at(proc, "journal:1:2", 180)
    except AssertionError as exc:
        proc.kill()
        raise AssertionError(f"{exc}:\n{log.read_text()[-2000:]}") from None
    for node in nodes:
        c.remove_node(node)
    lost_at = time.monotonic()
    try:
        proc.communicate(timeout=120)
    finally:
        proc.kill()
    waited = time.monotonic() - lost_at
    err = log.read_bytes()
    lines = [ln for ln in err.decode().splitlines() if ln.startswith("error:")]
    assert proc.returncode == 2, err.decode()[-3000:]
    assert len(lines) == 1 and "cluster:" in lines[0] and "resume=true" in lines[0], err.decode()[-3000:]
    assert waited < 8 + 60, f"took {waited:.0f} s to give up"  # capacity_timeout_s plus Ray noticing the loss
    assert manifest.finished_iterations(out) == [0]
    kept = journal.read(out, 1)
    assert kept, "frames finished before the loss were not kept"
    for frame in kept.values():
        assert (out / frame.image_path).is_file()
    for _ in range(2):
        nodes.append(c.add_node(num_cpus=1))
    del nodes[:2]
    c.wait_for_nodes()


def test_a_cluster_that_grows_late_is_waited_for_not_refused(ray_cluster, story_file, tmp_path, monkeypatch):
    """An autoscaling cluster shows too few resources at first: the placement of cluster.min_workers actors waits
    (cluster.ready_timeout_s) and the render starts once a node joins."""
    from ray.util import placement_group_table

    from storyadapter.engine import placement

    c, nodes = ray_cluster
    out = tmp_path / "out"
    groups: list = []
    asked = threading.Event()
    reserve = placement.placement_group

    def reserve_and_say(*args, **kwargs):
        groups.append(reserve(*args, **kwargs))
        if len(groups) == 3:  # one reservation per actor
            asked.set()
        return groups[-1]

    monkeypatch.setattr(placement, "placement_group", reserve_and_say)
    # 3 workers on 2 one-CPU nodes, all 3 needed to start: the third one waits for capacity
    thread, errors = in_background(render, out, *overrides(story_file, c.address, 3), "cluster.min_workers=3")
    assert asked.wait(timeout=120), errors or "the render never asked for its actors' resources"
    assert "PENDING" in [placement_group_table(g)["state"] for g in groups] and not (out / "iter_00").exists(), errors
    late = c.add_node(num_cpus=1)
    thread.join(timeout=180)
    try:
        assert not thread.is_alive(), "the render never started on the grown cluster"
        assert not errors, errors
        assert manifest.finished_iterations(out) == list(range(ITERATIONS + 1))
    finally:
        c.remove_node(late)
        c.wait_for_nodes()  # until the GCS no longer lists it: a new driver could pick its raylet and fail to connect



def test_a_cluster_without_the_resources_the_render_needs_is_refused_at_once(story_file, tmp_path):
    """cluster=ray on a cluster with no GPU, for a render on GPUs: one line naming what the cluster has and what
    the render needs, at once (not after cluster.ready_timeout_s), exit non-zero, nothing written."""
    from ray.cluster_utils import Cluster

    # A cluster of its own, as ray_cluster is shaped (a head without CPUs, two 1-CPU nodes), that no test before
    # has removed nodes from: only the driver this test starts joins it.
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    for _ in range(2):
        c.add_node(num_cpus=1)
    c.wait_for_nodes()
    try:
        _refused_at_once(c, story_file, tmp_path / "out")
    finally:
        c.shutdown()


def _refused_at_once(c, story_file, out) -> None:
    # A wait for the placement would outlast the timeout: the refusal comes before any placement.
    proc = launch(*overrides(story_file, c.address, 2, "model.device=cuda", "cluster.ready_timeout_s=3600"),
                  f"output_dir={out}")
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert lines[0].startswith(f"error: cluster=ray: the Ray cluster at {c.address} cannot place one render actor, "
                               "which needs 1 GPU (cluster.gpus_per_worker=1) on one node: it has 0 GPUs, 2 CPUs on 3 "
                               "nodes"), lines[0]
    assert "model.device=cpu" in lines[0]
    assert not out.exists()

"""Clusters as they really change (issue 24): a render starts with what the cluster has and grows to
`cluster.workers`; a resume with the original command works on a shrunken cluster.

A real multi-node Ray (ray.cluster_utils.Cluster): a head without CPUs (the driver's) and four worker nodes of
1 CPU and 1 fake GPU each. The renderer is model=sim; with GPUs in the cluster its actors reserve one GPU each
(render_story.actor_devices), so a node is one render actor and the GPU count is what limits them.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from storyadapter.rundir import journal, manifest

from .helpers.stories import write_story
from .helpers.engine_hooks import watch_executor
from .helpers.renders import assert_same_render

pytestmark = pytest.mark.slow
N_FRAMES = 12
ITERATIONS = 2
NODES = 4


@pytest.fixture(scope="module")
def story_file(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("story")
    return write_story(d / "ferry.txt", [f"a ferry captain with a grey beard, scene {i}" for i in range(N_FRAMES)])


def overrides(story_file, out_dir, address, workers, *extra) -> list[str]:
    return [
        f"story.path={story_file}", "model=sim", "model.sim.frame_s=0.25", f"render.iterations={ITERATIONS}",
        "render.seed_policy=per_frame", "render.batch_size=1",
        "cluster=ray", f"cluster.address={address}", f"cluster.workers={workers}", "cluster.max_restarts=1",
        "cluster.capacity_timeout_s=30", "cluster.ready_timeout_s=120", "outputs.enabled=false", f"output_dir={out_dir}",
        *extra,
    ]


class Stop(Exception):
    """Raised from a hook: the driver stops there, as a killed driver would (finished batches are journaled)."""


@pytest.fixture(scope="module")
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    nodes = [c.add_node(num_cpus=1, num_gpus=1) for _ in range(NODES)]
    c.wait_for_nodes()
    ray.init(address=c.address, configure_logging=False)
    yield c, nodes
    ray.shutdown()
    c.shutdown()


def restore(c, nodes) -> None:
    """Back to NODES worker nodes for the next test."""
    while len(nodes) < NODES:
        nodes.append(c.add_node(num_cpus=1, num_gpus=1))
    c.wait_for_nodes()


def render(story_file, out_dir, address, workers, *extra) -> Path:
    from storyadapter.launch import compose_config
    from storyadapter.render_story import render_story

    return render_story(compose_config(overrides(story_file, out_dir, address, workers, *extra)), out_dir)


@pytest.fixture(scope="module")
def reference(cluster, story_file, tmp_path_factory) -> Path:
    c, _ = cluster
    return render(story_file, tmp_path_factory.mktemp("ref") / "out", c.address, NODES)


def interrupted(story_file, out, c, monkeypatch, at_batches: int, then=None) -> None:
    """A render of NODES workers stopped once `at_batches` rounds of iteration 1 are journaled; `then` runs first."""
    rounds = []

    def stop(executor, iteration, finished):
        if iteration == 1:
            rounds.append(finished)
            if len(rounds) == at_batches:
                if then:
                    then()
                raise Stop

    watch_executor(monkeypatch, on_batches=stop)
    with pytest.raises(Stop):
        render(story_file, out, c.address, NODES)
    monkeypatch.undo()
    assert manifest.finished_iterations(out) == [0] and journal.read(out, 1), "the render must stop inside iteration 1"


def test_more_workers_than_the_cluster_has_finish_on_what_is_there_with_one_warning(cluster, story_file, reference,
                                                                                   tmp_path, caplog):
    c, _ = cluster
    caplog.set_level(logging.INFO, logger="storyadapter")
    out = render(story_file, tmp_path / "out", c.address, 8)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("storyadapter")]
    assert len(warnings) == 1, warnings
    assert "cluster.workers=8" in warnings[0] and "4 GPUs" in warnings[0] and "room for 4 now" in warnings[0], warnings
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("cluster: ") and " render actors live" in r.getMessage()]
    assert "cluster: 4 of 8 render actors live, 4 waiting for room on the cluster or loading" in " | ".join(said), said
    assert len(said) == len(set(said)), f"the same capacity line twice: {said}"
    assert_same_render(reference, out, ITERATIONS, N_FRAMES)  # 4 actors of 8 wanted: the same pixels


def test_a_node_added_during_iteration_1_gets_batches_in_that_iteration_or_the_next(cluster, story_file, reference,
                                                                                    tmp_path, monkeypatch):
    c, nodes = cluster
    pids: dict[int, set[int]] = {}
    newcomers: list[int] = []

    def record_then_add_a_node(executor, iteration, finished):
        pids.setdefault(iteration, set()).update(b.worker_pid for b in finished)
        if iteration == 1 and not newcomers:  # iteration 1's first batches are done: it is under way
            nodes.append(c.add_node(num_cpus=1, num_gpus=1))
            waiting = [a for a in executor.actors if a.state == "starting"]
            assert waiting, "the fifth actor has no node until now"
            # The engine finds the newcomers itself; waiting for their ready() here only pins down *when* they are
            # up (before iteration 1's batches are all handed out), so the test does not race a node's start-up.
            import ray

            newcomers.extend(ray.get([a.probe for a in waiting], timeout=180))

    watch_executor(monkeypatch, on_batches=record_then_add_a_node)
    try:
        out = render(story_file, tmp_path / "out", c.address, NODES + 1)
    finally:
        monkeypatch.undo()
        c.remove_node(nodes.pop())
    assert newcomers and not set(newcomers) & pids[0], (newcomers, pids)
    assert set(newcomers) <= pids[1] | pids.get(2, set()), (newcomers, pids)
    assert_same_render(reference, out, ITERATIONS, N_FRAMES)


def answering_pids(executor, timeout: float = 180) -> set[int]:
    """The pids of every actor slot once each answers (an actor Ray is restarting answers once it is up again)."""
    import ray

    deadline, pids = time.monotonic() + timeout, set()
    for a in executor.actors:
        while True:
            try:
                pids.add(ray.get(a.handle.ready.remote(), timeout=max(1.0, deadline - time.monotonic())))
                break
            except ray.exceptions.ActorUnavailableError:  # restarting, its new node not reached yet
                assert time.monotonic() < deadline, f"render actor {a.index} did not come back"
                time.sleep(0.5)
    return pids


def test_a_cluster_that_loses_a_node_and_gets_one_back_uses_it(cluster, story_file, reference, tmp_path, monkeypatch):
    """4 workers on 4 nodes; mid-iteration 1 a node is lost and another added: the lost actor's reservation is placed
    on the new node, the actor comes up there and renders batches again, in that iteration or the next."""
    c, nodes = cluster
    pids: dict[int, set[int]] = {}
    back: set[int] = set()

    def lose_one_then_add_one(executor, iteration, finished):
        pids.setdefault(iteration, set()).update(b.worker_pid for b in finished)
        if iteration == 1 and not back:  # iteration 1 is under way
            c.remove_node(nodes.pop())
            nodes.append(c.add_node(num_cpus=1, num_gpus=1))
            # As in the test above: waiting here pins down when the actor is back, not whether the engine uses it.
            back.update(answering_pids(executor))

    watch_executor(monkeypatch, on_batches=lose_one_then_add_one)
    try:
        out = render(story_file, tmp_path / "out", c.address, NODES)
    finally:
        monkeypatch.undo()
        restore(c, nodes)
    new = back - pids[0]
    assert len(new) == 1, (back, pids)  # the lost node's actor, in a new process on the new node
    assert new <= pids[1] | pids.get(2, set()), (new, pids)
    assert_same_render(reference, out, ITERATIONS, N_FRAMES)


def test_a_resume_with_the_original_workers_after_two_of_four_nodes_were_removed_finishes_with_identical_bytes(
        cluster, story_file, reference, tmp_path, monkeypatch):
    c, nodes = cluster
    out = tmp_path / "out"

    def remove_two():
        for node in (nodes.pop(), nodes.pop()):
            c.remove_node(node)

    try:
        interrupted(story_file, out, c, monkeypatch, 2, then=remove_two)
        kept = {f: (out / r.image_path).stat().st_mtime_ns for f, r in journal.read(out, 1).items()}
        render(story_file, out, c.address, NODES, "resume=true")  # the same command, on 2 of its 4 nodes
    finally:
        restore(c, nodes)
    assert_same_render(reference, out, ITERATIONS, N_FRAMES)
    for f, stamp in kept.items():  # frames finished before the stop are not rendered again
        assert (out / manifest.iteration_dirname(1) / manifest.frame_filename(f)).stat().st_mtime_ns == stamp


def test_min_workers_above_what_ever_comes_up_stops_at_ready_timeout_with_one_line_keeping_every_frame(
        cluster, story_file, tmp_path, monkeypatch):
    c, _ = cluster
    out = tmp_path / "out"
    interrupted(story_file, out, c, monkeypatch, 1)
    # Finished files only: a frame being written when the render stopped is a dot-file, no frame yet.
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and not p.name.startswith(".")}
    timeout_s = 8
    cmd = [sys.executable, "-m", "storyadapter.launch",
           *overrides(story_file, out, c.address, NODES + 1, "resume=true", f"cluster.min_workers={NODES + 1}",
                      f"cluster.ready_timeout_s={timeout_s}")]
    started = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    took = time.monotonic() - started
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert re.match(rf"error: cluster: [0-4] of cluster.min_workers=5 render actors came up within "
                    rf"cluster.ready_timeout_s={timeout_s} s", lines[0]), lines[0]
    assert "every finished frame is kept" in lines[0] and "resume=true" in lines[0]
    # While it waited, the log said what for: live, wanted, and the start's condition.
    assert re.search(r"cluster: [0-4] of 5 render actors live, [1-5] waiting for room on the cluster or loading .*; "
                     r"waiting for cluster.min_workers=5 before the first batch", proc.stderr), proc.stderr[-3000:]
    assert took < timeout_s + 120, f"took {took:.0f} s"  # the timeout, plus starting Python, Ray and 4 actors
    assert {p: p.read_bytes() for p in before} == before
    assert manifest.finished_iterations(out) == [0]


def test_min_workers_above_workers_is_one_line(story_file, tmp_path):
    from storyadapter.launch import compose_config
    from storyadapter.spec import ConfigError, from_config

    with pytest.raises(ConfigError, match=r"^cluster.min_workers=3: must be at most cluster.workers=2$"):
        from_config(compose_config(overrides(story_file, tmp_path / "out", "127.0.0.1:9", 2, "cluster.min_workers=3")))
    with pytest.raises(ConfigError, match=r"^cluster.min_workers=0: must be positive"):
        from_config(compose_config(overrides(story_file, tmp_path / "out", "127.0.0.1:9", 2, "cluster.min_workers=0")))

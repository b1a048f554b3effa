"""A CSA pass (method=storydiffusion) on a real two-node Ray (ray.cluster_utils.Cluster) losing a node.

The ID banks live in the object store of the node whose actor wrote them. A node lost after the write phase
takes its bank with it: the surviving actor must finish the pass, rendering that write phase itself if it had
not fetched the bank yet, with the pixels of an undisturbed run.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .helpers.engine_hooks import watch_executor
from .helpers.launcher import in_background, render
from .helpers.renders import assert_same_render

pytestmark = pytest.mark.slow
READERS = 12
STORY_NAME = "fair.txt"
STORY = ["[Tom] A boy with a red cap.", "[Lisa] A girl with a yellow raincoat.", "",
         "[Tom] walks to school", "[Lisa] reads under a tree", "[Tom] feeds a cat", "[Lisa] paints a fence",
         *(f"[Tom] and [Lisa] at the fair, scene {i}" for i in range(READERS))]
N_FRAMES = len(STORY) - 3


def overrides(story_file: Path, tiny_cache: Path, address: str) -> list[str]:
    return [
        f"story.path={story_file}", "model=tiny", f"model.cache_dir={tiny_cache}", "render=tiny", "render.steps=4",
        "render.height=96", "render.width=96", "render.batch_size=1", "method=storydiffusion", "method.id_length=2",
        "cluster=ray", f"cluster.address={address}", "cluster.workers=2", "cluster.max_restarts=1",
        "cluster.threads_per_worker=1", "cluster.ready_timeout_s=180", "outputs.enabled=false",
    ]


def test_a_node_lost_after_the_write_phase_neither_hangs_nor_changes_a_pixel(ray_cluster, story_file, tiny_cache,
                                                                             tmp_path, monkeypatch):
    c, nodes = ray_cluster
    reference = render(tmp_path / "ref", *overrides(story_file, tiny_cache, c.address))

    out = tmp_path / "out"
    done: set[int] = set()
    removed_after: list[set[int]] = []

    def remove_a_node_after_the_write_phases(executor, iteration, finished):
        done.update(r.frame for batch in finished for r in batch.frames)
        # Frames 0-3 are the identity frames: once they are journaled, both write phases are done.
        if {0, 1, 2, 3} <= done and not removed_after:
            removed_after.append(set(done))
            c.remove_node(nodes[1])

    watch_executor(monkeypatch, on_batches=remove_a_node_after_the_write_phases)
    thread, errors = in_background(render, out, *overrides(story_file, tiny_cache, c.address))
    thread.join(timeout=600)
    assert removed_after, errors or "the write phases never finished"
    assert len(removed_after[0]) < N_FRAMES, "the read phase was over before the node could be removed"
    assert not thread.is_alive(), "the run hung after losing a node"
    assert not errors, errors
    assert_same_render(reference, out, 0, N_FRAMES)
    nodes[1] = c.add_node(num_cpus=1)
    c.wait_for_nodes()

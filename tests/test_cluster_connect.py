"""What `cluster=ray` refuses right after joining: a cluster that cannot place a single render actor
(engine/cluster.py). The launcher's side, on a real multi-node cluster, is in test_cluster_failures.py.
And before joining: an address that never answers (engine/ray_address.py)."""

from __future__ import annotations

import socket
import time

from storyadapter.engine.cluster import missing_resources

from .helpers.launcher import launch

HEAD = "10.0.0.5:6379"
CPU_NODES = [{"CPU": 8.0, "memory": 3e10}, {"CPU": 16.0}]


def test_no_gpu_for_a_render_on_gpus_is_one_line_naming_what_is_there_and_what_is_needed():
    line = missing_resources(HEAD, CPU_NODES, None, cpus_per_worker=1, gpus_per_worker=1)
    assert line == ("cluster=ray: the Ray cluster at 10.0.0.5:6379 cannot place one render actor, which needs 1 GPU "
                    "(cluster.gpus_per_worker=1) on one node: it has 0 GPUs, 24 CPUs on 2 nodes, at most 0 GPUs, 16 CPUs "
                    "on one; add a node that has them (`ray start --address=10.0.0.5:6379` on it; an autoscaling cluster: "
                    "min_workers of 1 for a node type that has them), or join another cluster (cluster.address=), or "
                    "render on CPUs (model.device=cpu)")


def test_a_render_without_gpus_or_a_cluster_with_room_is_not_refused():
    assert missing_resources(HEAD, CPU_NODES, None, cpus_per_worker=16, gpus_per_worker=0) is None
    assert missing_resources(HEAD, [*CPU_NODES, {"CPU": 4.0, "GPU": 1.0}], None, 1, 1) is None


def test_an_actor_must_fit_on_one_node():
    line = missing_resources(HEAD, CPU_NODES, None, cpus_per_worker=20, gpus_per_worker=0)
    assert "needs 20 CPUs (cluster.cpus_per_worker=20) on one node" in line and "at most 0 GPUs, 16 CPUs on one" in line
    assert "model.device=cpu" not in line
    assert "needs 2 GPUs" in missing_resources(HEAD, [{"CPU": 8.0, "GPU": 1.0}] * 4, None, 1, 2)


def test_an_autoscaling_cluster_is_judged_by_what_it_can_grow_to():
    grows_gpus = {"CPU": 200, "GPU": 32}
    assert missing_resources(HEAD, [{"CPU": 4.0}], grows_gpus, cpus_per_worker=1, gpus_per_worker=1) is None
    line = missing_resources(HEAD, [{"CPU": 4.0}], {"CPU": 200}, cpus_per_worker=1, gpus_per_worker=1)
    assert "its autoscaler can grow it to 200 CPUs" in line and "needs 1 GPU" in line and "min_workers" not in line


def test_an_address_that_never_answers_is_one_line_within_connect_timeout(tmp_path, tiny_cache):
    """A head behind a firewall that drops packets, or a host that is down: the connection is neither made nor refused.
    Here a listening socket whose accept queue is full (listen(0), one connection never accepted): Linux drops
    every further SYN. The launcher gives up after cluster.connect_timeout_s with one line, exit 2, nothing written.
    (A port nothing listens on is refused at once: test_launch.py's bad-config cases.)"""
    with socket.socket() as head, socket.socket() as filler:
        head.bind(("127.0.0.1", 0))
        head.listen(0)
        filler.connect(head.getsockname())  # the queue's one place, never accepted
        address = "%s:%d" % head.getsockname()
        before = sorted(tmp_path.rglob("*"))
        started = time.monotonic()
        proc = launch("cluster=ray", f"cluster.address={address}", "cluster.connect_timeout_s=3", "model=tiny",
                      f"model.cache_dir={tiny_cache}", f"output_dir={tmp_path / 'out'}", cwd=tmp_path, timeout=120)
        took = time.monotonic() - started
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert errors == [f"error: cluster.address={address}: no answer within cluster.connect_timeout_s=3 s; is the head "
                      "node up, and its port open to this machine?"], proc.stderr[-2000:]
    assert 3 <= took < 3 + 60, f"took {took:.0f} s"  # the timeout, plus starting Python (no Ray retries for minutes)
    assert sorted(tmp_path.rglob("*")) == before  # nothing written, output_dir included

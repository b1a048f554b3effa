"""What `cluster=ray` refuses right after joining: a cluster that cannot place a single render actor
(engine/cluster.py). The launcher's side, on a real multi-node cluster, is in test_cluster_failures.py."""

from __future__ import annotations

from storyadapter.engine.cluster import missing_resources

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

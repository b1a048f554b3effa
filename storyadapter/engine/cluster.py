"""Ray for one render: started in-process (`cluster=local`) or joined (`cluster=ray`).

A joined cluster is named in the log: without an address it is whatever cluster this machine started last,
maybe somebody else's. One that cannot place a single render actor (no GPU for a render on GPUs, fewer CPUs
than one actor takes) is refused at once, in one line naming what it has and what the render needs, instead
of a placement that waits cluster.ready_timeout_s for nothing. An autoscaling cluster may start without its
GPU nodes: when Ray publishes the autoscaler's node types (its cluster config, which Ray Train reads the same
way), the check is against what the cluster can grow to; otherwise against what it has now.
"""

from __future__ import annotations

import logging
import os
import time

import numpy as np
import ray

from ..errors import UserError
from . import local_ray, ray_address

log = logging.getLogger(__name__)


def connect(mode: str, address: str | None, workers: int, cpus_per_worker: float,
            object_store_gb: float | None = None, connect_timeout_s: float = 30.0, *,
            gpus_per_worker: float = 0.0) -> bool:
    """Start Ray in-process (`local`) or join a cluster (`ray`). Returns True when we started it.
    `gpus_per_worker`: the GPUs one render actor needs; 0 for a render that runs without GPUs."""
    if ray.is_initialized():
        return False
    if mode == "local":
        cpus = max(os.cpu_count() or 1, int(np.ceil(workers * cpus_per_worker)))
        store = {"object_store_memory": int(object_store_gb * 1e9)} if object_store_gb else {}  # else Ray's 30% of RAM
        # Ray starts workers at niceness 15; here the render actors are the job, so they run at normal priority.
        # GPUs: Ray's own detection (NVML, CUDA_VISIBLE_DEVICES), so the driver never imports torch (model=sim).
        # address="local": a new Ray even when this machine already runs one (a `ray start`, another render).
        local_ray.start(address="local", num_cpus=cpus, include_dashboard=False, **store,
                        log_to_driver=True, configure_logging=False, _system_config={"worker_niceness": 0})
        return True
    target = ray_address.target(address)
    hostport = ray_address.check_reachable(target, connect_timeout_s)  # Ray itself retries a wrong address for minutes
    _join(target, time.monotonic() + connect_timeout_s)
    have = ray.cluster_resources()
    alive = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    log.info("cluster: joined the Ray cluster at %s%s: %d node%s, %g CPUs, %g GPUs", hostport,
             " (the last `ray start` on this machine)" if target == "auto" else "", len(alive),
             "" if len(alive) == 1 else "s", have.get("CPU", 0), have.get("GPU", 0))
    problem = missing_resources(hostport, alive, autoscaling_limit(), cpus_per_worker, gpus_per_worker)
    if problem:
        ray.shutdown()  # leave the cluster as we found it: no driver of ours stays registered
        raise UserError(problem)
    return False


def _join(target: str, deadline: float) -> None:
    """ray.init on a cluster whose head answered (check_reachable). A driver can still fail to join for a moment,
    e.g. while the head lists a node that just left and the driver picks its raylet: tried again until the
    deadline (cluster.connect_timeout_s), then one line with Ray's own reason."""
    while True:
        try:
            ray.init(address=target, log_to_driver=True, configure_logging=False)
            return
        except (ConnectionError, RuntimeError, ValueError) as exc:
            if ray.is_initialized():
                ray.shutdown()
            if isinstance(exc, ConnectionError) and time.monotonic() + 1.0 < deadline:
                time.sleep(1.0)  # a retry interval, not a wait for an event: Ray offers none for this
                continue
            cause = f": {str(exc.__cause__).splitlines()[0]}" if exc.__cause__ and str(exc.__cause__) else ""
            hint = "" if os.environ.get("RAY_AUTH_TOKEN") else "; if the cluster uses token auth, export its RAY_AUTH_TOKEN"
            raise UserError(f"cluster.address={target}: cannot connect to a Ray cluster ({exc}{cause}){hint}") from None


def missing_resources(hostport: str, nodes: list[dict], limit: dict | None, cpus_per_worker: float,
                      gpus_per_worker: float) -> str | None:
    """Why the cluster cannot place one render actor, in one line, or None. `nodes`: each live node's resources;
    `limit`: what the cluster's autoscaler can grow it to (None: no autoscaler known, the nodes are all there is)."""
    need = {"GPU": gpus_per_worker, "CPU": cpus_per_worker}
    if limit is not None:  # node types the autoscaler can add: their sizes are not published, only the totals
        short = [r for r, n in need.items() if n > 0 and limit.get(r, 0) < n]
    else:  # an actor's bundle must fit on one node
        short = [r for r, n in need.items() if n > 0 and max((node.get(r, 0) for node in nodes), default=0) < n]
    if not short:
        return None
    total = {r: sum(node.get(r, 0) for node in nodes) for r in need}
    largest = {r: max((node.get(r, 0) for node in nodes), default=0) for r in need}
    has = f"{_amount(total)} on {len(nodes)} node{'' if len(nodes) == 1 else 's'}, at most {_amount(largest)} on one"
    if limit is not None:
        has += f"; its autoscaler can grow it to {_amount(limit)}"
    wants = " and ".join(f"{_amount({r: need[r]})} (cluster.{r.lower()}s_per_worker={need[r]:g})" for r in short)
    grow = "" if limit is not None else "; an autoscaling cluster: min_workers of 1 for a node type that has them"
    fixes = [f"add a node that has them (`ray start --address={hostport}` on it{grow})", "join another cluster (cluster.address=)"]
    if "GPU" in short:
        fixes.append("render on CPUs (model.device=cpu)")
    return (f"cluster=ray: the Ray cluster at {hostport} cannot place one render actor, which needs {wants} on one node: "
            f"it has {has}; {', or '.join(fixes)}")


def _amount(resources: dict) -> str:
    """The GPUs and CPUs of `resources`, GPUs first: "1 GPU, 8 CPUs"."""
    parts = []
    for r in ("GPU", "CPU"):
        if r in resources:
            n = resources[r]
            parts.append(f"{n:g} {r}{'' if n == 1 else 's'}")
    return ", ".join(parts)


def autoscaling_limit() -> dict | None:
    """The most of each resource the cluster's autoscaler can provide, from the node types it publishes to the
    GCS; None when it publishes none (a cluster of hand-started nodes, or an autoscaler that does not say)."""
    try:
        from ray._private.state import state  # Ray's private API, as Ray Train uses it: any failure means "unknown"

        return state.get_max_resources_from_cluster_config()
    except Exception:  # noqa: BLE001 - see above
        return None

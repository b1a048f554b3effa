"""Ray for one render: started in-process (`cluster=local`) or joined (`cluster=ray`).

A joined cluster is named in the log: without an address it is whatever cluster this machine started last,
maybe somebody else's.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import ray

from ..errors import UserError
from . import local_ray, ray_address

log = logging.getLogger(__name__)


def connect(mode: str, address: str | None, workers: int, cpus_per_worker: float,
            object_store_gb: float | None = None, connect_timeout_s: float = 30.0) -> bool:
    """Start Ray in-process (`local`) or join a cluster (`ray`). Returns True when we started it."""
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
    try:
        ray.init(address=target, log_to_driver=True, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        hint = "" if os.environ.get("RAY_AUTH_TOKEN") else "; if the cluster uses token auth, export its RAY_AUTH_TOKEN"
        raise UserError(f"cluster.address={target}: cannot connect to a Ray cluster ({exc}){hint}") from None
    have = ray.cluster_resources()
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    log.info("cluster: joined the Ray cluster at %s%s: %d node%s, %g CPUs, %g GPUs", hostport,
             " (the last `ray start` on this machine)" if target == "auto" else "", nodes, "" if nodes == 1 else "s",
             have.get("CPU", 0), have.get("GPU", 0))
    return False


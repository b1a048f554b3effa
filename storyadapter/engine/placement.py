"""Reserving the render actors' resources: one bundle per actor in one placement group, packed.

A cluster that cannot grow (local Ray) is checked first, so too few CPUs or GPUs is a clear error at once.
A joined cluster may be autoscaling: the placement waits up to cluster.ready_timeout_s for it to grow.
"""

from __future__ import annotations

from dataclasses import dataclass

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group

from ..errors import UserError


@dataclass(frozen=True)
class ActorResources:
    workers: int
    gpus_per_worker: float
    cpus_per_worker: float
    max_restarts: int
    ready_timeout_s: float  # placement (autoscaling included) and model load
    batch_timeout_s: float = 120.0  # floor of a batch's deadline
    batch_timeout_factor: float = 5.0  # deadline = factor x median batch time, at least the floor
    capacity_timeout_s: float = 300.0  # no live actor for this long: stop


def check_capacity(res: ActorResources, use_gpu: bool) -> None:
    """For a cluster that cannot grow (local Ray): a clear error now instead of a placement that never comes."""
    total = ray.cluster_resources()
    gpus_needed = res.workers * res.gpus_per_worker if use_gpu else 0
    cpus_needed = res.workers * res.cpus_per_worker
    if gpus_needed > total.get("GPU", 0):
        raise UserError(
            f"cluster.workers={res.workers} x cluster.gpus_per_worker={res.gpus_per_worker} needs {gpus_needed:g} GPUs; "
            f"the Ray cluster has {total.get('GPU', 0):g}"
        )
    if cpus_needed > total.get("CPU", 0):
        raise UserError(
            f"cluster.workers={res.workers} x cluster.cpus_per_worker={res.cpus_per_worker} needs {cpus_needed:g} CPUs; "
            f"the Ray cluster has {total.get('CPU', 0):g}"
        )


def bundle(res: ActorResources, use_gpu: bool) -> dict[str, float]:
    """One actor's share: its CPUs, and its GPUs when the actors use them."""
    gpus = res.gpus_per_worker if use_gpu else 0
    return {"CPU": res.cpus_per_worker, **({"GPU": gpus} if gpus else {})}


def reserve(res: ActorResources, use_gpu: bool) -> PlacementGroup:
    """A placement group of one bundle per actor, ready; UserError in one line when it is not within ready_timeout_s."""
    one = bundle(res, use_gpu)
    group = placement_group([one] * res.workers, strategy="PACK")
    try:
        ray.get(group.ready(), timeout=res.ready_timeout_s)
    except ray.exceptions.GetTimeoutError:
        have = ray.cluster_resources()
        remove_placement_group(group)
        raise UserError(
            f"cluster: could not reserve {res.workers} x {one} within cluster.ready_timeout_s={res.ready_timeout_s:g} s "
            f"(the cluster has {have.get('GPU', 0):g} GPUs, {have.get('CPU', 0):g} CPUs)") from None
    return group

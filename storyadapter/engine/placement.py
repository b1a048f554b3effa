"""Reserving the render actors' resources: one single-bundle placement group per actor, never one for all.

A render starts with whatever part of `cluster.workers` the cluster can place (at least cluster.min_workers) and
takes the rest as the cluster grows, so each actor's reservation stands alone: an all-or-nothing group of N bundles
waits for the N-th GPU before the first frame, and a cluster that shrank below N could never start a resume.
A group per actor (rather than a bare resource request on the actor) lets Ray re-place the reservation when its
node is lost, removes every reservation with the run, and is what an autoscaler reads as demand.

A cluster that cannot grow (local Ray) gets as many actors as fit now; a joined cluster keeps asking for all of them.
Either way, asking for more than fits is one warning, not a wait and an error.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group

from ..errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ActorResources:
    workers: int
    gpus_per_worker: float
    cpus_per_worker: float
    max_restarts: int
    ready_timeout_s: float  # placing min_workers actors (autoscaling included) and loading their model
    batch_timeout_s: float = 120.0  # floor of a batch's deadline
    batch_timeout_factor: float = 5.0  # deadline = factor x median batch time, at least the floor
    capacity_timeout_s: float = 300.0  # no live actor for this long: stop
    min_workers: int | None = None  # the run starts once this many actors are ready (None: 1)

    @property
    def start_with(self) -> int:
        """Actors that must be ready before the first batch: one makes progress, and frames do not depend on how many."""
        return min(self.min_workers or 1, self.workers)


def bundle(res: ActorResources, use_gpu: bool) -> dict[str, float]:
    """One actor's share: its CPUs, and its GPUs when the actors use them."""
    gpus = res.gpus_per_worker if use_gpu else 0
    return {"CPU": res.cpus_per_worker, **({"GPU": gpus} if gpus else {})}


def fits_now(one: dict[str, float], nodes: list[dict]) -> int:
    """How many bundles `one` the live nodes (their total resources) hold, each bundle on one node."""
    return sum(int(min(node.get(r, 0) // n for r, n in one.items() if n > 0)) for node in nodes)


def actor_slots(res: ActorResources, use_gpu: bool, fixed_cluster: bool) -> int:
    """How many actors to ask for: all of cluster.workers on a cluster that may grow, what fits on one that cannot.
    More than fits now is one warning; a fixed cluster that holds not even one actor is an error."""
    one = bundle(res, use_gpu)
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    room = fits_now(one, nodes)
    if room >= res.workers:
        return res.workers
    have = {r: sum(node.get(r, 0) for node in nodes) for r in one}
    what = ", ".join(f"{have[r]:g} {r}s" for r in sorted(have, reverse=True))
    if fixed_cluster:
        if room == 0:
            raise UserError(f"cluster.workers={res.workers}: not one render actor fits on this machine ({what}; each needs "
                            f"{one}): lower cluster.gpus_per_worker or cluster.cpus_per_worker")
        log.warning("cluster: cluster.workers=%d asks for %d x %s; this machine has %s: rendering with %d",
                    res.workers, res.workers, one, what, room)
        return room
    log.warning("cluster: cluster.workers=%d asks for %d x %s; the cluster has %s, room for %d now: starting with what "
                "is there and taking the rest as the cluster grows", res.workers, res.workers, one, what, room)
    return res.workers


def reserve_one(res: ActorResources, use_gpu: bool) -> PlacementGroup:
    """One actor's reservation; it waits in Ray (and asks an autoscaler) until the cluster has room."""
    return placement_group([bundle(res, use_gpu)], strategy="PACK")


def release(groups: list[PlacementGroup]) -> None:
    for group in groups:
        try:
            remove_placement_group(group)
        except Exception:  # noqa: BLE001 - a group Ray has already dropped (its cluster going down) is released
            pass


def describe_room(one: dict[str, float]) -> str:
    """The cluster's totals, for a line that says why actors wait: "4 GPUs, 9 CPUs"."""
    have = ray.cluster_resources()
    return ", ".join(f"{have.get(r, 0):g} {r}s" for r in sorted(one, reverse=True))

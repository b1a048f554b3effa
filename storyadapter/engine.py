"""The Ray engine: long-lived render actors (one per GPU, or CPU actors), one shared bank per iteration.

A thin driver-side executor: it reserves the actors' resources with a placement group, lets each
actor load the pipeline once, then per iteration `ray.put`s the bank once and hands out fixed
batches: each actor's round-robin share first (its text cache holds those frames), then whatever the
slowest actor has left (dispatch.py), so no actor sits at the barrier while work remains.
Ray restarts an actor that dies and retries its unfinished batches; frames are deterministic, so the
result is the same as an uninterrupted run.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np
import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from . import local_ray
from .dispatch import BatchQueues
from .errors import UserError
from .worker import FrameWorker, WorkerSpec

log = logging.getLogger(__name__)


@ray.remote
class RenderActor:
    def __init__(self, spec: WorkerSpec):
        self.worker = FrameWorker(spec)

    def ready(self) -> int:
        return os.getpid()

    def render_batch(self, iteration, frames, bank, scale):
        return self.worker.render_batch(iteration, frames, bank, scale)

    def image_encodes(self) -> int:
        return self.worker.image_encodes


@dataclass(frozen=True)
class ActorResources:
    workers: int
    gpus_per_worker: float
    cpus_per_worker: float
    max_restarts: int
    ready_timeout_s: float


def wants_gpu(device: str) -> bool:
    return device != "cpu" and ray.cluster_resources().get("GPU", 0) > 0


def check_capacity(res: ActorResources, use_gpu: bool) -> None:
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


def _unwrap(exc: BaseException) -> BaseException:
    """The user-facing error inside a Ray task/actor error, if there is one."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, UserError) else exc


class RayExecutor:
    queue_depth = 2

    def __init__(self, spec: WorkerSpec, res: ActorResources):
        use_gpu = wants_gpu(spec.device)
        check_capacity(res, use_gpu)
        gpus = res.gpus_per_worker if use_gpu else 0
        bundle = {"CPU": res.cpus_per_worker, **({"GPU": gpus} if gpus else {})}
        self._pg = placement_group([bundle] * res.workers, strategy="PACK")
        try:
            ray.get(self._pg.ready(), timeout=res.ready_timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise UserError(f"cluster: could not reserve {res.workers} x {bundle} within {res.ready_timeout_s:.0f} s") from None
        self.actors = [
            RenderActor.options(
                num_cpus=res.cpus_per_worker,
                num_gpus=gpus,
                max_restarts=res.max_restarts,
                max_task_retries=res.max_restarts,
                scheduling_strategy=PlacementGroupSchedulingStrategy(self._pg, placement_group_bundle_index=i),
            ).remote(spec)
            for i in range(res.workers)
        ]
        try:
            pids = ray.get([a.ready.remote() for a in self.actors], timeout=res.ready_timeout_s)
        except ray.exceptions.RayError as exc:
            err = _unwrap(exc)
            if isinstance(err, UserError):
                raise err from None
            raise
        log.info("%d render actors ready (pids %s), %g GPU each", len(pids), pids, gpus)
        self.bank_puts = 0

    def render_iteration(self, iteration, batches, bank, scale, on_batch):
        bank_ref = None
        if bank is not None:
            bank_ref = ray.put(np.ascontiguousarray(bank, dtype=np.float32))  # once per iteration, shared by all
            self.bank_puts += 1
        queues = BatchQueues(batches, len(self.actors))
        pending: dict = {}  # ref -> actor index
        in_flight = [0] * len(self.actors)

        def submit(actor: int) -> bool:
            frames = queues.next_for(actor)
            if frames is None:
                return False
            pending[self.actors[actor].render_batch.remote(iteration, frames, bank_ref, scale)] = actor
            in_flight[actor] += 1
            return True

        def top_up(actor: int) -> None:
            # A second batch queued on the actor hides the dispatch round trip; near the end of the iteration
            # batches stay with the driver instead, so whichever actor frees up first takes them.
            while in_flight[actor] < self.queue_depth and (in_flight[actor] == 0 or queues.remaining() >= len(self.actors)):
                if not submit(actor):
                    return

        for actor in range(len(self.actors)):
            top_up(actor)
        results = []
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                actor = pending.pop(ref)
                in_flight[actor] -= 1
                top_up(actor)
                batch = ray.get(ref)
                on_batch(batch)
                results.extend(batch.frames)
        if queues.taken_from_others:
            log.debug("iteration %d: %d batch(es) rendered by an actor other than their owner", iteration, queues.taken_from_others)
        return results

    def image_encodes(self) -> int:
        return sum(ray.get([a.image_encodes.remote() for a in self.actors]))

    def shutdown(self) -> None:
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        remove_placement_group(self._pg)


def connect(mode: str, address: str | None, workers: int, cpus_per_worker: float) -> bool:
    """Start Ray in-process (`local`) or join a cluster (`ray`). Returns True when we started it."""
    if ray.is_initialized():
        return False
    if mode == "local":
        import torch

        cpus = max(os.cpu_count() or 1, int(np.ceil(workers * cpus_per_worker)))
        # Ray starts workers at niceness 15; here the render actors are the job, so they run at normal priority.
        local_ray.start(cpus, torch.cuda.device_count(), include_dashboard=False,
                        log_to_driver=True, configure_logging=False, _system_config={"worker_niceness": 0})
        return True
    target = address or os.environ.get("RAY_ADDRESS") or "auto"
    try:
        ray.init(address=target, log_to_driver=True, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        hint = "" if os.environ.get("RAY_AUTH_TOKEN") else "; if the cluster uses token auth, export its RAY_AUTH_TOKEN"
        raise UserError(f"cluster.address={target}: cannot connect to a Ray cluster ({exc}){hint}") from None
    return False

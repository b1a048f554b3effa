"""The Ray engine: long-lived render actors (one per GPU, or CPU actors), one shared bank per iteration.

A thin driver-side executor. It reserves the actors' resources with a placement group and lets each
actor load the pipeline once. Per iteration it `ray.put`s the bank once, tells every actor
`begin_iteration(bank, scale)`, and hands out fixed batches from a queue the driver owns: each actor's
round-robin share first (its text cache holds those frames), then whatever the slowest actor has left
(dispatch.py).

Correctness never depends on Ray bringing an actor back: a batch whose actor died, or that missed its
deadline (deadlines.py), goes back to the queue for a healthy actor. A down actor is probed; if Ray
restarts it (`cluster.max_restarts`), it gets the current bank again and rejoins. With no live actor
for `cluster.capacity_timeout_s`, the run stops with one line; every finished batch is already on disk.
Frames are deterministic, so a re-rendered batch has the same pixels.

A consistent-self-attention pass (method=storydiffusion|hybrid, iteration 0) runs in two stages: each
character's write phase on its own actor, in parallel; the bank it returns stays in that node's object
store, owned by the driver. Then the other frames are sharded like any iteration, each batch carrying
the banks' refs; an actor fetches the banks its frames read once (README, "Methods", says why this way).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field

import numpy as np
import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from . import local_ray, ray_address
from .deadlines import BatchDeadlines
from .dispatch import BatchQueues
from ..errors import UserError
from .protocol import BankUnavailable, StaleIterationError

log = logging.getLogger(__name__)


@ray.remote
class RenderActor:
    def __init__(self, spec, clip=None):
        self.worker = spec.build()  # a FrameWorker, or a simulated one: torch is imported only by the former
        self.clip = clip() if clip else None  # the evaluation CLIP's embeddings, as the caller gave it (worker side)

    def ready(self) -> int:
        return os.getpid()

    def environment(self) -> dict | None:
        """The worker's library versions and device; None for a worker that does not say."""
        describe = getattr(self.worker, "environment", None)
        return describe() if describe else None

    def begin_iteration(self, iteration, bank, scale):
        return self.worker.begin_iteration(iteration, bank, scale)

    def render_batch(self, iteration, frames, id_bank_refs=None):
        # The refs arrive unresolved (nested in a dict): a worker fetches only the banks its frames read, once.
        if not id_bank_refs:
            return self.worker.render_batch(iteration, frames)
        return self.worker.render_batch(iteration, frames, {c: _bank_loader(ref) for c, ref in id_bank_refs.items()})

    @ray.method(num_returns=2)
    def write_identity(self, iteration, character):
        # Two objects: the driver waits on the small one. The bank stays in this node's object store, owned by
        # the driver, until the driver drops its ref and no reader maps it; a node pulls it once for its actors.
        result = self.worker.write_identity(iteration, character, share=True)
        frames = len(self.worker.spec.consistent.owned(character).frames)
        return IdentityDone(result.batch, result.bank.nbytes, frames), result.bank

    def forget_banks(self):
        self.worker.forget_banks()

    def counters(self) -> dict[str, int]:
        """The worker's work counts (images encoded, identity frames rendered, ID banks fetched)."""
        return {k: getattr(self.worker, k, 0) for k in ("image_encodes", "identity_renders", "banks_fetched")}

    def clip_embeddings(self, clip_model: str, paths: list[str], texts: list[str]):
        """Evaluation CLIP on this actor's device: (image embeddings of `paths`, text embeddings of `texts`)."""
        if self.clip is None:
            raise RuntimeError("RayExecutor was started without clip=: its actors have no evaluation CLIP")
        return self.clip(clip_model, paths, texts)


class ActorClipScorer:
    """The metrics' CLIP on the render actors (their GPUs), not on the driver: images split across the actors."""

    def __init__(self, executor: "RayExecutor", clip_model: str):
        self.handles = [a.handle for a in executor.actors if a.state == "live"]
        self.clip_model = clip_model

    def image_file_embeddings(self, paths) -> np.ndarray:
        shares = np.array_split(np.array([str(p) for p in paths], dtype=object), len(self.handles))
        refs = [h.clip_embeddings.remote(self.clip_model, list(share), []) for h, share in zip(self.handles, shares) if len(share)]
        return np.concatenate([images for images, _ in _get_unwrapped(refs)])

    def text_embeddings(self, texts) -> np.ndarray:
        return _get_unwrapped([self.handles[0].clip_embeddings.remote(self.clip_model, [], list(texts))])[0][1]


def _common_environment(reports: list[dict | None]) -> dict | None:
    """One environment for the run: the actors' devices together, and the first actor's versions. Actors on
    other versions (a cluster's nodes installed apart) are worth a warning: their frames may differ in the last bits."""
    reports = [r for r in reports if r]
    if not reports:
        return None
    devices = sorted({r["device"] for r in reports})
    odd = [i for i, r in enumerate(reports) if r["versions"] != reports[0]["versions"]]
    if odd:
        log.warning("render actors %s run other library versions than actor 0 (%s): their frames may differ in the "
                    "last bits", odd, ", ".join(f"{k} {v}" for k, v in reports[0]["versions"].items()))
    return {"versions": reports[0]["versions"], "device": " + ".join(devices)}


def _bank_loader(ref):
    """Fetch an ID bank; a Ray failure (lost object, dead owner) becomes BankUnavailable (protocol.py)."""
    def load():
        try:
            return ray.get(ref)
        except ray.exceptions.RayError as exc:
            raise BankUnavailable(type(exc).__name__) from exc

    return load


def _get_unwrapped(refs):
    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as exc:
        raise _unwrap(exc) from None


@dataclass(frozen=True)
class IdentityWork:
    """A queue item of a CSA pass: one character's write phase (its identity frames as one batch)."""

    character: str


@dataclass(frozen=True)
class IdentityDone:
    """What the driver waits on for a write phase: its shown frames and the size of the bank left in the store."""

    batch: object  # BatchResult
    bank_bytes: int
    identity_frames: int  # rendered, story frames and synthesized ones


def _size(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"


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


def _unwrap(exc: BaseException) -> BaseException:
    """The user-facing error inside a Ray task/actor error, if there is one."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, UserError) else exc


@dataclass
class _Actor:
    index: int
    handle: object
    state: str = "live"  # live | down (probing: Ray may restart it) | dead
    deadline: float | None = None  # next batch must finish by then (while it has batches)
    probe: object = None  # ready() ref while down
    probe_again_at: float | None = None  # while down and unreachable: when to ask again
    down_since: float = 0.0
    batches: dict = field(default_factory=dict)  # ref -> frames, or an IdentityWork (None for a begin_iteration call)

    def in_flight(self) -> int:
        return sum(frames is not None for frames in self.batches.values())


class RayExecutor:
    queue_depth = 2

    def __init__(self, spec, res: ActorResources, use_gpu: bool, fixed_cluster: bool, clip=None):
        """`clip`: a class whose instances, called as (clip_model, paths, texts), return the evaluation CLIP's
        (image, text) embeddings on an actor (ActorClipScorer's work); each actor makes one. Given by the caller, so
        the engine never imports the code that loads CLIP (torch)."""
        if fixed_cluster:
            check_capacity(res, use_gpu)
        gpus = res.gpus_per_worker if use_gpu else 0
        bundle = {"CPU": res.cpus_per_worker, **({"GPU": gpus} if gpus else {})}
        self.res = res
        self._pg = placement_group([bundle] * res.workers, strategy="PACK")
        try:
            ray.get(self._pg.ready(), timeout=res.ready_timeout_s)
        except ray.exceptions.GetTimeoutError:
            have = ray.cluster_resources()
            remove_placement_group(self._pg)
            raise UserError(
                f"cluster: could not reserve {res.workers} x {bundle} within cluster.ready_timeout_s={res.ready_timeout_s:g} s "
                f"(the cluster has {have.get('GPU', 0):g} GPUs, {have.get('CPU', 0):g} CPUs)") from None
        handles = [
            RenderActor.options(
                num_cpus=res.cpus_per_worker,
                num_gpus=gpus,
                max_restarts=res.max_restarts,
                max_task_retries=0,  # the driver re-queues a dead actor's batches itself
                scheduling_strategy=PlacementGroupSchedulingStrategy(self._pg, placement_group_bundle_index=i),
            ).remote(spec, clip)
            for i in range(res.workers)
        ]
        self.actors = [_Actor(i, h) for i, h in enumerate(handles)]
        try:
            pids = ray.get([h.ready.remote() for h in handles], timeout=res.ready_timeout_s)
        except ray.exceptions.GetTimeoutError:
            self.shutdown()
            raise UserError(f"cluster: the render actors did not start within cluster.ready_timeout_s={res.ready_timeout_s:g} s") from None
        except ray.exceptions.RayError as exc:
            self.shutdown()
            err = _unwrap(exc)
            if isinstance(err, UserError):
                raise err from None
            raise
        log.info("%d render actor%s ready (pids %s), %g GPU each", len(pids), "" if len(pids) == 1 else "s", pids, gpus)
        self.environment = _common_environment(ray.get([h.environment.remote() for h in handles], timeout=res.ready_timeout_s))
        self.deadlines = BatchDeadlines(res.batch_timeout_s, res.batch_timeout_factor, res.ready_timeout_s)
        self.bank_puts = 0
        self._written: dict = {}  # write_identity result ref -> (character, its bank's ref)
        self._id_banks: dict = {}  # character -> ObjectRef of its packed ID bank (a CSA pass)
        self._bank_bytes: dict = {}  # character -> its bank's size
        self.batches_requeued = 0  # batches taken back from a dead or late actor, over the whole run

    # --- one iteration --------------------------------------------------------------------------------
    def render_iteration(self, iteration, batches, bank, scale, on_batches, identities=()) -> None:
        bank_ref = None
        if bank is not None:
            bank_ref = ray.put(np.ascontiguousarray(bank, dtype=np.float32))  # once per iteration, shared by all
            self.bank_puts += 1
        self._begin = (iteration, bank_ref, scale)
        self._id_banks, self._bank_bytes = {}, {}
        for a in self.actors:
            if a.state == "live":
                self._send_begin(a)
        try:
            if identities:  # write phases first, one character per actor, in parallel
                self._run_stage(iteration, [IdentityWork(c) for c in identities], on_batches)
                self._check_bank_room()
            self._run_stage(iteration, batches, on_batches)
        finally:
            if identities:  # actors unmap their banks, then the driver's refs go: the object store frees them
                for a in self.actors:
                    if a.state == "live":
                        a.handle.forget_banks.remote()
            self._id_banks, self._written = {}, {}

    def _run_stage(self, iteration, items, on_batches) -> None:
        """Render every item (a batch of frames, or a character's write phase) on whichever actors are live."""
        self._queues = BatchQueues(items, len(self.actors))
        self._late: dict = {}  # ref -> actor index: batches given to others already; a result is still welcome
        stalled_since = None
        while self._queues.remaining() or any(a.in_flight() for a in self.actors):
            for a in self.actors:
                if a.state == "live":
                    self._top_up(a)
                elif a.probe_again_at is not None and time.monotonic() >= a.probe_again_at:
                    a.probe, a.probe_again_at = a.handle.ready.remote(), None
            waiting = [r for a in self.actors for r in a.batches] + [a.probe for a in self.actors if a.probe is not None]
            waiting += list(self._late)
            live = [a for a in self.actors if a.state == "live"]
            if not live:
                stalled_since = stalled_since or time.monotonic()
                self._fail_if_no_capacity(iteration, stalled_since)
            else:
                stalled_since = None
            timeout = self._next_timeout(stalled_since)
            if not waiting:
                time.sleep(timeout)
                continue
            ready, rest = ray.wait(waiting, num_returns=1, timeout=timeout)
            if ready and rest:  # everything else already done, in one round (one journal write for all of it)
                ready += ray.wait(rest, num_returns=len(rest), timeout=0)[0]
            finished = []
            for ref in ready:
                self._collect(ref, finished.append)
            if finished:
                on_batches(finished)
            self._expire_deadlines()
        self._late.clear()  # results of batches another actor finished first: not waited for
        if self._queues.taken_from_others:
            log.debug("iteration %d: %d batch(es) rendered by an actor other than their owner", iteration, self._queues.taken_from_others)

    def _send_begin(self, a: _Actor) -> None:
        a.batches[a.handle.begin_iteration.remote(*self._begin)] = None  # actor calls run in order: batches see this bank

    def _top_up(self, a: _Actor) -> None:
        # A second batch queued on the actor hides the dispatch round trip; near the end of the iteration
        # batches stay with the driver instead, so whichever actor frees up first takes them.
        live = sum(x.state == "live" for x in self.actors)
        while a.in_flight() < self.queue_depth and (a.in_flight() == 0 or self._queues.remaining() >= live):
            frames = self._queues.next_for(a.index)
            if frames is None:
                return
            if a.in_flight() == 0:
                a.deadline = time.monotonic() + self.deadlines.allowance()
            a.batches[self._send(a, frames)] = frames

    def _send(self, a: _Actor, item):
        iteration = self._begin[0]
        if isinstance(item, IdentityWork):
            result_ref, bank_ref = a.handle.write_identity.remote(iteration, item.character)
            self._written[result_ref] = (item.character, bank_ref)
            return result_ref
        return a.handle.render_batch.remote(iteration, item, self._id_banks or None)

    def _collect(self, ref, on_batch) -> None:
        if ref in self._late:
            late_actor = self._late.pop(ref)
            try:
                result = ray.get(ref)
            except ray.exceptions.RayError:
                return
            on_batch(self._take_bank(ref, result, late_actor))  # the driver keeps the first copy of each frame (and bank)
            return
        a = next((x for x in self.actors if ref in x.batches or ref is x.probe), None)
        if a is None:
            return
        if ref is a.probe:
            a.probe = None
            try:
                ray.get(ref)
            except ray.exceptions.ActorUnavailableError:  # restarting, or its node unreachable for now: ask again soon
                a.probe_again_at = time.monotonic() + 1.0
                return
            except ray.exceptions.RayError as exc:
                a.state = "dead"
                log.warning("render actor %d is gone for good (%s)", a.index, type(exc).__name__)
                return
            a.state = "live"
            log.info("render actor %d is back after %.0f s", a.index, time.monotonic() - a.down_since)
            self._send_begin(a)
            return
        frames = a.batches[ref]
        try:
            result = ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            if isinstance(exc.cause, StaleIterationError):  # restarted behind our back: give it the bank again
                self._take_down(a, f"restarted without the bank ({exc.cause})", kill=False)
                return
            raise _unwrap(exc) from None
        except ray.exceptions.RayActorError as exc:
            self._take_down(a, f"{type(exc).__name__}", kill=False)
            return
        del a.batches[ref]
        if frames is None:
            return
        result = self._take_bank(ref, result, a.index)
        self.deadlines.observe(result.busy_s)
        a.deadline = time.monotonic() + self.deadlines.allowance() if a.in_flight() else None
        on_batch(result)

    def _take_bank(self, ref, result, actor: int):
        """A finished write phase: keep its bank's ref (the first one, if a late copy also arrives); the frames."""
        if ref not in self._written:
            return result
        character, bank_ref = self._written.pop(ref)
        if character not in self._id_banks:
            self._id_banks[character] = bank_ref
            self._bank_bytes[character] = result.bank_bytes
            shown = len(result.batch.frames)
            log.info("ID bank of %s: %d identity frames (%d from the story, %d from its description) written by render "
                     "actor %d in %.1f s; %s in the object store", character, result.identity_frames, shown,
                     result.identity_frames - shown, actor, result.batch.busy_s, _size(result.bank_bytes))
        return result.batch

    def _check_bank_room(self) -> None:
        """The read phase maps every bank a frame names at once: warn, in one line, when a node's object store
        cannot hold them all (Ray would spill to disk and restore on every fetch, or fail the fetch)."""
        need = sum(self._bank_bytes.values())
        stores = [n["Resources"].get("object_store_memory", 0) for n in ray.nodes() if n.get("Alive")]
        if stores and need > 0.8 * min(stores):
            log.warning("the ID banks take %s but the smallest node's object store holds %s: Ray will spill "
                        "them to disk; give it room (local runs: cluster.object_store_gb=; clusters: ray start "
                        "--object-store-memory) or lower method.id_length", _size(need), _size(min(stores)))

    def _take_down(self, a: _Actor, reason: str, kill: bool) -> None:
        """Give its batches back to the queue; probe it, so a restarted actor can rejoin."""
        lost = [frames for frames in a.batches.values() if frames is not None]
        for ref, frames in a.batches.items():
            if frames is not None:
                self._queues.put_back(frames)
                self._late[ref] = a.index
        a.batches.clear()
        self.batches_requeued += len(lost)
        a.state, a.deadline, a.down_since = "down", None, time.monotonic()
        log.warning("render actor %d: %s; %d batch(es) go to other actors", a.index, reason, len(lost))
        if kill:
            ray.kill(a.handle, no_restart=False)  # a hung process or an unreachable node: let Ray restart it elsewhere
        a.probe = a.handle.ready.remote()

    def _expire_deadlines(self) -> None:
        now = time.monotonic()
        for a in self.actors:
            if a.state == "live" and a.deadline is not None and a.in_flight() and now > a.deadline:
                self._take_down(a, f"no batch finished within its deadline ({self.deadlines.allowance():.0f} s)", kill=True)

    def _next_timeout(self, stalled_since: float | None) -> float:
        now = time.monotonic()
        times = [a.deadline for a in self.actors if a.state == "live" and a.deadline is not None]
        times += [a.probe_again_at for a in self.actors if a.probe_again_at is not None]
        if stalled_since is not None:
            times.append(stalled_since + self.res.capacity_timeout_s)
        return max(0.05, min(times) - now) if times else 1.0

    def _fail_if_no_capacity(self, iteration: int, stalled_since: float) -> None:
        down = sum(a.state == "down" for a in self.actors)
        dead = sum(a.state == "dead" for a in self.actors)
        if down and time.monotonic() - stalled_since < self.res.capacity_timeout_s:
            return
        left = self._queues.remaining()
        why = "every render actor is gone" if not down else f"no render actor came back within cluster.capacity_timeout_s={self.res.capacity_timeout_s:g} s"
        raise UserError(f"cluster: {why} ({dead} of {len(self.actors)} dead, {down} restarting); iteration {iteration}: "
                        f"{left} batch(es) not rendered, every finished frame is kept: rerun with resume=true once the cluster has capacity")

    # --- the rest -------------------------------------------------------------------------------------
    def image_encodes(self) -> int:
        return sum(c["image_encodes"] for c in self.counters())

    def counters(self) -> list[dict[str, int]]:
        """Each live actor's work counts (RenderActor.counters), for tests and benchmarks."""
        return ray.get([a.handle.counters.remote() for a in self.actors if a.state == "live"])

    def shutdown(self) -> None:
        for a in self.actors if hasattr(self, "actors") else []:
            ray.kill(a.handle, no_restart=True)
        remove_placement_group(self._pg)


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
    # Without an address this is whatever cluster this machine started last, maybe somebody else's: say which.
    log.info("cluster: joined the Ray cluster at %s%s: %d node%s, %g CPUs, %g GPUs", hostport,
             " (the last `ray start` on this machine)" if target == "auto" else "", nodes, "" if nodes == 1 else "s",
             have.get("CPU", 0), have.get("GPU", 0))
    return False

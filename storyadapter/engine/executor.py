"""The Ray executor: the driver's side of the engine, one iteration at a time (docs/engine.md).

It reserves each actor's resources on its own (placement.py) and starts the render actors (actor.py), each
loading the pipeline once. The run starts once `cluster.min_workers` of them are ready; the others join when the
cluster has room for them, for as long as the run lasts, the way a restarted actor rejoins: a probe (`ready()`)
answers once it is placed and loaded, and only then does it get the bank and batches (a call sent to an actor still
waiting for its node would wait with it, Ray issue #15045). Per iteration it `ray.put`s the bank once, tells every actor
`begin_iteration(bank, scale)`, and hands out fixed batches from a queue the driver owns: each actor's
round-robin share first (its text cache holds those frames), then whatever the slowest actor has left
(dispatch.py).

Correctness never depends on Ray bringing an actor back: a batch whose actor died, or that missed its
deadline (deadlines.py), goes back to the queue for a healthy actor; its result, should it still come,
is welcome (the driver keeps the first copy of each frame). A down actor is probed; if Ray restarts it
(`cluster.max_restarts`), it gets the current bank again and rejoins; one gone for good (its restarts spent, its
node lost) is replaced by a new actor in its slot, so a cluster that gets its nodes back ends up using them. With no live actor for
`cluster.capacity_timeout_s`, the run stops with one line; every finished batch is already on disk.
Frames are deterministic, so a re-rendered batch has the same pixels.

A consistent-self-attention pass (method=storydiffusion|hybrid, iteration 0) runs in two stages: each
character's write phase on its own actor, in parallel (id_banks.py keeps the banks). Then the other frames
are sharded like any iteration, each batch carrying the banks' refs; an actor fetches the banks its frames
read once (docs/methods.md, "The ID bank, measured", says why this way).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import ray
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from ..errors import UserError
from . import placement
from .actor import RenderActor, unwrap
from .deadlines import BatchDeadlines
from .dispatch import BatchQueues
from .id_banks import IdBanks, IdentityWork
from .protocol import BatchResult, StaleIterationError

log = logging.getLogger(__name__)


@dataclass
class _Actor:
    index: int
    handle: object
    state: str = "starting"  # starting (placing, loading) | live | down (probing: Ray may restart it) | dead
    deadline: float | None = None  # next batch must finish by then (while it has batches)
    probe: object = None  # ready() ref while down
    probe_again_at: float | None = None  # while down and unreachable: when to ask again
    down_since: float = 0.0
    batches: dict = field(default_factory=dict)  # ref -> frames, or an IdentityWork (None for a begin_iteration call)

    def in_flight(self) -> int:
        return sum(item is not None for item in self.batches.values())


@dataclass
class _Iteration:
    """What an actor is told before its first batch of the iteration (again after a restart), and the ID banks."""

    number: int
    bank_ref: object  # the previous iteration's bank, put once; None for iteration 0
    scale: float
    banks: IdBanks
    draft: bool = False  # rendered with render.draft.* (every iteration before the last)


@dataclass
class _Stage:
    """One queue of work within an iteration: a CSA pass's write phases, or the batches of frames."""

    queues: BatchQueues
    late: dict = field(default_factory=dict)  # ref -> (actor index, item): given to others already; still welcome


class RayExecutor:
    queue_depth = 2

    def __init__(self, spec, res: placement.ActorResources, use_gpu: bool, fixed_cluster: bool, clip=None):
        """`clip`: a class whose instances, called as (clip_model, paths, texts), return the evaluation CLIP's
        (image, text) embeddings on an actor (ActorClipScorer's work); each actor makes one. Given by the caller, so
        the engine never imports the code that loads CLIP (torch)."""
        self.res = res
        self.deadlines = BatchDeadlines(res.batch_timeout_s, res.batch_timeout_factor, res.ready_timeout_s)
        self._bundle = placement.bundle(res, use_gpu)
        self._spec, self._clip = spec, clip
        slots = placement.actor_slots(res, use_gpu, fixed_cluster)
        self._groups = [placement.reserve_one(res, use_gpu) for _ in range(slots)]
        self.actors = [_Actor(i, self._start_actor(i)) for i in range(slots)]
        for a in self.actors:
            a.probe, a.down_since = a.handle.ready.remote(), time.monotonic()
        self._said: tuple | None = None  # the last capacity line logged
        self._iteration: _Iteration | None = None  # set while render_iteration runs
        self._stage: _Stage | None = None  # set while one of its stages runs
        self._starting = True  # an actor that fails in __init__ now stops the run: every other one would too
        try:
            self.environment = self._wait_until_ready()
        except BaseException:
            self.shutdown()
            raise
        self._starting = False

    def _start_actor(self, i: int):
        return RenderActor.options(
            num_cpus=self.res.cpus_per_worker,
            num_gpus=self._bundle.get("GPU", 0),
            max_restarts=self.res.max_restarts,
            max_task_retries=0,  # the driver re-queues a dead actor's batches itself
            scheduling_strategy=PlacementGroupSchedulingStrategy(self._groups[i], placement_group_bundle_index=0),
        ).remote(self._spec, self._clip)

    def _wait_until_ready(self) -> dict | None:
        """Wait until cluster.min_workers actors are placed and loaded; returns the run's environment (their
        versions and devices). The others keep coming up while the run goes on."""
        want, timeout = self.res.start_with, self.res.ready_timeout_s
        give_up = time.monotonic() + timeout
        self._say_capacity()
        while len(self._live()) < want:
            probes = [a.probe for a in self.actors if a.probe is not None]
            left = give_up - time.monotonic()
            ready, rest = ray.wait(probes, num_returns=1, timeout=max(0.0, left)) if probes else ([], [])
            if ready and rest:  # every actor up by now, so the capacity line is one line per round, not per actor
                ready += ray.wait(rest, num_returns=len(rest), timeout=0)[0]
            if not ready and time.monotonic() >= give_up:
                raise UserError(
                    f"cluster: {len(self._live())} of cluster.min_workers={want} render actors came up within "
                    f"cluster.ready_timeout_s={timeout:g} s (each needs {self._bundle}; the cluster has "
                    f"{placement.describe_room(self._bundle)}); nothing was rendered now, every finished frame is kept: "
                    "rerun with resume=true once the cluster has room, or lower cluster.min_workers")
            if not probes:
                time.sleep(min(1.0, max(0.05, left)))
            for a in self.actors:
                if a.probe in ready:
                    self._probe_answered(a)
            self._hand_out_probes()
            self._say_capacity()
        live = self.live_handles()
        pids = ray.get([h.ready.remote() for h in live], timeout=timeout)
        log.info("%d render actor%s ready (pids %s), %g GPU each", len(pids), "" if len(pids) == 1 else "s", pids,
                 self._bundle.get("GPU", 0))
        return _common_environment(ray.get([h.environment.remote() for h in live], timeout=timeout))

    def _say_capacity(self) -> None:
        """One line whenever the count of live actors, or of those still coming, changes."""
        live = len(self._live())
        coming = sum(a.state in ("starting", "down") for a in self.actors)
        if (live, coming) == self._said:
            return
        self._said = (live, coming)
        waits = (f"; waiting for cluster.min_workers={self.res.start_with} before the first batch"
                 if self._starting and live < self.res.start_with else "")
        rest = (f", {coming} waiting for room on the cluster or loading (each needs {self._bundle})" if coming else "")
        log.info("cluster: %d of %d render actors live%s%s", live, self.res.workers, rest, waits)

    # --- one iteration --------------------------------------------------------------------------------
    def render_iteration(self, iteration, batches, bank, scale, on_batches, identities=(), draft=False) -> None:
        bank_ref = None if bank is None else ray.put(np.ascontiguousarray(bank, dtype=np.float32))  # shared by all
        self._iteration = _Iteration(iteration, bank_ref, scale, IdBanks(), draft)
        for a in self._live():
            self._send_begin(a)
        try:
            if identities:  # write phases first, one character per actor, in parallel
                self._run_stage([IdentityWork(c) for c in identities], on_batches)
                self._iteration.banks.check_room()
            self._run_stage(batches, on_batches)
        finally:
            if identities:  # actors unmap their banks, then the driver's refs go: the object store frees them
                for a in self._live():
                    a.handle.forget_banks.remote()
            self._iteration = None

    def _run_stage(self, items, on_batches) -> None:
        """Render every item (a batch of frames, or a character's write phase) on whichever actors are live."""
        owners = [a.index for a in self._live()] or [a.index for a in self.actors]
        self._stage = stage = _Stage(BatchQueues(items, owners))
        stalled_since = None
        while stage.queues.remaining() or any(a.in_flight() for a in self.actors):
            self._hand_out()
            stalled_since = self._stalled_since(stalled_since)  # raises once no actor is left to wait for
            finished = [batch for ref in self._wait(self._next_timeout(stalled_since))
                        if (batch := self._collect(ref)) is not None]
            self._say_capacity()
            if finished:
                on_batches(finished)  # everything that finished in this round: one journal write
            self._expire_deadlines()
        self._stage = None  # results of batches another actor finished first: not waited for
        if stage.queues.taken_from_others:
            log.debug("iteration %d: %d batch(es) rendered by an actor other than their owner",
                      self._iteration.number, stage.queues.taken_from_others)

    # --- handing out ----------------------------------------------------------------------------------
    def _hand_out(self) -> None:
        """Top up every live actor's batches; ask a down actor again once its time has come."""
        for a in self._live():
            self._top_up(a)
        self._hand_out_probes()

    def _hand_out_probes(self) -> None:
        for a in self.actors:
            if a.state != "live" and a.probe_again_at is not None and time.monotonic() >= a.probe_again_at:
                a.probe, a.probe_again_at = a.handle.ready.remote(), None

    def _top_up(self, a: _Actor) -> None:
        # A second batch queued on the actor hides the dispatch round trip; near the end of the iteration
        # batches stay with the driver instead, so whichever actor frees up first takes them.
        live = len(self._live())
        queues = self._stage.queues
        while a.in_flight() < self.queue_depth and (a.in_flight() == 0 or queues.remaining() >= live):
            item = queues.next_for(a.index)
            if item is None:
                return
            if a.in_flight() == 0:
                a.deadline = time.monotonic() + self.deadlines.allowance()
            a.batches[self._send(a, item)] = item

    def _send(self, a: _Actor, item):
        it = self._iteration
        if isinstance(item, IdentityWork):
            return it.banks.send(a.handle, it.number, item.character)
        return a.handle.render_batch.remote(it.number, item, it.banks.refs or None)

    def _send_begin(self, a: _Actor) -> None:
        it = self._iteration  # actor calls run in order: its batches see this bank
        a.batches[a.handle.begin_iteration.remote(it.number, it.bank_ref, it.scale, draft=it.draft)] = None

    # --- waiting --------------------------------------------------------------------------------------
    def _wait(self, timeout: float) -> list:
        """The refs ready within `timeout`: the first one, and everything else already done by then."""
        waiting = [r for a in self.actors for r in a.batches] + [a.probe for a in self.actors if a.probe is not None]
        waiting += list(self._stage.late)
        if not waiting:  # every actor down, each to be asked again later
            time.sleep(timeout)
            return []
        ready, rest = ray.wait(waiting, num_returns=1, timeout=timeout)
        if ready and rest:
            ready += ray.wait(rest, num_returns=len(rest), timeout=0)[0]
        return ready

    def _next_timeout(self, stalled_since: float | None) -> float:
        now = time.monotonic()
        times = [a.deadline for a in self._live() if a.deadline is not None]
        times += [a.probe_again_at for a in self.actors if a.probe_again_at is not None]
        if stalled_since is not None:
            times.append(stalled_since + self.res.capacity_timeout_s)
        return max(0.05, min(times) - now) if times else 1.0

    # --- results: a late copy, a probe's answer, an actor's own call ----------------------------------
    def _collect(self, ref) -> BatchResult | None:
        """What a ready ref brings; returns the batch it finished, if any."""
        if ref in self._stage.late:
            return self._late_copy(ref)
        a = next((x for x in self.actors if ref in x.batches or ref is x.probe), None)
        if a is None:  # a begin_iteration call of an actor taken down since
            return None
        if ref is a.probe:
            self._probe_answered(a)
            return None
        return self._own_call(a, ref)

    def _late_copy(self, ref) -> BatchResult | None:
        """A batch given to another actor already: its frames still count if they come (the first copy is kept)."""
        actor, item = self._stage.late.pop(ref)
        try:
            result = ray.get(ref)
        except ray.exceptions.RayError:
            return None
        return self._frames_of(ref, item, result, actor)

    def _probe_answered(self, a: _Actor) -> None:
        """A starting or down actor answered: up (it gets the bank), restarting (ask again soon), or gone for good."""
        ref, a.probe = a.probe, None
        try:
            ray.get(ref)
        except ray.exceptions.ActorUnavailableError:  # restarting, or its node unreachable for now
            a.probe_again_at = time.monotonic() + 1.0
            return
        except ray.exceptions.RayError as exc:
            self._gone(a, exc)
            return
        was = a.state
        a.state = "live"
        # A comeback is news; an actor coming up is counted in the capacity line (one per change, not per actor).
        log.log(logging.INFO if was == "down" else logging.DEBUG, "render actor %d is %s after %.0f s", a.index,
                "back" if was == "down" else "up", time.monotonic() - a.down_since)
        if self._iteration is not None:
            self._send_begin(a)

    def _gone(self, a: _Actor, exc: BaseException) -> None:
        """An actor gone for good. One whose __init__ failed at the start stops the run (every actor would fail
        alike), later it is left dead; one lost with its node is replaced: its slot asks for room again."""
        if isinstance(exc, ray.exceptions.RayTaskError) or getattr(exc, "actor_init_failed", False):
            if self._starting:
                raise unwrap(exc) from None
            a.state = "dead"
            log.warning("render actor %d failed to start (%s); its slot stays empty", a.index, str(exc).splitlines()[0])
            return
        log.warning("render actor %d is gone for good (%s); a new one is asked for", a.index, type(exc).__name__)
        ray.kill(a.handle, no_restart=True)
        a.handle, a.state, a.down_since = self._start_actor(a.index), "starting", time.monotonic()
        a.probe = a.handle.ready.remote()

    def _own_call(self, a: _Actor, ref) -> BatchResult | None:
        """A live actor's call finished: a batch or write phase (its deadline moves on), or its begin_iteration."""
        try:
            result = ray.get(ref)
        except (ray.exceptions.RayTaskError, ray.exceptions.RayActorError) as exc:
            self._call_failed(a, exc)
            return None
        item = a.batches.pop(ref)
        if item is None:
            return None
        batch = self._frames_of(ref, item, result, a.index)
        self.deadlines.observe(batch.busy_s)
        a.deadline = time.monotonic() + self.deadlines.allowance() if a.in_flight() else None
        return batch

    def _call_failed(self, a: _Actor, exc: BaseException) -> None:
        """The actor died or was restarted without the bank: its batches go to others. A worker's error stops the run."""
        if isinstance(exc, ray.exceptions.RayTaskError):
            if not isinstance(exc.cause, StaleIterationError):
                raise unwrap(exc) from None
            self._take_down(a, f"restarted without the bank ({exc.cause})", kill=False)  # give it the bank again
        else:
            self._take_down(a, type(exc).__name__, kill=False)

    def _frames_of(self, ref, item, result, actor: int) -> BatchResult:
        """A batch's result is its frames; a write phase's also leaves its character's bank in the object store."""
        if isinstance(item, IdentityWork):
            return self._iteration.banks.written(ref, result, actor)
        return result

    # --- failures -------------------------------------------------------------------------------------
    def _take_down(self, a: _Actor, reason: str, kill: bool) -> None:
        """Give its batches back to the queue; probe it, so a restarted actor can rejoin."""
        lost = {ref: item for ref, item in a.batches.items() if item is not None}
        for ref, item in lost.items():
            self._stage.queues.put_back(item)
            self._stage.late[ref] = (a.index, item)
        a.batches.clear()
        a.state, a.deadline, a.down_since = "down", None, time.monotonic()
        log.warning("render actor %d: %s; %d batch(es) go to other actors", a.index, reason, len(lost))
        if kill:
            ray.kill(a.handle, no_restart=False)  # a hung process or an unreachable node: let Ray restart it elsewhere
        a.probe = a.handle.ready.remote()

    def _expire_deadlines(self) -> None:
        now = time.monotonic()
        for a in self._live():
            if a.deadline is not None and a.in_flight() and now > a.deadline:
                self._take_down(a, f"no batch finished within its deadline ({self.deadlines.allowance():.0f} s)", kill=True)

    def _stalled_since(self, since: float | None) -> float | None:
        """When the last live actor went (None while one is live); stops the run once waiting is pointless."""
        if self._live():
            return None
        since = since or time.monotonic()
        down = sum(a.state in ("down", "starting") for a in self.actors)
        if down and time.monotonic() - since < self.res.capacity_timeout_s:
            return since
        dead = sum(a.state == "dead" for a in self.actors)
        why = ("every render actor is gone" if not down else
               f"no render actor came back within cluster.capacity_timeout_s={self.res.capacity_timeout_s:g} s")
        raise UserError(f"cluster: {why} ({dead} of {len(self.actors)} dead, {down} restarting or waiting for room); iteration "
                        f"{self._iteration.number}: {self._stage.queues.remaining()} batch(es) not rendered, every "
                        "finished frame is kept: rerun with resume=true once the cluster has capacity")

    # --- the rest -------------------------------------------------------------------------------------
    def _live(self) -> list[_Actor]:
        return [a for a in self.actors if a.state == "live"]

    def live_handles(self) -> list:
        return [a.handle for a in self._live()]

    def image_encodes(self) -> int:
        return sum(c["image_encodes"] for c in self.counters())

    def counters(self) -> list[dict[str, int]]:
        """Each live actor's work counts (RenderActor.counters), for tests and benchmarks."""
        return ray.get([h.counters.remote() for h in self.live_handles()])

    def shutdown(self) -> None:
        for a in self.actors:
            ray.kill(a.handle, no_restart=True)
        placement.release(self._groups)


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

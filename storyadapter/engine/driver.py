"""The iteration loop: text-only iteration 0, then L refinements each conditioned on the previous bank.

Independent of where frames are rendered: an executor (in-process or the Ray engine) renders one
iteration's batches given the bank; the driver writes each finished iteration's manifest part.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Protocol, Sequence

import numpy as np

from ..rundir import convergence, journal, manifest
from ..story import references, schedule
from ..story.model import Story
from .eta import RenderEta
from .progress import iteration_progress
from .timeline import BatchTimeline
from .protocol import BatchResult, FrameResult, Worker

if TYPE_CHECKING:
    from ..story.identity import ConsistentPass

log = logging.getLogger(__name__)


class Executor(Protocol):
    def render_iteration(
        self, iteration: int, batches: list[list[int]], bank: np.ndarray | None, scale: float,
        on_batches: Callable[[list[BatchResult]], None], identities: Sequence[str] = (), draft: bool = False,
    ) -> None:
        """Render every batch, calling `on_batches` with the batches that finished since the last call (a batch
        may arrive twice after a failure). `identities` (a CSA pass): characters whose write phase runs first,
        one worker each, and whose ID banks then reach every worker that renders `batches`. `draft`: every
        worker renders the iteration with the draft settings (render.draft.*)."""


@dataclass(frozen=True)
class RunPlan:
    story: Story
    out_dir: Path
    iterations: int  # L refinements after iteration 0
    batch_size: int
    scale_start: float
    scale_end: float
    seed: int
    seed_policy: str
    ramp_iterations: int | None = None  # the scale ramp's length; a run extended past it stays at scale_end
    stop_when_stable: float | None = None  # convergence.py: stop once the frames' embeddings settle
    # method=storydiffusion|hybrid with shared ID banks: iteration 0 writes each character's bank once (identity.py)
    consistent: "ConsistentPass | None" = None
    drafts: bool = False  # render.draft.* sets something: iterations before the last render with it
    all_drafts: bool = False  # render.draft.final: the last iteration is a draft too
    frame_costs: tuple[int, int] = (1, 1)  # planned denoiser evaluations per frame of a draft, of a last pass (eta.py)

    def is_draft(self, iteration: int) -> bool:
        """Whether `iteration` renders with render.draft.*: every one before the last (all with all_drafts)."""
        return self.drafts and (self.all_drafts or iteration < self.iterations)

    @property
    def skips_to_last_pass(self) -> bool:
        """render.stop_when_stable with drafts before a last pass: drafts that settle skip to that last pass."""
        return self.stop_when_stable is not None and self.drafts and not self.all_drafts

    def scale(self, iteration: int) -> float:
        ramp = self.iterations if self.ramp_iterations is None else self.ramp_iterations
        return schedule.adapter_scale(iteration, ramp, self.scale_start, self.scale_end)


@dataclass
class IterationStats:
    iteration: int
    frames: int
    wall_s: float
    busy_s: float  # summed over workers
    driver_s: float  # bank build + manifest write
    barrier_s: float = 0.0  # summed over workers: time from a worker's last batch to the iteration's last batch
    none_rendering_s: float = 0.0  # wall time in which no worker was rendering
    resumed_frames: int = 0  # finished before a driver restart, not rendered again
    duplicate_frames: int = 0  # rendered twice (a late actor's batch also rendered by another)


class LocalExecutor:
    """Renders in this process with one worker: for tests, notebooks and debugging."""

    def __init__(self, worker: Worker):
        self.worker = worker

    def render_iteration(self, iteration, batches, bank, scale, on_batches, identities=(), draft=False):
        self.worker.begin_iteration(iteration, bank, scale, **({"draft": True} if draft else {}))
        for character in identities:  # the worker keeps each bank it writes: it is the only reader
            on_batches([self.worker.write_identity(iteration, character).batch])
        for frames in batches:
            on_batches([self.worker.render_batch(iteration, frames)])


def first_unfinished(out_dir: Path, iterations: int) -> int:
    """Resume point: iterations finish in order, so the next one after the last contiguous part."""
    done = set(manifest.finished_iterations(out_dir))
    it = 0
    while it in done and it <= iterations:
        it += 1
    return it


def _resume_point(plan: RunPlan) -> tuple[int, int | None] | None:
    """(first iteration to render, the last pass a settled draft leads to or None), or None when a run that settled
    (render.stop_when_stable) has nothing left to render (said in the log)."""
    start = first_unfinished(plan.out_dir, plan.iterations)
    # With drafts, a story that settled renders one last pass right after the settled draft, then stops.
    last_pass = None
    if plan.skips_to_last_pass:
        last_pass = convergence.last_pass_after_settling(plan.out_dir, start, plan.stop_when_stable, plan.iterations)
        if last_pass is not None and last_pass < start:
            log.info("nothing to resume: the drafts settled and iteration %d is the last pass", last_pass)
            return None
    elif convergence.stable_before_resume(plan.out_dir, start, plan.stop_when_stable):
        return None
    return start, last_pass


def settled_before_resume(plan: RunPlan) -> bool:
    """Whether the render on disk settled and has nothing left to render: asked before any actor starts (loading a
    model on every GPU to render nothing), with the rule run_iterations applies."""
    return _resume_point(plan) is None


def run_iterations(plan: RunPlan, executor: Executor) -> list[IterationStats]:
    n = len(plan.story.frames)
    stats = []
    point = _resume_point(plan)
    if point is None:
        return stats
    start, last_pass = point
    if start > 0:
        log.info("resuming after finished iteration %d", start - 1)
    groups = schedule.batches(n, plan.batch_size)
    bank = manifest.read_bank(plan.out_dir, start - 1) if start > 0 else None
    kinds = [False] if last_pass == start else [plan.is_draft(it) for it in range(start, plan.iterations + 1)]
    eta = RenderEta(plan.out_dir, n, kinds, plan.frame_costs)
    for it in range(start, plan.iterations + 1):
        previous = bank
        final = it == last_pass
        if final:
            convergence.mark_last_pass(plan.out_dir, it)
        draft, scale = plan.is_draft(it) and not final, plan.scale(plan.iterations if final else it)
        st, bank = _run_iteration(plan, executor, it, groups, bank, draft, scale)
        stats.append(st)
        eta.finished(draft, n - st.resumed_frames, st.wall_s)
        log.info(
            "iteration %d/%d done%s: %d frames in %.1f s (%.2f frames/s), scale %.3f, workers busy %.1f s, "
            "waiting at the barrier %.2f s, driver %.2f s%s",
            it, plan.iterations, " (the last pass)" if final else "", n, st.wall_s, (n - st.resumed_frames) / st.wall_s,
            scale, st.busy_s, st.barrier_s, st.driver_s,
            f", {st.resumed_frames} frames kept from before the restart" if st.resumed_frames else "",
        )
        if final:
            eta.kinds.clear()
            eta.report(log)  # nothing left: removes DIR/eta.json
            break
        skip = plan.skips_to_last_pass and draft
        if convergence.stop_after(it, previous, bank, plan.stop_when_stable, plan.iterations, last_pass_next=skip):
            if not skip:
                eta.kinds.clear()
                eta.report(log)
                break
            last_pass, eta.kinds = it + 1, [False]
        eta.report(log)
    return stats


def _run_iteration(plan: RunPlan, executor: Executor, it: int, groups: list[list[int]], bank, draft: bool, ramp_scale: float):
    """One iteration, every finished batch journaled as it arrives; returns its stats and the next bank. `draft`:
    render it with render.draft.*; `ramp_scale`: its adapter scale on the ramp (the last iteration's for a last
    pass that drafts settled into)."""
    n = len(plan.story.frames)
    scale = references.iteration_scale(bool(plan.story.photos), it, ramp_scale, plan.scale_start)
    results = journal.read(plan.out_dir, it)  # batches finished before a driver restart
    groups, identities = _split_write_phases(plan, it, groups, results)
    todo = [b for b in groups if not all(f in results for f in b)]
    if results:
        log.info("iteration %d: %d of %d frames finished before the restart; rendering the other %d",
                 it, len(results), n, n - len(results))
    resumed, duplicates = len(results), 0
    t0, wall0 = time.perf_counter(), time.time()
    timeline = BatchTimeline()
    progress = journal.Journal(plan.out_dir, it)
    try:
        with iteration_progress(n, resumed, f"iteration {it}/{plan.iterations}") as bar:
            def on_batches(batches: list[BatchResult]) -> None:
                nonlocal duplicates
                fresh = {}
                for batch in batches:
                    timeline.add(batch)
                    for r in batch.frames:
                        if r.frame in results or r.frame in fresh:
                            duplicates += 1
                        else:
                            fresh[r.frame] = r
                if fresh:
                    progress.append(list(fresh.values()))  # durable (one fsync) before it counts as done
                    results.update(fresh)
                    bar.update(len(fresh))

            # Said only for a draft: without render.draft.* the calls are those of executors written before drafts.
            as_draft = {"draft": True} if draft else {}
            if identities:
                executor.render_iteration(it, todo, None, scale, on_batches, identities=identities, **as_draft)
            elif todo:
                executor.render_iteration(it, todo, bank if it > 0 else None, scale, on_batches, **as_draft)
        t1 = time.perf_counter()
        bank = _finish_iteration(plan, it, scale, list(results.values()))
    finally:
        progress.close()
    progress.remove()  # the manifest part holds it all now
    t2, wall2 = time.perf_counter(), time.time()
    st = IterationStats(it, n, t2 - t0, timeline.busy_s, t2 - t1, timeline.barrier_s,
                        max(0.0, (t2 - t0) - timeline.rendering_s(wall0, wall2)), resumed, duplicates)
    return st, bank


def _split_write_phases(plan: RunPlan, it: int, groups: list[list[int]], results: dict) -> tuple[list[list[int]], list[str]]:
    """A CSA pass: the story frames that are identity frames come from their character's write phase, so they
    leave the batches; the characters to write are those with such a frame unfinished or a reader left. On a
    resume a write phase may run again for its bank alone; its frames, already journaled, count as duplicates."""
    if it != 0 or plan.consistent is None:
        return groups, []
    shown = {f: b.character for b in plan.consistent.identities for f in b.frames if f is not None}
    readers = [[f for f in b if f not in shown] for b in groups]
    readers = [b for b in readers if b]
    needed = {c for b in readers if not all(f in results for f in b) for f in b for c in plan.consistent.characters[f]}
    needed |= {c for f, c in shown.items() if f not in results}
    return readers, [b.character for b in plan.consistent.identities if b.character in needed]


def _finish_iteration(plan: RunPlan, iteration: int, scale: float, results: list[FrameResult]) -> np.ndarray:
    by_frame = {r.frame: r for r in results}
    if sorted(by_frame) != list(range(len(plan.story.frames))):
        raise RuntimeError(f"iteration {iteration}: got frames {sorted(by_frame)[:5]}..., expected all {len(plan.story.frames)}")
    records = [
        manifest.FrameRecord(
            iteration=iteration,
            frame=f.index,
            prompt=f.prompt,
            caption=f.caption,
            characters=tuple(f.characters),
            seed=schedule.frame_seed(plan.seed, plan.seed_policy, f.index, f.seed),
            scale=references.frame_scale(plan.story.photo_names(), f.characters, iteration, scale),
            image_path=by_frame[f.index].image_path,
            embedding=by_frame[f.index].embedding,
        )
        for f in plan.story.frames
    ]
    manifest.write_part(plan.out_dir, records)
    return np.stack([r.embedding for r in records]).astype(np.float32)


def unrendered(out_dir: Path, iteration: int, frames: Sequence[int]) -> list[int]:
    """Of `frames`, those not journaled yet in `out_dir` (an edit's staging folder): a resumed edit renders only these."""
    done = journal.read(out_dir, iteration)
    return [f for f in frames if f not in done]


def render_frames(out_dir: Path, executor: Executor, iteration: int, frames: Sequence[int], batch_size: int,
                  bank: np.ndarray | None, scale: float) -> dict[int, FrameResult]:
    """Render some frames of an iteration (an edit), journaled in `out_dir` as a full iteration is: a driver
    killed midway renders only the batches the journal lacks. Batches are cut from `frames` alone, in order,
    so a resumed edit renders each frame in the same batch as an uninterrupted one. Writes no manifest part."""
    groups = [[frames[i] for i in b] for b in schedule.batches(len(frames), batch_size)]
    results = journal.read(out_dir, iteration)
    todo = [b for b in groups if not all(f in results for f in b)]
    if results:
        log.info("edit: %d of %d frames finished before the restart", sum(f in results for f in frames), len(frames))
    progress = journal.Journal(out_dir, iteration)
    try:
        with iteration_progress(len(frames), len(frames) - sum(len(b) for b in todo), f"edit of iteration {iteration}") as bar:
            def on_batches(batches: list[BatchResult]) -> None:
                fresh = {r.frame: r for batch in batches for r in batch.frames if r.frame not in results}
                if fresh:
                    progress.append(list(fresh.values()))  # durable before it counts as done
                    results.update(fresh)
                    bar.update(len(fresh))

            if todo:
                executor.render_iteration(iteration, todo, bank, scale, on_batches)
    finally:
        progress.close()
    return {f: results[f] for f in frames}

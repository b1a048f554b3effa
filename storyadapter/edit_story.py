"""`edit=true`: apply an edited story file to a finished render, rendering again only what the edit needs.

1. Compare the story file with the one the render recorded (DIR/story.json; story/snapshot.py says what
   counts); refuse, in one line, whatever is not an edit (rundir/edits.py).
2. Render the touched frames (and inserted ones) at the last iteration L, at L's adapter scale, against the
   bank L was rendered with (the embeddings of iteration L-1, as the manifest holds them, one row per frame of
   the story as it was then). That bank keeps each edited frame's own row as it was, and a removed frame's: it is
   what iteration L was rendered against, so every frame of L, edited or not, is a render against the same
   references.
3. Commit (rundir/edits.py: where an inserted frame's file goes, where a removed one's is kept), then redraw the
   comic, GIF and gallery. A caption-only edit, or one that only removes frames, skips step 2.

The frames are rendered into the edit's staging folder and journaled there, so a driver killed midway resumes
with `edit=true` again and renders only what the journal lacks.

4. `edit.refine=K`: then K more iterations over the whole story, L+1..L+K, as a resume that extends the render
   would run them (render_story.py): every frame changes. A driver killed during them finishes them with the same
   command again.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from omegaconf import DictConfig

from . import spec as specs
from .errors import UserError
from .rundir import convergence, edits, manifest
from .story import references, schedule
from .story.model import Story

log = logging.getLogger(__name__)


def edit_story(cfg: DictConfig, out_dir: Path) -> Path:
    from .render_story import resolve_story_path
    from .story.parse import load_story

    run = specs.from_config(cfg)
    story = load_story(resolve_story_path(run.story.path), run.story.style, run.story.title)
    if run.resume:
        raise UserError("edit=true and resume=true: pass one of them (edit=true applies an edited story to a finished render)")
    iterations, refine = run.iterations_to_render, run.edit.refine
    if edits.refining(out_dir, story, iterations, refine):
        log.info("edit.refine=%d: the edit is applied; finishing its refinement iterations", refine)
        return _refine(cfg, out_dir, iterations + refine)
    plan = edits.check(out_dir, cfg, story, iterations)
    if plan is None and not refine:
        log.info("edit: the story is the one %s was rendered from; nothing to edit", out_dir)
        return out_dir
    if plan is not None and run.render.refine_strength is not None and _moves_frames(plan):
        # a warm start reads frame f of iteration L-1 by its place in the story, which an insert or removal shifts
        raise UserError("edit=true: frames inserted or removed on a render with render.refine_strength (warm starts) "
                        "are not supported yet; edit prompts, seeds or captions only, or render the story anew")
    if refine:  # said before anything starts: the one edit that changes frames the user did not edit
        n = len(story.frames)
        log.info("edit.refine=%d: after the edit, %d more iteration%s over the whole story (iter_%02d..iter_%02d, %d "
                 "frame renders) change every frame, edited or not; the comic, GIF and gallery then show iter_%02d",
                 refine, refine, "" if refine == 1 else "s", iterations + 1, iterations + refine, n * refine,
                 iterations + refine)
    # One Ray for the edit's frames and the refinement iterations (each loads the model in its own actors).
    from .render_story import connected

    with connected(run) if refine else contextlib.nullcontext():
        if plan is not None:
            _apply(run, cfg, story, out_dir, plan, outputs=not refine)
        if refine:
            _refine(cfg, out_dir, iterations + refine)
    return out_dir


def _apply(run: specs.RunSpec, cfg: DictConfig, story: Story, out_dir: Path, plan: edits.EditPlan, outputs: bool) -> None:
    cost = f"{len(plan.frames)} frame{'' if len(plan.frames) == 1 else 's'} to render" if plan.frames \
        else "no render: captions or removed frames only"
    log.info("edit (revision %d): %s; %s at iteration %d", plan.revision, plan.summary, cost, plan.iteration)
    edits.begin(out_dir, plan, story)
    from .render_story import plan_for

    run_plan = plan_for(run, story, out_dir, plan.ramp_iterations)
    # A last pass that settled drafts skipped to (convergence.py) ran at the last iteration's scale.
    ramp_at = run_plan.iterations if convergence.early_last_pass(out_dir) == plan.iteration else plan.iteration
    scale = references.iteration_scale(bool(story.photos), plan.iteration, run_plan.scale(ramp_at), run.render.scale_start)
    rendered = _render(run, story, out_dir, plan, scale) if plan.frames else {}
    frames = {f.index: f for f in story.frames}
    edits.commit(
        out_dir, plan, story, cfg, rendered,
        scales={f: references.frame_scale(story.photo_names(), frames[f].characters, plan.iteration, scale) for f in plan.frames},
        seeds={f: schedule.frame_seed(run.render.seed, run.render.seed_policy, f, frames[f].seed) for f in plan.frames},
    )
    if outputs and run.outputs.enabled:
        from .outputs import write as outputs_

        # The metrics keep the scores of the render: an edit rescores nothing.
        outputs_.write_all(out_dir, clip_model=None, metrics=False, layout=run.outputs.comic_layout,
                           caption_position=run.outputs.caption_position)
    log.info("edit done: revision %d of %s; previous frames kept in %s", plan.revision, out_dir, plan.folder(out_dir))


def _refine(cfg: DictConfig, out_dir: Path, iterations: int) -> Path:
    """edit.refine: the edited render extended to `iterations`, as `resume=true render.iterations=...` extends a
    render: the new iterations at render.scale_end, each against the bank of the one before (the edited frames'
    rows included); the metrics are scored anew and the outputs show the last iteration."""
    from omegaconf import OmegaConf

    from .render_story import render_story

    longer = OmegaConf.merge(cfg, {"render": {"iterations": iterations}, "resume": True, "edit": {"apply": False, "refine": 0}})
    return render_story(longer, out_dir)


def _render(run: specs.RunSpec, story: Story, out_dir: Path, plan: edits.EditPlan, scale: float) -> dict:
    """The plan's frames, rendered into its staging folder; starts the cluster only for frames not journaled yet."""
    from .engine import driver

    staging = plan.staging(out_dir)
    staging.mkdir(parents=True, exist_ok=True)
    bank, rows = None, None
    if plan.iteration > 0:  # row i is frame i of the story as iteration L-1 rendered it, which may since have changed
        bank = manifest.read_bank(out_dir, plan.iteration - 1)
        rows = tuple(r.characters for r in manifest.read_records(out_dir, plan.iteration - 1))
    if not driver.unrendered(staging, plan.iteration, plan.frames):
        return driver.render_frames(staging, None, plan.iteration, plan.frames, run.render.batch_size, bank, scale)
    from . import render_story as r
    from .engine import placement

    source, _ = r.resolve_model(run.model)
    with r.connected(run) as started:
        res = placement.ActorResources(**specs.fields_for(placement.ActorResources, run.cluster))
        executor = r.start_executor(run, r.worker_spec(run, story, source, staging, frames_dir=out_dir, bank_rows=rows), res)
        try:
            return driver.render_frames(staging, executor, plan.iteration, plan.frames, run.render.batch_size, bank, scale)
        finally:
            if not started:  # Ray stays up (edit.refine's actors come next, or a cluster we joined): free its actors
                executor.shutdown()


def _moves_frames(plan: edits.EditPlan) -> bool:
    """The edit inserts or removes frames, so frames' places in the story no longer match their files."""
    return bool(plan.removed or plan.new_files or any(m != i for i, m in enumerate(plan.matched)))

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
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from . import spec as specs
from .errors import UserError
from .rundir import edits, manifest
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
    plan = edits.check(out_dir, cfg, story, run.iterations_to_render)
    if plan is None:
        log.info("edit: the story is the one %s was rendered from; nothing to edit", out_dir)
        return out_dir
    cost = f"{len(plan.frames)} frame{'' if len(plan.frames) == 1 else 's'} to render again" if plan.frames \
        else "no render: captions only"
    log.info("edit (revision %d): %s; %s at iteration %d", plan.revision, plan.summary, cost, plan.iteration)
    edits.begin(out_dir, plan, story)
    from .render_story import plan_for

    run_plan = plan_for(run, story, out_dir, plan.ramp_iterations)
    scale = references.iteration_scale(bool(story.photos), plan.iteration, run_plan.scale(plan.iteration), run.render.scale_start)
    rendered = _render(run, story, out_dir, plan, scale) if plan.frames else {}
    frames = {f.index: f for f in story.frames}
    edits.commit(
        out_dir, plan, story, cfg, rendered,
        scales={f: references.frame_scale(story.photo_names(), frames[f].characters, plan.iteration, scale) for f in plan.frames},
        seeds={f: schedule.frame_seed(run.render.seed, run.render.seed_policy, f, frames[f].seed) for f in plan.frames},
    )
    if run.outputs.enabled:
        from .outputs import write as outputs

        # The metrics keep the scores of the render: an edit rescores nothing.
        outputs.write_all(out_dir, clip_model=None, metrics=False, layout=run.outputs.comic_layout,
                          caption_position=run.outputs.caption_position)
    log.info("edit done: revision %d of %s; previous frames kept in %s", plan.revision, out_dir, plan.folder(out_dir))
    return out_dir


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
    from .engine import cluster, local_ray, placement

    source, _ = r.resolve_model(run.model)
    c = run.cluster
    started = cluster.connect(c.mode, c.address, c.workers, c.cpus_per_worker, c.object_store_gb, c.connect_timeout_s,
                              gpus_per_worker=c.gpus_per_worker if r.needs_gpu(run) else 0.0)
    executor = None
    try:
        res = placement.ActorResources(**specs.fields_for(placement.ActorResources, c))
        executor = r.start_executor(run, r.worker_spec(run, story, source, staging, rows), res)
        return driver.render_frames(staging, executor, plan.iteration, plan.frames, run.render.batch_size, bank, scale)
    finally:
        if started:
            local_ray.stop()
        elif executor is not None:
            executor.shutdown()

"""One render from a config: specs -> story -> model -> engine -> iterations -> outputs.

The config is checked and frozen once (spec.from_config); every layer below gets its part of the RunSpec. The run
directory's guard alone reads the resolved config itself: its fingerprint is the resolved config's pixel keys.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from omegaconf import DictConfig

from . import passes, spec as specs
from .engine import local_ray
from .rundir import guard as rundir, story_record
from .errors import UserError
from .outputs.metrics import METRICS_JSON
from .story.photos import write_sidecar
from .story.model import Story, describe
from .story.parse import load_story

# torch, diffusers and Ray are imported inside the functions that need them, so bad input is
# reported in well under a second instead of after seconds of imports.

log = logging.getLogger(__name__)
EXAMPLES = Path(__file__).parent / "examples"


def resolve_story_path(path: str) -> Path:
    """A path as given, else one of the shipped examples by file name (e.g. `explorer_24.txt`)."""
    p = Path(path).expanduser()
    if p.exists():
        return p
    shipped = EXAMPLES / p.name
    if shipped.is_file() and (p.parent == Path(".") or p.parent.name == "examples"):
        return shipped
    return p  # load_story reports the missing file with its path


def resolve_model(m: specs.ModelSpec):
    """Where the weights are (a ModelSource), building the offline tiny model first if asked; plus the CLIP for metrics."""
    if m.kind == "sim":
        return None, None  # no weights, and no torch import: sim.py documents what it renders instead
    from dataclasses import replace

    from .models.lora import LoraWeights
    from .models.loading import ModelSource, check_available

    # Files the user names become absolute here: workers (and Ray Jobs' copied working dir) have another cwd.
    extras = dict(
        single_file_config=_absolute(m.single_file_config),
        vae=_absolute(m.vae) if m.vae and _names_local(m.vae) else m.vae,
        loras=tuple(LoraWeights(_absolute(lw.path), float(lw.scale)) for lw in m.loras),
        cache_dir=_absolute(m.cache_dir),
        family=m.family,
        offload=m.offload,
    )
    eval_clip = None
    if m.kind == "tiny" and m.family == "flux":
        from .models import flux_tiny

        root = flux_tiny.build(flux_tiny.flux_tiny_dir(Path(m.cache_dir) if m.cache_dir else None))
        source = ModelSource(str(root / "flux"), str(root / "ip-adapter"), "", "ip_adapter.safetensors",
                             str(root / "clip-vision"), **extras)
        eval_clip = str(root / "eval_clip")
    elif m.kind == "tiny":
        from .models import tiny

        root = tiny.build(tiny.tiny_dir(Path(m.cache_dir) if m.cache_dir else None))
        source = ModelSource(str(root / "sdxl"), str(root / "ip-adapter"), **extras)
        eval_clip = str(root / "eval_clip")
    elif m.kind == "sdxl-random":
        from .models import sdxl_random

        return replace(sdxl_random.source(), **extras), None
    elif m.kind == "flux-random":
        from .models import flux_random

        return replace(flux_random.source(), **extras), None
    else:
        pretrained = _absolute(m.pretrained) if _names_local(m.pretrained) else m.pretrained
        ip_adapter = _absolute(m.ip_adapter) if m.family == "flux" and _names_local(m.ip_adapter) else m.ip_adapter
        image_encoder = m.image_encoder_folder  # FLUX: a hub id or folder of its own; SDXL: a subfolder name
        if m.family == "flux" and _names_local(image_encoder):
            image_encoder = _absolute(image_encoder)
        source = ModelSource(pretrained, ip_adapter, m.ip_adapter_subfolder, m.ip_adapter_weight,
                             image_encoder, m.variant, **extras)
    check_available(source)
    return source, eval_clip


def _names_local(ref: str) -> bool:
    return ref.startswith((".", "/", "~")) or ref.lower().endswith(".safetensors") or Path(ref).expanduser().exists()


def _absolute(path: str | None) -> str | None:
    return str(Path(path).expanduser().absolute()) if path else None


def _with_absolute_draft_lora(render: specs.RenderSpec) -> specs.RenderSpec:
    """Workers (and Ray Jobs' copied working dir) have another cwd: the draft LoRA's and a local draft VAE's paths
    become absolute."""
    d = render.draft
    if not d.lora and not (d.vae and _names_local(d.vae)):
        return render
    from dataclasses import replace

    vae = _absolute(d.vae) if d.vae and _names_local(d.vae) else d.vae
    return replace(render, draft=replace(d, lora=_absolute(d.lora), vae=vae))


def check_draft_lora(run: specs.RunSpec) -> None:
    """Before any worker starts: render.draft.lora is there, is safetensors and holds LoRA weights; render.draft.vae
    names an AutoencoderTiny."""
    if run.model.kind == "sim":
        return
    if run.render.draft.lora:
        from .models import lora

        lora.check(_absolute(run.render.draft.lora), 0, key="render.draft.lora")
    if run.render.draft.vae:
        from .models import vae

        vae.check_tiny(run.render.draft.vae)


def styled(story: Story, frame, negative_prompt: str | None) -> tuple[str, str]:
    """A frame's (prompt, negative prompt) after the story's style; render.negative_prompt, when set, replaces the style's."""
    prompt, negative = story.styled(frame)
    return prompt, negative if negative_prompt is None else negative_prompt


def worker_spec(run: specs.RunSpec, story: Story, source, out_dir: Path, frames_dir: Path | None = None, bank_rows=None):
    """What each render actor builds its worker from: the model=sim worker, or the frame worker. `frames_dir`:
    where warm starts read earlier iterations' frames, when not `out_dir` (an edit's staging folder). `bank_rows`: the
    characters of each bank row when the rows are not `story`'s frames (an edit, WorkerSpec.bank_rows)."""
    out = str(Path(out_dir).resolve())
    if run.model.kind == "sim":
        from .engine.sim import SimSpec

        return SimSpec(out_dir=out, **specs.fields_for(SimSpec, run.model.sim, run.render, run.model))
    from .worker.frame_worker import FramePrompt, WorkerSpec

    return WorkerSpec(
        source=source,
        settings=_with_absolute_draft_lora(run.render),
        prompts=tuple(FramePrompt(*styled(story, f, run.render.negative_prompt), characters=f.characters, seed=f.seed)
                      for f in story.frames),
        out_dir=out,
        threads=run.cluster.threads_per_worker,
        consistent=consistent_pass(run, story),
        method=run.method.name,
        freeu=freeu(run),
        photos=tuple(story.photos.values()),
        frames_dir=str(Path(frames_dir).resolve()) if frames_dir is not None else None,
        bank_rows=bank_rows,
        **specs.fields_for(WorkerSpec, run.render, run.model),  # seed, seed_policy, reference weighting; device, dtype, ...
    )


def consistent_pass(run: specs.RunSpec, story: Story):
    """The CSA pass of method=storydiffusion|hybrid (iteration 0), or None for story_adapter."""
    if run.method.name == "story_adapter":
        return None
    from .methods import CSASettings
    from .story.identity import consistent_pass as plan

    return plan(story, CSASettings(**specs.fields_for(CSASettings, run.method)), run.render.seed, run.render.seed_policy)


def freeu(run: specs.RunSpec):
    """method.freeu's factors when enabled, else None."""
    if not run.method.freeu.enabled:
        return None
    from .methods import FreeUSettings

    return FreeUSettings(**specs.fields_for(FreeUSettings, run.method.freeu))


def plan_for(run: specs.RunSpec, story: Story, out_dir: Path, ramp_iterations: int | None = None):
    from .engine import driver

    # Shared ID banks: the driver runs each character's write phase once; rerender leaves them to the workers.
    shared = run.method.name != "story_adapter" and run.method.id_banks == "shared" and run.model.kind != "sim"
    return driver.RunPlan(**{**specs.fields_for(driver.RunPlan, run.render),
                             "story": story, "out_dir": out_dir, "iterations": run.iterations_to_render,
                             "ramp_iterations": ramp_iterations, "consistent": consistent_pass(run, story) if shared else None,
                             "drafts": passes.drafting(run.render), "all_drafts": run.render.draft.final,
                             "frame_costs": passes.frame_costs(run.render)})


def needs_gpu(run: specs.RunSpec) -> bool:
    """Real and full-size models run on GPUs; they go to CPU only when the user says model.device=cpu."""
    if run.model.device == "auto":
        return run.model.kind in ("hub", "sdxl-random", "flux-random")
    return run.model.device.startswith("cuda")


@contextlib.contextmanager
def connected(run: specs.RunSpec):
    """Ray for the block: joined or started (then stopped at its end, actors included), unless this process is on
    one already. Yields whether it started it: if not, the caller frees its own actors."""
    from .engine import cluster

    c = run.cluster
    started = cluster.connect(c.mode, c.address, c.workers, c.cpus_per_worker, c.object_store_gb, c.connect_timeout_s,
                              gpus_per_worker=c.gpus_per_worker if needs_gpu(run) else 0.0)
    try:
        yield started
    finally:
        if started:  # a Ray we started goes down whole, actors included (killing them first makes Ray announce retries)
            local_ray.stop()


def actor_devices(run: specs.RunSpec) -> bool:
    """Whether the render actors reserve GPUs. Refuses CPU actors for a GPU model on a fixed cluster without GPUs."""
    import ray

    has_gpus = ray.cluster_resources().get("GPU", 0) > 0
    if run.model.offload != "none" and not has_gpus and run.cluster.mode == "local":
        raise UserError(f"model.offload={run.model.offload}: offloading moves weights to a GPU when they are used, and "
                        "this machine has none; use model.offload=none")
    if run.model.device == "cpu":
        return False
    if needs_gpu(run):
        if not has_gpus and run.cluster.mode == "local":
            raise UserError(f"model={run.model.name} needs a GPU and this machine has none; pass model.device=cpu "
                            "to render on CPU (hours per frame at full size)")
        return True  # a Ray cluster without GPUs yet may be autoscaling: the placement waits for them
    return has_gpus


METHOD_SUMMARY = {
    "story_adapter": "iteration 0 from text alone, then render.iterations GRCA refinements",
    "storydiffusion": "one pass with consistent self-attention (written as iter_00; render.iterations is not used)",
    "hybrid": "iteration 0 with consistent self-attention, then render.iterations GRCA refinements",
}


def render_story(cfg: DictConfig, out_dir: Path) -> Path:
    """Render a story end to end with the Ray engine. Raises UserError for anything the user can fix."""
    run = specs.from_config(cfg)
    story = load_story(resolve_story_path(run.story.path), run.story.style, run.story.title)
    if run.edit.apply:  # edit_story.py applies edits; it uses this module's engine start, so it is called by the launcher
        raise UserError("edit=true: apply edits with storyadapter.edit_story.edit_story (the launcher does)")
    log.info("story %s", describe(story))
    log.info("method %s: %s", run.method.name, METHOD_SUMMARY[run.method.name])
    state = rundir.check(out_dir, cfg, story, run.resume, run.iterations_to_render)
    rundir.probe_writable(out_dir)  # before the model and Ray start: a bad output_dir is found in a second
    from .outputs import write as outputs

    scored, deferred = False, None
    # Nothing to render: no cluster, no model. A render that settled (render.stop_when_stable) is finished too.
    finished = state.finished or (not state.fresh and _settled(run, story, out_dir, state))
    if state.finished:
        log.info("all %d iterations of %s are finished; writing the outputs only", run.iterations_to_render + 1, out_dir)
    elif not finished:
        scored, deferred = _render(run, cfg, story, out_dir, state)
    # A finished render's metrics stay as they were scored (with the model's evaluation CLIP) unless asked anew.
    rescore = not finished or run.eval.clip_model or not (out_dir / METRICS_JSON).is_file()
    if run.outputs.enabled:
        outputs.write_all(out_dir, clip_model=run.eval.clip_model, metrics=rescore and not scored and deferred is None,
                          layout=run.outputs.comic_layout, caption_position=run.outputs.caption_position)
    if deferred is not None:  # the comic and gallery are written even when the evaluation CLIP is missing
        raise deferred
    log.info("done: %s", out_dir)
    return out_dir


def _settled(run: specs.RunSpec, story: Story, out_dir: Path, state: rundir.RunDir) -> bool:
    from .engine import driver

    return run.render.stop_when_stable is not None and driver.settled_before_resume(
        plan_for(run, story, out_dir, state.ramp_iterations))


def start_executor(run: specs.RunSpec, spec, res, clip=None):
    """The Ray executor, once every actor has loaded the model; the log says how long that took (an edit of one
    frame is mostly this)."""
    import time

    from .engine import executor as engine

    t0 = time.perf_counter()
    executor = engine.RayExecutor(spec, res, use_gpu=actor_devices(run), fixed_cluster=run.cluster.mode == "local", clip=clip)
    log.info("render actors started and the model loaded in %.1f s", time.perf_counter() - t0)
    return executor


def _render(run: specs.RunSpec, cfg: DictConfig, story: Story, out_dir: Path,
            state: rundir.RunDir) -> tuple[bool, UserError | None]:
    """Start the cluster and the actors, render every unfinished iteration, then score the metrics that need
    CLIP on the actors (their GPUs) before releasing them. Returns whether metrics were written, and the
    error to raise once the other outputs are written. `cfg` goes to the run directory's config.yaml only."""
    from .engine import clip_scorer, driver, placement
    from .worker.clip import ActorClip

    source, eval_clip = resolve_model(run.model)
    check_draft_lora(run)
    with connected(run) as started:
        executor = None
        try:
            res = placement.ActorResources(**specs.fields_for(placement.ActorResources, run.cluster))
            executor = start_executor(run, worker_spec(run, story, source, out_dir), res, ActorClip)
            env = getattr(executor, "environment", None)
            if not state.fresh and (changed := rundir.environment_changed(out_dir, env)):
                log.warning("%s", changed)
            if state.fresh or state.extends:  # only once the workers are up, so a failed start leaves nothing behind
                rundir.write_config(out_dir, cfg, story, run.iterations_to_render, state.ramp_iterations, env)
            if story_record.read(out_dir) is None:  # also for a render made before story.json: the guard checked its digest
                story_record.write(out_dir, story)
            write_sidecar(out_dir, story.photos)  # which photo each character used, beside the manifest
            if state.extends:
                log.info("extending to %d iterations: the new ones run at scale_end=%g (the ramp was %d iterations)",
                         run.render.iterations, run.render.scale_end, state.ramp_iterations)
            driver.run_iterations(plan_for(run, story, out_dir, state.ramp_iterations), executor)
            clip = run.eval.clip_model or eval_clip
            if run.outputs.enabled and clip:
                from .outputs import metrics

                log.info("metrics: scoring every iteration with CLIP %s on the render actors", clip)
                try:
                    metrics.run_metrics(out_dir, clip_scorer.ActorClipScorer(executor, clip))
                except UserError as exc:
                    log.error("metrics: skipped: %s", exc)
                    return False, exc
                return True, None
            return False, None
        finally:
            if not started and executor is not None:  # on a Ray we joined, free our actors
                executor.shutdown()

"""One render from a validated config: story -> model -> engine -> iterations -> outputs."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from . import config as schema
from .engine import local_ray
from .rundir import guard as rundir
from .errors import UserError
from .methods import refinements
from .outputs.metrics import METRICS_JSON
from .story.photos import write_sidecar
from .story.parse import Story, describe, load_story

# torch, diffusers and Ray are imported inside the functions that need them, so bad input is
# reported in well under a second instead of after seconds of imports.

log = logging.getLogger(__name__)
EXAMPLES = Path(__file__).parent / "examples"


def validate(cfg: DictConfig) -> None:
    """Checks the schema's types cannot express: choices and ranges."""
    for key, allowed in schema.CHOICES.items():
        value = _get(cfg, key)
        if value not in allowed:
            raise UserError(f"{key}={value}: expected one of {', '.join(allowed)}")
    for key in schema.POSITIVE:
        if _get(cfg, key) <= 0:
            raise UserError(f"{key}={_get(cfg, key)}: must be positive")
    if cfg.render.iterations < 0:
        raise UserError(f"render.iterations={cfg.render.iterations}: must be 0 or more")
    for key in ("render.height", "render.width"):
        if _get(cfg, key) % 8:
            raise UserError(f"{key}={_get(cfg, key)}: must be a multiple of 8 (the VAE downsamples by 8)")
    if cfg.render.guidance_scale < 1.0:
        raise UserError(f"render.guidance_scale={cfg.render.guidance_scale}: must be at least 1 (classifier-free guidance)")
    for key in ("method.sa32", "method.sa64", "method.early_rate", "method.late_rate"):
        if not 0.0 <= _get(cfg, key) <= 1.0:
            raise UserError(f"{key}={_get(cfg, key)}: must be a probability, between 0 and 1")
    if cfg.method.plain_steps < 0:
        raise UserError(f"method.plain_steps={cfg.method.plain_steps}: must be 0 or more")
    for key, null_means in schema.POSITIVE_OR_NULL.items():
        value = _get(cfg, key)
        if value is not None and value <= 0:
            raise UserError(f"{key}={value}: must be positive (or null {null_means})")
    if cfg.cluster.gpus_per_worker < 0 or cfg.cluster.cpus_per_worker <= 0:
        raise UserError("cluster.gpus_per_worker must be >= 0 and cluster.cpus_per_worker > 0")
    for index, lora in enumerate(cfg.model.loras):
        if OmegaConf.is_missing(lora, "path") or not lora.path:
            raise UserError(f"model.loras[{index}].path: missing; give each LoRA as {{path: FILE.safetensors, scale: 0.8}}")
    if cfg.model.kind == "sim":
        from .engine.sim import validate_config

        validate_config(cfg.model.sim)


def _get(cfg: DictConfig, dotted: str):
    node = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def resolve_story_path(path: str) -> Path:
    """A path as given, else one of the shipped examples by file name (e.g. `explorer_24.txt`)."""
    p = Path(path).expanduser()
    if p.exists():
        return p
    shipped = EXAMPLES / p.name
    if shipped.is_file() and (p.parent == Path(".") or p.parent.name == "examples"):
        return shipped
    return p  # load_story reports the missing file with its path


def resolve_model(cfg: DictConfig):
    """Where the weights are (a ModelSource), building the offline tiny model first if asked; plus the CLIP for metrics."""
    m = cfg.model
    if m.kind == "sim":
        return None, None  # no weights, and no torch import: sim.py documents what it renders instead
    from dataclasses import replace

    from .models.lora import LoraWeights
    from .models.loading import ModelSource, check_available

    # Files the user names become absolute here: workers (and Ray Jobs' copied working dir) have another cwd.
    vae = m.get("vae")  # .get: bench builds a bare config with only the model's kind
    extras = dict(
        single_file_config=_absolute(m.get("single_file_config")),
        vae=_absolute(vae) if vae and _names_local(vae) else vae,
        loras=tuple(LoraWeights(_absolute(lw.path), float(lw.scale)) for lw in m.get("loras") or ()),
        cache_dir=_absolute(m.get("cache_dir")),
    )
    eval_clip = None
    if m.kind == "tiny":
        from .models import tiny

        root = tiny.build(tiny.tiny_dir(Path(m.cache_dir) if m.cache_dir else None))
        source = ModelSource(str(root / "sdxl"), str(root / "ip-adapter"), **extras)
        eval_clip = str(root / "eval_clip")
    elif m.kind == "sdxl-random":
        from .models import sdxl_random

        return replace(sdxl_random.source(), **extras), None
    else:
        pretrained = _absolute(m.pretrained) if _names_local(m.pretrained) else m.pretrained
        source = ModelSource(pretrained, m.ip_adapter, m.ip_adapter_subfolder, m.ip_adapter_weight,
                             m.image_encoder_folder, m.variant, **extras)
    check_available(source)
    return source, eval_clip


def _names_local(ref: str) -> bool:
    return ref.startswith((".", "/", "~")) or ref.lower().endswith(".safetensors") or Path(ref).expanduser().exists()


def _absolute(path: str | None) -> str | None:
    return str(Path(path).expanduser().absolute()) if path else None


def worker_spec(cfg: DictConfig, story: Story, source, out_dir: Path):
    if cfg.model.kind == "sim":
        from .engine.sim import spec_from_config

        return spec_from_config(cfg, out_dir)
    from .worker.renderer import RenderSettings
    from .worker.frame_worker import FramePrompt, WorkerSpec

    r = cfg.render
    return WorkerSpec(
        source=source,
        settings=RenderSettings(steps=r.steps, height=r.height, width=r.width, guidance_scale=r.guidance_scale,
                                reference_size=r.reference_size, reference_sdpa=r.reference_sdpa),
        prompts=tuple(FramePrompt(*story.styled(f), characters=f.characters) for f in story.frames),
        out_dir=str(out_dir.resolve()),
        seed=r.seed,
        seed_policy=r.seed_policy,
        device=cfg.model.device,
        dtype=cfg.model.dtype,
        threads=cfg.cluster.threads_per_worker,
        compile=cfg.model.compile,
        deterministic=cfg.model.deterministic,
        consistent=consistent_pass(cfg, story),
        reference_weighting=r.reference_weighting,
        character_weight=r.character_weight,
        photos=tuple(story.photos.values()),
    )


def consistent_pass(cfg: DictConfig, story: Story):
    """The CSA pass of method=storydiffusion|hybrid (iteration 0), or None for story_adapter."""
    m = cfg.method
    if m.name == "story_adapter":
        return None
    from .methods import CSASettings
    from .story.identity import consistent_pass as plan

    settings = CSASettings(id_length=m.id_length, sa32=m.sa32, sa64=m.sa64, plain_steps=m.plain_steps,
                           early_steps=m.early_steps, early_rate=m.early_rate, late_rate=m.late_rate)
    return plan(story, settings, cfg.render.seed, cfg.render.seed_policy)


def plan_for(cfg: DictConfig, story: Story, out_dir: Path, ramp_iterations: int | None = None):
    from .engine import driver

    r = cfg.render
    # Shared ID banks: the driver runs each character's write phase once; rerender leaves them to the workers.
    shared = cfg.method.name != "story_adapter" and cfg.method.id_banks == "shared" and cfg.model.kind != "sim"
    return driver.RunPlan(story=story, out_dir=out_dir, iterations=iterations_to_render(cfg), batch_size=r.batch_size,
                          scale_start=r.scale_start, scale_end=r.scale_end, seed=r.seed, seed_policy=r.seed_policy,
                          ramp_iterations=ramp_iterations, stop_when_stable=r.stop_when_stable,
                          consistent=consistent_pass(cfg, story) if shared else None)


def iterations_to_render(cfg: DictConfig) -> int:
    """Refinements after iteration 0 (methods.refinements)."""
    return refinements(cfg.method.name, cfg.render.iterations)


def needs_gpu(cfg: DictConfig) -> bool:
    """Real and full-size models run on GPUs; they go to CPU only when the user says model.device=cpu."""
    if cfg.model.device == "auto":
        return cfg.model.kind in ("hub", "sdxl-random")
    return cfg.model.device.startswith("cuda")


def actor_devices(cfg: DictConfig) -> bool:
    """Whether the render actors reserve GPUs. Refuses CPU actors for a GPU model on a fixed cluster without GPUs."""
    import ray

    has_gpus = ray.cluster_resources().get("GPU", 0) > 0
    if cfg.model.device == "cpu":
        return False
    if needs_gpu(cfg):
        if not has_gpus and cfg.cluster.mode == "local":
            raise UserError(f"model={cfg.model.name} needs a GPU and this machine has none; pass model.device=cpu "
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
    validate(cfg)
    story = load_story(resolve_story_path(cfg.story.path), cfg.story.style, cfg.story.get("title"))
    log.info("story %s", describe(story))
    log.info("method %s: %s", cfg.method.name, METHOD_SUMMARY[cfg.method.name])
    state = rundir.check(out_dir, cfg, story, cfg.resume, iterations_to_render(cfg))
    rundir.probe_writable(out_dir)  # before the model and Ray start: a bad output_dir is found in a second
    from .outputs import write as outputs

    scored, deferred = False, None
    if state.finished:  # nothing to render: no cluster, no model
        log.info("all %d iterations of %s are finished; writing the outputs only", iterations_to_render(cfg) + 1, out_dir)
    else:
        scored, deferred = _render(cfg, story, out_dir, state)
    # A finished render's metrics stay as they were scored (with the model's evaluation CLIP) unless asked anew.
    rescore = not state.finished or cfg.eval.clip_model or not (out_dir / METRICS_JSON).is_file()
    if cfg.outputs.enabled:
        outputs.write_all(out_dir, clip_model=cfg.eval.clip_model, metrics=rescore and not scored and deferred is None,
                          layout=cfg.outputs.comic_layout, caption_position=cfg.outputs.caption_position)
    if deferred is not None:  # the comic and gallery are written even when the evaluation CLIP is missing
        raise deferred
    log.info("done: %s", out_dir)
    return out_dir


def _render(cfg: DictConfig, story: Story, out_dir: Path, state: rundir.RunDir) -> tuple[bool, UserError | None]:
    """Start the cluster and the actors, render every unfinished iteration, then score the metrics that need
    CLIP on the actors (their GPUs) before releasing them. Returns whether metrics were written, and the
    error to raise once the other outputs are written."""
    from .engine import clip_scorer, cluster, driver, executor as engine, placement
    from .worker.clip import ActorClip

    source, eval_clip = resolve_model(cfg)
    c = cfg.cluster
    started = cluster.connect(c.mode, c.address, c.workers, c.cpus_per_worker, c.object_store_gb, c.connect_timeout_s,
                              gpus_per_worker=c.gpus_per_worker if needs_gpu(cfg) else 0.0)
    executor = None
    try:
        res = placement.ActorResources(c.workers, c.gpus_per_worker, c.cpus_per_worker, c.max_restarts, c.ready_timeout_s,
                                    c.batch_timeout_s, c.batch_timeout_factor, c.capacity_timeout_s)
        executor = engine.RayExecutor(worker_spec(cfg, story, source, out_dir), res, use_gpu=actor_devices(cfg),
                                      fixed_cluster=c.mode == "local", clip=ActorClip)
        env = getattr(executor, "environment", None)
        if not state.fresh and (changed := rundir.environment_changed(out_dir, env)):
            log.warning("%s", changed)
        if state.fresh or state.extends:  # only once the workers are up, so a failed start leaves nothing behind
            rundir.write_config(out_dir, cfg, story, iterations_to_render(cfg), state.ramp_iterations, env)
        write_sidecar(out_dir, story.photos)  # which photo each character used, beside the manifest
        if state.extends:
            log.info("extending to %d iterations: the new ones run at scale_end=%g (the ramp was %d iterations)",
                     cfg.render.iterations, cfg.render.scale_end, state.ramp_iterations)
        driver.run_iterations(plan_for(cfg, story, out_dir, state.ramp_iterations), executor)
        clip = cfg.eval.clip_model or eval_clip
        if cfg.outputs.enabled and clip:
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
        if started:  # a Ray we started goes down whole, actors included (killing them first makes Ray announce retries)
            local_ray.stop()
        elif executor is not None:
            executor.shutdown()

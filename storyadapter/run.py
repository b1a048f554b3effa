"""One render from a validated config: story -> model -> engine -> iterations -> outputs."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from . import config as schema
from . import local_ray, rundir
from .errors import UserError
from .story import Story, describe, load_story

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
    if cfg.cluster.gpus_per_worker < 0 or cfg.cluster.cpus_per_worker <= 0:
        raise UserError("cluster.gpus_per_worker must be >= 0 and cluster.cpus_per_worker > 0")


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
    from .models.loading import ModelSource, check_available

    m = cfg.model
    if m.kind == "tiny":
        from .models import tiny

        root = tiny.build(tiny.tiny_dir(Path(m.cache_dir) if m.cache_dir else None))
        return ModelSource(str(root / "sdxl"), str(root / "ip-adapter")), str(root / "eval_clip")
    if m.kind == "sdxl-random":
        from .models import sdxl_random

        return sdxl_random.source(), None
    source = ModelSource(m.pretrained, m.ip_adapter, m.ip_adapter_subfolder, m.ip_adapter_weight,
                         m.image_encoder_folder, m.variant)
    check_available(source)
    return source, None


def worker_spec(cfg: DictConfig, story: Story, source, out_dir: Path):
    from .renderer import RenderSettings
    from .worker import FramePrompt, WorkerSpec

    r = cfg.render
    return WorkerSpec(
        source=source,
        settings=RenderSettings(steps=r.steps, height=r.height, width=r.width, guidance_scale=r.guidance_scale,
                                reference_size=r.reference_size),
        prompts=tuple(FramePrompt(*story.styled(f)) for f in story.frames),
        out_dir=str(out_dir.resolve()),
        seed=r.seed,
        seed_policy=r.seed_policy,
        device=cfg.model.device,
        dtype=cfg.model.dtype,
        threads=cfg.cluster.threads_per_worker,
        compile=cfg.model.compile,
    )


def plan_for(cfg: DictConfig, story: Story, out_dir: Path):
    from . import driver

    r = cfg.render
    return driver.RunPlan(story=story, out_dir=out_dir, iterations=r.iterations, batch_size=r.batch_size,
                          scale_start=r.scale_start, scale_end=r.scale_end, seed=r.seed, seed_policy=r.seed_policy)


def execute(cfg: DictConfig, out_dir: Path) -> Path:
    """Render a story end to end with the Ray engine. Raises UserError for anything the user can fix."""
    validate(cfg)
    story = load_story(resolve_story_path(cfg.story.path), cfg.story.style, cfg.story.get("title"))
    log.info("story %s", describe(story))
    fresh = rundir.check(out_dir, cfg, story, cfg.resume)
    rundir.probe_writable(out_dir)  # before the model and Ray start: a bad output_dir is found in a second
    source, eval_clip = resolve_model(cfg)
    from . import driver, engine, outputs

    c = cfg.cluster
    started = engine.connect(c.mode, c.address, c.workers, c.cpus_per_worker)
    executor = None
    try:
        res = engine.ActorResources(c.workers, c.gpus_per_worker, c.cpus_per_worker, c.max_restarts, c.ready_timeout_s)
        executor = engine.RayExecutor(worker_spec(cfg, story, source, out_dir), res)
        if fresh:  # only once the cluster and the workers are up, so a failed start leaves nothing behind
            rundir.write_config(out_dir, cfg, story)
        driver.run(plan_for(cfg, story, out_dir), executor)
    finally:
        if started:  # a Ray we started goes down whole, actors included (killing them first makes Ray announce retries)
            local_ray.stop()
        elif executor is not None:
            executor.shutdown()
    if cfg.outputs.enabled:
        outputs.write_all(out_dir, clip_model=cfg.eval.clip_model or eval_clip,
                          layout=cfg.outputs.comic_layout, caption_position=cfg.outputs.caption_position)
    log.info("done: %s", out_dir)
    return out_dir

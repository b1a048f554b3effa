"""The config, checked once and frozen: `from_config(cfg)` is where the Hydra config crosses into the code.

Each spec class is its structured-config class from config.py, frozen: the same fields, types and defaults (lists
become tuples), so a new key costs its field in config.py and its use, nothing more. Every check the schema's
types cannot express lives here: allowed values, ranges, the model keys each model kind reads. Each layer then
takes what it needs from the specs (`fields_for` fills a layer's own settings type from same-named fields).

Torch- and Ray-free: the launcher, the web UI's queue and model=sim use it before anything heavy is imported.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import fields

from omegaconf import DictConfig, OmegaConf

from . import config as schema
from .errors import UserError
from . import passes
from .methods import METHODS, refinements


class ConfigError(UserError):
    """A config key whose value is refused: `key=value: problem`, one line."""

    def __init__(self, key: str, value: object, problem: str):
        super().__init__(f"{key}={value}: {problem}")
        self.key, self.value, self.problem = key, value, problem


# --- the specs: config.py's classes, frozen --------------------------------------------------------------------

_SPEC_OF: dict[type, type] = {}  # schema class -> its frozen spec class


def _frozen(schema_cls: type, name: str, namespace: dict | None = None) -> type:
    """A frozen dataclass with `schema_cls`'s fields; nested schema classes become their specs, lists tuples."""
    hints = typing.get_type_hints(schema_cls)
    specs = []
    for f in fields(schema_cls):
        hint, default = _spec_type(hints[f.name]), f.default
        if f.default_factory is not dataclasses.MISSING:
            made = f.default_factory()
            nested = _SPEC_OF.get(type(made))
            default = nested() if nested else tuple(made)
            default_field = dataclasses.field(default_factory=(lambda d=default: d))
        else:
            default_field = dataclasses.field(default=default)
        specs.append((f.name, hint, default_field))
    cls = dataclasses.make_dataclass(name, specs, frozen=True, namespace={"__module__": __name__, **(namespace or {}),
                                                                         "__doc__": f"{schema_cls.__name__}, frozen."})
    _SPEC_OF[schema_cls] = cls
    return cls


def _spec_type(hint):
    """A field's type with schema classes replaced by their specs and lists by tuples."""
    if hint in _SPEC_OF:
        return _SPEC_OF[hint]
    if typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint)
        return typing.Tuple[_SPEC_OF.get(item, item), ...]
    return hint


StorySpec = _frozen(schema.StoryConfig, "StorySpec")
LoraSpec = _frozen(schema.LoraConfig, "LoraSpec")
SimModelSpec = _frozen(schema.SimConfig, "SimModelSpec")
ModelSpec = _frozen(schema.ModelConfig, "ModelSpec")
FreeUSpec = _frozen(schema.FreeUConfig, "FreeUSpec")
DraftSpec = _frozen(schema.DraftConfig, "DraftSpec")


def _for_pass(self, draft: bool):
    """The render settings of one iteration: a draft's (render.draft.*, null keeping the main value) or the
    last pass's (render.* itself)."""
    if not draft:
        return self
    own = {f.name for f in fields(self)}
    changes = {f.name: getattr(self.draft, f.name) for f in fields(self.draft)
               if f.name in own and getattr(self.draft, f.name) is not None}
    return dataclasses.replace(self, **changes)


RenderSpec = _frozen(schema.RenderConfig, "RenderSpec", {"for_pass": _for_pass})
MethodSpec = _frozen(schema.MethodConfig, "MethodSpec")
ClusterSpec = _frozen(schema.ClusterConfig, "ClusterSpec")
OutputsSpec = _frozen(schema.OutputsConfig, "OutputsSpec")
EvalSpec = _frozen(schema.EvalConfig, "EvalSpec")
EditSpec = _frozen(schema.EditConfig, "EditSpec")


def _iterations_to_render(self) -> int:
    """Refinements after iteration 0 that this run renders (methods.refinements)."""
    return refinements(self.method.name, self.render.iterations)


RunSpec = _frozen(schema.Config, "RunSpec", {"iterations_to_render": property(_iterations_to_render)})


def _build(spec_cls: type, data: object, prefix: str = ""):
    hints = typing.get_type_hints(spec_cls)
    known = {f.name for f in fields(spec_cls)}
    for name in data:
        if name not in known:  # `+render.foo=1` composes; the key would be read by nobody
            raise UserError(unknown_key(prefix + name))
    values = {}
    for f in fields(spec_cls):
        if f.name not in data:
            continue  # the spec's default (a bare config, e.g. a benchmark's model only)
        value, hint = data[f.name], hints[f.name]
        nested = _nested_spec(hint)
        if nested is not None and isinstance(value, dict):
            value = _build(nested, value, f"{prefix}{f.name}.")
        elif nested is not None and isinstance(value, list):
            value = tuple(_build(nested, v, f"{prefix}{f.name}[{i}].") for i, v in enumerate(value))
        elif isinstance(value, list):
            value = tuple(value)
        values[f.name] = value
    return spec_cls(**values)


def _nested_spec(hint) -> type | None:
    """The spec class inside a field's type (`LoraConfig`, `List[LoraConfig]`), if there is one."""
    for candidate in (hint, *typing.get_args(hint)):
        if candidate in _SPEC_OF.values():
            return candidate
    return None


def from_config(cfg: DictConfig) -> "RunSpec":
    """The checked, frozen specs of a composed config. Raises a one-line UserError for a value the user can fix."""
    run = _build(RunSpec, OmegaConf.to_container(cfg, resolve=True))
    check(run)
    return run


def model_spec(model: DictConfig) -> "ModelSpec":
    """A composed model config as its spec, unchecked: the launcher's preset to compare the user's keys with."""
    return _build(ModelSpec, OmegaConf.to_container(model, resolve=True), "model.")


def fields_for(target: type, *specs) -> dict:
    """The values of `target`'s fields taken from the first spec that has a field of the same name: how a layer's
    own settings type (RenderSettings, CSASettings, ActorResources, RunPlan, SimSpec) is filled from the specs."""
    out = {}
    for f in fields(target):
        for spec in specs:
            if f.name in {g.name for g in fields(spec)}:
                out[f.name] = getattr(spec, f.name)
                break
    return out


def config_keys(spec_cls: type | None = None, prefix: str = "") -> list[str]:
    """Every key of the config, dotted (`render.steps`, `model.sim.frame_s`), groups included (`render`)."""
    keys = []
    for f in fields(spec_cls or RunSpec):
        keys.append(prefix + f.name)
        nested = _nested_spec(f.type)
        if nested is not None and typing.get_origin(f.type) is not tuple:
            keys += config_keys(nested, f"{prefix}{f.name}.")
    return keys


def unknown_key(key: str) -> str:
    """`render.stpes: no such key; did you mean render.steps?`: the closest existing key, and nothing else."""
    import difflib

    bare = key.lstrip("+~")
    parent = bare.rpartition(".")[0]
    keys = config_keys()
    # A typo in the last part when its parent exists (render.stpes), else anywhere at the same depth (clustr.workers).
    siblings = [k for k in keys if k.rpartition(".")[0] == parent] if parent in keys else []
    if siblings:
        names = difflib.get_close_matches(bare.rpartition(".")[2], [k.rpartition(".")[2] for k in siblings], n=1, cutoff=0.6)
        close = [f"{parent}.{n}" for n in names]
    else:
        close = difflib.get_close_matches(bare, [k for k in keys if k.count(".") == bare.count(".")], n=1, cutoff=0.6)
    return f"{key}: no such key" + (f"; did you mean {close[0]}?" if close else "")


# --- the checks -------------------------------------------------------------------------------------------------

# Denoising schedulers a pass may use (backbones/sdxl.py builds them from diffusers): DDIM as upstream, Euler with
# trailing timesteps (SDXL-Lightning's model card), LCM (LCM-LoRA), TCD (Hyper-SD / TCD-LoRA).
# flow_euler: FLUX's flow-matching Euler, the one scheduler of model.family=flux (backbones/flux.py).
SCHEDULERS = ("ddim", "euler_trailing", "lcm", "tcd", "flow_euler")
FLUX_SCHEDULERS = ("flow_euler",)
CHOICES = {
    "model.kind": ("hub", "tiny", "sdxl-random", "flux-random", "sim"),
    "model.family": ("sdxl", "flux"),
    "model.offload": ("none", "model", "blocks", "sequential"),
    "render.seed_policy": ("shared", "per_frame"),
    "render.reference_weighting": ("uniform", "characters"),
    "render.reference_sdpa": ("split", "joint"),
    "render.scheduler": SCHEDULERS,
    "method.name": METHODS,
    "method.id_banks": ("shared", "rerender"),
    "cluster.mode": ("local", "ray"),
    "outputs.comic_layout": ("classic", "four", "single"),
    "outputs.caption_position": ("below", "above"),
}
POSITIVE = ("render.steps", "render.height", "render.width", "render.batch_size", "render.reference_size",
            "render.character_weight", "cluster.workers", "cluster.threads_per_worker", "cluster.ready_timeout_s",
            "cluster.connect_timeout_s", "cluster.batch_timeout_s", "cluster.batch_timeout_factor",
            "cluster.capacity_timeout_s", "cluster.cpus_per_worker", "model.sim.embedding_dim", "model.sim.image_size",
            "model.sim.slowdown", "method.id_length",
            # diffusers reads a FreeU factor of 0 as FreeU off: refuse it rather than ignore the others
            "method.freeu.s1", "method.freeu.s2", "method.freeu.b1", "method.freeu.b2")
NOT_NEGATIVE = ("render.iterations", "method.plain_steps", "cluster.gpus_per_worker", "model.sim.frame_s", "edit.refine")
MULTIPLE_OF_8 = ("render.height", "render.width")  # the VAE downsamples by 8
PROBABILITIES = ("method.sa32", "method.sa64", "method.early_rate", "method.late_rate", "model.sim.jitter",
                 "model.sim.straggler_share")
# Positive when set; null means what the value says.
POSITIVE_OR_NULL = {"render.stop_when_stable": "to run every iteration", "cluster.object_store_gb": "for Ray's default",
                    "cluster.min_workers": "to start with the first worker"}

RANDOM_FAMILY = {"sdxl-random": "sdxl", "flux-random": "flux"}  # full-size random kinds and the family they build

# The model.* keys each model kind reads; any other key set away from its preset's value is refused (it would be
# ignored without a word). Keys that pick kernels or devices, the VAE, LoRAs and the cache serve every torch kind.
_TORCH_KEYS = ("name", "kind", "family", "dtype", "device", "compile", "deterministic", "cache_dir", "vae", "loras",
               "single_file_config", "offload")
MODEL_KEYS_READ = {
    "hub": _TORCH_KEYS + ("pretrained", "ip_adapter", "ip_adapter_subfolder", "ip_adapter_weight",
                          "image_encoder_folder", "variant"),
    "tiny": _TORCH_KEYS,  # built offline: its own weights and IP-Adapter
    "sdxl-random": _TORCH_KEYS,  # random full-size weights, built in the worker
    "flux-random": _TORCH_KEYS,
    "sim": ("name", "kind", "device", "sim"),  # no model at all
}


def _get(run, dotted: str):
    node = run
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def check(run: "RunSpec") -> None:
    """Every check the schema's types cannot express; the first failure is raised as a ConfigError."""
    for key, allowed in CHOICES.items():
        if _get(run, key) not in allowed:
            raise ConfigError(key, _get(run, key), f"expected one of {', '.join(allowed)}")
    for key in POSITIVE:
        if _get(run, key) <= 0:
            raise ConfigError(key, _get(run, key), "must be positive")
    for key in NOT_NEGATIVE:
        if _get(run, key) < 0:
            raise ConfigError(key, _get(run, key), "must be 0 or more")
    for key in MULTIPLE_OF_8:
        if _get(run, key) % 8:
            raise ConfigError(key, _get(run, key), "must be a multiple of 8 (the VAE downsamples by 8)")
    if run.render.guidance_scale < 1.0:
        raise ConfigError("render.guidance_scale", run.render.guidance_scale, "must be at least 1 (classifier-free guidance)")
    for key in PROBABILITIES:
        if not 0.0 <= _get(run, key) <= 1.0:
            raise ConfigError(key, _get(run, key), "must be a probability, between 0 and 1")
    for key, null_means in POSITIVE_OR_NULL.items():
        value = _get(run, key)
        if value is not None and value <= 0:
            raise ConfigError(key, value, f"must be positive (or null {null_means})")
    _check_draft(run.render.draft)
    _check_refine_strength(run.render)
    if run.cluster.min_workers is not None and run.cluster.min_workers > run.cluster.workers:
        raise ConfigError("cluster.min_workers", run.cluster.min_workers,
                          f"must be at most cluster.workers={run.cluster.workers}")
    if run.edit.refine and not run.edit.apply:
        raise ConfigError("edit.refine", run.edit.refine, "refines an edited render: pass edit=true with it")
    for index, lora in enumerate(run.model.loras):
        if not lora.path or lora.path == "???":  # OmegaConf's MISSING
            raise UserError(f"model.loras[{index}].path: missing; give each LoRA as {{path: FILE.safetensors, scale: 0.8}}")
    family = RANDOM_FAMILY.get(run.model.kind)
    if family and run.model.family != family:
        raise ConfigError("model.family", run.model.family, f"model.kind={run.model.kind} builds {family.upper()}'s "
                          f"shapes; use model.family={family} (or model={family}-random as it is)")
    if run.model.kind != "sim":
        (_check_flux if run.model.family == "flux" else _check_sdxl)(run)


def _check_flux(run) -> None:
    """What model.family=flux cannot do, refused before any worker starts (README, "FLUX")."""
    r, m = run.render, run.model
    if run.method.name != "story_adapter":
        raise ConfigError("method.name", run.method.name, "not on FLUX: consistent self-attention is written for a "
                          "UNet's self-attention layers, and FLUX's blocks attend jointly over text and image tokens; "
                          "use method=story_adapter")
    if run.method.freeu.enabled:
        raise ConfigError("method.freeu.enabled", True, "FreeU rescales a UNet's decoder features; FLUX has no UNet")
    for key, value in (("render.scheduler", r.scheduler), ("render.draft.scheduler", r.draft.scheduler)):
        if value is not None and value not in FLUX_SCHEDULERS:
            raise ConfigError(key, value, f"FLUX denoises with flow-matching Euler only ({', '.join(FLUX_SCHEDULERS)}); "
                              "pass render=flux, or render.scheduler=flow_euler")
    for key in ("height", "width"):
        for prefix, value in (("render", getattr(r, key)), ("render.draft", getattr(r.draft, key))):
            if value is not None and value % 16:
                raise ConfigError(f"{prefix}.{key}", value, "must be a multiple of 16 on FLUX (the VAE downsamples by "
                                  "8 and the transformer packs 2x2 latent patches)")
    if r.draft.lora:
        raise ConfigError("render.draft.lora", r.draft.lora, "draft LoRAs are SDXL's (switchable UNet adapters); "
                          "not on FLUX")
    if r.draft.vae:
        raise ConfigError("render.draft.vae", r.draft.vae, "a draft VAE is SDXL's (TAESDXL, 4 latent channels); "
                          "FLUX's VAE has 16: not on FLUX")
    if r.refine_strength is not None:
        raise ConfigError("render.refine_strength", r.refine_strength, "warm starts are SDXL's img2img arithmetic "
                          "(DDIM-family add_noise); not on FLUX yet: remove it")
    for key, value in (("model.vae", m.vae), ("model.single_file_config", m.single_file_config)):
        if value:
            raise ConfigError(key, value, "SDXL only; a FLUX model loads from a diffusers folder or hub id")
    if m.offload == "sequential":
        # accelerate 1.16's per-layer offload fails with transformers 5.25 (new() got requires_grad), for a stock
        # FluxPipeline and for the transformer alone; seen on the CPU only (docs/flux.md, "Memory"). blocks does the
        # same job at block granularity.
        raise ConfigError("model.offload", m.offload, "diffusers' sequential offload fails with this environment's "
                          "transformers and accelerate (seen on the CPU, stock FluxPipeline too); use "
                          "model.offload=blocks (the transformer's blocks stream in one at a time: fits a 24 GB GPU)")
    if m.offload != "none" and m.device == "cpu":
        raise ConfigError("model.offload", m.offload, "offloading keeps weights on the CPU between uses on a GPU; "
                          "with model.device=cpu there is no GPU: use model.offload=none")
    if m.pretrained.lower().endswith(".safetensors"):
        raise ConfigError("model.pretrained", m.pretrained, "a single-file checkpoint is SDXL only; give FLUX as a "
                          "diffusers folder or hub id")


def _check_sdxl(run) -> None:
    """FLUX's keys on an SDXL model."""
    r = run.render
    if run.model.offload != "none":
        raise ConfigError("model.offload", run.model.offload, "FLUX only (SDXL fits a 24 GB GPU without offloading)")
    for key, value in (("render.scheduler", r.scheduler), ("render.draft.scheduler", r.draft.scheduler)):
        if value in FLUX_SCHEDULERS:
            raise ConfigError(key, value, "FLUX's scheduler; SDXL takes ddim, euler_trailing, lcm or tcd")
    if r.distilled_guidance is not None:
        raise ConfigError("render.distilled_guidance", r.distilled_guidance, "SDXL has no guidance embedding (FLUX.1-dev "
                          "does); use render.guidance_scale")


def _check_draft(draft) -> None:
    """render.draft.*: null keeps the last pass's value, which was checked above."""
    if draft.steps is not None and draft.steps < 1:
        raise ConfigError("render.draft.steps", draft.steps, "must be at least 1 (or null for render.steps)")
    if draft.scheduler is not None and draft.scheduler not in SCHEDULERS:
        raise ConfigError("render.draft.scheduler", draft.scheduler, f"expected one of {', '.join(SCHEDULERS)} (or null for render.scheduler)")
    if draft.guidance_scale is not None and draft.guidance_scale < 0:
        raise ConfigError("render.draft.guidance_scale", draft.guidance_scale,
                          "must be 0 or more (at <= 1 drafts run without classifier-free guidance)")
    for key in ("height", "width"):
        value = getattr(draft, key)
        if value is not None and (value <= 0 or value % 8):
            raise ConfigError(f"render.draft.{key}", value, "must be a positive multiple of 8 (the VAE downsamples by 8)")


def _check_refine_strength(render) -> None:
    """render.refine_strength: in (0, 1], and leaving each refining pass at least one step."""
    strength = render.refine_strength
    if strength is None:
        return
    if not 0.0 < strength <= 1.0:
        raise ConfigError("render.refine_strength", strength,
                          "must be in (0, 1] (the share of a refinement's steps it runs; null: start every iteration from noise)")
    refining = [("render.steps", render.for_pass(False))] if not (passes.drafting(render) and render.draft.final) else []
    if passes.drafting(render):
        refining.append(("render.draft.steps" if render.draft.steps is not None else "render.steps", render.for_pass(True)))
    for key, settings in refining:
        if passes.refine_steps(settings.steps, strength) < 1:
            raise ConfigError("render.refine_strength", strength,
                              f"leaves no denoising step of {key}={settings.steps} (int({strength} x {settings.steps}) = 0); "
                              f"raise it to at least {1 / settings.steps:.3g}")


def check_model_keys(model: "ModelSpec", preset: "ModelSpec") -> None:
    """Refuse a model.* key the user set (it differs from `preset`, the same model composed without the user's
    model.* overrides) that `model.kind` does not read."""
    read = MODEL_KEYS_READ.get(model.kind, ())
    for f in fields(model):
        if f.name in read:
            continue
        mine, theirs = getattr(model, f.name), getattr(preset, f.name)
        if f.name == "sim":  # report the nested key itself
            for g in fields(mine):
                if getattr(mine, g.name) != getattr(theirs, g.name):
                    raise ConfigError(f"model.sim.{g.name}", getattr(mine, g.name),
                                      f"model.kind={model.kind} does not use it (only model=sim does); remove it")
        elif mine != theirs:
            raise ConfigError(f"model.{f.name}", mine, f"model.kind={model.kind} does not use it; remove it"
                              + (" (a checkpoint or hub id needs model.kind=hub, e.g. model=realvisxl)"
                                 if f.name == "pretrained" else ""))

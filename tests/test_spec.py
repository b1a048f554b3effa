"""The config crosses once (spec.py): every key reaches the layers that read it, and a model key the chosen model
kind ignores is refused."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import fields

import pytest

from storyadapter import config as schema
from storyadapter import spec
from storyadapter.errors import UserError
from storyadapter.launch import compose_config, validate_overrides
from storyadapter.render_story import plan_for, worker_spec
from storyadapter.story.parse import load_story

from .helpers.stories import write_story


def other_value(key: str, default, hint):
    """A valid value for `key` that is not its default, from its type (so a new key is covered without an edit)."""
    if key in spec.CHOICES:
        return next(v for v in spec.CHOICES[key] if v != default)
    if hint is bool:
        return not default
    if default is None:
        if int in typing.get_args(hint):
            return 1  # cluster.min_workers: at most cluster.workers
        return "trace" if str in typing.get_args(hint) else 0.25
    if isinstance(default, int):
        return default + 8  # keeps render.height/width multiples of 8
    if isinstance(default, float):
        return default / 2 if default else 0.5  # keeps probabilities probabilities, guidance >= 1
    raise AssertionError(f"{key}: add a way to pick another value for {hint}")


def overrides_for(section: str, schema_cls: type, only: typing.Iterable[str] | None = None) -> dict[str, object]:
    hints = typing.get_type_hints(schema_cls)
    return {f.name: other_value(f"{section}.{f.name}", f.default, hints[f.name])
            for f in fields(schema_cls) if (only is None or f.name in only)
            and not dataclasses.is_dataclass(hints[f.name])}  # a group (render.draft) has a test of its own


def compose_run(tmp_path, *extra: str):
    story = write_story(tmp_path / "s.txt", ["a fox in the snow", "a fox by a river"])
    cfg = compose_config([f"story.path={story}", f"output_dir={tmp_path / 'out'}", "model=tiny", *extra])
    return spec.from_config(cfg), load_story(story)


def hydra_value(value) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def test_spec_classes_are_the_schema_classes_frozen():
    for schema_cls, spec_cls in spec._SPEC_OF.items():
        assert [f.name for f in fields(schema_cls)] == [f.name for f in fields(spec_cls)], spec_cls
    with pytest.raises(AttributeError):
        spec.RenderSpec().steps = 3  # frozen: no layer changes a setting behind the others' backs


def test_every_render_key_reaches_the_worker_and_the_driver_with_no_copy_in_between(tmp_path):
    """A new render.* key costs its field in config.RenderConfig and its use: this test picks it up by itself."""
    from storyadapter.engine.driver import RunPlan
    from storyadapter.worker.frame_worker import WorkerSpec

    values = overrides_for("render", schema.RenderConfig)
    values.pop("distilled_guidance")  # FLUX's alone: refused on this SDXL model (tests/test_flux_config.py)
    run, story = compose_run(tmp_path, *(f"render.{k}={hydra_value(v)}" for k, v in values.items()))
    assert {k: getattr(run.render, k) for k in values} == values
    worker = worker_spec(run, story, None, tmp_path)
    assert worker.settings == run.render  # the renderer's settings are the render spec itself
    plan = plan_for(run, story, tmp_path)
    for layer, names in ((worker, {f.name for f in fields(WorkerSpec)}), (plan, {f.name for f in fields(RunPlan)})):
        shared = names & set(values) - {"iterations"}  # the plan's iterations are the method's refinements
        assert shared and {k: getattr(layer, k) for k in shared} == {k: values[k] for k in shared}
    assert plan.iterations == values["iterations"]


def test_method_cluster_and_sim_keys_reach_csa_the_actors_and_the_sim_worker(tmp_path):
    from storyadapter.engine.placement import ActorResources
    from storyadapter.engine.sim import SimSpec
    from storyadapter.methods import CSASettings

    csa = overrides_for("method", schema.MethodConfig, {f.name for f in fields(CSASettings)})
    cluster = overrides_for("cluster", schema.ClusterConfig, {f.name for f in fields(ActorResources)})
    run, story = compose_run(tmp_path, "method=hybrid", *(f"method.{k}={v}" for k, v in csa.items()),
                             *(f"cluster.{k}={v}" for k, v in cluster.items()))
    settings = worker_spec(run, story, None, tmp_path).consistent.settings
    assert {k: getattr(settings, k) for k in csa} == csa
    res = ActorResources(**spec.fields_for(ActorResources, run.cluster))
    assert {k: getattr(res, k) for k in cluster} == cluster

    sim = overrides_for("model.sim", schema.SimConfig)
    run, story = compose_run(tmp_path, "model=sim", *(f"model.sim.{k}={hydra_value(v)}" for k, v in sim.items()))
    made = worker_spec(run, story, None, tmp_path)
    assert isinstance(made, SimSpec) and {k: getattr(made, k) for k in sim} == sim


@pytest.mark.parametrize("overrides", [
    ["model=tiny"], ["model=sdxl-random"], ["model=sim"], ["model=realvisxl"], ["model=sdxl"],
    ["model=tiny", "model.dtype=float16", "model.cache_dir=/tmp/c"],
    ["model=realvisxl", "model.pretrained=/some/file.safetensors", "model.variant=fp16"],
    ["model=sim", "model.sim.frame_s=0.5", "model.device=cpu"],
])
def test_keys_a_model_kind_reads_or_its_preset_sets_are_accepted(overrides):
    validate_overrides(["story.path=s.txt", "output_dir=o", *overrides])


@pytest.mark.parametrize("overrides, message", [
    (["model=sim", "model.dtype=float16"], "model.dtype=float16: model.kind=sim does not use it; remove it"),
    (["model=sdxl-random", "model.ip_adapter=h94/IP-Adapter"],
     "model.ip_adapter=h94/IP-Adapter: model.kind=sdxl-random does not use it; remove it"),
    (["model=tiny", "model.sim.frame_s=2"], "model.sim.frame_s=2.0: model.kind=tiny does not use it (only model=sim does); remove it"),
    (["model=realvisxl", "model.kind=tiny"],  # the preset's own pretrained is not the user's: only variant counts
     None),
])
def test_a_model_key_the_kind_ignores_is_refused_in_one_line(overrides, message):
    args = ["story.path=s.txt", "output_dir=o", *overrides]
    if message is None:
        validate_overrides(args)
        return
    with pytest.raises(UserError) as raised:
        validate_overrides(args)
    assert str(raised.value) == message


def test_an_unknown_key_added_with_plus_is_refused_with_the_closest_key():
    with pytest.raises(UserError) as raised:
        validate_overrides(["story.path=s.txt", "output_dir=o", "+render.sed=3"])
    assert str(raised.value) == "render.sed: no such key; did you mean render.seed?"

"""method=storydiffusion|hybrid on a real local Ray with CPU actors: worker count and resume never move pixels."""

from __future__ import annotations

from pathlib import Path

import pytest

from storyadapter.rundir import manifest

from .helpers.launcher import render
from .helpers.renders import assert_same_render
from .helpers.stories import TOM_LISA

pytestmark = pytest.mark.slow
N_FRAMES = len(TOM_LISA) - 3
STORY_NAME = "tom_lisa.txt"
STORY = TOM_LISA


def overrides(story_file: Path, tiny_cache: Path, method: str, workers: int, *extra: str) -> list[str]:
    return [
        f"story.path={story_file}", "model=tiny", f"model.cache_dir={tiny_cache}", "render=tiny", "render.steps=3",
        "render.iterations=1", "render.batch_size=2", f"method={method}", "method.id_length=2",
        f"cluster.workers={workers}", "outputs.enabled=false", *extra,
    ]


@pytest.fixture(scope="module")
def hybrid_one_worker(local_ray, story_file, tiny_cache, tmp_path_factory) -> Path:
    return render(tmp_path_factory.mktemp("h1") / "out", *overrides(story_file, tiny_cache, "hybrid", 1))


def test_storydiffusion_on_two_workers_equals_one_worker_and_writes_one_pass(hybrid_one_worker, story_file, tiny_cache,
                                                                              tmp_path):
    sd = render(tmp_path / "sd2", *overrides(story_file, tiny_cache, "storydiffusion", 2))
    assert manifest.finished_iterations(sd) == [0]  # one pass, written as iter_00
    assert not (sd / manifest.iteration_dirname(1)).exists()
    assert_same_render(hybrid_one_worker, sd, 0, N_FRAMES)  # hybrid's iteration 0 is the same CSA pass, here on 1 worker


def test_hybrid_on_two_workers_resumed_after_iteration_0_equals_one_uninterrupted_worker(
        hybrid_one_worker, story_file, tiny_cache, tmp_path, monkeypatch):
    out = tmp_path / "out"
    real_write = manifest.write_part

    def crash_after_iteration_0(out_dir, records):
        real_write(out_dir, records)
        raise KeyboardInterrupt  # the driver dies once iteration 0 is on disk

    monkeypatch.setattr(manifest, "write_part", crash_after_iteration_0)
    with pytest.raises(KeyboardInterrupt):
        render(out, *overrides(story_file, tiny_cache, "hybrid", 2))
    monkeypatch.setattr(manifest, "write_part", real_write)
    assert manifest.finished_iterations(out) == [0]
    render(out, *overrides(story_file, tiny_cache, "hybrid", 2, "resume=true"))
    assert manifest.finished_iterations(out) == [0, 1]
    assert_same_render(hybrid_one_worker, out, 1, N_FRAMES)


def test_each_write_phase_runs_once_on_one_actor_and_its_bank_reaches_the_others(local_ray, story_file, tiny_cache,
                                                                                   hybrid_one_worker, tmp_path, caplog):
    from storyadapter.engine import driver, executor as engine, placement
    from storyadapter.launch import compose_config
    from storyadapter.render_story import plan_for, resolve_model, worker_spec
    from storyadapter.spec import from_config
    from storyadapter.story.parse import load_story

    out = tmp_path / "sd"
    run = from_config(compose_config([
        f"story.path={story_file}", "model=tiny", f"model.cache_dir={tiny_cache}", "render=tiny", "render.steps=3",
        "render.batch_size=2", "method=storydiffusion", "method.id_length=2", "outputs.enabled=false",
        f"output_dir={out}",
    ]))
    story = load_story(story_file)
    res = placement.ActorResources(workers=2, gpus_per_worker=0, cpus_per_worker=1, max_restarts=0, ready_timeout_s=120,
                                   min_workers=2)  # both up before the write phases: one each
    executor = engine.RayExecutor(worker_spec(run, story, resolve_model(run.model)[0], out), res, use_gpu=False,
                                  fixed_cluster=True)
    try:
        with caplog.at_level("INFO", logger="storyadapter.engine"):
            driver.run_iterations(plan_for(run, story, out), executor)
        counts = executor.counters()
    finally:
        executor.shutdown()
    written = sorted(r.getMessage() for r in caplog.records if r.getMessage().startswith("ID bank of"))
    assert len(written) == 2, written
    assert written[0].startswith("ID bank of Lisa: 2 identity frames (1 from the story, 1 from its description)")
    assert written[1].startswith("ID bank of Tom: 2 identity frames (2 from the story, 0 from its description)")
    assert all(w.endswith(" kB in the object store") for w in written), written  # tiny banks: tens of kB
    # Tom (frames 0, 4) and Lisa (frame 1 + one synthesized): 4 identity frames in all, each rendered once,
    # the two write phases on different actors; every frame that reads a bank fetched it rather than re-rendering.
    assert sorted(c["identity_renders"] for c in counts) == [2, 2]
    assert sum(c["banks_fetched"] for c in counts) >= 2
    assert_same_render(hybrid_one_worker, out, 0, N_FRAMES)  # two actors sharing banks, one actor writing its own: the same pixels


def test_banks_larger_than_a_node_object_store_are_one_warning(monkeypatch, caplog):
    import ray

    from storyadapter.engine import id_banks

    node = {"Alive": True, "Resources": {"object_store_memory": 30e9}}
    monkeypatch.setattr(ray, "nodes", lambda: [node, {**node, "Resources": {"object_store_memory": 60e9}}])
    with caplog.at_level("INFO", logger="storyadapter.engine.id_banks"):
        id_banks.check_room(10e9 + 10e9)
        assert not [r for r in caplog.records if r.levelname == "WARNING"]
        id_banks.check_room(21.6e9 + 21.6e9)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "43.2 GB" in warnings[0] and "30.0 GB" in warnings[0], warnings
    assert "cluster.object_store_gb" in warnings[0] and "\n" not in warnings[0]


def test_a_bank_lost_from_the_object_store_is_written_again_by_its_reader(local_ray, story_file, tiny_cache,
                                                                          hybrid_one_worker, tmp_path, monkeypatch):
    """Lisa's bank becomes unfetchable right after the write phases: readers fail to fetch it, write it
    themselves, and the pixels are those of an undisturbed run."""
    import ray

    from storyadapter.engine import executor as engine
    from storyadapter.engine.id_banks import IdBanks

    @ray.remote(num_cpus=0)
    def gone():
        raise ConnectionError("the node holding it is gone")

    real_check = IdBanks.check_room

    def lose_lisa(self):  # the write phases are done: the read phase is next
        real_check(self)
        self.refs["Lisa"] = gone.remote()  # fetching it raises, as a lost object's fetch does

    monkeypatch.setattr(IdBanks, "check_room", lose_lisa)
    counted = []
    real_counters = engine.RayExecutor.counters
    monkeypatch.setattr(engine.RayExecutor, "shutdown", _counting_shutdown(engine.RayExecutor.shutdown, real_counters, counted))
    out = render(tmp_path / "sd", *overrides(story_file, tiny_cache, "storydiffusion", 2))
    assert_same_render(hybrid_one_worker, out, 0, N_FRAMES)
    renders = sum(c["identity_renders"] for c in counted[0])
    assert renders > 4, counted  # 4 in the write phases, then Lisa's 2 again on each actor that read her


def _counting_shutdown(real_shutdown, counters, into: list):
    def shutdown(self):
        into.append(counters(self))
        real_shutdown(self)

    return shutdown


def test_a_finished_resume_keeps_the_metrics_and_the_gallery_names_the_method(local_ray, story_file, tiny_cache, tmp_path):
    from storyadapter.outputs.metrics import METRICS_JSON

    out = tmp_path / "sd"
    args = [f"story.path={story_file}", "model=tiny", f"model.cache_dir={tiny_cache}", "render=tiny", "render.steps=2",
            "method=storydiffusion", "method.id_length=2"]
    render(out, *args)
    scored = (out / METRICS_JSON).read_bytes()
    assert b"clip_t" in scored
    render(out, *args, "resume=true")  # finished: outputs rewritten, not the metrics
    assert (out / METRICS_JSON).read_bytes() == scored
    assert f"{N_FRAMES} frames, 1 iteration (final: iteration 0), method storydiffusion." in (out / "index.html").read_text()

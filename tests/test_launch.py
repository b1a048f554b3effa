"""`python -m storyadapter.launch` as users run it: the DESIGN command, bad input, multirun, the wheel."""

from __future__ import annotations

import html
import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from .helpers import EXAMPLES, REPO
from .helpers.launcher import ENV, launch, launch_command
from .helpers.stories import write_story


def design_command(story: Path, out: Path, cache: Path, workers: int) -> list[str]:
    return [f"story.path={story}", "model=tiny", "render.iterations=2", "render.steps=2", "render.height=64",
            "render.width=64", f"cluster.workers={workers}", f"output_dir={out}", f"model.cache_dir={cache}"]


@pytest.mark.slow
def test_design_command_renders_explorer_into_documented_layout(tiny_cache, tmp_path):
    runs = {}
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        proc = launch(*design_command(EXAMPLES / "explorer_24.txt", out, tiny_cache, workers), cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "Traceback" not in proc.stderr
        runs[workers] = out

    out = runs[2]
    assert (out / "config.yaml").is_file()
    for it in range(3):
        frames = sorted((out / f"iter_{it:02d}").glob("frame_*.png"))
        assert [f.name for f in frames] == [f"frame_{i:04d}.png" for i in range(24)]
        assert Image.open(frames[0]).size == (64, 64)
        table = pq.read_table(out / "manifest" / f"iter_{it:02d}.parquet")
        assert [f.name for f in table.schema] == ["iteration", "frame", "prompt", "caption", "characters", "seed",
                                                  "scale", "image_path", "embedding"]
        assert str(table.schema.field("embedding").type).startswith("fixed_size_list<element: float>")
        rows = table.to_pydict()
        assert rows["frame"] == list(range(24)) and set(rows["iteration"]) == {it}
        assert all((out / p).is_file() for p in rows["image_path"])
        assert rows["scale"][0] == pytest.approx([0.0, 0.3, 0.5][it])
    assert sorted((out / "comic").glob("page_*.png"))
    for name in ("story.gif", "index.html", "iterations.png", "metrics.json"):
        assert (out / name).is_file(), name
    assert [m["iteration"] for m in json.loads((out / "metrics.json").read_text())] == [0, 1, 2]
    for frame in ("iter_02/frame_0000.png", "iter_02/frame_0023.png"):
        assert np.array_equal(np.asarray(Image.open(runs[1] / frame)), np.asarray(Image.open(out / frame)))


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]


@pytest.mark.parametrize(
    "args, needles",
    [
        (["render.nonsense=1"], ["render.nonsense"]),
        (["render.steps=many"], ["render.steps"]),
        (["render.seed_policy=random"], ["render.seed_policy"]),
        (["cluster.workers=0"], ["cluster.workers"]),
        (["render.height=100"], ["render.height"]),
        (["model=unknown-model"], ["model=unknown-model: expected one of", "realvisxl", "tiny"]),
        (["method=foo"], ["method=foo: expected one of hybrid, story_adapter, storydiffusion"]),
        (["story.path=does/not/exist.txt"], ["does/not/exist.txt:1"]),
        (["cluster.connect_timeout_s=0"], ["cluster.connect_timeout_s"]),
        # Ray alone retries these for minutes, printing the same warning
        (["cluster=ray", "cluster.address=127.0.0.1:9"], ["cluster.address=127.0.0.1:9", "nothing listens"]),
        (["cluster=ray", "cluster.address=HEAD:6379"], ["cluster.address=HEAD:6379", "does not resolve"]),
    ],
)
def test_bad_config_is_one_line_naming_the_key(args, needles, tmp_path, tiny_cache):
    out = tmp_path / "out"
    proc = launch("model=tiny", f"model.cache_dir={tiny_cache}", f"output_dir={out}", *args, cwd=tmp_path)
    assert_one_line_error(proc, *needles)
    assert not out.exists()


@pytest.mark.parametrize(
    "arg, line",
    [
        # Hydra's own message here is its override grammar's parse error, with no word on quoting.
        ("story.style=(No style)",
         "error: story.style=(No style): not a value Hydra's override grammar reads; quote it, in the shell: "
         "\"story.style='(No style)'\""),
        ("render.stpes=2", "error: render.stpes: no such key; did you mean render.steps?"),
        ("clustr.workers=2", "error: clustr.workers: no such key; did you mean cluster.workers?"),
        ("render.nonsense=1", "error: render.nonsense: no such key"),  # nothing close: no guess, no list
        # model=tiny builds its own weights: a checkpoint given to it would be ignored without a word
        ("model.pretrained=/some/file.safetensors",
         "error: model.pretrained=/some/file.safetensors: model.kind=tiny does not use it; remove it "
         "(a checkpoint or hub id needs model.kind=hub, e.g. model=realvisxl)"),
    ],
)
def test_config_mistakes_get_one_line_that_says_what_to_type(arg, line, tmp_path, tiny_cache):
    out = tmp_path / "out"
    before = sorted(tmp_path.rglob("*"))
    proc = launch(f"story.path={EXAMPLES / 'garden.yaml'}", "model=tiny", f"model.cache_dir={tiny_cache}",
                  f"output_dir={out}", arg, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [line]
    assert sorted(tmp_path.rglob("*")) == before  # nothing written, output_dir included


@pytest.mark.parametrize(
    "name, text, needle",
    [
        ("undefined.txt", "[Ana] a chef\n\n[Zed] runs away\n", "undefined.txt:3"),
        ("tag.yaml", "title: !!python/object/apply:os.system ['touch pwned']\nframes: [a]\n", "tag.yaml:1"),
        ("empty.txt", "", "empty.txt:1"),
    ],
)
def test_bad_story_is_one_line_with_file_and_line(name, text, needle, tmp_path, tiny_cache):
    story = tmp_path / name
    story.write_text(text)
    proc = launch(f"story.path={story}", "model=tiny", f"model.cache_dir={tiny_cache}", f"output_dir={tmp_path / 'out'}",
                  cwd=tmp_path)
    assert_one_line_error(proc, needle)
    assert not (tmp_path / "pwned").exists()


def test_existing_output_is_never_touched(tmp_path, tiny_cache):
    out = tmp_path / "out"
    out.mkdir()
    keep = out / "iter_00" / "frame_0000.png"
    keep.parent.mkdir()
    keep.write_bytes(b"precious")
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    proc = launch(f"story.path={EXAMPLES / 'garden.yaml'}", "model=tiny", f"model.cache_dir={tiny_cache}",
                  f"output_dir={out}", cwd=tmp_path)
    assert_one_line_error(proc, f"output_dir={out}", "resume=true")
    assert keep.read_bytes() == b"precious"
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before


def test_missing_real_weights_offline_says_how_to_fetch(tmp_path):
    env = {**ENV, "HF_HOME": str(tmp_path / "empty-hf-home")}
    proc = launch(f"story.path={EXAMPLES / 'garden.yaml'}", "model=realvisxl", f"output_dir={tmp_path / 'out'}",
                  cwd=tmp_path, env=env)
    assert_one_line_error(proc, "model.pretrained=SG161222/RealVisXL_V4.0", "hf download")
    assert not (tmp_path / "out").exists()


def test_a_gpu_model_without_a_gpu_is_refused_unless_asked(tmp_path):
    """No silent fallback to CPU actors for full-size SDXL: the user must say model.device=cpu."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    proc = launch(f"story.path={EXAMPLES / 'garden.yaml'}", "model=sdxl-random", "render=tiny",
                  f"output_dir={tmp_path / 'out'}", cwd=tmp_path)
    assert_one_line_error(proc, "model=sdxl-random needs a GPU", "model.device=cpu")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_multirun_sweep_renders_each_point_in_its_own_folder(tmp_path, tiny_cache):
    story = write_story(tmp_path / "two.txt", ["a fox in the snow", "a fox by the river"])
    out = tmp_path / "sweep"
    proc = launch("-m", f"story.path={story}", "model=tiny", f"model.cache_dir={tiny_cache}", "render.iterations=1",
                  "render.steps=2", "render.height=64", "render.width=64", "outputs.enabled=false",
                  f"output_dir={out}", "render.scale_end=0.5,0.6", cwd=tmp_path, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import yaml

    ends = []
    for job in ("0", "1"):
        assert sorted(p.name for p in (out / job / "iter_01").glob("*.png")) == ["frame_0000.png", "frame_0001.png"]
        ends.append(yaml.safe_load((out / job / "config.yaml").read_text())["render"]["scale_end"])
    assert ends == [0.5, 0.6]


def test_wheel_ships_the_config_tree_and_web_page_and_launch_composes_from_it(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(REPO)],
                   check=True, capture_output=True, timeout=300)
    wheel = next(tmp_path.glob("storyadapter-*.whl"))
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    conf = {p.relative_to(REPO / "conf").as_posix() for p in (REPO / "conf").rglob("*.yaml")}
    shipped = {p.relative_to(site / "storyadapter" / "conf").as_posix() for p in (site / "storyadapter" / "conf").rglob("*.yaml")}
    assert conf <= shipped
    assert (site / "storyadapter" / "examples" / "explorer_24.txt").is_file()
    assert (site / "storyadapter" / "webui" / "webui.html").is_file()  # the web UI's page
    # From an empty directory, with only the unpacked wheel on the path: the shipped tree is used.
    env = {**ENV, "PYTHONPATH": str(site)}
    where = subprocess.run([sys.executable, "-c", "import storyadapter.launch as l; print(l.conf_dir())"], cwd=tmp_path,
                           env=env, capture_output=True, text=True, check=True)
    assert where.stdout.strip() == str(site / "storyadapter" / "conf")
    proc = launch("render.steps=many", cwd=tmp_path, env=env)
    assert_one_line_error(proc, "render.steps")


def test_an_interrupt_before_anything_is_written_does_not_offer_a_resume(tmp_path, tiny_cache):
    import signal

    out = tmp_path / "out"
    proc = subprocess.Popen(launch_command(*design_command(EXAMPLES / "explorer_24.txt", out, tiny_cache, 1)),
                            cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in proc.stderr:  # the render has started (story read); Ray and the actors are still starting
        seen.append(line)
        if "storyadapter.render_story: story " in line:
            break
    assert not (out / "config.yaml").exists()
    proc.send_signal(signal.SIGINT)
    _, rest = proc.communicate(timeout=120)
    err = "".join(seen) + rest
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert proc.returncode == 130, err[-2000:]
    assert lines == [f"error: interrupted before anything was written to output_dir={out}; nothing to resume"], err[-2000:]


def test_config_records_the_environment_and_a_resume_on_other_versions_warns_in_one_line(tiny_cache, tmp_path):
    from importlib import metadata

    import yaml

    story, out = write_story(tmp_path / "s.txt", ["a fox in a meadow", "a fox by a river"]), tmp_path / "run"
    args = [*design_command(story, out, tiny_cache, 1), "render.iterations=1", "outputs.enabled=false"]
    first = launch(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["environment"] == {"versions": {name: metadata.version(name) for name in
                                                 ("torch", "diffusers", "transformers", "peft", "ray")},
                                    "device": "cpu"}
    assert "environment" not in saved["fingerprint"]  # other versions may resume: they are not a pixel setting

    saved["environment"]["versions"]["torch"] = "2.0.0"  # as if rendered before an upgrade
    (out / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    resumed = launch(*args[:-2], "render.iterations=2", "outputs.enabled=false", "resume=true", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    warnings = [ln for ln in resumed.stderr.splitlines() if "pixels may differ" in ln]
    assert len(warnings) == 1, resumed.stderr[-3000:]
    assert f"torch 2.0.0 -> {metadata.version('torch')}" in warnings[0] and "diffusers" not in warnings[0]
    assert sorted(p.name for p in (out / "iter_02").glob("frame_*.png")) == ["frame_0000.png", "frame_0001.png"]


def test_a_render_logged_to_a_file_has_whole_lines_and_its_gallery_says_the_frames_are_noise(tiny_cache, tmp_path):
    from storyadapter.outputs.notice import RANDOM_WEIGHTS

    story = write_story(tmp_path / "s.txt", ["a fox in a meadow", "a fox by a river", "a fox asleep"])
    out, log = tmp_path / "run", tmp_path / "render.log"
    with open(log, "w") as stderr:  # no terminal: what render.log, `2> file` and a Slurm job's output get
        proc = subprocess.run(launch_command(*design_command(story, out, tiny_cache, 1), "render.iterations=1",
                                             "render.steps=1"),
                              cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL, stderr=stderr, timeout=300)
    text = log.read_text()
    assert proc.returncode == 0, text[-3000:]
    assert "\r" not in text  # no carriage-return bar for the next log line to be glued to
    stamp = r"\d\d:\d\d:\d\d INFO storyadapter\."
    for it in (0, 1):
        progress = re.findall(rf"^{stamp}engine\.progress: iteration {it}/1: [1-3]/3 frames, [\d.]+ frames/s, ETA \S+$",
                              text, re.M)
        assert progress, text[-3000:]
        assert len(re.findall(rf"^{stamp}engine\.driver: iteration {it}/1 done: ", text, re.M)) == 1, text[-3000:]
    assert text.count("engine.progress: ") == len(re.findall(rf"^{stamp}engine\.progress: .*frames/s", text, re.M))
    assert re.search(rf"^{stamp}render_story: done: {re.escape(str(out))}$", text, re.M), text[-3000:]
    # A tiny render's gallery and first comic page say what its frames are (notice.py, from its config.yaml).
    assert html.escape(RANDOM_WEIGHTS) in (out / "index.html").read_text()

"""Slurm for real: a one-node cluster from scripts/slurm-up.sh, jobs/storyadapter.sbatch under sbatch
(Ray head in an srun step, the driver joining it), and the Hydra submitit launcher sweeping two jobs.

Skipped with the reason when Slurm cannot be started here (not root and none running, no apt);
STORYADAPTER_REQUIRE_SLURM=1 (CI) turns that skip into a failure.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from storyadapter.rundir import journal

from .helpers import REPO
from .helpers.renders import assert_same_render
from .helpers.stories import write_story

pytestmark = pytest.mark.slow

SBATCH_SCRIPT = REPO / "jobs" / "storyadapter.sbatch"
SLURM_UP = REPO / "scripts" / "slurm-up.sh"
DRIVER_AT = REPO / "tests" / "helpers" / "driver_at.py"
FRAMES = 3
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
            "DEADLINE", "PREEMPTED"}
JOB_TIMEOUT_S = 240


def _unavailable(reason: str) -> None:
    if os.environ.get("STORYADAPTER_REQUIRE_SLURM") == "1":
        pytest.fail(f"STORYADAPTER_REQUIRE_SLURM=1 but {reason}")
    pytest.skip(reason)


def _slurm_answers() -> bool:
    if not shutil.which("scontrol"):
        return False
    ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=30)
    return "UP" in ping.stdout


@pytest.fixture(scope="module")
def slurm() -> str:
    """A running Slurm: started (idempotently) by scripts/slurm-up.sh when root, else one already up."""
    if os.geteuid() == 0:
        proc = subprocess.run([str(SLURM_UP)], capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            _unavailable(f"scripts/slurm-up.sh failed (exit {proc.returncode}): {last}")
        return proc.stdout.strip()
    if not _slurm_answers():
        _unavailable("Slurm is not running and starting it needs root (scripts/slurm-up.sh)")
    return "existing Slurm"


def job_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "SLURM_", "SBATCH_"))}
    env.update(HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", PYTHON=sys.executable, **extra)
    return env


def job_info(job: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "-o", "show", "job", job], capture_output=True, text=True, timeout=30).stdout
    return dict(re.findall(r"\b(JobState|ExitCode|Restarts)=(\S+)", out))


def wait_for_job(job: str, log: Path, timeout: float, restarts: int = 0) -> tuple[str, str]:
    """Poll until the job (after at least `restarts` requeues) ends; cancel it and fail past `timeout`."""
    deadline = time.monotonic() + timeout
    info: dict[str, str] = {}
    while time.monotonic() < deadline:
        info = job_info(job)
        if info.get("JobState") in TERMINAL and int(info.get("Restarts", 0)) >= restarts:
            return info["JobState"], info.get("ExitCode", "?")
        time.sleep(1)
    subprocess.run(["scancel", job], timeout=30)
    tail = log.read_text(errors="replace")[-3000:] if log.exists() else "(no log)"
    pytest.fail(f"job {job} still {info} after {timeout:.0f} s; cancelled. Log tail:\n{tail}")


def requeue_when(job: str, ready, timeout: float = 120, update: tuple[str, ...] = ()) -> None:
    """`scontrol requeue` the job once `ready()` (as a node failure or preemption would), then release it:
    Slurm holds a requeued job back for a while before it may start again. `update`: `scontrol update` fields
    for the held job first (its next allocation), e.g. ("CPUsPerTask=1",)."""
    deadline = time.monotonic() + timeout
    while not ready() and job_info(job).get("JobState") not in TERMINAL:
        assert time.monotonic() < deadline, f"job {job}: not ready to requeue after {timeout:.0f} s"
        time.sleep(0.2)
    proc = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    while time.monotonic() < deadline:
        if job_info(job).get("JobState") == "PENDING":
            if update:
                proc = subprocess.run(["scontrol", "update", f"JobId={job}", *update], capture_output=True, text=True,
                                      timeout=30)
                assert proc.returncode == 0, proc.stderr
            subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], capture_output=True, timeout=30)
            return
        time.sleep(0.5)


def render_args(story: Path, out: Path, cache: Path) -> list[str]:
    return [f"story.path={story}", "model=tiny", "render.iterations=1", "render.steps=2", "render.height=64",
            "render.width=64", f"output_dir={out}", f"model.cache_dir={cache}"]


def assert_render_layout(out: Path, iterations: int = 2) -> None:
    assert (out / "config.yaml").is_file()
    for it in range(iterations):
        frames = sorted(p.name for p in (out / f"iter_{it:02d}").glob("frame_*.png"))
        assert frames == [f"frame_{i:04d}.png" for i in range(FRAMES)], (it, frames)
        rows = pq.read_table(out / "manifest" / f"iter_{it:02d}.parquet").to_pydict()
        assert rows["frame"] == list(range(FRAMES)) and set(rows["iteration"]) == {it}
    assert not (out / f"iter_{iterations:02d}").exists()
    assert sorted((out / "comic").glob("page_*.png"))
    for name in ("index.html", "story.gif", "metrics.json"):
        assert (out / name).is_file(), name


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("slurm")
    write_story(d / "story.txt", ["a red fox in the snow", "a red fox by a frozen river", "a red fox asleep under a pine"])
    return d


HELD = "at journal:0:1"  # what tests/helpers/driver_at.py prints once iteration 0's first frames are journaled


def held_once_python(workdir: Path) -> Path:
    """A PYTHON for the job: the first attempt's driver runs through tests/helpers/driver_at.py and holds once
    iteration 0's first frames are journaled, so that a requeue lands mid-iteration, deterministically; every other
    call (ray start, the requeued attempt's driver) is plain python."""
    wrapper = workdir / "python-held-once"
    wrapper.write_text(f"""#!/bin/sh
if [ "$1" = -m ] && [ "$2" = storyadapter.launch ] && [ "${{SLURM_RESTART_COUNT:-0}}" = 0 ]; then
    shift 2
    exec {sys.executable} {DRIVER_AT} journal:0:1 pause "$@"
fi
exec {sys.executable} "$@"
""")
    wrapper.chmod(0o755)
    return wrapper


@pytest.fixture(scope="module")
def sbatch_run(slurm, workdir, tiny_cache):
    """`WORKERS=2 sbatch --cpus-per-task=2 jobs/storyadapter.sbatch ...` with the tiny model, requeued mid-iteration 0
    onto an allocation of 1 CPU; returns (job id, log, output dir, state, exit code, {frame file: mtime} of the
    frames journaled before the requeue)."""
    out = workdir / "sbatch-out"
    started = time.monotonic()
    env = job_env(WORKERS="2")
    env["PYTHON"] = str(held_once_python(workdir))
    proc = subprocess.run(["sbatch", "--parsable", "--cpus-per-task=2", f"--output={workdir}/sbatch-%j.out",
                           f"--chdir={workdir}", str(SBATCH_SCRIPT), *render_args(workdir / "story.txt", out, tiny_cache)],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    job = proc.stdout.strip().split(";")[0]
    log = workdir / f"sbatch-{job}.out"
    kept: dict[Path, int] = {}

    def held() -> bool:
        if not (log.exists() and HELD in log.read_text(errors="replace")):
            return False
        kept.update({out / r.image_path: (out / r.image_path).stat().st_mtime_ns for r in journal.read(out, 0).values()})
        return True

    try:  # the next allocation has 1 CPU instead of 2: the job's Ray head gets --num-cpus=1
        requeue_when(job, held, timeout=JOB_TIMEOUT_S, update=("NumCPUs=1", "CPUsPerTask=1"))
    except BaseException:
        subprocess.run(["scancel", job], timeout=30)
        raise
    state, code = wait_for_job(job, log, JOB_TIMEOUT_S, restarts=1)
    print(f"sbatch job {job}: {state} {code} in {time.monotonic() - started:.0f} s")
    return job, log, out, state, code, kept


def test_sbatch_job_renders_through_a_ray_cluster_and_survives_requeue_onto_fewer_cpus(sbatch_run):
    """A job asking for 2 workers, requeued mid-iteration 0 onto an allocation of 1 CPU instead of 2, finishes.

    One Slurm node cannot lose nodes, so the allocation shrinks in CPUs: the script starts its Ray nodes with the
    allocation's CPUs (--num-cpus=$SLURM_CPUS_PER_TASK, changed for the requeued job by `scontrol update`), and a CPU
    actor needs one, so the requeued job's Ray has room for 1 of its 2 workers, as a GPU job requeued onto half its
    nodes has room for half of WORKERS. The second attempt warns once, renders on 1 worker and keeps the journaled
    frames untouched; test_submitit_sweep_runs_one_slurm_job_per_point compares its bytes with an uninterrupted
    render of the same story."""
    job, log, out, state, code, kept = sbatch_run
    text = log.read_text(errors="replace")
    assert (state, code) == ("COMPLETED", "0:0"), text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    assert "storyadapter.launch exited with 0" in text
    assert "(auth token)" in text  # a per-job Ray token was generated and exported to the steps
    assert "(restart 0)" in text and "(restart 1)" in text
    first, second = text.split("(restart 1)", 1)
    assert "2 CPUs and 0 GPUs per node, 2 worker(s)" in first and "'CPU': 2.0" in first, first[-3000:]
    assert "asks for" not in first and HELD in first  # both workers fitted; requeued mid-iteration 0
    assert "1 CPUs and 0 GPUs per node, 2 worker(s)" in second and "'CPU': 1.0" in second, second[-3000:]
    warnings = [line for line in second.splitlines() if "asks for" in line]
    assert len(warnings) == 1 and "cluster.workers=2" in warnings[0] and "room for 1 now" in warnings[0], warnings
    assert "cluster: 1 of 2 render actors live" in second and "2 of 2 render actors live" not in second
    # The second attempt resumed from iteration 0's journal (the resume=true the script always passes).
    assert kept and re.search(rf"iteration 0: {len(kept)} of {FRAMES} frames finished before the restart", second), second
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # the first attempt's frames, not rendered again
    assert_render_layout(out)
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["cluster"]["mode"] == "ray" and saved["cluster"]["address"] and saved["cluster"]["workers"] == 2
    assert saved["resume"] is True  # always passed, so a requeued job continues where it stopped


def test_sbatch_job_stops_its_ray_cluster(sbatch_run):
    job = sbatch_run[0]
    marker = f"/tmp/ray_{job}_"
    deadline = time.monotonic() + 30
    while True:
        left = []
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                try:
                    if marker in (proc / "cmdline").read_bytes().decode(errors="replace"):
                        left.append(proc.name)
                except OSError:
                    pass
        if not left or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert not left, f"Ray processes of job {job} still running: {left}"
    assert not list(Path("/tmp").glob(f"ray_{job}_*")), "the job's Ray temp dir was not removed"


def test_sbatch_self_submits_with_options_from_environment(slurm, workdir):
    """Run directly, the script submits itself; NODES/CPUS_PER_TASK/TIME/PARTITION become sbatch options."""
    env = job_env(NODES="1", CPUS_PER_TASK="1", TIME="00:05:00", PARTITION="debug", SBATCH_ARGS="--test-only")
    proc = subprocess.run([str(SBATCH_SCRIPT), "model=tiny"], cwd=workdir, env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "to start at" in proc.stderr and "partition debug" in proc.stderr, proc.stderr


def test_submitit_sweep_runs_one_slurm_job_per_point(slurm, workdir, tiny_cache, sbatch_run):
    """`-m hydra/launcher=slurm render.seed=2024,7`: two Slurm jobs rendering into output_dir/0 and /1."""
    out, name = workdir / "sweep", f"sa-test-{uuid.uuid4().hex[:8]}"
    args = [*render_args(workdir / "story.txt", out, tiny_cache), "render.seed=2024,7", "hydra/launcher=slurm",
            "hydra.launcher.cpus_per_task=1", "hydra.launcher.timeout_min=10", f"hydra.launcher.name={name}"]
    try:
        proc = subprocess.run([sys.executable, "-m", "storyadapter.launch", "-m", *args], cwd=workdir,
                              env=job_env(), capture_output=True, text=True, timeout=JOB_TIMEOUT_S + 60)
    except subprocess.TimeoutExpired:
        subprocess.run(["scancel", f"--name={name}"], timeout=30)
        raise
    logs = "\n".join(p.read_text(errors="replace") for p in sorted((out / ".submitit").glob("*/*_log.*")))
    assert proc.returncode == 0, proc.stderr[-3000:] + logs[-3000:]
    assert "Traceback" not in proc.stderr and "Traceback" not in logs, proc.stderr[-3000:] + logs[-3000:]
    for point in ("0", "1"):
        assert_render_layout(out / point)
    seeds = [yaml.safe_load((out / p / "config.yaml").read_text())["render"]["seed"] for p in ("0", "1")]
    assert seeds == [2024, 7]
    # Same story and settings as the sbatch run (seed 2024), rendered without interruption by a Ray started inside
    # the job, against the sbatch run's requeue mid-iteration onto 1 worker of 2: the same bytes.
    assert_same_render(out / "0", sbatch_run[2], 1, FRAMES)
    assert not np.array_equal(pixels(out / "1" / "iter_01/frame_0000.png"),
                              pixels(sbatch_run[2] / "iter_01/frame_0000.png"))

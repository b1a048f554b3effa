"""Ray Jobs for real, following the README's recipe step by step, on loopback (own ports, temp dir, HOME):
on the "head", the venv activated, `ray get-auth-token --generate`, then `RAY_AUTH_MODE=token ray start --head`;
from a submitter that has neither the venv on its PATH nor the head's HOME, `RAY_AUTH_MODE=token
RAY_AUTH_TOKEN=<token> ray job submit --working-dir <repo> -- python -m storyadapter.launch cluster=ray ...`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from .helpers import REPO
from .helpers.stories import write_story

pytestmark = pytest.mark.slow

FRAMES = 3
RAY_CLI = [str(Path(sys.executable).with_name("ray"))] if Path(sys.executable).with_name("ray").exists() \
    else [sys.executable, "-m", "ray.scripts.scripts"]


@dataclass
class Head:
    dashboard: str
    env: dict  # the submitter's environment, as the README has it
    token: str
    temp: Path
    log: Path


VENV_BIN = Path(sys.executable).parent


def activated(env: dict) -> dict:
    """What `source .venv/bin/activate` does to the environment."""
    return {**env, "VIRTUAL_ENV": str(VENV_BIN.parent), "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"}


def without_venv(path: str) -> str:
    return os.pathsep.join(p for p in path.split(os.pathsep) if Path(p).resolve() != VENV_BIN.resolve())


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def get(url: str, token: str | None = None) -> int:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:  # not listening yet
        return 0


def pids_mentioning(text: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                if text in (proc / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(proc.name))
            except OSError:
                pass
    return found


def stop_head(proc: subprocess.Popen, temp: Path) -> None:
    """SIGTERM the `ray start --block` we started (it stops its Ray processes), then kill any stragglers:
    its process group, and processes naming its temp dir, each by pid."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        for pid in pids_mentioning(str(temp)):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        time.sleep(1)


@pytest.fixture(scope="module")
def ray_head():
    # A short path: Ray's unix sockets live under it (108-byte limit).
    temp = Path(tempfile.mkdtemp(prefix="sa-rj-", dir="/tmp"))
    gcs, dash, client, agent = free_ports(4)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "VIRTUAL_ENV"))}
    base.update(RAY_USAGE_STATS_ENABLED="0", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1",
                PATH=without_venv(os.environ.get("PATH", "")))
    # The head: its own HOME (where ~/.ray/auth_token goes), the venv activated (jobs run its python).
    (temp / "head-home").mkdir()
    head_env = activated({**base, "HOME": str(temp / "head-home")})
    made = subprocess.run(["ray", "get-auth-token", "--generate"], env=head_env, capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert (temp / "head-home" / ".ray" / "auth_token").read_text().strip() == token
    log = temp / "head.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            ["ray", "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}", "--num-cpus=2",
             "--num-gpus=0", "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
             f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent}",
             f"--temp-dir={temp}", "--disable-usage-stats"],
            env={**head_env, "RAY_AUTH_MODE": "token"}, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    dashboard = f"http://127.0.0.1:{dash}"
    # The submitter: another HOME (no token file), no venv on PATH; the token from `ray get-auth-token` on the head.
    (temp / "submit-home").mkdir()
    submit_env = {**base, "HOME": str(temp / "submit-home"), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    try:
        deadline = time.monotonic() + 120
        while get(f"{dashboard}/api/version", token) != 200:
            if proc.poll() is not None:
                pytest.fail(f"ray start --head exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"Ray dashboard at {dashboard} not up after 120 s:\n{log.read_text()[-3000:]}")
            time.sleep(1)
        yield Head(dashboard, submit_env, token, temp, log)
    finally:
        stop_head(proc, temp)
        shutil.rmtree(temp, ignore_errors=True)


def test_jobs_api_refuses_requests_without_the_token(ray_head):
    assert get(f"{ray_head.dashboard}/api/jobs/", ray_head.token) == 200
    assert get(f"{ray_head.dashboard}/api/jobs/") in (401, 403)
    assert get(f"{ray_head.dashboard}/api/jobs/", "not-the-token") in (401, 403)


def test_the_token_alone_is_not_enough_the_client_needs_the_auth_mode_too(ray_head):
    """Why the README exports RAY_AUTH_MODE=token beside RAY_AUTH_TOKEN."""
    listing = [*RAY_CLI, "job", "list", "--address", ray_head.dashboard]
    token_only = {k: v for k, v in ray_head.env.items() if k != "RAY_AUTH_MODE"}
    refused = subprocess.run(listing, env=token_only, capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "token" in (refused.stdout + refused.stderr).lower(), refused.stdout + refused.stderr
    both = subprocess.run(listing, env=ray_head.env, capture_output=True, text=True, timeout=120)
    assert both.returncode == 0, both.stdout + both.stderr


def test_ray_job_submit_renders_story(ray_head, tiny_cache, tmp_path):
    story = write_story(tmp_path / "story.txt", ["a lighthouse at dawn", "a lighthouse in a storm", "a lighthouse at night"])
    out = tmp_path / "out"  # absolute: the job runs in a copy of the working dir
    started = time.monotonic()
    proc = subprocess.run(
        [*RAY_CLI, "job", "submit", "--address", ray_head.dashboard, "--working-dir", str(REPO), "--",
         "python", "-m", "storyadapter.launch", "cluster=ray", f"story.path={story}", "model=tiny",
         "render.iterations=1", "render.steps=2", "render.height=64", "render.width=64",
         "cluster.workers=4",  # more than the 2-CPU head has: the job renders with what is there
         f"output_dir={out}", f"model.cache_dir={tiny_cache}"],
        cwd=tmp_path, env=ray_head.env, capture_output=True, text=True, timeout=300)
    print(f"ray job submit: {time.monotonic() - started:.0f} s")
    logs = proc.stdout + proc.stderr
    assert proc.returncode == 0, logs[-4000:] + ray_head.log.read_text()[-2000:]
    assert "succeeded" in logs and "Traceback" not in logs, logs[-4000:]
    assert "cluster.workers=4 asks for 4 x" in logs and "room for 2 now" in logs, logs[-4000:]

    assert (out / "config.yaml").is_file()
    for it in (0, 1):
        assert sorted(p.name for p in (out / f"iter_{it:02d}").glob("frame_*.png")) == \
            [f"frame_{i:04d}.png" for i in range(FRAMES)]
        assert pq.read_table(out / "manifest" / f"iter_{it:02d}.parquet").num_rows == FRAMES
    assert sorted((out / "comic").glob("page_*.png"))
    for name in ("index.html", "story.gif"):
        assert (out / name).is_file(), name
    assert [m["iteration"] for m in json.loads((out / "metrics.json").read_text())] == [0, 1]
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["cluster"]["mode"] == "ray" and saved["cluster"]["address"] is None  # RAY_ADDRESS from the job

"""The launch files parse and say what they must: cluster/*.yaml, conf/hydra/launcher/slurm.yaml, the sbatch
script and the Slurm helper scripts. Commands inside them are checked against the real config schema."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from storyadapter.launch import validate_overrides

from .helpers import REPO

SBATCH = REPO / "jobs" / "storyadapter.sbatch"
SCRIPTS = [SBATCH, REPO / "scripts" / "slurm-up.sh", REPO / "scripts" / "slurm-down.sh"]


def load(rel: str) -> dict:
    doc = yaml.safe_load((REPO / rel).read_text(encoding="utf-8"))
    assert isinstance(doc, dict), rel
    return doc


def launch_overrides(command: str) -> list[str]:
    words = shlex.split(command)
    assert words[:3] == ["python", "-m", "storyadapter.launch"], command
    return words[3:]


@pytest.mark.parametrize("path", sorted(str(p.relative_to(REPO)) for d in ("cluster", "jobs")
                                        for p in (REPO / d).glob("*.y*ml")))
def test_every_yaml_file_parses(path):
    load(path)


def test_ray_cluster_launcher_config():
    cfg = load("cluster/ray-cluster.yaml")
    for key in ("cluster_name", "max_workers", "provider", "auth", "available_node_types", "head_node_type",
                "file_mounts", "setup_commands", "head_start_ray_commands", "worker_start_ray_commands"):
        assert key in cfg, key
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    gpu_of_family = {"g5": "A10G", "g6": "L4", "p4d": "A100", "p5": "H100"}
    gpus = set()
    for name, node in types.items():
        assert {"node_config", "resources", "max_workers"} <= set(node), name
        family = node["node_config"]["InstanceType"].split(".")[0]
        assert family in gpu_of_family, name
        gpus.add(gpu_of_family[family])
    # Batches move between actors, and pixels are bit-identical only on one device type.
    assert len(gpus) == 1, f"node types mix GPU models {sorted(gpus)}"
    assert cfg["provider"]["type"] == "aws"
    setup = "\n".join(cfg["setup_commands"])
    assert "torch==" in setup and "storyadapter" in setup
    assert any("--head" in c for c in cfg["head_start_ray_commands"])
    assert any("--address=" in c for c in cfg["worker_start_ray_commands"])


def test_ray_cluster_launcher_config_matches_rays_schema():
    jsonschema = pytest.importorskip("jsonschema")
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(load("cluster/ray-cluster.yaml"), schema)


def test_kuberay_rayjob_manifest():
    job = load("cluster/rayjob.yaml")
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    assert job["metadata"]["name"]
    spec = job["spec"]
    for key in ("entrypoint", "rayClusterSpec", "shutdownAfterJobFinishes"):
        assert key in spec, key
    cluster = spec["rayClusterSpec"]
    assert "headGroupSpec" in cluster and cluster["workerGroupSpecs"]
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        assert group["template"]["spec"]["containers"][0]["image"]
    gpus = sum(int(g["replicas"]) * int(g["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
               for g in cluster["workerGroupSpecs"])
    overrides = launch_overrides(spec["entrypoint"])
    assert "cluster=ray" in overrides and "resume=true" in overrides
    assert f"cluster.workers={gpus}" in overrides  # one render actor per GPU the manifest asks for
    validate_overrides(overrides)  # the keys and values compose against the real schema


def test_hydra_slurm_launcher_config_composes():
    cfg = load("conf/hydra/launcher/slurm.yaml")
    assert "submitit_slurm" in cfg["defaults"]
    validate_overrides(["hydra/launcher=slurm", "model=tiny", "render.seed=1,2", "hydra.launcher.partition=debug"])
    validate_overrides(["hydra/launcher=submitit_slurm", "model=tiny"])


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shell_scripts_parse_and_are_executable(script):
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert os.access(script, os.X_OK), f"{script} is not executable"
    if not shutil.which("shellcheck"):
        if os.environ.get("STORYADAPTER_REQUIRE_SHELLCHECK"):
            pytest.fail("shellcheck is not installed (.ci/run installs Debian's shellcheck)")
        pytest.skip("shellcheck is not installed: apt-get install shellcheck")
    lint = subprocess.run(["shellcheck", "-S", "warning", str(script)], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout


def test_sbatch_script_contract():
    text = SBATCH.read_text(encoding="utf-8")
    directives = [line.split(None, 1)[1] for line in text.splitlines() if line.startswith("#SBATCH")]
    for option in ("--nodes", "--ntasks-per-node=1", "--requeue", "--time"):
        assert any(d.startswith(option) for d in directives), option
    for name in ("NODES", "GPUS_PER_NODE", "CPUS_PER_TASK", "PARTITION", "TIME", "WORKERS"):
        assert f"${{{name}:-" in text or f"${{{name}}}" in text, name
    assert "resume=true" in text and "cluster=slurm" in text and "PYTHONUNBUFFERED=1" in text
    assert "RAY_AUTH_TOKEN" in text and "trap " in text
    validate_overrides(["cluster=slurm", "cluster.address=10.0.0.1:20000", "cluster.workers=8", "model=tiny",
                        "resume=true"])


def test_makefile_has_slurm_demo_target():
    proc = subprocess.run(["make", "-n", "slurm-demo"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "jobs/storyadapter.sbatch" in proc.stdout and "model=tiny" in proc.stdout

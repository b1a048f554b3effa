"""Fixtures the test files share: the tiny model (built once per session, offline), Ray (a local one or a
multi-node one, per test module) and a test module's story file. Helpers that are not fixtures live in
tests/helpers/."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from .helpers.stories import write_story

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_configure(config) -> None:
    """Under pytest-xdist (`make test`), each worker process gets its share of the cores for torch's CPU threads.

    torch takes every core in every process by default, so -n 2 on 2 cores would run 4 threads on 2. Set here, once
    per worker, for the session; a test that needs another count sets it for a block and puts it back
    (storyadapter.worker.torch_settings.reproducible), as tests/helpers/pixels.py does."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory) -> Path:
    """Cache root holding the tiny model (pass as model.cache_dir / STORYADAPTER_CACHE)."""
    from storyadapter.models import tiny

    root = tmp_path_factory.mktemp("tiny-cache")
    tiny.build(tiny.tiny_dir(root))
    return root


@pytest.fixture(scope="session")
def tiny_source(tiny_cache):
    from storyadapter.models import tiny
    from storyadapter.models.loading import ModelSource

    d = tiny.tiny_dir(tiny_cache)
    return ModelSource(str(d / "sdxl"), str(d / "ip-adapter"))


@pytest.fixture(scope="session")
def flux_tiny_cache(tmp_path_factory) -> Path:
    """Cache root holding model=flux-tiny (pass as model.cache_dir)."""
    from storyadapter.models import flux_tiny

    root = tmp_path_factory.mktemp("flux-tiny-cache")
    flux_tiny.build(flux_tiny.flux_tiny_dir(root))
    return root


@pytest.fixture(scope="session")
def flux_tiny_source(flux_tiny_cache):
    from storyadapter.models import flux_tiny
    from storyadapter.models.source import ModelSource

    d = flux_tiny.flux_tiny_dir(flux_tiny_cache)
    return ModelSource(str(d / "flux"), str(d / "ip-adapter"), "", "ip_adapter.safetensors", str(d / "clip-vision"),
                       family="flux")


@pytest.fixture(scope="module")
def story_file(request, tmp_path_factory) -> Path:
    """The test module's STORY (its lines) written once as STORY_NAME (default story.txt), with STORY_FILES
    ({path beside the story: file to copy there}, e.g. a character's photo)."""
    module = request.module
    folder = tmp_path_factory.mktemp("story")
    for name, source in getattr(module, "STORY_FILES", {}).items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, folder / name)
    return write_story(folder / getattr(module, "STORY_NAME", "story.txt"), module.STORY)


@pytest.fixture(scope="module")
def local_ray():
    """A fresh 2-CPU Ray in this process for the test module, never a cluster another test run has up."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def ray_cluster():
    """A real multi-node Ray (one process tree per node): a head without CPUs (the driver's) and two 1-CPU worker
    nodes, so that one render actor fits on each. Yields (cluster, [worker nodes]); a test that removes a node
    adds one back."""
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    workers = [c.add_node(num_cpus=1) for _ in range(2)]
    c.wait_for_nodes()
    ray.init(address=c.address, configure_logging=False)
    yield c, workers
    ray.shutdown()
    c.shutdown()

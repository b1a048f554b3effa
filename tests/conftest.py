"""Shared fixtures: one tiny model per test session, built offline into a temporary cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "storyadapter" / "examples"


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


def write_story(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path

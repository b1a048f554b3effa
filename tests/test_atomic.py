"""Whole-file writes: the old file survives a failed write, and no temporary file is left behind."""

from __future__ import annotations

import pytest

from storyadapter.atomic import replacing


def test_replacing_swaps_in_the_new_file_only_on_success(tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with replacing(target) as tmp:
            assert tmp.suffix == ".json" and tmp.parent == tmp_path
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert target.read_text() == "old"
    with replacing(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]

"""The per-batch journal: what a killed driver leaves behind is read back, a torn last line costs one batch."""

from __future__ import annotations

import numpy as np

from storyadapter.rundir import journal
from storyadapter.engine.protocol import FrameResult


def _frames(out, frames, dim=4):
    results = []
    for f in frames:
        rel = f"iter_01/frame_{f:04d}.png"
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(b"png")
        results.append(FrameResult(f, rel, np.full(dim, f, dtype=np.float32)))
    return results


def test_journal_round_trip_skips_a_torn_line_and_missing_files(tmp_path):
    j = journal.Journal(tmp_path, 1)
    j.append(_frames(tmp_path, [0, 1]))
    j.append(_frames(tmp_path, [2, 3]))
    j.close()
    with open(journal.journal_path(tmp_path, 1), "ab") as fh:
        fh.write(b'{"frames": [4, 5], "paths": ["iter_01/fr')  # the driver died mid-write
    j = journal.Journal(tmp_path, 1)  # a resumed driver appends after the torn line
    j.append(_frames(tmp_path, [6]))
    j.close()
    (tmp_path / "iter_01/frame_0003.png").unlink()  # a record whose file is gone is not trusted

    found = journal.read(tmp_path, 1)
    assert sorted(found) == [0, 1, 2, 6]
    for f, r in found.items():
        np.testing.assert_array_equal(r.embedding, np.full(4, f, dtype=np.float32))
        assert r.image_path == f"iter_01/frame_{f:04d}.png"


def test_no_journal_means_nothing_finished_and_remove_deletes_it(tmp_path):
    assert journal.read(tmp_path, 2) == {}
    j = journal.Journal(tmp_path, 2)
    j.append(_frames(tmp_path, [0]))
    j.remove()
    assert not journal.journal_path(tmp_path, 2).exists()

"""Per-iteration manifest parts: one parquet file per finished iteration, written atomically."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..atomic import replacing
from ..errors import UserError

MANIFEST_DIR = "manifest"
_PART = re.compile(r"^iter_(\d+)\.parquet$")


def schema(embedding_dim: int) -> pa.Schema:
    return pa.schema(
        [
            ("iteration", pa.int16()),
            ("frame", pa.int32()),
            ("prompt", pa.string()),
            ("caption", pa.string()),
            ("characters", pa.list_(pa.string())),
            ("seed", pa.int64()),
            ("scale", pa.float32()),
            ("image_path", pa.string()),
            ("embedding", pa.list_(pa.float32(), embedding_dim)),
        ]
    )


# Each frame's revision (edit=true), kept in the part's schema metadata rather than as a column: the columns are
# the documented contract that readers of the manifest rely on. A part without it: every frame is revision 0.
REVISIONS_KEY = b"storyadapter.revisions"


@dataclass(frozen=True)
class FrameRecord:
    iteration: int
    frame: int
    prompt: str
    caption: str
    characters: tuple[str, ...]
    seed: int
    scale: float
    image_path: str  # relative to the output directory
    embedding: np.ndarray  # (D,) float32
    revision: int = 0  # the edit (edits/rev_NN) that last rendered this frame; 0: the render itself


def iteration_dirname(iteration: int) -> str:
    return f"iter_{iteration:02d}"


def frame_filename(frame: int) -> str:
    return f"frame_{frame:04d}.png"


def part_path(out_dir: Path, iteration: int) -> Path:
    return Path(out_dir) / MANIFEST_DIR / f"{iteration_dirname(iteration)}.parquet"


def write_part(out_dir: Path, records: list[FrameRecord]) -> Path:
    """Write one iteration's records; a reader never sees a half-written part (temp file + rename)."""
    if not records:
        raise ValueError("an iteration part needs at least one frame")
    iterations = {r.iteration for r in records}
    if len(iterations) != 1:
        raise ValueError(f"one part holds one iteration, got {sorted(iterations)}")
    records = sorted(records, key=lambda r: r.frame)
    emb = np.stack([np.asarray(r.embedding, dtype=np.float32) for r in records])
    dim = emb.shape[1]
    table = pa.table(
        {
            "iteration": pa.array([r.iteration for r in records], pa.int16()),
            "frame": pa.array([r.frame for r in records], pa.int32()),
            "prompt": pa.array([r.prompt for r in records], pa.string()),
            "caption": pa.array([r.caption for r in records], pa.string()),
            "characters": pa.array([list(r.characters) for r in records], pa.list_(pa.string())),
            "seed": pa.array([r.seed for r in records], pa.int64()),
            "scale": pa.array([r.scale for r in records], pa.float32()),
            "image_path": pa.array([r.image_path for r in records], pa.string()),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1), pa.float32()), dim),
        },
        schema=schema(dim),
    )
    if any(r.revision for r in records):
        table = table.replace_schema_metadata({REVISIONS_KEY: json.dumps([r.revision for r in records])})
    final = part_path(out_dir, records[0].iteration)
    final.parent.mkdir(parents=True, exist_ok=True)
    with replacing(final) as tmp:
        pq.write_table(table, tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())  # the resume point must survive a crash of the whole node
    return final


def finished_iterations(out_dir: Path) -> list[int]:
    """Iterations whose part exists, ascending."""
    mdir = Path(out_dir) / MANIFEST_DIR
    if not mdir.is_dir():
        return []
    found = [int(m.group(1)) for p in mdir.iterdir() if (m := _PART.match(p.name))]
    return sorted(found)


def finished_iterations_or_fail(out_dir: Path) -> list[int]:
    """finished_iterations, or one line naming the directory when it is missing or holds no finished iteration."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise UserError(f"{out_dir}: no such render directory")
    iterations = finished_iterations(out_dir)
    if not iterations:
        raise UserError(f"{out_dir / MANIFEST_DIR}: no finished iteration (no iter_NN.parquet part)")
    return iterations


def read_part(out_dir: Path, iteration: int) -> pa.Table:
    return pq.read_table(part_path(out_dir, iteration))


def read_records(out_dir: Path, iteration: int) -> list[FrameRecord]:
    part = read_part(out_dir, iteration)
    table = part.to_pydict()
    revisions = json.loads((part.schema.metadata or {}).get(REVISIONS_KEY, b"null")) or [0] * len(table["frame"])
    return [
        FrameRecord(
            iteration=int(table["iteration"][i]),
            frame=int(table["frame"][i]),
            prompt=table["prompt"][i],
            caption=table["caption"][i],
            characters=tuple(table["characters"][i]),
            seed=int(table["seed"][i]),
            scale=float(table["scale"][i]),
            image_path=table["image_path"][i],
            embedding=np.asarray(table["embedding"][i], dtype=np.float32),
            revision=int(revisions[i]),
        )
        for i in range(len(table["frame"]))
    ]


def read_bank(out_dir: Path, iteration: int) -> np.ndarray:
    """The (N, D) float32 embeddings of one iteration, ordered by frame."""
    table = read_part(out_dir, iteration).sort_by("frame")
    col = table.column("embedding").combine_chunks()
    dim = col.type.list_size
    return col.values.to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, dim)

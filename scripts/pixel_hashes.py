"""Pixel fingerprint of every shipped example with every method, on the tiny model.

    python scripts/pixel_hashes.py FILE           render, write {relative path: sha256} of every PNG/GIF to FILE
    python scripts/pixel_hashes.py --check FILE   render, compare with FILE; exit 1 naming every difference

Renders through the public command (`python -m storyadapter.launch ... model=tiny cluster=local`), one run per
(story, method), so the script imports nothing from the package and survives moves inside it unchanged. Small
settings (64 px, 2 steps, 1 refinement, one worker) keep the whole set to a few minutes on 2 CPUs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "storyadapter" / "examples"
METHODS = ("story_adapter", "storydiffusion", "hybrid")
SMALL = ["model=tiny", "cluster=local", "cluster.workers=1", "render.iterations=1", "render.steps=2",
         "render.height=64", "render.width=64"]


def stories() -> dict[str, tuple[list[str], tuple[str, ...]]]:
    """name -> (the overrides choosing it, its methods): every story file shipped in the examples with every method;
    every conf/story preset (each names one of those files) with the default method, for the preset's path lookup."""
    found = {f"examples/{p.name}": ([f"story.path={p}"], METHODS)
             for p in sorted(EXAMPLES.iterdir()) if p.suffix in (".txt", ".yaml", ".json")}
    for preset in sorted((REPO / "conf" / "story").glob("*.yaml")):
        found[f"story={preset.stem}"] = ([f"story={preset.stem}"], METHODS[:1])
    return found


def render(out: Path, cache: Path, overrides: list[str]) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "storyadapter.launch", *overrides, *SMALL, f"model.cache_dir={cache}",
           f"output_dir={out}"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(overrides)}: launch failed ({proc.returncode}): {proc.stderr[-2000:]}")


def hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.suffix in (".png", ".gif") and p.is_file()}


def collect(work: Path) -> dict[str, str]:
    cache = work / "cache"
    result: dict[str, str] = {}
    for name, (story, methods) in stories().items():
        for method in methods:
            t0 = time.monotonic()
            out = work / "renders" / name.replace("/", "_").replace("=", "_") / method
            render(out, cache, [*story, f"method={method}"])
            for rel, digest in hashes(out).items():
                result[f"{name}/{method}/{rel}"] = digest
            print(f"{name} method={method}: {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("file", nargs="?", help="write the hashes here")
    ap.add_argument("--check", metavar="FILE", help="compare with the hashes in FILE")
    args = ap.parse_args()
    if bool(args.file) == bool(args.check):
        ap.error("give FILE or --check FILE")
    with tempfile.TemporaryDirectory(prefix="pixel-hashes-") as tmp:
        now = collect(Path(tmp))
    if args.file:
        Path(args.file).write_text(json.dumps(now, indent=1, sort_keys=True) + "\n")
        print(f"{len(now)} images hashed into {args.file}")
        return
    before = json.loads(Path(args.check).read_text())
    diff = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
    for key in diff:
        what = "missing now" if key not in now else "new" if key not in before else "differs"
        print(f"{key}: {what}", file=sys.stderr)
    if diff:
        sys.exit(f"{len(diff)} of {len(before.keys() | now.keys())} images differ from {args.check}")
    print(f"all {len(now)} images identical to {args.check}")


if __name__ == "__main__":
    main()

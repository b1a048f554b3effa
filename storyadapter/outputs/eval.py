"""Evaluate a story's images with CLIP: a render directory (every iteration, the same numbers the
run wrote to metrics.json) or any folder of images against a story file (e.g. a baseline's output).

python -m storyadapter.outputs.eval DIR_OR_FOLDER [--story FILE] [--clip-model ID_OR_PATH] [--json OUT]

Without --clip-model a render directory is scored as a run without eval.clip_model is: consistency from the
image embeddings its manifest holds, no clip_t. Those numbers go to --json only: the run's own metrics.json may
hold a CLIP-T that they would drop. A folder of images has no embeddings of its own and needs a CLIP.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any, Sequence

from ..rundir import manifest
from ..errors import ArgumentParser, UserError, report
from .metrics import (
    DEFAULT_CLIP,
    METRICS_JSON,
    METRICS_PNG,
    ClipScorer,
    evaluate_render,
    evaluate_render_from_manifest,
    fetch_hint,
    format_table,
    load_image,
    plot_metrics,
    write_json,
)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def is_render_dir(path: Path) -> bool:
    return (Path(path) / manifest.MANIFEST_DIR).is_dir()


def _natural_key(path: Path) -> list[Any]:
    # frame_2 before frame_10 even without zero padding.
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)]


def folder_images(folder: Path) -> list[Path]:
    files = sorted((p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES), key=_natural_key)
    if not files:
        raise UserError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) to evaluate")
    return files


def evaluate_folder(folder: Path, story_path: Path, scorer: ClipScorer | None = None, clip_model: str | None = None) -> dict[str, Any]:
    """Images in natural name order are frames 0..N-1 of the story; counts must match."""
    from ..story.parse import load_story  # lazily: render-dir evaluation needs no story parser

    files = folder_images(folder)
    story = load_story(story_path)
    if len(files) != len(story.frames):
        raise UserError(f"{folder}: {len(files)} images but {story_path} has {len(story.frames)} frames")
    if scorer is None:
        scorer = ClipScorer(clip_model, key="--clip-model")
    images = [load_image(p) for p in files]
    # The manifest records the tag-expanded prompt without the style template: use the same text so a
    # folder of images and a render directory are scored alike.
    prompts = [f.prompt for f in story.frames]
    row = scorer.story_metrics(images, prompts, [tuple(f.characters) for f in story.frames])
    return {"images": folder.name, **row}


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m storyadapter.outputs.eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("path", type=Path, help="render directory (has manifest/) or a folder of images")
    parser.add_argument("--story", type=Path, default=None, help="story file; required for a plain image folder")
    parser.add_argument("--clip-model", default=None, help=(
        f"CLIP hub id or local directory; recommended: {DEFAULT_CLIP} (fetch once with `hf download {DEFAULT_CLIP}`). "
        "Without it a render directory gets consistency from its manifest's embeddings and no clip_t; "
        "a folder of images needs it"))
    parser.add_argument("--json", type=Path, default=None,
                        help="where to write the JSON (default: PATH/metrics.json; without --clip-model, only here)")
    args = parser.parse_args(argv)
    try:
        path: Path = args.path
        if not path.is_dir():
            raise UserError(f"{path}: no such directory")
        if is_render_dir(path):
            manifest.finished_iterations_or_fail(path)  # fail on an empty manifest before loading a model
            if args.clip_model:
                results = evaluate_render(path, ClipScorer(args.clip_model, key="--clip-model"))
            else:
                results = evaluate_render_from_manifest(path)
            first = "iteration"
        else:
            if args.story is None:
                raise UserError(f"{path}: not a render directory (no manifest/); pass --story FILE to evaluate its images")
            if not args.story.is_file():
                raise UserError(f"--story {args.story}: no such file")
            folder_images(path)  # fail on an empty folder before loading a model
            if not args.clip_model:
                raise UserError(f"--clip-model: a folder of images has no embeddings of its own to score; "
                                f"{fetch_hint(None, '--clip-model')}")
            results = [evaluate_folder(path, args.story, clip_model=args.clip_model)]
            first = "images"
        print(format_table(results, first=first))
        out = args.json or (path / METRICS_JSON if args.clip_model else None)
        if out is None:
            print(f"no CLIP: consistency from {path}'s own embeddings, no clip_t; not written to "
                  f"{path / METRICS_JSON} (pass --json OUT to keep these)", file=sys.stderr)
            return 0
        write_json(out, results)
        if args.json is None and first == "iteration":
            plot_metrics(results, path / METRICS_PNG)  # keep the run's plot in step with its JSON
        print(f"wrote {out}", file=sys.stderr)
    except UserError as exc:
        report(exc)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

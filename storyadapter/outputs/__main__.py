"""`python -m storyadapter.outputs DIR [--layout classic|four|single] [--caption-position below|above]
[--clip-model PATH]`: regenerate a render directory's comic pages, GIF, contact sheet and index (and metrics)
from its manifest and PNGs, without rendering."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

from ..errors import ArgumentParser, UserError, environment_error, report
from .comic import CAPTION_POSITIONS, LAYOUTS
from .write import write_all


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(
        prog="python -m storyadapter.outputs",
        description="Regenerate comic pages, GIF, contact sheet and index (and metrics) of a render directory.",
    )
    parser.add_argument("dir", type=Path, help="render output directory (has manifest/)")
    parser.add_argument("--layout", choices=LAYOUTS, default="classic")
    parser.add_argument("--caption-position", choices=CAPTION_POSITIONS, default="below")
    parser.add_argument("--clip-model", default=None, help="CLIP id or local path; computes metrics.json when given")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        write_all(
            args.dir, args.clip_model, layout=args.layout, caption_position=args.caption_position, clip_key="--clip-model",
            metrics=bool(args.clip_model),  # without a CLIP, keep the run's metrics rather than recompute fewer
        )
    except UserError as exc:
        report(exc)
        return exc.exit_code
    except OSError as exc:  # a full or read-only disk: the one line, like the launcher's
        err = environment_error(exc, args.dir)
        if err is None:
            raise
        report(err)
        return err.exit_code
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""How many frame renders `render.stop_when_stable` saves on the shipped stories.

    python -m bench.early_stop [--eps 0.01] [--iterations 4] [--out bench/results/early_stop.json]

Renders each shipped example in this process on the tiny model (64 px, 2 steps) and counts the frames it
did not have to render. The tiny model has random weights: its frames barely change between iterations,
so it stops after the first refinement and the number is a smoke test of the mechanism, not a prediction
for real weights (measure those with `python -m storyadapter.launch ... render.stop_when_stable=EPS`).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from storyadapter.engine import driver
from storyadapter.rundir import manifest
from storyadapter.errors import ArgumentParser
from storyadapter.outputs.metrics import write_json
from storyadapter.story.parse import load_story

EXAMPLES = Path(__file__).resolve().parents[1] / "storyadapter" / "examples"
STORIES = ("explorer_24.txt", "garden.yaml", "office_comic.txt", "kite_photo.yaml")


def measure(story_file: Path, eps: float, iterations: int, source, work: Path) -> dict:
    from storyadapter.worker.renderer import RenderSettings
    from storyadapter.worker.frame_worker import FramePrompt, FrameWorker, WorkerSpec

    story = load_story(story_file)
    out = work / story_file.stem
    spec = WorkerSpec(source=source, settings=RenderSettings(steps=2, height=64, width=64),
                      prompts=tuple(FramePrompt(*story.styled(f), characters=f.characters) for f in story.frames),
                      out_dir=str(out), seed=2024, seed_policy="shared", threads=1, photos=tuple(story.photos.values()))
    plan = driver.RunPlan(story, out, iterations=iterations, batch_size=1, scale_start=0.3, scale_end=0.5, seed=2024,
                          seed_policy="shared", stop_when_stable=eps)
    out.mkdir(parents=True)
    stats = driver.run_iterations(plan, driver.LocalExecutor(FrameWorker(spec)))
    n = len(story.frames)
    rendered = sum(s.frames for s in stats)
    return {"story": story_file.name, "frames": n, "iterations_run": manifest.finished_iterations(out)[-1],
            "frame_renders": rendered, "without_stop": n * (iterations + 1), "saved": n * (iterations + 1) - rendered}


def main(argv=None) -> int:
    from bench.harness import bench_environment

    bench_environment()
    parser = ArgumentParser(prog="python -m bench.early_stop", description=__doc__.splitlines()[0])
    parser.add_argument("--eps", type=float, default=0.01)
    parser.add_argument("--iterations", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "early_stop.json")
    args = parser.parse_args(argv)
    from storyadapter.logs import quiet_libraries
    from storyadapter.models import tiny
    from storyadapter.models.loading import ModelSource

    quiet_libraries()
    root = tiny.build(tiny.tiny_dir(None))
    source = ModelSource(str(root / "sdxl"), str(root / "ip-adapter"))
    with tempfile.TemporaryDirectory() as tmp:
        rows = [measure(EXAMPLES / name, args.eps, args.iterations, source, Path(tmp)) for name in STORIES]
    report = {"model": "tiny (random weights: a smoke test)", "eps": args.eps, "iterations": args.iterations, "stories": rows,
              "saved": sum(r["saved"] for r in rows), "without_stop": sum(r["without_stop"] for r in rows)}
    write_json(args.out, report)
    for r in rows:
        print(f"{r['story']:<20} {r['frames']:>3} frames: stopped after iteration {r['iterations_run']}, "
              f"{r['frame_renders']} of {r['without_stop']} frame renders ({r['saved']} saved)")
    print(f"stop_when_stable={args.eps}: {report['saved']} of {report['without_stop']} frame renders saved "
          f"(tiny random-weight model: a smoke test); wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Per-frame time and peak memory of each method (story_adapter, storydiffusion, hybrid), one worker, no Ray.

    python -m bench.methods METHOD [--model tiny|sdxl-random] [--frames 8] [--size 128] [--steps 10] [--iterations 1]
    python -m bench.methods all [same options] [--name methods]   # each method in its own process, plus a report

Renders a two-character story's iteration 0 (CSA for storydiffusion/hybrid, text only for story_adapter)
and, unless storydiffusion, `--iterations` GRCA refinements. One JSON line per method: seconds per frame for
each iteration (CPU seconds on a CPU, steadier than wall time on a shared machine; wall seconds after a CUDA
sync on a GPU), the seconds spent rendering identity frames (the write phase), the banks' bytes, the
process's peak resident memory and, on a GPU, peak GPU memory. `all` runs one process per method (peak
memory is per process) and writes bench/results/<name>.{json,md}. `make bench` runs it on the tiny model;
`make bench-gpu` on the full-size random-weight model (`--model sdxl-random --size 1024 --steps 50`).
"""

from __future__ import annotations

import json
import resource
import sys
import tempfile
import time
from pathlib import Path

CHARACTERS = ["[Tom] A boy with a red cap and a blue backpack.", "[Lisa] A girl with long black hair and a yellow raincoat.", ""]
SCENES = ["[Tom] walks to school", "[Lisa] reads under a tree", "[Tom] and [Lisa] meet at the gate",
          "[NC] An empty classroom at dusk", "[Tom] runs home in the rain", "[Lisa] paints a fence",
          "[Tom] and [Lisa] share an umbrella", "[Tom] eats dinner with his dog"]


def measure(method: str, frames: int, size: int, steps: int, iterations: int, tiny_cache: str | None,
            model: str = "tiny") -> dict:
    import numpy as np
    import torch

    from storyadapter.launch import compose_config
    from storyadapter.render_story import resolve_model, worker_spec
    from storyadapter.spec import from_config
    from storyadapter.story.parse import load_story

    gpu = torch.cuda.is_available() and model != "tiny"
    if not gpu:
        torch.set_num_threads(1)
    clock = time.perf_counter if gpu else time.process_time
    sync = torch.cuda.synchronize if gpu else (lambda: None)
    work = Path(tempfile.mkdtemp(prefix="bench-methods-"))
    story_path = work / "story.txt"
    story_path.write_text("\n".join(CHARACTERS + [SCENES[i % len(SCENES)] + f", scene {i}" for i in range(frames)]) + "\n")
    cfg = compose_config([f"story.path={story_path}", f"model={model}", *( [f"model.cache_dir={tiny_cache}"] if tiny_cache else []),
                          "render=tiny", f"render.steps={steps}", f"render.height={size}", f"render.width={size}",
                          *([] if gpu else ["model.device=cpu"]),
                          f"method={method}", f"output_dir={work / 'out'}", "cluster.threads_per_worker=1"])
    story = load_story(story_path)
    run = from_config(cfg)
    worker = worker_spec(run, story, resolve_model(run.model)[0], work / "out").build()
    per_frame, identity_s = [], 0.0
    renderer = worker.renderer
    if renderer.csa is not None:  # time the write phase apart from the reads
        real = renderer.render_identity

        def timed(*args, **kwargs):
            nonlocal identity_s
            sync()
            t = clock()
            out = real(*args, **kwargs)
            sync()
            identity_s += clock() - t
            return out

        renderer.render_identity = timed
    bank = None
    bank_bytes = 0
    last = 0 if method == "storydiffusion" else iterations
    for it in range(last + 1):
        worker.begin_iteration(it, bank, 0.0 if it == 0 else 0.4)
        if gpu and it == 0:
            torch.cuda.reset_peak_memory_stats()
        sync()
        t = clock()
        results = [r for f in range(frames) for r in worker.render_batch(it, [f]).frames]
        sync()
        per_frame.append((clock() - t) / frames)
        if it == 0 and renderer.csa is not None:
            bank_bytes = sum(b.nbytes() for b in renderer.csa.banks.values())
        bank = np.stack([r.embedding for r in results])
    return {
        "method": method, "frames": frames, "size": size, "steps": steps,
        "seconds_per_frame": [round(s, 4) for s in per_frame],
        "identity_frames_rendered": worker.identity_renders, "identity_seconds": round(identity_s, 3),
        "bank_bytes": bank_bytes, "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if gpu else None,
        "model": model, "clock": "wall (CUDA)" if gpu else "CPU",
    }


METHODS = ("story_adapter", "storydiffusion", "hybrid")


def run_all(args: list[str], name: str) -> list[dict]:
    """Each method in a process of its own (peak memory is per process); results to bench/results/<name>.*."""
    import subprocess

    rows = []
    for method in METHODS:
        out = subprocess.run([sys.executable, "-m", "bench.methods", method, *args], check=True,
                             capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    results = Path(__file__).parent / "results"
    results.mkdir(exist_ok=True)
    (results / f"{name}.json").write_text(json.dumps(rows, indent=2) + "\n")
    (results / f"{name}.md").write_text(report(rows))
    print(report(rows))
    return rows


def report(rows: list[dict]) -> str:
    r0 = rows[0]
    gpu = r0["peak_gpu_mb"] is not None
    head = (f"# Methods, model={r0['model']}, {r0['frames']} frames, {r0['size']} px, {r0['steps']} steps, one worker\n\n"
            f"Seconds per frame ({r0['clock']} time), identity frames included in iteration 0.\n\n")
    cols = "| method | iteration 0 | each refinement | identity frames (s) | ID banks | peak RSS |" + (" peak GPU |" if gpu else "")
    lines = [cols, "|---" * (cols.count("|") - 1) + "|"]
    for r in rows:
        spf = r["seconds_per_frame"]
        refine = f"{sum(spf[1:]) / len(spf[1:]):.3f}" if len(spf) > 1 else "-"
        bank = f"{r['bank_bytes'] / 1e6:.1f} MB" if r["bank_bytes"] else "-"
        line = (f"| `{r['method']}` | {spf[0]:.3f} | {refine} | {r['identity_frames_rendered']} ({r['identity_seconds']:.2f}) "
                f"| {bank} | {r['peak_rss_mb']:.0f} MB |")
        lines.append(line + (f" {r['peak_gpu_mb'] / 1024:.1f} GiB |" if gpu else ""))
    return head + "\n".join(lines) + "\n"


def main() -> None:
    from bench.harness import bench_environment

    bench_environment()
    from storyadapter.errors import ArgumentParser

    p = ArgumentParser(prog="python -m bench.methods", description=__doc__.splitlines()[0])
    p.add_argument("method", choices=(*METHODS, "all"))
    p.add_argument("--model", choices=("tiny", "sdxl-random"), default="tiny")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--iterations", type=int, default=1)
    p.add_argument("--tiny-cache", default=None)
    p.add_argument("--name", default="methods", help="with `all`: bench/results/NAME.{json,md}")
    a = p.parse_args()
    if a.method == "all":
        args = [f"--model={a.model}", f"--frames={a.frames}", f"--size={a.size}", f"--steps={a.steps}",
                f"--iterations={a.iterations}", *([f"--tiny-cache={a.tiny_cache}"] if a.tiny_cache else [])]
        run_all(args, a.name)
        return
    print(json.dumps(measure(a.method, a.frames, a.size, a.steps, a.iterations, a.tiny_cache, a.model)))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
